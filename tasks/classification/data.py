"""The in1k data: timm's ImageNet transforms (facebookresearch/mae `util/datasets.py`'s `build_transform`), image
folders (decoded once into memory when small), the loaders of every rank, and the frozen part's features computed
once (`cache_features`) when its input is not augmented, and shared by the runs with the same frozen part
(`features`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from tasks.classification.distributed import Dist
from tasks.classification.features import cached_features, feature_key
from tasks.classification.model import Classifier
from tasks.classification.recipe import Plan, Setup, augmented
from tasks.training import autocast


class MemoryImageFolder(Dataset):
    """An `ImageFolder` decoded once into memory (the embedded set, small folders): no file reads in the loop."""

    def __init__(self, root: Path, transform: Any) -> None:
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root))
        self.classes = folder.classes
        self.images = [folder.loader(path) for path, _ in folder.samples]  # PIL RGB images
        self.targets = list(folder.targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.targets[i]


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize, keeping 0 bits as Pillow used to: a black image. Pillow 13 raises for 0 bits, which timm
    1.0.31's RandAugment asks for whenever 'inc1' samples the top magnitude (m9 mstd0.5: ~2% of posterize ops)."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    return Image.new(img.mode, img.size) if bits_to_keep <= 0 else ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> None:
    """Idempotent; done before any RandAugment is built (an op binds its function when it is made)."""
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = _posterize


def build_transform(train: bool, aug: dict[str, Any], img_size: int, crop_pct: float, mean: Any, std: Any) -> Any:
    """timm's ImageNet transforms (MAE's `build_transform`): random resized crop, flip, RandAugment, random erasing
    for training; resize to `img_size / crop_pct` and centre crop for evaluation."""
    from timm.data import create_transform

    if train and augmented(aug):
        patch_timm_posterize()
        return create_transform(
            img_size, is_training=True, scale=tuple(aug.get("scale") or (1.0, 1.0)), hflip=aug.get("hflip", 0.0),
            color_jitter=None, auto_augment=aug.get("rand_augment"), interpolation="bicubic",
            re_prob=aug.get("reprob", 0.0), re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
        )
    return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
                            mean=tuple(mean), std=tuple(std))


def open_split(root: Path, split: str, transform: Any, preload: bool) -> Dataset:
    from torchvision.datasets import ImageFolder

    return MemoryImageFolder(root / split, transform) if preload else ImageFolder(str(root / split), transform)


@torch.no_grad()
def encode_all(model: Classifier, data: Dataset, batch: int, device: torch.device, precision: str,
               num_workers: int) -> TensorDataset:
    """The frozen part over a whole split, once: (features, labels) on the CPU."""
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(data, batch_size=batch, shuffle=False, num_workers=num_workers):
        with autocast(device, precision):
            feats.append(model.encode(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def batches(data: Dataset, micro: int, dist_: Dist, seed: int, epoch: int, num_workers: int, device: torch.device,
            train: bool) -> DataLoader:
    """Train: every rank shuffles with the same seed and takes every world-th index, so one process with the doubled
    batch sees the same images in the same steps. Eval: a shard per rank, without padding (every image counted once).
    Cached features are indexed a whole batch at a time."""
    pin = device.type == "cuda"
    if train:
        sampler = DistributedSampler(data, dist_.world, dist_.rank, shuffle=True, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
    else:
        sampler = range(dist_.rank, len(data), dist_.world)
    if isinstance(data, TensorDataset):
        index = BatchSampler(sampler, micro, drop_last=train)
        return DataLoader(data, sampler=index, batch_size=None, pin_memory=pin)
    if not train:
        return DataLoader(Subset(data, sampler), micro, shuffle=False, num_workers=num_workers, pin_memory=pin)
    return DataLoader(data, micro, sampler=sampler, drop_last=True, num_workers=num_workers, pin_memory=pin)


def build_mixup(aug: dict[str, Any], smoothing: float, num_classes: int) -> Any:
    from timm.data import Mixup

    if not (aug.get("mixup", 0) > 0 or aug.get("cutmix", 0) > 0):
        return None
    return Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=aug.get("mixup_prob", 1.0),
                 switch_prob=aug.get("mixup_switch_prob", 0.5), mode="batch", label_smoothing=smoothing,
                 num_classes=num_classes)


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    cached: bool  # the frozen part's output, computed once, instead of images
    workers: int  # loader processes


def load_splits(model: Classifier, s: Setup, p: Plan, device: torch.device) -> Splits:
    """The frozen part's output computed once when it can be, else images through the transforms."""
    data_cfg = s.data_cfg
    eval_tf = build_transform(False, p.aug, s.img_size, data_cfg["crop_pct"], s.spec.mean, s.spec.std)
    workers = data_cfg["num_workers"]
    cached = bool(p.cfg.get("cache_features")) and model.cacheable
    if cached:
        def features(split: str) -> TensorDataset:  # computed, or read from a run with the same frozen part
            key = feature_key(model, s.data_root / split, eval_tf, p.micro, device, p.precision)
            return cached_features(key, lambda: encode_all(
                model, open_split(s.data_root, split, eval_tf, data_cfg["preload"]), p.micro, device, p.precision,
                workers))

        return Splits(features("train"), features("val"), cached, 0)
    val = open_split(s.data_root, "val", eval_tf, data_cfg["preload"])
    train_tf = build_transform(True, p.aug, s.img_size, data_cfg["crop_pct"], s.spec.mean, s.spec.std)
    return Splits(open_split(s.data_root, "train", train_tf, data_cfg["preload"]), val, cached, workers)
