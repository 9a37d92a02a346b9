"""One short paper-recipe run of each transfer task for a randomly initialised ViT-B/16 on CUDA, with step time and
peak memory for training and evaluation apart: a check that the paper's settings (IN1K fine-tuning at 224 px, ViTDet
Mask R-CNN at 1024 px, UperNet at 512 px crops with the sliding-window test) run on this machine, and what they cost.

The embedded data sets (`harness data embedded --out DIR`, or `--data DIR` to a folder it wrote) are subsampled and
upscaled to the paper's resolutions (IN1K images to 224 px; COCO canvases to 1024 px on the long side, annotations
scaled with them; ADE20K training images to 512 px, validation images to 512 x 683 so that the test slides two
windows, as on real ADE20K images). `harness run --preset paper` then runs each task with its iteration counts cut
by `--set` overrides; the figures come from the `cost` each task records (`tasks/cost.py`).

    benchmarks/gpu_smoke.sh OUT [--data DIR]      # CUDA: ViT-B/16, the paper's sizes, about 5 minutes on one H200
    benchmarks/gpu_smoke.sh OUT --cpu             # a dry run of the same path at tiny sizes on CPU

Step time is the median interval between steps (an IN1K micro-batch of 128, a COCO batch of 4 images, an ADE20K
batch of 16 crops; an evaluation step is one image for COCO and ADE20K, a batch of 128 for IN1K).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

ROOT = Path(__file__).resolve().parents[1]
ADE = "ADEChallengeData2016"


@dataclass(frozen=True)
class Mode:
    device: str
    backbone: dict[str, Any]
    in1k_side: int
    in1k_counts: tuple[int, int]  # per class: train, val
    coco_side: int
    coco_counts: tuple[int, int]
    coco_square: bool  # stretch canvases to side x side (no padding at test time)
    ade_train_side: int
    ade_val_hw: tuple[int, int]
    ade_counts: tuple[int, int]
    overrides: list[str] = field(default_factory=list)


VIT_B = dict(name="smoke_vit_base_patch16", arch="vit_base_patch16_224", family="scratch", checkpoint_format="timm",
             dense_taps=[3, 5, 7, 11], layer_decay=0.65, description="ViT-B/16, random initialisation (smoke test)")
VIT_CPU = dict(name="smoke_vit_cpu", arch="vit_tiny_patch16_224", family="scratch", checkpoint_format="timm",
               arch_kwargs=dict(embed_dim=32, depth=4, num_heads=2), img_size=64, dense_taps=[0, 1, 2, 3],
               description="a 4-block ViT/16 for the CPU dry run")  # fmt: skip

MODES = {
    # IN1K: one epoch of 300 images per class = 23 micro-batches of 128 (two optimizer steps of the paper's 1024).
    # COCO: 80 canvases in batches of 4 (the paper's batch per GPU, 64 on 16 GPUs) = 20 steps, then 20 val images.
    # ADE20K: 20 iterations of the paper's batch of 16 crops, then the sliding-window test on 8 images.
    "gpu": Mode(
        device="cuda", backbone=VIT_B, in1k_side=224, in1k_counts=(300, 50), coco_side=1024, coco_counts=(80, 20),
        coco_square=False,
        ade_train_side=512, ade_val_hw=(512, 683), ade_counts=(64, 8),
        overrides=["in1k.finetune.epochs=1", "in1k.data.num_workers=8", "coco.data.batch_size=4",
                   "coco.schedule.epochs=1", "coco.data.num_workers=8", "coco.schedule.log_interval=5",
                   "ade20k.schedule.max_iters=20", "ade20k.schedule.warmup_iters=5", "ade20k.schedule.val_interval=20",
                   "ade20k.schedule.checkpoint_interval=20", "ade20k.schedule.log_interval=5",
                   "ade20k.data.num_workers=8"],
    ),
    # The same path at sizes two CPU cores get through in a few minutes: a handful of steps of each task. COCO canvases
    # are square: mmdet's CPU mask paste fails on a box that lies wholly in the test-time padding, which an untrained
    # model predicts.
    "cpu": Mode(
        device="cpu", backbone=VIT_CPU, in1k_side=64, in1k_counts=(4, 2), coco_side=128, coco_counts=(4, 2),
        coco_square=True,
        ade_train_side=128, ade_val_hw=(128, 171), ade_counts=(4, 2),
        overrides=["in1k.finetune.epochs=1", "in1k.finetune.batch_size=16", "in1k.data.micro_batch_size=8",
                   "in1k.data.num_workers=0", "coco.data.batch_size=2", "coco.schedule.epochs=1",
                   "coco.data.image_size=[128,128]", "coco.data.num_workers=0", "coco.model.window_size=4",
                   "coco.schedule.log_interval=1",
                   "ade20k.data.batch_size=2", "ade20k.data.scale=[256,128]", "ade20k.data.crop=[128,128]",
                   "ade20k.test.crop=[128,128]", "ade20k.test.stride=[85,85]", "ade20k.data.num_workers=0",
                   "ade20k.schedule.max_iters=2", "ade20k.schedule.warmup_iters=1", "ade20k.schedule.val_interval=2",
                   "ade20k.schedule.checkpoint_interval=2", "ade20k.schedule.log_interval=1"],
    ),
}  # fmt: skip


def _resize(src: Path, dst: Path, hw: tuple[int, int], nearest: bool = False) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"cannot read {src}")
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_CUBIC
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), cv2.resize(image, (hw[1], hw[0]), interpolation=interp))


def upscale_imagenet(src: Path, dst: Path, side: int, counts: tuple[int, int]) -> None:
    for split, n in zip(("train", "val"), counts, strict=True):
        for class_dir in sorted((src / split).iterdir()):
            for path in sorted(class_dir.glob("*.png"))[:n]:
                _resize(path, dst / split / class_dir.name / path.name, (side, side))


def _coco_scale(image: dict[str, Any], side: int, square: bool) -> tuple[float, float]:
    """(y, x) factors: the long side to `side`, or both sides to `side`."""
    if square:
        return side / image["height"], side / image["width"]
    s = side / max(image["height"], image["width"])
    return s, s


def _scale_annotation(ann: dict[str, Any], sy: float, sx: float) -> dict[str, Any]:
    polygons = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in ann["segmentation"]]
    x, y, w, h = ann["bbox"]
    return dict(ann, segmentation=polygons, bbox=[x * sx, y * sy, w * sx, h * sy], area=ann["area"] * sx * sy)


def upscale_coco(src: Path, dst: Path, side: int, counts: tuple[int, int], square: bool = False) -> None:
    """Canvases scaled to `side` on their long side (or to `side` x `side`); annotations scaled with them."""
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train2017", "val2017"), counts, strict=True):
        coco = json.loads((src / "annotations" / f"instances_{split}.json").read_text())
        images = coco["images"][:n]
        scale = {im["id"]: _coco_scale(im, side, square) for im in images}
        out_images = []
        for im in images:
            sy, sx = scale[im["id"]]
            h, w = round(im["height"] * sy), round(im["width"] * sx)
            _resize(src / split / im["file_name"], dst / split / im["file_name"], (h, w))
            out_images.append(dict(im, height=h, width=w))
        anns = [_scale_annotation(a, *scale[a["image_id"]]) for a in coco["annotations"] if a["image_id"] in scale]
        coco.update(images=out_images, annotations=anns)
        (dst / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def upscale_ade20k(src: Path, dst: Path, train_side: int, val_hw: tuple[int, int], counts: tuple[int, int]) -> None:
    """Images bicubic, label maps nearest; the embedded set's class list travels with it."""
    src, dst = src / ADE if (src / ADE).is_dir() else src, dst / ADE
    for split, n, hw in (("training", counts[0], (train_side, train_side)), ("validation", counts[1], val_hw)):
        for path in sorted((src / "images" / split).glob("*.jpg"))[:n]:
            _resize(path, dst / "images" / split / path.name, hw)
            label = src / "annotations" / split / f"{path.stem}.png"
            _resize(label, dst / "annotations" / split / label.name, hw, nearest=True)
    meta = json.loads((src / "embedded.json").read_text())
    meta.update(n_train=counts[0], n_val=counts[1], size=train_side)
    (dst / "embedded.json").write_text(json.dumps(meta, indent=1))


def prepare(data: Path | None, out: Path, mode: Mode) -> dict[str, Path]:
    if data is None:
        data = out / "embedded"
        subprocess.run([sys.executable, "-m", "harness", "data", "embedded", "--out", str(data)], check=True)
    missing = [d for d in ("imagenet", "coco", "ade20k") if not (data / d).is_dir()]
    if missing:
        raise SystemExit(f"--data {data}: no {', '.join(missing)} folder; write it with `harness data embedded`")
    roots = {"in1k": out / "data" / "imagenet", "coco": out / "data" / "coco", "ade20k": out / "data" / "ade20k"}
    upscale_imagenet(data / "imagenet", roots["in1k"], mode.in1k_side, mode.in1k_counts)
    upscale_coco(data / "coco", roots["coco"], mode.coco_side, mode.coco_counts, mode.coco_square)
    upscale_ade20k(data / "ade20k", roots["ade20k"], mode.ade_train_side, mode.ade_val_hw, mode.ade_counts)
    return roots


def run_suite(out: Path, roots: dict[str, Path], mode: Mode) -> int:
    import yaml

    spec = out / f"{mode.backbone['name']}.yaml"
    spec.write_text(yaml.safe_dump(mode.backbone, sort_keys=False))
    cmd = [sys.executable, "-m", "harness", "run", "--preset", "paper", "--suite", "in1k,coco,ade20k",
           "--protocols", "finetune", "--seeds", "0", "--backbones", str(spec), "--device", mode.device,
           "--data-root", ",".join(f"{t}={r}" for t, r in roots.items()), "--out", str(out / "run"),
           "--force", "--no-report"]  # fmt: skip
    for override in mode.overrides:
        cmd += ["--set", override]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (
        str(ROOT), os.environ.get("PYTHONPATH")))))).returncode  # fmt: skip


def _fmt(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3f}{unit}" if isinstance(value, float) else str(value)


def figures(out: Path) -> list[dict[str, Any]]:
    """One row per task from the newest record of each run."""
    newest: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "run" / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        newest[rec["run_id"]] = rec
    rows = []
    for rec in sorted(newest.values(), key=lambda r: str(r.get("task"))):
        cost = (rec.get("extra") or {}).get("cost") or {}
        rows.append({"task": rec.get("task"), "status": rec["status"], "wall_s": rec.get("wall_time_s"), **cost})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["task", "status", "wall_s", "steps_train", "step_time_train_s", "peak_mem_train_gb", "steps_eval",
            "step_time_eval_s", "peak_mem_eval_gb"]  # fmt: skip
    cells = [cols] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    width = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, width, strict=True)).rstrip() for row in cells)


def _device_line(device: str) -> str:
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return f"device {name}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the data, the runs and the figures (gpu_smoke.txt/.json)")
    parser.add_argument("--data", type=Path, help="a folder written by `harness data embedded` (default: write one)")
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU at tiny sizes")
    args = parser.parse_args(argv)
    mode = MODES["cpu" if args.cpu else "gpu"]
    if mode.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu for the dry run")
    args.out.mkdir(parents=True, exist_ok=True)
    roots = prepare(args.data, args.out, mode)
    rc = run_suite(args.out, roots, mode)
    rows = figures(args.out)
    text = f"{_device_line(mode.device)}\n{table(rows)}"
    print(text)
    (args.out / "gpu_smoke.txt").write_text(text + "\n")
    (args.out / "gpu_smoke.json").write_text(json.dumps(rows, indent=1) + "\n")
    finished = len(rows) == 3 and all(r["status"] == "finished" for r in rows)
    return 0 if rc == 0 and finished else 1


if __name__ == "__main__":
    sys.exit(main())
