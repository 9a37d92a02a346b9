"""Backbones named `timm:<model>.<tag>`: a spec derived from timm's pretrained config, weights through timm itself.

timm keeps, per pretrained tag, the preprocessing, input size and licence (`PretrainedCfg`) and loads the weights with
its own filter from the Hugging Face hub (`pretrained=True`); such an entry needs no registration and no checkpoint
format of ours. `--checkpoint NAME=PATH` still replaces the weights, read in timm's layout. A name without a tag takes
timm's default tag for the model.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from backbones.spec import TIMM_PREFIX, BackboneSpec, unknown_name_error

# The taps of the zoo's entries for the depths of ViT-B, L and H; other depths take the quarter points.
KNOWN_TAPS = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23), 32: (7, 15, 23, 31)}


def _dense_taps(depth: int) -> tuple[int, ...]:
    return KNOWN_TAPS.get(depth) or tuple(max(0, depth * q // 4 - 1) for q in (1, 2, 3, 4))


def _pretrained_cfg(name: str, model: str):  # -> timm.models.PretrainedCfg
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(model)
    if not timm.is_model(arch):
        error = unknown_name_error("timm model", arch, timm.list_models())
        raise KeyError(f"{name!r}: {error.args[0]}")
    try:
        return get_pretrained_cfg(model)
    except RuntimeError:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        known = ", ".join(tags) if tags else "none: timm has no pretrained weights for it"
        raise KeyError(f"timm model {arch!r} has no pretrained tag {tag!r} (in {name!r}); its tags: {known}") from None


@lru_cache(maxsize=64)
def timm_spec(name: str) -> BackboneSpec:
    """The spec of `timm:<model>.<tag>`; the architecture is built on the meta device to read its shape."""
    import timm

    model_name = name[len(TIMM_PREFIX) :]
    cfg = _pretrained_cfg(name, model_name)
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    with torch.device("meta"):
        model = timm.create_model(full, pretrained=False, num_classes=0)
    blocks, patch_embed = getattr(model, "blocks", None), getattr(model, "patch_embed", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or patch_embed is None:
        raise ValueError(f"{name!r}: timm's {cfg.architecture} is not a plain ViT (blocks and a patch embedding)")
    depth = len(blocks)
    return BackboneSpec(
        name=name, arch=full, family="custom", checkpoint_format="timm", timm_pretrained=True,
        img_size=int(cfg.input_size[-1]), patch_size=int(patch_embed.patch_size[0]),
        mean=tuple(cfg.mean), std=tuple(cfg.std), license=cfg.license or "unknown",
        layer_decay=0.65 if depth <= 12 else 0.75, dense_taps=_dense_taps(depth),
        params=sum(p.numel() for p in model.parameters()),
        description=f"timm {full} ({cfg.hf_hub_id or cfg.url or 'pretrained config'})",
    )  # fmt: skip
