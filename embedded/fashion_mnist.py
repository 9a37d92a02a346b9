"""Fashion-MNIST (Xiao et al. 2017) from its four IDX files: the real labelled images of every embedded data set.

Looked for in `HARNESS_FASHION_MNIST`, then in Debian's `dataset-fashion-mnist` location. Files may be gzipped or not.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Folder- and file-safe names, in label order.
CLASS_SLUGS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    "install the Debian package (sudo apt-get install dataset-fashion-mnist), or download the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist and set HARNESS_FASHION_MNIST=DIR (or pass --fashion-mnist DIR)"
)


def find_dir(root: str | Path | None = None) -> Path:
    """The folder holding the IDX files; the error says where it looked and how to get them."""
    candidates = [Path(p) for p in (root, os.environ.get("HARNESS_FASHION_MNIST"), DEBIAN_DIR) if p]
    for d in candidates:
        if _locate(d, _FILES["train"][0]) is not None:
            return d
    looked = ", ".join(str(d) for d in candidates)
    raise FileNotFoundError(f"Fashion-MNIST not found (looked in {looked}); {HOW_TO_GET}")


def _locate(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (d / name).is_file():
            return d / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


@lru_cache(maxsize=4)
def load(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 28, 28]` uint8 and labels `[N]` uint8 of `split` ('train': 60,000, 'test': 10,000)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    d = find_dir(root)
    images_stem, labels_stem = _FILES[split]
    images_path, labels_path = _locate(d, images_stem), _locate(d, labels_stem)
    if images_path is None or labels_path is None:
        raise FileNotFoundError(f"{d} lacks {images_stem} or {labels_stem} (.gz); {HOW_TO_GET}")
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_path} and {labels_path} do not hold matching images [N, H, W] and labels [N]")
    return images, labels
