#!/usr/bin/env bash
# One short paper-recipe run of IN1K fine-tuning, COCO Mask R-CNN and ADE20K UperNet for a random ViT-B/16 on CUDA,
# printing step time and peak memory (training and evaluation apart); figures also in OUT/gpu_smoke.{txt,json}.
#   benchmarks/gpu_smoke.sh OUT [--data DIR]   # DIR: written by `python -m harness data embedded --out DIR`
#   benchmarks/gpu_smoke.sh OUT --cpu          # the same path at tiny sizes on CPU
# PYTHON selects the interpreter (default: python).
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: $0 OUT [--data DIR] [--cpu]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$here/benchmarks/gpu_smoke.py" "$@"
