"""An embedded semantic-segmentation set in the ADE20K layout (Zhou et al. 2017, `ADEChallengeData2016`), made of real
Fashion-MNIST garments (Xiao et al. 2017) pasted on canvases, so the ADE20K task runs end to end on a CPU.

Layout and conventions are ADE20K's, as mmseg's `ADE20KDataset` reads them:
`ADEChallengeData2016/images/{training,validation}/*.jpg` and `annotations/{training,validation}/*.png` (uint8),
0 = other/ignore, 1..10 = the Fashion-MNIST classes (read with `reduce_zero_label=True`: 0 -> 255 ignored, k -> k-1).
Each 64 px canvas is a 2 x 2 grid of 32 px slots; one to three random slots hold a garment each, at the tiny encoders'
pretraining geometry (the 28 px garment 2 px inside its 32 px slot, as the ImageNet layout pads it), the rest of the
canvas faint noise. A garment's label covers its silhouette (intensity above `SILHOUETTE_THRESHOLD`); garments never
overlap. Training canvases use the training split, validation canvases the test split. Everything follows from `seed`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from embedded import fashion_mnist
from embedded.cache import cache_root, write_once

CLASSES = fashion_mnist.CLASSES
# One colour per class for mmseg's visualiser (metainfo 'palette'), tab10.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
FOLDER = "ADEChallengeData2016"
SPLITS = {"training": "train", "validation": "test"}  # ADE split -> Fashion-MNIST split
PREFIX = {"training": "ADE_train", "validation": "ADE_val"}
VERSION = 2  # bump when the generator changes what it writes (part of the cache folder's name)
# Version 2: garments at the pretraining scale and frame, in slots. Version 1 pasted 2-4 garments of 20-40 px at any
# position; there, as benchmarks/dense_probe.py measured on the embedded COCO set, the tiny encoders (pretrained on
# centred 28 px garments only) lose their garment features off the pretraining grid, and every backbone's mIoU stayed
# at the random frozen encoder's (seed 0: floor 5.9, MAE 9.2, supervised 7.8, MoCo v3 6.1, scratch 6.4).
CANVAS = 64  # pixels; 16x16 patches for the tiny patch-4 ViT, 2 x 2 slots
SLOT = 32  # the pretraining input's side
GARMENT = 28  # Fashion-MNIST's side; (SLOT - GARMENT) / 2 = 2 px margin
GARMENTS = (1, 3)  # garments per canvas, inclusive range, each in its own slot
N_TRAIN, N_VAL = 200, 200  # 200 val canvases (~400 garments): a steadier mIoU than 50 at little cost
SILHOUETTE_THRESHOLD = 40  # Fashion-MNIST intensity (0..255) above which a pixel belongs to the garment
JPEG_QUALITY = 95
META_FILE = "embedded.json"  # classes and provenance, next to images/ and annotations/


def _slots(rng: np.random.Generator, size: int, n: int) -> list[tuple[int, int]]:
    """Top-left corners of `n` distinct random garment frames: 32 px slots of the canvas, the garment 2 px inside."""
    per_side, margin = size // SLOT, (SLOT - GARMENT) // 2
    cells = rng.permutation(per_side * per_side)[:n]
    return [(int(c // per_side) * SLOT + margin, int(c % per_side) * SLOT + margin) for c in cells]


def _canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """One RGB canvas [size, size, 3] uint8 and its label map [size, size] uint8."""
    image = rng.integers(0, 24, (size, size), dtype=np.uint8)  # faint noise, darker than any silhouette
    target = np.zeros((size, size), dtype=np.uint8)
    for y, x in _slots(rng, size, int(rng.integers(GARMENTS[0], GARMENTS[1] + 1))):
        i = rng.integers(len(images))
        garment = images[i]  # [28, 28], its own pixels
        mask = garment > SILHOUETTE_THRESHOLD
        image[y : y + GARMENT, x : x + GARMENT][mask] = garment[mask]
        target[y : y + GARMENT, x : x + GARMENT][mask] = labels[i] + 1
    return np.repeat(image[..., None], 3, axis=2), target


def write(root: Path, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL, size: int = CANVAS) -> Path:
    """Writes the set under `root/ADEChallengeData2016` and returns that folder; `size` is a multiple of `SLOT`."""
    if size % SLOT:
        raise ValueError(f"embedded ADE20K canvas size must be a multiple of {SLOT} px, got {size}")
    out = Path(root) / FOLDER
    for split, n in (("training", n_train), ("validation", n_val)):
        images, labels = fashion_mnist.load(SPLITS[split])
        rng = np.random.default_rng([seed, 0 if split == "training" else 1])
        img_dir, ann_dir = out / "images" / split, out / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image, target = _canvas(rng, images, labels, size)
            stem = f"{PREFIX[split]}_{k + 1:08d}"
            cv2.imwrite(str(img_dir / f"{stem}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            cv2.imwrite(str(ann_dir / f"{stem}.png"), target)
    meta = dict(classes=list(CLASSES), seed=seed, version=VERSION, n_train=n_train, n_val=n_val, size=size)
    (out / META_FILE).write_text(json.dumps(meta, indent=1))  # tells the task these are not ADE20K's 150 classes
    return out


def ensure(root: Path | None = None, seed: int = 0) -> Path:
    """The embedded set's `ADEChallengeData2016` folder, written once under `root` (default: the cache) and reused.

    See `embedded.cache.write_once`: a killed writer never leaves a half set.
    """
    base = Path(root) if root is not None else cache_root()
    final = base / f"ade20k-v{VERSION}-seed{seed}"
    complete = lambda r: (r / FOLDER / META_FILE).is_file()  # noqa: E731  (written last by `write`)
    return write_once(final, lambda tmp: write(tmp, seed=seed), complete) / FOLDER
