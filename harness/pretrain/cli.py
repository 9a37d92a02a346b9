"""`harness pretrain`: pretrain a ViT of the registry with MAE, or a supervised / MoCo v3 baseline.

    python -m harness pretrain --method mae --arch mae_vit_tiny_patch4 --data fashion-mnist --epochs 4 --out runs/mae
    python -m harness pretrain --method mae --arch mae_vit_base_patch16 --data /data/imagenet --recipe mae_paper \
        --out runs/mae_b --set epochs=1600

The result is `OUT/encoder.pth`, loadable with `create_backbone(ARCH, checkpoint=OUT/encoder.pth)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from harness.pretrain import METHODS

    parser.add_argument("--method", required=True, choices=sorted(METHODS), help="pretraining method")
    parser.add_argument("--arch", required=True, help="registry name of the ViT (e.g. mae_vit_tiny_patch4)")
    parser.add_argument("--data", default="fashion-mnist",
                        help="'fashion-mnist' (default) or an ImageNet-layout folder holding train/<class>/*")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (a second run there resumes)")
    parser.add_argument("--recipe", default=None, help="recipe under tasks/recipes/pretrain/ (default: METHOD_tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set optim.base_lr=1e-3 (repeatable)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads; default: torch's). Part of what makes a run "
                             "bit-for-bit: the shipped tiny encoders were made with --threads 1")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")


def run(args: argparse.Namespace) -> int:
    from harness.pretrain import pretrain
    from tasks.recipes import parse_override

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    data = None if args.data == "fashion-mnist" else Path(args.data)
    if data is not None and not data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder (give 'fashion-mnist' or an ImageNet-layout folder)")
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        path = pretrain(
            args.method, args.arch, args.out, epochs=args.epochs, seed=args.seed, data_root=data, recipe=args.recipe,
            overrides=overrides, progress=not args.no_progress, device=args.device,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:  # bad recipe, flag, data or backbone name: say which
        raise SystemExit(f"harness pretrain: {e.args[0] if isinstance(e, KeyError) else e}") from None
    print(f"encoder written to {path}")
    return 0
