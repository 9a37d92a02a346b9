"""`harness data embedded`: write the three embedded data sets (ImageNet, COCO and ADE20K layouts, made from real
Fashion-MNIST images) that the tiny preset runs on, so that they can be made once, ahead of a run.

    python -m harness data embedded --out data/embedded [--seed 0] [--fashion-mnist DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATASETS = ("imagenet", "coco", "ade20k")  # each of these modules of `embedded` has write(root, seed) -> Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    p = sub.add_parser("embedded", help="write the embedded ImageNet, COCO and ADE20K layouts",
                       description="write the embedded ImageNet, COCO and ADE20K layouts under OUT/<name>")
    p.add_argument("--out", required=True, type=Path, help="folder to write OUT/imagenet, OUT/coco, OUT/ade20k into")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and placement of images")
    p.add_argument("--fashion-mnist", type=Path, default=None,
                   help="folder with the four Fashion-MNIST IDX files (default: $HARNESS_FASHION_MNIST or Debian's)")


def write_embedded(out: Path, seed: int = 0) -> dict[str, Path]:
    """Writes every embedded data set under `out` and returns their roots."""
    from embedded import ade20k, coco, imagenet

    return {
        "imagenet": imagenet.write(out / "imagenet", seed=seed),
        "coco": coco.write(out / "coco", seed=seed),
        "ade20k": ade20k.write(out / "ade20k", seed=seed),
    }


def run(args: argparse.Namespace) -> int:
    if args.fashion_mnist is not None:
        if not args.fashion_mnist.is_dir():
            raise SystemExit(f"--fashion-mnist {args.fashion_mnist}: no such folder")
        os.environ["HARNESS_FASHION_MNIST"] = str(args.fashion_mnist)  # read by embedded.fashion_mnist
    for name, root in write_embedded(args.out, seed=args.seed).items():
        print(f"{name}: {root}")
    return 0
