"""An embedded ImageNet-layout classification set from real Fashion-MNIST garments, and the check of that layout.

The layout is torchvision's `ImageFolder` one that ImageNet-1K is usually kept in (and that facebookresearch/mae's
`main_finetune.py` reads): `root/train/<class>/*.png` and `root/val/<class>/*.png`, one folder per class. Train images
are drawn from the Fashion-MNIST train split (Xiao et al. 2017), val images from its test split, the same number per
class (balanced), and each 28x28 image is zero-padded to 32x32, the input of the project's tiny ViTs (4x4 patches ->
an 8x8 grid). Class folders are `fashion_mnist.CLASS_SLUGS`; `ImageFolder` sorts them, as it sorts ImageNet's wnids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedded import fashion_mnist
from embedded.cache import ensure_versioned, mark_version

FORMAT_VERSION = 1  # bumped whenever `write` changes what it writes: a cached set of another version is rewritten
# 3,000 train / 1,000 val images: enough for the tiny recipes to separate pretrained from scratch backbones, written
# in about a second and decoded into one tensor in about as long.
N_TRAIN_PER_CLASS = 300
N_VAL_PER_CLASS = 100
PAD = 2  # 28 + 2 * 2 = 32 pixels, Fashion-MNIST's background (0) around the garment
SPLITS = {"train": "train", "val": "test"}  # ImageNet-layout split -> Fashion-MNIST split
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
EXPECTED_LAYOUT = """expected the ImageNet folder layout (torchvision ImageFolder):
  {root}/train/<class>/<image>   e.g. train/n01440764/n01440764_10026.JPEG
  {root}/val/<class>/<image>     e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG
with the same class folders in train/ and val/ (ImageNet's val images come flat: sort them into class folders first,
e.g. with the widely used valprep.sh)"""


def _select(labels: np.ndarray, n_per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of `n_per_class` images of every class (all when None), sorted."""
    picked = []
    for c in range(len(fashion_mnist.CLASS_SLUGS)):
        idx = np.flatnonzero(labels == c)
        if n_per_class is not None:
            if n_per_class > len(idx):
                raise ValueError(f"n_per_class={n_per_class} exceeds the {len(idx)} images of class {c}")
            idx = np.sort(rng.choice(idx, size=n_per_class, replace=False))
        picked.append(idx)
    return np.concatenate(picked)


def _write_split(root: Path, split: str, n_per_class: int | None, rng: np.random.Generator) -> int:
    from PIL import Image

    images, labels = fashion_mnist.load(SPLITS[split])  # [N, 28, 28] uint8, [N]
    for slug in fashion_mnist.CLASS_SLUGS:
        (root / split / slug).mkdir(parents=True, exist_ok=True)
    chosen = _select(labels, n_per_class, rng)
    padded = np.pad(images[chosen], ((0, 0), (PAD, PAD), (PAD, PAD)))  # [n, 32, 32]
    for i, img in zip(chosen, padded, strict=True):
        slug = fashion_mnist.CLASS_SLUGS[int(labels[i])]
        # the Fashion-MNIST index names the file: the set is traceable to its source images
        Image.fromarray(img).save(root / split / slug / f"{slug}_{SPLITS[split]}{i:05d}.png")
    return len(chosen)


def write(
    root: Path,
    seed: int = 0,
    n_train_per_class: int | None = N_TRAIN_PER_CLASS,
    n_val_per_class: int | None = N_VAL_PER_CLASS,
) -> Path:
    """Writes the set into `root` deterministically (same seed, same bytes) and returns `root`.

    `None` per class takes every image of the split (60,000 train, 10,000 val).
    """
    root = Path(root)
    counts = {
        split: _write_split(root, split, n, np.random.default_rng([seed, offset]))
        for split, n, offset in (("train", n_train_per_class, 0), ("val", n_val_per_class, 1))
    }
    manifest = dict(version=FORMAT_VERSION, seed=seed, source="Fashion-MNIST", classes=fashion_mnist.CLASS_SLUGS,
                    pad=PAD, counts=counts)
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    mark_version(root, FORMAT_VERSION)
    return root


def ensure(root: Path | None = None, seed: int = 0) -> Path:
    """The set at `root` (default: the cache, `embedded.cache.default_root("imagenet", seed)`), written there once and
    reused: see `embedded.cache.ensure_versioned`."""
    return ensure_versioned("imagenet", write, FORMAT_VERSION, root, seed)


class LayoutError(FileNotFoundError):
    """A data folder that is not in the ImageNet layout; the message names the folder and shows the layout."""


def _layout_error(root: Path, problem: str) -> LayoutError:
    return LayoutError(f"{problem}\n{EXPECTED_LAYOUT.format(root=root)}")


def _classes(split_dir: Path, root: Path) -> list[str]:
    if not split_dir.is_dir():
        raise _layout_error(root, f"data folder {root} has no {split_dir.name}/ folder")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in split_dir.iterdir())
        why = " (its images lie directly in it, not in class folders)" if loose else ""
        raise _layout_error(root, f"{split_dir} holds no class folders{why}")
    empty = [c for c in classes if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in (split_dir / c).iterdir())]
    if empty:
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        raise _layout_error(root, f"class folder(s) {', '.join(empty[:3])}{more} of {split_dir} hold no images")
    return classes


def check_layout(root: Path) -> list[str]:
    """The class names of an ImageNet-layout folder, or a `LayoutError` that names what is wrong and where."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(root, f"data folder {root} does not exist")
    train, val = _classes(root / "train", root), _classes(root / "val", root)
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise _layout_error(
            root, f"{root}/train and {root}/val hold different class folders (only in train: {only_train[:5]}, "
            f"only in val: {only_val[:5]})"
        )
    return train
