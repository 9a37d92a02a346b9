"""ImageNet-1K classification: end-to-end fine-tuning, linear probing and partial fine-tuning of a pretrained ViT.

Follows He et al. 2021 ("Masked Autoencoders Are Scalable Vision Learners"), Tables 9 and 10, section 4.3 and
appendix A.1-A.3, and its code (facebookresearch/mae `main_finetune.py`, `main_linprobe.py`, `util/lr_decay.py`,
`util/lars.py`, `util/lr_sched.py`):

* fine-tune: AdamW with layer-wise lr decay (timm's `param_groups_layer_decay`, the same grouping as MAE's
  `lr_decay.py`), RandAugment, mixup/cutmix, label smoothing, random erasing, drop path, global average pooling with
  `fc_norm`;
* linear probe: the backbone frozen, the class token through the backbone's final norm, `BatchNorm1d` without affine
  before the linear head, LARS (timm's `Lars`, adapted on weights only, as MAE's `LARS`);
* partial fine-tune: the last K blocks (and what follows them) tuned with the fine-tuning recipe, the rest frozen and
  run in eval mode; K = 0 is the linear probe.

The recipe is data (`tasks/recipes/in1k/<name>.yaml`, one section per protocol); values that depend on the model size
are mappings `{base: .., large: .., huge: ..}`, resolved from the backbone's width and recorded.
`lr = blr * batch / 256` with `batch` the effective batch, held on small machines by gradient accumulation. A frozen
part whose input is not augmented can be computed once (`cache_features`): the tiny recipes train heads and last
blocks on cached features. With `harness run --log-backend`, each epoch's loss, lr, top-1 and top-5 also go to
TensorBoard or W&B through mmengine's vis backends (`harness.worker.ScalarLog`, under the work dir; the
step is the epoch). The val set is evaluated after every epoch, as MAE's scripts do: `top1` / `top5` are the last
epoch's, `top1_best` / `top1_best_epoch` the best epoch's (MAE's logs print that maximum).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from harness.worker import ScalarLog
from tasks import NonFiniteLoss, TaskContext, TaskResult
from tasks.cost import CostMeter

log = logging.getLogger(__name__)

PROTOCOLS = ("finetune", "linprobe", "partial")
SIZES = ("base", "large", "huge")
CHECKPOINT = "checkpoint.pth"


# --- recipe -------------------------------------------------------------------------------------------------------


def model_size(embed_dim: int) -> str:
    """The row of the paper's recipe tables a backbone takes: ViT-L from width 1024, ViT-H from 1280, else ViT-B."""
    return "huge" if embed_dim >= 1280 else "large" if embed_dim >= 1024 else "base"


def _by_size(value: Any, size: str, key: str) -> Any:
    if isinstance(value, dict) and value and set(value) <= set(SIZES):
        if size not in value:
            raise KeyError(f"recipe key {key!r} has no value for model size {size!r} (has {', '.join(value)})")
        return value[size]
    return value


def embed_dim(spec: Any) -> int:
    """The backbone's width, read from its timm model built on the meta device (no memory, no weights)."""
    from backbones.checkpoint import build_model

    with torch.device("meta"):
        return int(build_model(spec).embed_dim)


def resolve_section(recipe: dict[str, Any], section: str, size: str) -> dict[str, Any]:
    """The protocol's section with size-dependent values picked for `size`."""
    if section not in recipe:
        raise KeyError(f"recipe {recipe.get('name')!r} has no section {section!r}")
    return {k: _by_size(v, size, f"{section}.{k}") for k, v in recipe[section].items()}


def _accumulation(batch_size: int, world: int, micro_max: int) -> tuple[int, int]:
    """(micro batch per device, accumulation steps) so that micro * steps * world = batch_size."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the world size {world}")
    per_rank = batch_size // world
    accum = max(1, math.ceil(per_rank / micro_max))
    while per_rank % accum:
        accum += 1
    return per_rank // accum, accum


# --- data ---------------------------------------------------------------------------------------------------------


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


def augmented(aug: dict[str, Any]) -> bool:
    """Whether the train transform is random (else it is the eval transform)."""
    return bool(aug.get("scale") or aug.get("hflip") or aug.get("rand_augment") or aug.get("reprob"))


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


# --- model --------------------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """A timm ViT split into a frozen part (`encode`: no gradients, eval mode) and the part that trains (`forward`).

    fine-tune: nothing frozen. partial (K blocks): the embeddings and the first depth - K blocks frozen; for a timm
    `VisionTransformer` `encode` returns their tokens, so they can be cached. linear probe: everything but the head
    frozen; `encode` returns the pooled class-token feature.
    """

    def __init__(self, vit: nn.Module, protocol: str, blocks: int = 0) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = vit
        self.protocol = protocol
        depth = len(vit.blocks)
        self.n_frozen = {"finetune": 0, "partial": depth - blocks, "linprobe": depth}[protocol]
        self.splits_tokens = protocol == "partial" and isinstance(vit, VisionTransformer)
        self.frozen = self._frozen_modules()
        for p in vit.parameters():
            p.requires_grad = protocol == "finetune"
        for module in self._trainable_modules():
            module.requires_grad_(True)

    def _trainable_modules(self) -> list[nn.Module]:
        if self.protocol == "finetune":
            return [self.vit]
        tail = ["head"] if self.protocol == "linprobe" else ["norm", "fc_norm", "head_drop", "head"]
        mods = [getattr(self.vit, n) for n in tail if isinstance(getattr(self.vit, n, None), nn.Module)]
        return mods + list(self.vit.blocks[self.n_frozen :]) if self.protocol == "partial" else mods

    def _frozen_modules(self) -> list[nn.Module]:
        if self.protocol == "finetune":
            return []
        keep = {id(m) for m in self._trainable_modules()}
        out = [m for n, m in self.vit.named_children() if n != "blocks" and id(m) not in keep]
        return out + list(self.vit.blocks[: self.n_frozen])

    @property
    def cacheable(self) -> bool:
        """Whether `encode` does all the frozen work, so that its output can be computed once."""
        return self.protocol == "linprobe" or self.splits_tokens

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for m in self.frozen:  # frozen blocks keep their pretrained behaviour: no drop path, no dropout
            m.eval()
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> what the trainable part takes: images, tokens [B, L, D] or features [B, D]."""
        vit = self.vit
        if self.protocol == "linprobe":
            return vit.forward_head(vit.forward_features(x), pre_logits=True)  # [B, D]
        if self.splits_tokens:
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # [B, L, D]
            return vit.blocks[: self.n_frozen](x)
        return x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The output of `encode` -> logits [B, classes]."""
        vit = self.vit
        if self.protocol == "linprobe":
            return vit.head(z)
        if self.splits_tokens:
            return vit.forward_head(vit.norm(vit.blocks[self.n_frozen :](z)))
        return vit(z)


def build_classifier(ctx: TaskContext, cfg: dict[str, Any], protocol: str, num_classes: int, img_size: int,
                     blocks: int) -> tuple[Classifier, dict[str, Any]]:
    from timm.layers import trunc_normal_

    from backbones.checkpoint import create_backbone

    vit = create_backbone(
        ctx.backbone, checkpoint=ctx.checkpoint, img_size=img_size, num_classes=num_classes,
        global_pool=cfg["global_pool"], drop_path_rate=cfg["drop_path"], allow_pickle=ctx.allow_pickle,
    )
    report = dict(getattr(vit, "load_report", {}) or {}, checkpoint=vit.checkpoint_path)
    trunc_normal_(vit.head.weight, std=cfg["head_init_std"])  # MAE: 2e-5 fine-tune, 0.01 linear probe
    nn.init.zeros_(vit.head.bias)
    if protocol == "linprobe":  # MAE main_linprobe.py: a BatchNorm without affine, a whitening of the features
        vit.head = nn.Sequential(nn.BatchNorm1d(vit.head.in_features, affine=False, eps=1e-6), vit.head)
    return Classifier(vit, protocol, blocks), report


def build_optimizer(model: Classifier, cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """AdamW with layer-wise lr decay (fine-tune, partial) or LARS on the head (linear probe), from timm."""
    from timm.optim import Lars, create_optimizer_v2

    if cfg["opt"] == "adamw":
        # block i (1-based) gets lr scale decay^(depth + 1 - i); norms, biases, tokens and pos_embed no weight decay
        return create_optimizer_v2(model.vit, opt="adamw", lr=lr, weight_decay=cfg["weight_decay"],
                                   layer_decay=cfg["layer_decay"])
    if cfg["opt"] == "lars":
        params = [p for p in model.parameters() if p.requires_grad]
        # MAE's LARS: weight decay and the trust ratio on weights only; biases take plain momentum SGD
        groups = [
            dict(params=[p for p in params if p.ndim > 1], weight_decay=cfg["weight_decay"], always_adapt=True),
            dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, always_adapt=False),
        ]
        return Lars([g for g in groups if g["params"]], lr=lr, momentum=cfg["momentum"], trust_coeff=0.001)
    raise ValueError(f"recipe key 'opt' must be adamw or lars, not {cfg['opt']!r}")


def build_criterion(cfg: dict[str, Any], mixup_active: bool) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:  # smoothing is folded into the mixed targets
        return SoftTargetCrossEntropy()
    if cfg.get("smoothing", 0.0) > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    return nn.CrossEntropyLoss()


def build_mixup(aug: dict[str, Any], smoothing: float, num_classes: int) -> Any:
    from timm.data import Mixup

    if not (aug.get("mixup", 0) > 0 or aug.get("cutmix", 0) > 0):
        return None
    return Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=aug.get("mixup_prob", 1.0),
                 switch_prob=aug.get("mixup_switch_prob", 0.5), mode="batch", label_smoothing=smoothing,
                 num_classes=num_classes)


# --- distributed --------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this task initialised the process group and tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(ctx: TaskContext, device: torch.device) -> Dist:
    """torchrun's environment -> a process group (gloo on CPU, nccl on CUDA); a single process otherwise."""
    if ctx.launcher == "none" and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(f"launcher {ctx.launcher!r} needs the environment variable(s) {', '.join(missing)} "
                           f"(set by torchrun)")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns)


def resolve_device(ctx: TaskContext, local_rank: int) -> torch.device:
    device = torch.device(ctx.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {ctx.device!r} was asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- loops --------------------------------------------------------------------------------------------------------


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (timm's attention is already fused: `F.scaled_dot_product_attention`); fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda")


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


def train_one_epoch(model: Classifier, wrapped: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: Any, criterion: nn.Module, mixup: Any, accum: int, first_update: int,
                    cfg: dict[str, Any], device: torch.device, precision: str, cached: bool) -> tuple[float, int]:
    """One pass; an optimizer step every `accum` micro batches (the lr set per step, as MAE's `lr_sched`).

    Returns the mean loss and the number of optimizer steps taken.
    """
    model.train()
    updates, total, count = 0, 0.0, 0
    n_micro = (len(loader) // accum) * accum  # an incomplete accumulation at the end is dropped
    for i, (x, y) in enumerate(loader):
        if i >= n_micro:
            break
        if i % accum == 0:
            scheduler.step_update(first_update + updates)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        z = x if cached else model.encode(x)  # the frozen part's output: computed once, or now
        last = (i + 1) % accum == 0
        sync = contextlib.nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
        with sync:
            with autocast(device, precision):
                loss = criterion(wrapped(z), y)
            (loss / accum).backward()
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(first_update + updates + 1, loss.item())
        total, count = total + loss.item(), count + 1
        if last:
            if cfg.get("clip_grad"):
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg["clip_grad"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    return total / max(count, 1), updates


@torch.no_grad()
def evaluate(model: Classifier, loader: DataLoader, dist_: Dist, device: torch.device, precision: str,
             num_classes: int, cached: bool = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) over every rank's shard of the val set."""
    model.eval()
    k = min(5, num_classes)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # [top1 hits, top5 hits, images]
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x if cached else model.encode(x))  # [B, classes]
        top = logits.float().topk(k, dim=1).indices  # [B, k]
        hits = top == y[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), torch.tensor(len(y), device=device)])
    if dist_.world > 1:
        dist.all_reduce(counts)
    return {"top1": float(100 * counts[0] / counts[2]), "top5": float(100 * counts[1] / counts[2])}


# --- checkpoints --------------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a run killed while saving keeps the previous epoch's checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The run's own last checkpoint, if any; one written under another recipe is an error, not a silent restart."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # written by this task: tensors and containers
    if state.get("recipe") != recipe:
        raise RuntimeError(f"{path} was written with another recipe; use a fresh work_dir or remove it to restart "
                           f"(checkpoint: {state.get('recipe')}, now: {recipe})")
    return state


def _iter_params(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for g in optimizer.param_groups:
        yield from g["params"]


# --- the task -----------------------------------------------------------------------------------------------------


def _protocol(ctx: TaskContext, recipe: dict[str, Any]) -> tuple[str, str, int | None]:
    """(protocol asked, recipe section that runs, K). Partial with K = 0 is the linear probe."""
    protocol = ctx.protocol or "finetune"
    if protocol not in PROTOCOLS:
        from backbones.registry import unknown_name_error

        raise unknown_name_error("in1k protocol", protocol, list(PROTOCOLS))
    if protocol != "partial":
        return protocol, protocol, None
    blocks = recipe.get("partial", {}).get("blocks")
    if not isinstance(blocks, int) or blocks < 0:
        raise ValueError(f"recipe key partial.blocks must be an integer >= 0, not {blocks!r}")
    return protocol, "linprobe" if blocks == 0 else "partial", blocks


def _check_cache(cfg: dict[str, Any], section: str) -> None:
    aug = cfg.get("aug") or {}
    if cfg.get("cache_features") and (augmented(aug) or aug.get("mixup") or aug.get("cutmix")):
        raise ValueError(f"recipe key {section}.cache_features needs an unaugmented input: set {section}.aug.scale "
                         f"to null and hflip, reprob, mixup and cutmix to 0, rand_augment to null")


def run(ctx: TaskContext) -> TaskResult:
    """Trains and evaluates one protocol; resumes from `ctx.work_dir/checkpoint.pth`."""
    from backbones.registry import get_spec
    from harness.data import imagenet
    from tasks.recipes import load_recipe

    t_start = time.time()
    recipe = load_recipe("in1k", ctx.recipe, ctx.overrides)
    protocol, section, blocks = _protocol(ctx, recipe)
    data_root = imagenet.ensure() if ctx.data_root is None else Path(ctx.data_root).expanduser()
    classes = imagenet.check_layout(data_root)
    spec = get_spec(ctx.backbone)
    data_cfg = dict(recipe["data"])
    img_size = data_cfg["img_size"] or spec.img_size
    device = torch.device(ctx.device)
    dist_ = init_distributed(ctx, device)
    device = resolve_device(ctx, dist_.local_rank)
    try:
        return _run(ctx, recipe, protocol, section, blocks, data_root, classes, spec, data_cfg, img_size, device,
                    dist_, t_start)
    finally:
        if dist_.owns_group:
            dist.destroy_process_group()


def _run(ctx: TaskContext, recipe: dict[str, Any], protocol: str, section: str, blocks: int | None, data_root: Path,
         classes: list[str], spec: Any, data_cfg: dict[str, Any], img_size: int, device: torch.device, dist_: Dist,
         t_start: float) -> TaskResult:
    size = model_size(embed_dim(spec))
    cfg = resolve_section(recipe, section, size)
    _check_cache(cfg, section)
    seed_everything(ctx.seed)  # the same initial weights on every rank
    model, report = build_classifier(ctx, cfg, section, len(classes), img_size, blocks or 0)
    model.to(device)

    micro, accum = _accumulation(cfg["batch_size"], dist_.world, data_cfg["micro_batch_size"])
    lr = cfg["blr"] * cfg["batch_size"] / 256
    precision = recipe.get("precision", "bf16")
    resolved = {
        "name": recipe["name"], "version": recipe["version"], "precision": precision, "data": data_cfg,
        "protocol": protocol, "model_size": size, section: cfg,
        "derived": {"lr": lr, "img_size": img_size, "accum_steps": accum, "micro_batch_size": micro,
                    "world_size": dist_.world},
    }

    # data: the frozen part's output computed once when it can be, else images through the transforms
    aug = cfg.get("aug") or {}
    eval_tf = build_transform(False, aug, img_size, data_cfg["crop_pct"], spec.mean, spec.std)
    workers = data_cfg["num_workers"]
    val = open_split(data_root, "val", eval_tf, data_cfg["preload"])
    cached = bool(cfg.get("cache_features")) and model.cacheable
    if cached:
        train = encode_all(model, open_split(data_root, "train", eval_tf, data_cfg["preload"]), micro, device,
                           precision, workers)
        val = encode_all(model, val, micro, device, precision, workers)
        workers = 0
    else:
        train_tf = build_transform(True, aug, img_size, data_cfg["crop_pct"], spec.mean, spec.std)
        train = open_split(data_root, "train", train_tf, data_cfg["preload"])
    per_epoch = len(train) // dist_.world // micro // accum
    if per_epoch == 0:
        raise ValueError(f"{section}.batch_size={cfg['batch_size']} exceeds the {len(train)} training images of "
                         f"{data_root}/train")

    optimizer = build_optimizer(model, cfg, lr)
    wrapped: nn.Module = model
    if dist_.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    scheduler = build_scheduler(optimizer, cfg, per_epoch)
    mixup = build_mixup(aug, cfg.get("smoothing", 0.0), len(classes))
    criterion = build_criterion(cfg, mixup is not None)

    work_dir = Path(ctx.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / CHECKPOINT
    state = load_checkpoint(ckpt_path, _comparable(resolved))
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        if dist_.main:
            log.info("resuming %s from %s (epoch %d of %d)", section, ckpt_path, start_epoch, cfg["epochs"])

    t_train = time.time()
    meter = CostMeter(device)
    history = list(state.get("history", [])) if state else []
    with ScalarLog(work_dir, enabled=dist_.main) as scalars:  # harness run --log-backend; nothing without it
        for epoch in range(start_epoch, cfg["epochs"]):
            t0 = time.time()
            seed_everything(ctx.seed * 1_000_003 + epoch * 1009 + dist_.rank)  # resume replays the same randomness
            loader = meter.timed("train", batches(train, micro, dist_, ctx.seed, epoch, workers, device, train=True))
            loss, _ = train_one_epoch(model, wrapped, loader, optimizer, scheduler, criterion, mixup, accum,
                                      epoch * per_epoch, cfg, device, precision, cached)
            seconds = time.time() - t0
            # every epoch, as MAE's main_finetune / main_linprobe (whose logs report the best epoch's top-1)
            val_loader = meter.timed("eval", batches(val, micro, dist_, ctx.seed, 0, workers, device, train=False))
            top = evaluate(model, val_loader, dist_, device, precision, len(classes), cached)
            history.append({"epoch": epoch + 1, "loss": loss, "lr": max(g["lr"] for g in optimizer.param_groups),
                            "seconds": seconds, **top})
            scalars.add({k: history[-1][k] for k in ("loss", "lr", "top1", "top5")}, step=epoch + 1)
            if dist_.main:
                log.info("%s epoch %d/%d loss %.4f top1 %.2f (%.1fs)", section, epoch + 1, cfg["epochs"], loss,
                         top["top1"], seconds)
                save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "epoch": epoch + 1, "recipe": _comparable(resolved), "history": history})
            if dist_.world > 1:
                dist.barrier()  # the checkpoint is complete before any rank can be stopped
        train_seconds = time.time() - t_train

        if history and "top1" in history[-1]:
            metrics = {k: history[-1][k] for k in ("top1", "top5")}
        else:  # resumed from a finished run whose checkpoint predates per-epoch evaluation
            val_loader = meter.timed("eval", batches(val, micro, dist_, ctx.seed, 0, workers, device, train=False))
            metrics = evaluate(model, val_loader, dist_, device, precision, len(classes), cached)
        metrics.update(best_epoch(history, metrics["top1"], cfg["epochs"]))
    extra = {
        "protocol": protocol, "section": section, "blocks": blocks, "load_report": report,
        "num_classes": len(classes), "num_train": len(train), "num_val": len(val), "data_root": str(data_root),
        "cached_features": cached, "resumed_from_epoch": start_epoch, "history": history,
        "train_seconds": train_seconds, "wall_seconds": time.time() - t_start, "device": str(device),
        "rank": dist_.rank, "trainable_params": sum(p.numel() for p in _iter_params(optimizer)),
        "cost": meter.summary(),  # micro-batch step time and peak memory, training and evaluation apart
    }
    if dist_.main:
        log.info("%s top1 %.2f top5 %.2f (last epoch); best top1 %.2f at epoch %d", section, metrics["top1"],
                 metrics["top5"], metrics["top1_best"], metrics["top1_best_epoch"])
    return TaskResult(metrics=metrics, recipe=resolved, extra=extra)


def best_epoch(history: list[dict[str, Any]], last_top1: float, epochs: int) -> dict[str, float]:
    """The best epoch's top-1 and its epoch (the first, on ties), next to the last epoch's that `top1` holds: MAE's
    logs report `max_accuracy` over epochs, which a table of last-epoch results would not match."""
    scored = [(h["top1"], -h["epoch"]) for h in history if "top1" in h] or [(last_top1, -epochs)]
    top1, neg_epoch = max(scored)
    return {"top1_best": top1, "top1_best_epoch": -neg_epoch}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], per_epoch: int) -> Any:
    """Linear warmup from 0, then half-cosine to `min_lr`, stepped per optimizer step (MAE's `lr_sched`)."""
    from timm.scheduler import CosineLRScheduler

    total, warmup = cfg["epochs"] * per_epoch, round(cfg["warmup_epochs"] * per_epoch)
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=cfg["min_lr"], warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def _comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: what changes the numbers, not how the work is spread (world
    size, micro batch and accumulation, loader workers, preloading)."""
    out = {k: v for k, v in resolved.items() if k not in ("derived", "data")}
    out["data"] = {k: v for k, v in resolved["data"].items() if k not in ("micro_batch_size", "num_workers", "preload")}
    out["derived"] = {k: v for k, v in resolved["derived"].items() if k in ("lr", "img_size")}
    return out
