#!/usr/bin/env bash
# Builds the project's virtual environment from nothing, idempotently: `make demo` and `make test` call it first.
# Nothing is compiled: mmcv comes as mmcv-lite (its Python code) and its ops from torchvision through mmcv_tvops.
#
#   HARNESS_VENV        where the venv goes (default: .venv in the repository)
#   HARNESS_TORCH_INDEX a pip index for torch and torchvision instead of PyPI's default wheels (CUDA on Linux), e.g.
#                       https://download.pytorch.org/whl/cpu for a CPU-only torch (a venv about 3 GB smaller)
#   HARNESS_WHEELHOUSE  optional: a folder holding an mmcv-2.1.0 wheel with compiled ops for this Python and torch;
#                       installed instead of mmcv-lite, its ops are then used instead of torchvision's
#   PYTHON              the interpreter to build the venv with (3.11 or 3.12; default: python3.11, else python3)
#
# Steps: the Debian data set and chromium (as root), the venv, torch (requirements/torch.txt), the exact versions of
# requirements/lock.txt (--no-deps, so nothing outside the lock sneaks in), this package in editable mode, and
# mmcv_tvops.pth in site-packages so that `import mmcv._ext` works in every process of the venv. A stamp of the
# inputs makes a second call return in about a second.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HARNESS_VENV:-$repo/.venv}
mmcv_version=2.1.0
log() { printf '[setup] %s\n' "$*" >&2; }

fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  [ -f "$dir/train-images-idx3-ubyte.gz" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing the Debian package dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    log "Fashion-MNIST is missing from $dir: run 'sudo apt-get install dataset-fashion-mnist'," \
      "or set HARNESS_FASHION_MNIST to a folder with the four IDX files"
  fi
}

chromium_browser() {
  # headless Chromium opens the HTML report in tests/test_html.py
  command -v chromium >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing the Debian package chromium"
    apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    log "chromium is missing (tests/test_html.py needs it): run 'sudo apt-get install chromium'"
  fi
}

stamp_of() {
  { cat "$repo/requirements/lock.txt" "$repo/requirements/torch.txt" "$repo/pyproject.toml" \
      "$repo/scripts/setup_env.sh"
    echo "index=${HARNESS_TORCH_INDEX:-} wheelhouse=${HARNESS_WHEELHOUSE:-}"; } | sha256sum | cut -d' ' -f1
}

check_python() {
  "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' ||
    { log "$1 is Python $("$1" -c 'import platform; print(platform.python_version())'); 3.11 or 3.12 is needed" \
        "(PYTHON=/path/to/python3.12)"; exit 1; }
}

install_torch() {
  local spec
  if [ -n "${HARNESS_TORCH_INDEX:-}" ]; then
    spec=$(grep -E '^(torch|torchvision)==' "$repo/requirements/torch.txt" | paste -sd' ')
    log "installing $spec from $HARNESS_TORCH_INDEX"
    # shellcheck disable=SC2086  # two requirement words
    "$venv/bin/pip" install -q --no-deps --index-url "$HARNESS_TORCH_INDEX" $spec
  else
    log "installing torch $(grep '^torch==' "$repo/requirements/torch.txt" | cut -d= -f3) (PyPI's wheel for this machine)"
    "$venv/bin/pip" install -q --no-deps -r "$repo/requirements/torch.txt"
  fi
}

compiled_mmcv_wheel() {
  # An mmcv wheel with compiled ops for this interpreter in $HARNESS_WHEELHOUSE, or nothing.
  [ -n "${HARNESS_WHEELHOUSE:-}" ] || return 0
  local tag
  tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  ls "$HARNESS_WHEELHOUSE"/mmcv-$mmcv_version-$tag-$tag-*.whl 2>/dev/null | head -n 1 ||
    { log "no mmcv-$mmcv_version-$tag wheel in HARNESS_WHEELHOUSE=$HARNESS_WHEELHOUSE"; exit 1; }
}

install_locked() {
  # mmcv-lite and a compiled mmcv both own mmcv/: exactly one of them is installed.
  local whl
  whl=$(compiled_mmcv_wheel)
  if [ -n "$whl" ]; then
    log "installing $whl (compiled ops) instead of mmcv-lite"
    "$venv/bin/pip" uninstall -q -y mmcv-lite 2>/dev/null || true
    "$venv/bin/pip" install -q --no-deps "$whl"
    grep -v '^mmcv-lite==' "$repo/requirements/lock.txt" | "$venv/bin/pip" install -q --no-deps -r /dev/stdin
  else
    "$venv/bin/pip" uninstall -q -y mmcv 2>/dev/null || true
    "$venv/bin/pip" install -q --no-deps -r "$repo/requirements/lock.txt"
  fi
}

write_pth() {
  # One line, run by site.py at every start of the venv's Python: makes `import mmcv._ext` find mmcv_tvops when no
  # compiled _ext is installed (a compiled one is found first). The import is cheap: no torch.
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo 'import mmcv_tvops; mmcv_tvops.install()' >"$site/mmcv_tvops.pth"
}

main() {
  fashion_mnist
  chromium_browser
  local stamp
  stamp=$(stamp_of)
  if [ -f "$venv/.harness-stamp" ] && [ "$(cat "$venv/.harness-stamp")" = "$stamp" ]; then
    return 0
  fi
  local py=${PYTHON:-$(command -v python3.11 || command -v python3)}
  if [ ! -x "$venv/bin/python" ]; then
    check_python "$py"
    log "creating $venv with $py"
    "$py" -m venv "$venv"
  fi
  check_python "$venv/bin/python"
  "$venv/bin/pip" install -q "pip>=24,<26" "setuptools>=69,<82" wheel
  install_torch
  log "installing the locked packages (requirements/lock.txt)"
  install_locked
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$repo"
  write_pth
  "$venv/bin/python" -c "import mmcv, mmcv.ops, mmdet.models, mmseg.models, timm, mmcv_tvops
assert mmcv.__version__ == '$mmcv_version', mmcv.__version__
print('[setup] mmcv', mmcv.__version__, 'ops:', mmcv_tvops.backend())" >&2 ||
    { log "the environment in $venv does not import; remove it and run again"; exit 1; }
  echo "$stamp" >"$venv/.harness-stamp"
  log "environment ready: $venv"
}

main "$@"
