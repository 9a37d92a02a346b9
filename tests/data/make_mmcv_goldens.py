"""Writes tests/data/mmcv_goldens.pt: outputs of mmcv 2.1.0's compiled CPU ops, the reference for mmcv_tvops.

Run once with a compiled mmcv 2.1.0 installed (e.g. a venv made with HARNESS_WHEELHOUSE=DIR scripts/setup_env.sh):

    python tests/data/make_mmcv_goldens.py

Inputs are stored beside the outputs, so the test does not depend on a random generator's stream. Cases:
RoIAlign forward and backward (avg pooling) for aligned true/false x sampling ratio 0/2 x spatial scale 1, 1/2, 1/4
x output 7x7 and 3x5, with boxes inside, over the border and degenerate; nms and batched_nms for IoU thresholds
0.3/0.5/0.7, offset 0 and 1, many equal scores (on boxes whose suppression does not depend on the order among them),
batched_nms' split path, and no boxes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from mmcv.ops import batched_nms, nms, roi_align
from mmcv.utils import ext_loader

OUT = Path(__file__).with_name("mmcv_goldens.pt")


def grad_pattern(shape: torch.Size) -> torch.Tensor:
    """The gradient fed to RoIAlign's output: a fixed formula (the test makes the same one), signs and sizes mixed."""
    return torch.sin(torch.arange(shape.numel(), dtype=torch.float32) * 0.7).reshape(shape)


def roi_align_cases(g: torch.Generator) -> dict:
    feats = torch.randn(2, 2, 12, 16, generator=g)  # [N, C, H, W]
    # (batch index, x1, y1, x2, y2) in input-image pixels: inside, over the borders, outside, tiny, the whole map
    rois = torch.tensor([
        [0, 2.0, 3.0, 30.0, 20.0], [1, -6.5, -4.0, 10.2, 9.7], [0, 50.0, 30.0, 70.0, 52.0],
        [1, 5.3, 5.1, 5.9, 5.4], [0, 40.0, -3.0, 66.0, 12.5], [1, 0.0, 0.0, 64.0, 48.0],
    ])
    cases = []
    for aligned, ratio, scale, size in itertools.product((True, False), (0, 2), (1.0, 0.5, 0.25), ((7, 7), (3, 5))):
        x = feats.clone().requires_grad_(True)
        out = roi_align(x, rois, size, scale, ratio, "avg", aligned)  # [K, C, h, w]
        out.backward(grad_pattern(out.shape))
        cases.append(dict(aligned=aligned, sampling_ratio=ratio, spatial_scale=scale, output_size=size,
                          output=out.detach(), grad_input=x.grad))
    return dict(input=feats, rois=rois, cases=cases)


def nms_boxes(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """60 boxes: 40 random ones with distinct scores, and 10 disjoint pairs whose scores tie across pairs."""
    xy = torch.rand(40, 2, generator=g) * 80
    wh = torch.rand(40, 2, generator=g) * 30 + 2
    rand_boxes = torch.cat([xy, xy + wh], 1)
    rand_scores = torch.randperm(40, generator=g).float() / 40 + 0.0125
    base = torch.tensor([[200.0 + 30 * i, 200.0, 220.0 + 30 * i, 220.0] for i in range(10)])  # 20x20, 30 apart
    shifted = base + torch.tensor([3.0, 2.0, 3.0, 2.0])  # IoU with its base ~0.63
    boxes = torch.cat([rand_boxes, base, shifted])
    scores = torch.cat([rand_scores, torch.full((10,), 0.5), torch.full((10,), 0.3)])
    return boxes, scores


def nms_cases(g: torch.Generator) -> dict:
    boxes, scores = nms_boxes(g)
    idxs = torch.randint(0, 3, (len(boxes),), generator=g)
    single, batched = [], []
    for thr, offset in itertools.product((0.3, 0.5, 0.7), (0, 1)):
        dets, keep = nms(boxes, scores, thr, offset=offset)
        single.append(dict(iou_threshold=thr, offset=offset, keep=keep, dets=dets))
    for thr, split_thr, agnostic in itertools.product((0.3, 0.5, 0.7), (10000, 8), (False, True)):
        cfg = dict(type="nms", iou_threshold=thr, split_thr=split_thr)
        dets, keep = batched_nms(boxes, scores, idxs, cfg, class_agnostic=agnostic)
        batched.append(dict(nms_cfg=cfg, class_agnostic=agnostic, keep=keep, dets=dets))
    empty_dets, empty_keep = nms(boxes[:0], scores[:0], 0.5)
    return dict(boxes=boxes, scores=scores, idxs=idxs, nms=single, batched_nms=batched,
                empty=dict(keep=empty_keep, dets=empty_dets))


def main() -> None:
    ext = ext_loader.load_ext("_ext", ["nms", "roi_align_forward"])
    if not str(getattr(ext, "__file__", "")).endswith(".so"):
        raise SystemExit(f"mmcv._ext is {ext!r}, not mmcv's compiled module: install the compiled mmcv 2.1.0")
    g = torch.Generator().manual_seed(0)
    data = dict(mmcv=__import__("mmcv").__version__, torch=str(torch.__version__),
                roi_align=roi_align_cases(g), nms=nms_cases(g))
    torch.save(data, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
