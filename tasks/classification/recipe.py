"""The in1k recipe resolved for one run: the protocol's section, the values that depend on the model size (the rows
of He et al. 2021, Tables 9 and 10), the learning rate `blr * batch / 256` and the gradient accumulation that holds
the effective batch on small machines (facebookresearch/mae `main_finetune.py`, `main_linprobe.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks import TaskContext
from tasks.training import resolve_compile

PROTOCOLS = ("finetune", "linprobe", "partial", "pixels")  # pixels: the linear probe's recipe on raw pixels
SIZES = ("base", "large", "huge")
PRECISIONS = ("bf16", "fp32", "none")  # no fp16: the loop has no loss scaling


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


def augmented(aug: dict[str, Any]) -> bool:
    """Whether the train transform is random (else it is the eval transform)."""
    return bool(aug.get("scale") or aug.get("hflip") or aug.get("rand_augment") or aug.get("reprob"))


def _protocol(ctx: TaskContext, recipe: dict[str, Any]) -> tuple[str, str, int | None]:
    """(protocol asked, recipe section that runs, K). Partial with K = 0 is the linear probe; the pixel reference
    runs the linear probe's section."""
    protocol = ctx.protocol or "finetune"
    if protocol not in PROTOCOLS:
        from backbones.registry import unknown_name_error

        raise unknown_name_error("in1k protocol", protocol, list(PROTOCOLS))
    if protocol == "pixels":
        return protocol, "linprobe", None
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


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"recipe key precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


@dataclass(frozen=True)
class Setup:
    """What the run is asked for, known before any process group: the recipe, protocol, data and backbone."""

    recipe: dict[str, Any]
    protocol: str  # asked
    section: str  # the recipe section that runs
    blocks: int | None  # K of the partial fine-tune
    data_root: Path
    classes: list[str]
    spec: Any  # backbones.registry.BackboneSpec
    data_cfg: dict[str, Any]
    img_size: int


def load_setup(ctx: TaskContext) -> Setup:
    """The recipe and the data folder checked (the embedded set written when no folder is given)."""
    from backbones.registry import get_spec
    from embedded import imagenet
    from tasks.recipes import load_recipe

    recipe = load_recipe("in1k", ctx.recipe, ctx.overrides)
    protocol, section, blocks = _protocol(ctx, recipe)
    data_root = imagenet.ensure() if ctx.data_root is None else Path(ctx.data_root).expanduser()
    classes = imagenet.check_layout(data_root)
    spec = get_spec(ctx.backbone)
    data_cfg = dict(recipe["data"])
    img_size = data_cfg["img_size"] or spec.img_size
    return Setup(recipe, protocol, section, blocks, data_root, classes, spec, data_cfg, img_size)


@dataclass(frozen=True)
class Plan:
    """The section resolved for the backbone's size and the world size, and the record of it (`resolved`)."""

    size: str
    cfg: dict[str, Any]
    micro: int  # batch per device and step
    accum: int  # micro batches per optimizer step
    lr: float
    precision: str
    resolved: dict[str, Any]
    compiled: bool = False  # torch.compile of the model (recipe key `compile`); not in `resolved`: how fast, not what

    @property
    def aug(self) -> dict[str, Any]:
        return self.cfg.get("aug") or {}


def plan(s: Setup, world: int, device: torch.device | None = None) -> Plan:
    size = model_size(embed_dim(s.spec))
    cfg = resolve_section(s.recipe, s.section, size)
    _check_cache(cfg, s.section)
    micro, accum = _accumulation(cfg["batch_size"], world, s.data_cfg["micro_batch_size"])
    lr = cfg["blr"] * cfg["batch_size"] / 256
    precision = s.recipe.get("precision", "bf16")
    _check_precision(precision)
    resolved = {
        "name": s.recipe["name"], "version": s.recipe["version"], "precision": precision, "data": s.data_cfg,
        "protocol": s.protocol, "model_size": size, s.section: cfg,
        "derived": {"lr": lr, "img_size": s.img_size, "accum_steps": accum, "micro_batch_size": micro,
                    "world_size": world},
    }
    compiled = resolve_compile(s.recipe.get("compile", "auto"), device or torch.device("cpu"))
    return Plan(size, cfg, micro, accum, lr, precision, resolved, compiled)


def _comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: what changes the numbers, not how the work is spread (world
    size, micro batch and accumulation, loader workers, preloading)."""
    out = {k: v for k, v in resolved.items() if k not in ("derived", "data")}
    out["data"] = {k: v for k, v in resolved["data"].items() if k not in ("micro_batch_size", "num_workers", "preload")}
    out["derived"] = {k: v for k, v in resolved["derived"].items() if k in ("lr", "img_size")}
    return out
