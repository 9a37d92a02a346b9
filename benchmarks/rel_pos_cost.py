"""What the relative position biases (`HarnessViT(rel_pos=...)`) cost the backbone: time of forward + backward
through `HarnessViT` without a bias, with ViTDet's decomposed one (COCO) and with BEiT's tables (ADE20K), the same
weights and inputs, measured in the same run (and peak memory on CUDA).

The decomposed bias is a `[B, heads, N, N]` tensor per block (N tokens of a window, or of the whole image in global
blocks) built from two einsums over the queries; the table bias is `[1, heads, N, N]`, gathered from the table.
Without either, attention runs without a mask.

    python benchmarks/rel_pos_cost.py                  # tiny ViT on the embedded COCO canvas sizes, ViT-B/16 at 512
    python benchmarks/rel_pos_cost.py --configs vitb1024 --devices cuda --steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backbones import mm  # noqa: E402
from backbones.registry import get_spec, register_backbone  # noqa: E402


@register_backbone
def bench_vit_base_patch16():  # noqa: ANN201
    """ViT-B/16 with random weights: the cost does not depend on them, and nothing is downloaded."""
    return dataclasses.replace(get_spec("mae_vit_base_patch16"), name="bench_vit_base_patch16", url=None, sha256=None)


# name: (backbone, img_size the tables are made for, input [B, 3, H, W], window, global blocks)
CONFIGS = {
    "tiny96": ("mae_vit_tiny_patch4", 32, (4, 3, 96, 96), 0, ()),  # the tiny COCO recipe: global attention
    "vitb512": ("bench_vit_base_patch16", 1024, (1, 3, 512, 512), 14, (2, 5, 8, 11)),  # ViTDet's layout, smaller input
    "vitb1024": ("bench_vit_base_patch16", 1024, (2, 3, 1024, 1024), 14, (2, 5, 8, 11)),  # the paper recipe's input
}


def measure(config: str, rel_pos: str | None, device: str, steps: int, warmup: int) -> tuple[float, float | None]:
    """(seconds per forward + backward, peak CUDA memory in GiB or None on CPU)."""
    backbone, img, shape, window, global_blocks = CONFIGS[config]
    torch.manual_seed(0)
    model = mm.HarnessViT(
        backbone, img_size=img, pyramid="simple", scale_factors=(4.0, 2.0, 1.0, 0.5), window_size=window,
        global_blocks=global_blocks, rel_pos=rel_pos,
    )  # fmt: skip
    model = model.to(device).train()
    x = torch.randn(*shape, device=device)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def step() -> None:
        with autocast:
            loss = sum(m.float().square().mean() for m in model(x))
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny96,vitb512", help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    unknown = sorted(set(args.configs.split(",")) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; forward + backward of HarnessViT")
    modes = (None, "decomposed", "table")
    header = f"{'config':<10} {'device':<6} {'no bias s':>9} {'decomposed':>16} {'table':>16}"
    print(f"{header}  peak GiB (none / decomposed / table)")
    for device in args.devices.split(","):
        for config in args.configs.split(","):
            (base, base_mem), *others = (measure(config, m, device, args.steps, args.warmup) for m in modes)
            cells = " ".join(f"{t:>7.3f} ({t / base:.2f}x)" for t, _ in others)
            peaks = (base_mem, *(m for _, m in others))
            memory = " / ".join(f"{m:.2f}" for m in peaks) if base_mem is not None else "-"
            print(f"{config:<10} {device:<6} {base:>9.3f} {cells}  {memory}", flush=True)

if __name__ == "__main__":
    main()
