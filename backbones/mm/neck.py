"""The feature pyramid of the mm backbones: the rescaling branches after the ViT, ViTDet's simple feature pyramid
neck, and the mapping of detectron2's ViTDet weights onto both.

The four-tap pyramid follows the BEiT / MAE segmentation code (mmseg `Feature2Pyramid`); the simple pyramid, its convs
and init follow ViTDet (Li et al. 2022, Sec. 3; detectron2 `modeling/backbone/vit.py` `SimpleFeaturePyramid`,
`LastLevelMaxPool`, `fvcore`'s `c2_xavier_fill`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

from backbones.checkpoint import build_model
from backbones.registry import get_spec

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)
PYRAMIDS = ("simple", "taps")
PYRAMID_NORMS = ("bn", "syncbn", "ln")  # the x4 branch's norm; None picks the pyramid's published one
PUBLISHED_NORM = {"taps": "bn", "simple": "ln"}  # mmseg Feature2Pyramid (SyncBN in its configs); ViTDet
_KNOWN_SCALES = (4.0, 2.0, 1.0, 0.5)


@lru_cache(maxsize=32)
def arch_shape(backbone: str) -> tuple[int, int, int]:
    """(embed_dim, depth, patch_size) of a backbone, from its architecture built on the meta device (no weights)."""
    with torch.device("meta"):
        model = build_model(get_spec(backbone))
    return int(model.embed_dim), len(model.blocks), int(model.patch_embed.patch_size[0])


def check_pyramid(pyramid: str, scale_factors: Sequence[float]) -> None:
    if pyramid not in PYRAMIDS:
        raise ValueError(f"pyramid must be one of {', '.join(PYRAMIDS)}, not {pyramid!r}")
    bad = [s for s in scale_factors if float(s) not in _KNOWN_SCALES]
    if bad or not scale_factors:
        raise ValueError(f"scale_factors must be taken from {_KNOWN_SCALES}, got {tuple(scale_factors)}")


def level_channels(dim: int, pyramid: str, scale: float) -> int:
    if pyramid == "taps":
        return dim
    return {4.0: dim // 4, 2.0: dim // 2}.get(float(scale), dim)  # ViTDet: upsampling halves the width per x2


def pyramid_channels(backbone: str, pyramid: str = "taps", scale_factors: Sequence[float] = SCALE_FACTORS) -> list[int]:
    """Channels of the four outputs: `[D//4, D//2, D, D]` (simple) or `[D] * 4` (taps) for scales (4, 2, 1, 0.5)."""
    check_pyramid(pyramid, scale_factors)
    dim = arch_shape(backbone)[0]
    return [level_channels(dim, pyramid, s) for s in scale_factors]


def pyramid_strides(
    backbone: str, scale_factors: Sequence[float] = SCALE_FACTORS, patch_size: int | None = None
) -> list[int]:
    """Strides of the outputs, patch_size / scale: 4, 8, 16, 32 for patch 16. A non-integral stride (patch 14) is
    returned as a float. `patch_size` overrides the backbone's (ViTDet runs ViT-H/14 at patch 16)."""
    check_pyramid("taps", scale_factors)
    patch = patch_size or arch_shape(backbone)[2]
    strides = [patch / float(s) for s in scale_factors]
    return [int(s) if float(s).is_integer() else s for s in strides]


def _norm2d(norm: str, channels: int) -> nn.Module:
    from timm.layers import LayerNorm2d

    if norm == "ln":
        return LayerNorm2d(channels)
    return nn.SyncBatchNorm(channels) if norm == "syncbn" else nn.BatchNorm2d(channels)


def rescale_branch(dim: int, scale: float, pyramid: str, norm: str) -> nn.Module:
    """x4: two stride-2 transposed convs (with bias) with a norm + GELU between; x2: one; x1: identity; x0.5:
    max-pool. The norm is mmseg's `Feature2Pyramid`'s BatchNorm (SyncBN under DDP) for 'taps', ViTDet's LayerNorm for
    'simple'."""
    scale = float(scale)
    if scale == 4.0:
        mid = dim // 2 if pyramid == "simple" else dim
        out = level_channels(dim, pyramid, scale)
        return nn.Sequential(
            nn.ConvTranspose2d(dim, mid, 2, 2), _norm2d(norm, mid), nn.GELU(), nn.ConvTranspose2d(mid, out, 2, 2)
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, level_channels(dim, pyramid, scale), 2, 2)
    if scale == 1.0:
        return nn.Identity()
    return nn.MaxPool2d(2, 2)


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's `c2_xavier_fill` (ViTDet's init of the pyramid's convs): kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@MODELS.register_module()
class HarnessSimpleFPN(BaseModule):
    """The convs of ViTDet's simple feature pyramid (Li et al. 2022, Sec. 3; detectron2 `SimpleFeaturePyramid`), after
    `HarnessViT(pyramid='simple')` has rescaled the last block's map: per level a 1x1 conv to `out_channels` and a 3x3
    conv, each without bias and followed by a channel LayerNorm (eps 1e-6); no top-down or lateral fusion between
    levels. `num_outs - len(in_channels)` extra levels are max-pools with kernel 1 and stride 2 of the last one
    (detectron2 `LastLevelMaxPool`: 'p6' for the RPN).

    Parameters: `levels.{i}.0` (1x1 conv), `.1` (its norm), `.2` (3x3 conv), `.3` (its norm);
    `vitdet_to_harness` maps detectron2's names onto these and the backbone's.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5, init_cfg: dict | None = None
    ) -> None:
        from timm.layers import LayerNorm2d

        super().__init__(init_cfg=init_cfg)
        if num_outs < len(in_channels):
            raise ValueError(f"HarnessSimpleFPN: num_outs={num_outs} is fewer than the {len(in_channels)} inputs")
        self.num_outs = int(num_outs)
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels, eps=1e-6),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels, eps=1e-6),
            )
            for c in in_channels
        )
        self.init_weights()

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _c2_xavier_fill(module)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self._is_init = True

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Maps [B, C_i, H_i, W_i] -> [B, out_channels, H_i, W_i], then the extra levels at half the last size."""
        if len(inputs) != len(self.levels):
            raise ValueError(f"HarnessSimpleFPN takes {len(self.levels)} maps, got {len(inputs)}")
        outs = [level(x) for level, x in zip(self.levels, inputs, strict=True)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)


# ViTDet's pyramid branch `simfp_{log2 stride}` of scale s: the first `_VITDET_RESCALE_LAYERS[s]` modules rescale (ours:
# `HarnessViT.scales`), then two detectron2 `Conv2d(..., norm=LN)` (ours: `HarnessSimpleFPN.levels`).
_VITDET_RESCALE_LAYERS = {4.0: 4, 2.0: 1, 1.0: 0, 0.5: 1}


def vitdet_to_harness(
    sd: dict[str, torch.Tensor], scale_factors: Sequence[float] = SCALE_FACTORS, patch_size: int = 16
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """detectron2 ViTDet backbone weights (`ViT` as `net.*`, `SimpleFeaturePyramid`'s `simfp_*`; the `backbone.`
    prefix already stripped) -> (`HarnessViT(pyramid='simple')` state dict, `HarnessSimpleFPN` state dict).

    The position embedding loses its class entry (ViTDet keeps it in the parameter but never uses it); every other
    tensor is renamed only. An unknown key raises: every key is accounted for."""
    backbone: dict[str, torch.Tensor] = {}
    neck: dict[str, torch.Tensor] = {}
    levels = {int(math.log2(patch_size / float(s))): (i, float(s)) for i, s in enumerate(scale_factors)}
    for key, value in sd.items():
        if key.startswith("net."):
            name = "vit." + key[len("net.") :]
            with_cls = name == "vit.pos_embed" and math.isqrt(value.shape[1] - 1) ** 2 == value.shape[1] - 1
            backbone[name] = value[:, 1:] if with_cls else value  # [1, 1 + gh * gw, D] -> [1, gh * gw, D]
            continue
        head, _, rest = key.partition(".")
        stage = int(head[len("simfp_") :]) if head.startswith("simfp_") and head[6:].isdigit() else None
        if stage not in levels:
            raise KeyError(f"vitdet_to_harness: key {key!r} is neither `net.*` nor a `simfp_*` of {tuple(levels)}")
        i, scale = levels[stage]
        index, _, leaf = rest.partition(".")
        n = _VITDET_RESCALE_LAYERS[scale]
        if int(index) < n:  # a single rescaling module (x2) is not a Sequential here
            backbone[f"scales.{i}.{leaf}" if n == 1 else f"scales.{i}.{index}.{leaf}"] = value
        else:  # `Conv2d(norm=LN)`: `.weight` is the conv's, `.norm.*` its LayerNorm's
            conv = 2 * (int(index) - n)
            is_norm = leaf.startswith("norm.")
            neck[f"levels.{i}.{conv + 1}.{leaf[5:]}" if is_norm else f"levels.{i}.{conv}.{leaf}"] = value
    return backbone, neck
