"""An embedded COCO-2017-layout instance segmentation set, built from real Fashion-MNIST garments.

Each canvas (64 or 96 pixels a side, a grid of 32 px slots) holds one to three garments (Xiao et al. 2017) in random
slots, each at the tiny encoders' pretraining geometry (the 28 px garment 2 px inside its 32 px slot, as the ImageNet
layout pads it), on a dim noisy background; each garment is one instance annotated as in COCO (Lin et al. 2014, the
format of `instances_*2017.json`): its silhouette as polygons (external contours, holes filled), the tight box and the
area of that silhouette as pycocotools computes them, `iscrowd=0`, and one of ten categories (ids 1..10 in Fashion-
MNIST label order). Garments never overlap, so every mask is exactly what the image shows.

The layout is the real one, `root/{train2017,val2017}/*.png` and `root/annotations/instances_{train,val}2017.json`,
so pycocotools' `COCO` and mmdet's `CocoDataset` (with `metainfo=dict(classes=CLASSES)`) read it unchanged. Train
canvases draw from the Fashion-MNIST train split, val canvases from its test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from embedded import fashion_mnist
from embedded.cache import ensure_versioned, mark_version

CLASSES = fashion_mnist.CLASSES  # category id = label + 1
FORMAT_VERSION = 3  # bumped whenever `write` changes what it writes: a cached set of another version is rewritten
# Small for CPU: an epoch of the tiny recipe is 50 steps of 4 canvases. 200 val canvases (about 400 garments): with 50,
# the same two models' APs moved by 4 to 6 points between val sets, more than the differences being measured.
N_TRAIN, N_VAL = 200, 200
# Height and width, drawn independently from 64, 96: whole 32 px slots (2 or 3 a side).
CANVAS_SIDES = (64, 96)
# Version 3: garments at the pretraining scale and on the pretraining frame. Up to version 2 garments were 21-42 px at
# any position; benchmarks/dense_probe.py measured that the tiny encoders (pretrained on centred 28 px garments only)
# keep their garment features only where the pretraining position grid lies exactly under the garment: MAE's frozen
# top-1 on garments fell from 59 (alone, or a 32 px crop of the canvas) to 26-33 on those canvases whatever the
# position embedding's treatment (stretched or tiled off the garment), 50 with the grid tiled on the garment.
SLOT = 32  # the pretraining input's side
GARMENT = 28  # Fashion-MNIST's side; (SLOT - GARMENT) / 2 = 2 px margin, the ImageNet layout's padding
MAX_OBJECTS = 3
SILHOUETTE_THRESHOLD = 10  # grey level above which a Fashion-MNIST pixel belongs to the garment
SPLITS = {"train": "train", "val": "test"}  # COCO split -> Fashion-MNIST split


def ann_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def _silhouette_polygons(garment: np.ndarray) -> list[list[float]]:
    """Polygons `[[x0, y0, x1, y1, ...], ...]` of the garment's external contours (holes filled), in its own pixels."""
    import cv2

    mask = (garment > SILHOUETTE_THRESHOLD).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 4:
            # contour points are pixel centres; +0.5 moves them to the pixel grid pycocotools rasterises on
            polygons.append((c.reshape(-1, 2).astype(np.float64) + 0.5).round(2).reshape(-1).tolist())
    return polygons


def _slots(rng: np.random.Generator, h: int, w: int, n: int) -> list[tuple[int, int]]:
    """Top-left corners of `n` distinct random garment frames: 32 px slots of the canvas, the garment 2 px inside."""
    margin = (SLOT - GARMENT) // 2
    cells = rng.permutation((h // SLOT) * (w // SLOT))[:n]
    return [(int(c // (w // SLOT)) * SLOT + margin, int(c % (w // SLOT)) * SLOT + margin) for c in cells]


def _canvas(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, image_id: int, first_ann_id: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One canvas `[H, W, 3]` uint8 and its annotations."""
    from pycocotools import mask as mask_utils

    h, w = (int(rng.choice(CANVAS_SIDES)) for _ in range(2))
    canvas = rng.integers(0, 24, size=(h, w), dtype=np.uint8)  # [H, W] dim sensor-like noise
    anns: list[dict[str, Any]] = []
    for y, x in _slots(rng, h, w, int(rng.integers(1, MAX_OBJECTS + 1))):
        idx = int(rng.integers(len(images)))
        garment = images[idx]  # [28, 28], its own pixels
        polygons = _silhouette_polygons(garment)
        if not polygons:
            continue
        side = GARMENT
        canvas[y : y + side, x : x + side] = np.maximum(canvas[y : y + side, x : x + side], garment)
        polygons = [[v + (x if i % 2 == 0 else y) for i, v in enumerate(p)] for p in polygons]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
        area = float(mask_utils.area(rle))
        if area <= 0:
            continue
        box = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
        anns.append(
            dict(id=first_ann_id + len(anns), image_id=image_id, category_id=int(labels[idx]) + 1,
                 segmentation=polygons, area=area, bbox=box, iscrowd=0)
        )
    return np.repeat(canvas[:, :, None], 3, axis=2), anns


def _write_split(root: Path, split: str, n: int, rng: np.random.Generator) -> None:
    import cv2

    images, labels = fashion_mnist.load(SPLITS[split])
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    coco_images, coco_anns = [], []
    for image_id in range(1, n + 1):
        canvas, anns = _canvas(rng, images, labels, image_id, first_ann_id=len(coco_anns) + 1)
        file_name = f"{image_id:012d}.png"
        if not cv2.imwrite(str(img_dir / file_name), canvas[:, :, ::-1]):  # RGB -> BGR, lossless
            raise OSError(f"cannot write {img_dir / file_name}")
        coco_images.append(dict(id=image_id, file_name=file_name, height=canvas.shape[0], width=canvas.shape[1],
                                license=1))
        coco_anns.extend(anns)
    # `contributor` keeps the module's first name: the file's bytes are part of the data fingerprint of every run
    data = dict(
        info=dict(description=f"Embedded Fashion-MNIST COCO-layout set ({split})", version=str(FORMAT_VERSION),
                  year=2017, contributor="harness.data.coco", date_created="2017-01-01"),
        licenses=[dict(id=1, name="MIT (Fashion-MNIST)", url="https://github.com/zalandoresearch/fashion-mnist")],
        images=coco_images,
        annotations=coco_anns,
        categories=[dict(id=i + 1, name=name, supercategory="garment") for i, name in enumerate(CLASSES)],
    )
    path = ann_file(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write(root: Path, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL) -> Path:
    """Writes the set into `root` deterministically (same seed, same bytes) and returns `root`."""
    root = Path(root)
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1)):
        _write_split(root, split, n, np.random.default_rng([seed, offset]))
    mark_version(root, FORMAT_VERSION)
    return root


def ensure(root: Path | None = None, seed: int = 0) -> Path:
    """The set at `root` (default: the cache, `embedded.cache.default_root("coco", seed)`), written there once and
    reused: see `embedded.cache.ensure_versioned`."""
    return ensure_versioned("coco", write, FORMAT_VERSION, root, seed)
