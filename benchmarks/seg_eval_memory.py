"""Peak memory of the ADE20K paper model (`tasks.segmentation`: HarnessViT taps + BEiT tables + layer scale, UPerHead,
FCN auxiliary head; random weights) in one training step against one sliding-window evaluation of one image, in the
same run: the evaluation should stay below training.

Training is the runner's step: `model.loss` under bf16 autocast on CUDA (`AmpOptimWrapper`), backward. Evaluation is
mmengine's `ValLoop` step: `model.predict` under `torch.no_grad()`, fp32 (its `fp16=False`), mmseg's slide inference
over crops of `--crop` with stride 2/3 of it; with `torch.backends.cudnn.benchmark` on (the runner's `cudnn_benchmark`
on CUDA) and off, as `mmcommon.train_and_validate` runs it. Peak memory: `torch.cuda.max_memory_allocated` on CUDA;
on CPU the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) above what it held before.

    python benchmarks/seg_eval_memory.py                                    # CPU, ViT-B at 256 crops, batch 2
    python benchmarks/seg_eval_memory.py --device cuda --crop 512 --batch 8 --image 512 683   # the paper recipe
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backbones.registry import get_spec, register_backbone  # noqa: E402


@register_backbone
def bench_seg_vit_base_patch16():  # noqa: ANN201
    """ViT-B/16 with random weights: memory does not depend on them, and nothing is downloaded."""
    return dataclasses.replace(get_spec("mae_vit_base_patch16"), name="bench_seg_vit_base_patch16", url=None,
                               sha256=None)  # fmt: skip


def build(backbone: str, crop: int, device: str) -> torch.nn.Module:
    """The paper recipe's segmentor (150 classes) at crop size `crop`, from the task's own config."""
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from tasks import TaskContext
    from tasks import segmentation as seg
    from tasks.recipes import load_recipe

    register_all_modules()
    recipe = load_recipe("ade20k", "paper", {"data.crop": [crop, crop], "test.crop": [crop, crop],
                                             "test.stride": [crop * 2 // 3] * 2})  # fmt: skip
    seg.mmcommon.import_adapter()
    cfg = seg._model_cfg(TaskContext(backbone=backbone, work_dir=Path(".")), recipe, seg.ADE_NUM_CLASSES)
    model = MODELS.build(ConfigDict(cfg))  # as the Runner does: mmseg reads test_cfg.mode
    model.init_weights()
    return model.to(device)


def peak(device: str, fn: Callable[[], None]) -> float:
    """GiB at the peak of `fn` above the memory held before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**30
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 2**20


def _status_kib(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


def train_step(model: torch.nn.Module, batch: int, crop: int, device: str) -> None:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model.train()
    x = torch.randn(batch, 3, crop, crop, device=device)
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(crop, crop), pad_shape=(crop, crop), ori_shape=(crop, crop)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, crop, crop), device=device))
        samples.append(s)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        losses = model.loss(x, samples)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    model.zero_grad(set_to_none=True)


def eval_step(model: torch.nn.Module, size: tuple[int, int], device: str) -> None:
    from mmseg.structures import SegDataSample

    model.eval()
    x = torch.randn(1, 3, *size, device=device)
    sample = SegDataSample(metainfo=dict(img_shape=size, pad_shape=size, ori_shape=size))
    with torch.no_grad():
        model.predict(x, [sample])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="bench_seg_vit_base_patch16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image", type=int, nargs=2, default=None, help="evaluated image H W (default: crop x 4/3 crop)")
    args = p.parse_args()
    size = tuple(args.image) if args.image else (args.crop, args.crop * 4 // 3)
    torch.manual_seed(0)
    model = build(args.backbone, args.crop, args.device)
    rows = [("train step", lambda: train_step(model, args.batch, args.crop, args.device))]
    cuda = args.device.startswith("cuda")
    for bench in (True, False) if cuda else (False,):
        def run(bench: bool = bench) -> None:
            torch.backends.cudnn.benchmark = bench
            eval_step(model, size, args.device)

        rows.append((f"eval (slide, no_grad, fp32{', cudnn.benchmark' if bench else ''})", run))
    print(f"{args.backbone} on {args.device}: train batch {args.batch}x{args.crop}^2, eval one {size[0]}x{size[1]}")
    first = None
    for name, fn in rows:  # first call (cuDNN's algorithm search, when on, runs here) and a repeated one
        cold, warm = peak(args.device, fn), peak(args.device, fn)
        first = first or warm
        print(f"{name:<48} peak {cold:8.2f} GiB first call, {warm:8.2f} GiB repeated ({warm / first:.2f} x training)",
              flush=True)  # fmt: skip

if __name__ == "__main__":
    main()
