"""Pretraining data: Fashion-MNIST held in memory and augmented on batched uint8 tensors, or an ImageNet-layout folder
read by torchvision's ImageFolder (facebookresearch/mae `main_pretrain.py`, moco-v3 `main_moco.py`).

The in-memory path crops, flips and jitters a whole batch at once (one `grid_sample` for the per-sample random resized
crops and flips), which on a small CPU is several times faster than per-sample PIL transforms. Both paths draw the
data order and the augmentation from a generator seeded with `seed + epoch`, so that a resumed run sees the same data
as an uninterrupted one.

A batch is a tuple of tensors on the device: `(images, labels)` with one view, `(view1, view2, labels)` with two.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

FASHION_MNIST = "fashion-mnist"


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation of one view. MAE: crop (0.2, 1) + flip; MoCo v3 adds colour jitter and solarisation."""

    img_size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    jitter: float = 0.0  # probability of brightness / contrast jitter (MoCo v3: 0.8)
    jitter_strength: float = 0.4  # factors drawn from [1 - s, 1 + s] (MoCo v3's ColorJitter(0.4, 0.4, ...))
    solarize: float = 0.0  # probability of solarisation (MoCo v3: 0 for the first view, 0.2 for the second)

    @classmethod
    def from_recipe(cls, cfg: dict[str, Any], img_size: int) -> AugmentConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "img_size"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise KeyError(f"unknown augmentation key(s) {', '.join(unknown)} in the recipe; known: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        return cls(img_size=img_size, **kwargs)


# --- batched augmentation of uint8 tensors ---


def random_resized_crop_boxes(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator, tries: int = 10
) -> torch.Tensor:
    """`[n, 4]` boxes `(cx, cy, w, h)` as fractions of the image, drawn as torchvision's `RandomResizedCrop`.

    Each sample tries `tries` (area, aspect) draws and keeps the first that fits; none fitting falls back to the whole
    image (torchvision falls back to a central crop of clamped aspect, which for square inputs is the same).
    """
    area = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)  # [n, tries]
    log_r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect)
    h = torch.sqrt(area / aspect)
    fits = (w <= 1) & (h <= 1)
    first = torch.argmax(fits.int(), dim=1)  # index of the first fitting try (0 when none fits)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first[:, None]).squeeze(1), torch.ones(n))
    h = torch.where(any_fit, h.gather(1, first[:, None]).squeeze(1), torch.ones(n))
    u = torch.rand(n, 2, generator=generator)
    cx = w / 2 + u[:, 0] * (1 - w)  # the crop lies inside the image
    cy = h / 2 + u[:, 1] * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def crop_and_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resized crops of `images` `[N, C, H, W]` float to `[N, C, size, size]`; `flip` `[N]` bool mirrors."""
    n = images.shape[0]
    cx, cy, w, h = (boxes[:, i].to(images) for i in range(4))
    sign = 1.0 - 2.0 * flip.to(images)  # -1 mirrors the x axis of the sampling grid
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * cx - 1  # affine_grid works in [-1, 1] coordinates
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 `[N, C, H, W]` -> float `[N, C, S, S]` in [0, 1]: random resized crop, flip, jitter, solarise."""
    n = images.shape[0]
    boxes = random_resized_crop_boxes(n, cfg.crop_scale, cfg.crop_ratio, generator)
    flip = torch.rand(n, generator=generator) < cfg.hflip
    x = crop_and_flip(images.float().div_(255), boxes, flip.to(images.device), cfg.img_size)
    if cfg.jitter > 0:
        on = (torch.rand(n, generator=generator) < cfg.jitter).to(x)[:, None, None, None]
        s = cfg.jitter_strength
        bright = torch.empty(n).uniform_(1 - s, 1 + s, generator=generator).to(x)[:, None, None, None]
        contrast = torch.empty(n).uniform_(1 - s, 1 + s, generator=generator).to(x)[:, None, None, None]
        jittered = (x * bright).clamp_(0, 1)
        mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((jittered - mean) * contrast + mean).clamp_(0, 1)
        x = on * jittered + (1 - on) * x
    if cfg.solarize > 0:
        on = (torch.rand(n, generator=generator) < cfg.solarize).to(x.device)[:, None, None, None]
        x = torch.where(on & (x >= 0.5), 1 - x, x)
    return x


def fit_to_size(images: torch.Tensor, size: int, how: str = "pad") -> torch.Tensor:
    """uint8 `[N, C, h, w]` -> `[N, C, size, size]` by zero padding (Fashion-MNIST's background is 0) or resizing."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if how == "pad":
        if h > size or w > size:
            raise ValueError(f"cannot pad {h}x{w} images to {size}; use resize: resize")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top))
    if how == "resize":
        out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"data.resize must be 'pad' or 'resize', not {how!r}")


def fashion_mnist_tensors(
    split: str, img_size: int, how: str = "pad", subset: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as uint8 `[N, 3, S, S]` (grey replicated) and int64 labels `[N]`; `subset` keeps a fixed random
    N (drawn with `seed`, so every method of a preset sees the same images)."""
    from embedded import fashion_mnist

    images, labels = fashion_mnist.load(split)
    x = torch.from_numpy(images.copy())[:, None]  # [N, 1, 28, 28]
    y = torch.from_numpy(labels.astype("int64"))
    if subset is not None and subset < len(x):
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:subset]
        x, y = x[keep], y[keep]
    x = fit_to_size(x, img_size, how).expand(-1, 3, -1, -1).contiguous()
    return x, y


# --- loaders ---


class TensorLoader:
    """Batches of an in-memory uint8 image tensor, augmented on the fly with `views` augmentations."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        views: list[AugmentConfig],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int,
        device: torch.device,
    ) -> None:
        if batch_size > len(images):
            raise ValueError(f"data.batch_size {batch_size} exceeds the {len(images)} training images")
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.views, self.seed, self.device = batch_size, views, seed, device
        self.mean = torch.tensor(mean, device=device)[None, :, None, None]
        self.std = torch.tensor(std, device=device)[None, :, None, None]

    def __len__(self) -> int:
        return len(self.images) // self.batch_size  # drop_last, as MAE's sampler

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.images), generator=g)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size].to(self.device)
            raw = self.images[idx]
            views = [(augment_batch(raw, v, g) - self.mean) / self.std for v in self.views]
            yield (*views, self.labels[idx])


class FolderLoader:
    """An ImageNet-layout folder through torchvision's ImageFolder and per-sample PIL transforms in worker processes."""

    def __init__(self, dataset: Any, batch_size: int, num_workers: int, seed: int, device: torch.device) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.seed, self.device = seed, device
        if batch_size > len(dataset):
            raise ValueError(f"data.batch_size {batch_size} exceeds the {len(dataset)} training images")

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        from torch.utils.data import DataLoader, RandomSampler

        g = torch.Generator().manual_seed(self.seed + epoch)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=RandomSampler(self.dataset, generator=g),
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=g, persistent_workers=False,
        )
        for images, labels in loader:
            views = images if isinstance(images, list | tuple) else [images]
            yield (*(v.to(self.device, non_blocking=True) for v in views), labels.to(self.device))


class TwoViews:
    """Two independently augmented views of one image (MoCo v3's `TwoCropsTransform`)."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __call__(self, img: Any) -> list[Any]:
        return [self.first(img), self.second(img)]


def _pil_transform(cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    from torchvision import transforms as T

    ops: list[Any] = [
        T.RandomResizedCrop(cfg.img_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                            interpolation=T.InterpolationMode.BICUBIC),
    ]
    if cfg.jitter > 0:
        s = cfg.jitter_strength
        ops.append(T.RandomApply([T.ColorJitter(s, s, s / 2, 0.1)], p=cfg.jitter))
        ops.append(T.RandomGrayscale(p=0.2))
        ops.append(T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=1.0 if cfg.solarize == 0 else 0.1))
    if cfg.solarize > 0:
        ops.append(T.RandomSolarize(128, p=cfg.solarize))
    ops += [T.RandomHorizontalFlip(cfg.hflip), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def folder_dataset(root: Path, views: list[AugmentConfig], mean: tuple[float, ...], std: tuple[float, ...],
                   timm_train_transform: bool = False) -> Any:
    """`root/train/<class>/*` as an ImageFolder. Supervised training may use timm's RandAugment transform instead."""
    from torchvision.datasets import ImageFolder

    train = Path(root) / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"data folder {root} has no train/ subfolder (expected train/<class>/<image>)")
    if timm_train_transform:
        from timm.data import create_transform

        tf = create_transform(views[0].img_size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                              re_prob=0.25, mean=mean, std=std, scale=views[0].crop_scale)
    elif len(views) == 2:
        tf = TwoViews(_pil_transform(views[0], mean, std), _pil_transform(views[1], mean, std))
    else:
        tf = _pil_transform(views[0], mean, std)
    return ImageFolder(str(train), transform=tf)


def build_loader(
    recipe: dict[str, Any],
    data_root: Path | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
    device: torch.device,
) -> TensorLoader | FolderLoader:
    """The training loader a recipe's `data` section describes. `data_root` None means Fashion-MNIST."""
    cfg = recipe["data"]
    views = [AugmentConfig.from_recipe(v, cfg["img_size"]) for v in cfg["views"]]
    batch_size = cfg["batch_size"]
    if data_root is None or str(data_root) == FASHION_MNIST:
        images, labels = fashion_mnist_tensors("train", cfg["img_size"], cfg.get("resize", "pad"),
                                               cfg.get("subset"), seed=cfg.get("subset_seed", 0))
        return TensorLoader(images, labels, batch_size, views, mean, std, seed, device)
    dataset = folder_dataset(Path(data_root), views, mean, std, cfg.get("timm_transform", False))
    return FolderLoader(dataset, batch_size, cfg.get("num_workers", 8), seed, device)


def validation_images(
    recipe: dict[str, Any], data_root: Path | None, mean: tuple[float, ...], std: tuple[float, ...], n: int = 8
) -> torch.Tensor:
    """`n` normalised images `[n, 3, S, S]` not used for training: Fashion-MNIST test images, or the folder's
    `val/` (else `train/`) centre crops."""
    cfg = recipe["data"]
    size = cfg["img_size"]
    m = torch.tensor(mean)[None, :, None, None]
    s = torch.tensor(std)[None, :, None, None]
    if data_root is None or str(data_root) == FASHION_MNIST:
        images, _ = fashion_mnist_tensors("test", size, cfg.get("resize", "pad"))
        return (images[:n].float() / 255 - m) / s
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    split = Path(data_root) / "val"
    split = split if split.is_dir() else Path(data_root) / "train"
    tf = T.Compose([T.Resize(int(size / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                    T.ToTensor(), T.Normalize(mean, std)])
    ds = ImageFolder(str(split), transform=tf)
    step = max(1, len(ds) // n)
    return torch.stack([ds[i * step][0] for i in range(min(n, len(ds)))])
