"""`HarnessViT`: any registered backbone as an mmdet / mmseg backbone with a four-level feature pyramid.

The detection form (no class token, the pretrained grid's position embedding resampled per input, window attention
with a few global blocks, patch 16 for ViT-H/14) follows ViTDet (Li et al. 2022, "Exploring Plain Vision Transformer
Backbones for Object Detection"; detectron2 `modeling/backbone/vit.py`), written so that the same weights give
detectron2's outputs to float precision; the four-tap form and layer scale follow the BEiT / MAE segmentation code
(mmseg `Feature2Pyramid`, its MAE config). Registered in mmengine's root `MODELS` by `import backbones.mm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

from backbones.checkpoint import build_model, create_backbone
from backbones.mm.attention import REL_POS, RelPosAttention, windowed_block
from backbones.mm.neck import (
    PUBLISHED_NORM,
    PYRAMID_NORMS,
    SCALE_FACTORS,
    check_pyramid,
    level_channels,
    rescale_branch,
)
from backbones.registry import get_spec

WINDOW_POS = ("interpolate", "tile")
# Modules of a classifier that a dense backbone never uses: removed so that DDP sees no parameter without a gradient.
_UNUSED_TOP_MODULES = ("norm", "fc_norm", "head")


@lru_cache(maxsize=32)
def is_plain_vit(backbone: str) -> bool:
    """True for a timm `VisionTransformer` (inputs of any size, blocks with timm's `Block` layout); False for others
    (BEiT: fixed input size, its own relative position bias)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        return isinstance(build_model(get_spec(backbone)), VisionTransformer)


def abs_pos_on_grid(pos_embed: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """ViTDet's `get_abs_pos`: a grid-only position embedding `[1, gh * gw, D]` (no class entry) -> `[1, h * w, D]`,
    resampled bicubically (align_corners=False, no antialias: ViTDet's call; timm's `resample_abs_pos_embed`
    antialiases, which changes the cubic kernel even when upsampling) when the grids differ."""
    gh, gw = grid
    D = pos_embed.shape[-1]
    pos = pos_embed.reshape(1, gh, gw, D)
    if (gh, gw) != tuple(size):
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(size), mode="bicubic", align_corners=False)
        pos = pos.permute(0, 2, 3, 1)  # [1, h, w, D]
    return pos.reshape(1, -1, D)


def _create_vit(backbone: str, **kwargs: Any) -> nn.Module:
    """The timm model with inputs of any size (timm's `dynamic_img_size`: pos-embed resampled on the fly, input padded
    to the patch size) where the architecture supports it (VisionTransformer); others (BEiT) keep their fixed size."""
    try:
        return create_backbone(backbone, dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
    except TypeError as e:
        if "dynamic_img" not in str(e):
            raise
    return create_backbone(backbone, **kwargs)


@MODELS.register_module()
class HarnessViT(BaseModule):
    """A registered backbone (plain ViT) with a four-level feature pyramid, for mmdet and mmseg.

    `pyramid='simple'` (ViTDet): every level from the last block's map, channels `[D//4, D//2, D, D]`; on a plain ViT
    it is ViTDet's backbone: no class token (dropped with its position entry, reported as removed), the position
    embedding kept at the pretrained grid and resampled to each input's grid in the forward pass (`abs_pos_on_grid`),
    `patch_size` to run at another patch size (ViT-H/14 at 16: the checkpoint's kernel interpolated bicubically).
    `pyramid='taps'` (BEiT/MAE UperNet): level i from block `taps[i]` (default: the spec's `dense_taps`, the last
    ones when there are fewer levels), channels `D`.
    Strides are patch_size / scale_factor. `window_size > 0` makes every block not in `global_blocks` attend within
    non-overlapping windows of that many patches as ViTDet's blocks do (`windowed_block`: norm, zero-padding,
    stochastic depth per image); a class token ('taps') attends on its own. `rel_pos` gives every block a relative
    position bias (`RelPosAttention`, zero-initialised): `'decomposed'` (ViTDet) or `'table'` (BEiT, the MAE paper's
    ADE20K runs), sized for the window in windowed blocks and for the `img_size` grid in global ones. `window_pos` is
    the windowed forward's absolute position embedding: `'interpolate'` (ViTDet: resampled to the image's grid) or
    `'tile'` (the pretrained grid, resampled to one window, repeated in every window; global blocks then see the
    repeated positions too).
    `frozen=True` freezes the encoder (`self.vit`, with any position bias or layer scale added to it) as built: no
    gradients and eval mode, while the pyramid, neck and heads train (the random-and-frozen floor of `harness run
    --controls`).
    """

    def __init__(
        self,
        backbone: str,
        checkpoint: str | None = None,
        img_size: int | Sequence[int] | None = None,
        pyramid: str = "taps",
        scale_factors: Sequence[float] = SCALE_FACTORS,
        taps: Sequence[int] | None = None,
        drop_path_rate: float = 0.1,
        window_size: int = 0,
        global_blocks: Sequence[int] | None = (),
        rel_pos: str | None = None,
        window_pos: str = "interpolate",
        pyramid_norm: str | None = None,
        layer_scale: float | None = None,
        patch_size: int | None = None,
        allow_pickle: bool = False,
        frozen: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        check_pyramid(pyramid, scale_factors)
        spec = get_spec(backbone)
        size = tuple(img_size) if isinstance(img_size, Sequence) else (img_size or spec.img_size,) * 2
        patch = int(patch_size or spec.patch_size)
        overrides: dict[str, Any] = {"patch_size": patch} if patch != spec.patch_size else {}
        # ViTDet's form (simple pyramid on a plain ViT): the model keeps the pretrained grid's position embedding
        # (built at the pretraining grid times the patch), resampled to each input's grid in the forward pass
        self.grid_form = pyramid == "simple" and is_plain_vit(backbone)
        built = (spec.img_size // spec.patch_size * patch,) * 2 if self.grid_form else size
        self.vit = _create_vit(
            backbone, checkpoint=checkpoint, img_size=built, drop_path_rate=drop_path_rate, allow_pickle=allow_pickle,
            **overrides,
        )
        depth, dim = len(self.vit.blocks), int(self.vit.embed_dim)
        self.depth = depth  # layer-decay depth L: the architecture's, also when blocks past the last tap are dropped
        self.taps = self._resolve_taps(pyramid, taps, spec.dense_taps, depth, len(scale_factors), backbone)
        self.window_size, self.global_blocks = int(window_size), tuple(int(b) for b in global_blocks or ())
        if self.window_size and not getattr(self.vit, "dynamic_img_size", False):
            raise ValueError(f"window_size > 0 needs a timm VisionTransformer; {backbone!r} is {type(self.vit)}")
        if window_pos not in WINDOW_POS:
            raise ValueError(f"window_pos must be one of {', '.join(WINDOW_POS)}, got {window_pos!r}")
        if window_pos == "tile" and (not self.window_size or getattr(self.vit, "pos_embed", None) is None):
            raise ValueError(
                f"window_pos='tile' needs window_size > 0 and an absolute position embedding ({backbone!r})"
            )
        self.window_pos = window_pos
        self.pyramid, self.scale_factors = pyramid, tuple(float(s) for s in scale_factors)
        self.pyramid_norm = self._check_norm(pyramid_norm, pyramid)
        self.scales = nn.ModuleList(rescale_branch(dim, s, pyramid, self.pyramid_norm) for s in self.scale_factors)
        self.out_channels = [level_channels(dim, pyramid, s) for s in self.scale_factors]
        self.strides = [int(p) if p.is_integer() else p for p in (patch / s for s in self.scale_factors)]
        removed = self._remove_unused(depth) + (self._drop_class_token() if self.grid_form else [])
        report = dict(getattr(self.vit, "load_report", {"initialised_fresh": [], "skipped": []}))
        self.rel_pos = rel_pos or None
        added = self._add_rel_pos(backbone, (size[0] // patch, size[1] // patch)) if self.rel_pos else []
        self._rel_pos_added = bool(added)
        self.layer_scale = None if layer_scale is None else float(layer_scale)
        scaled = self._add_layer_scale(backbone) if self.layer_scale is not None else []
        report["initialised_fresh"] = [*report.get("initialised_fresh", []), *added, *scaled]
        self.load_report = {
            "backbone": backbone,
            "checkpoint": self.vit.checkpoint_path,
            "pretrained": self.vit.checkpoint_path is not None,
            "img_size": list(size),
            **report,
            "removed": removed,
        }
        self.frozen = bool(frozen)
        if self.frozen:  # the encoder as built (the pyramid still trains): no gradients, so no optimizer state
            self.vit.requires_grad_(False)
            self.vit.eval()

    @staticmethod
    def _resolve_taps(
        pyramid: str, taps: Sequence[int] | None, dense_taps: Sequence[int], depth: int, levels: int, name: str
    ) -> tuple[int, ...]:
        if pyramid == "simple":
            return (depth - 1,) * levels
        if taps is None:  # the spec's dense taps; with fewer levels, the deepest of them
            taps = tuple(dense_taps)[-levels:] if len(dense_taps) >= levels else tuple(dense_taps)
        taps = tuple(int(t) for t in taps)
        if len(taps) != levels or not all(0 <= t < depth for t in taps):
            raise ValueError(
                f"pyramid='taps' needs {levels} block indices in [0, {depth}) for {name!r}, got taps={taps} "
                f"(spec dense_taps={tuple(dense_taps)})"
            )
        return taps

    @staticmethod
    def _check_norm(norm: str | None, pyramid: str) -> str:
        norm = norm or PUBLISHED_NORM[pyramid]
        if norm not in PYRAMID_NORMS:
            raise ValueError(f"pyramid_norm must be one of {', '.join(PYRAMID_NORMS)} or null, got {norm!r}")
        return norm

    def _add_layer_scale(self, backbone: str) -> list[str]:
        """Gives every kept block without one BEiT's learnable per-channel scale on both residual branches (timm's
        `LayerScale`, `ls1.gamma` / `ls2.gamma`) at `self.layer_scale` (mmseg's MAE config: `init_values=1.0`, so
        the loaded model computes the same features until fine-tuning moves it); returns the new parameters' names.
        Blocks with a scale of their own (BEiT's `gamma_1`, timm's `ls1`) keep it."""
        from timm.layers import LayerScale

        names = []
        for i, blk in enumerate(self.vit.blocks):
            ls1 = getattr(blk, "ls1", None)
            if getattr(blk, "gamma_1", None) is not None or (ls1 is not None and not isinstance(ls1, nn.Identity)):
                continue  # a scale of its own
            if ls1 is None:
                raise ValueError(f"layer_scale needs timm ViT blocks; {backbone!r} has {type(blk).__name__}")
            dim = int(self.vit.embed_dim)
            blk.ls1, blk.ls2 = LayerScale(dim, self.layer_scale), LayerScale(dim, self.layer_scale)
            names += [f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"]
        return names

    def _remove_unused(self, depth: int) -> list[str]:
        """Drops the classifier's final norm/head and the blocks after the last tap: no output depends on them."""
        removed = []
        for name in _UNUSED_TOP_MODULES:
            module = getattr(self.vit, name, None)
            if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
                removed += [f"{name}.{k}" for k, _ in module.named_parameters()]
                setattr(self.vit, name, nn.Identity())
        last = max(self.taps)
        if last < depth - 1:
            removed += [f"blocks.{i}" for i in range(last + 1, depth)]
            self.vit.blocks = self.vit.blocks[: last + 1]
        return removed

    def _drop_class_token(self) -> list[str]:
        """ViTDet's detection backbone has no class token: drops it and its position-embedding entry (the grid's
        entries stay); returns what was removed, for the load report."""
        vit = self.vit
        if getattr(vit, "reg_token", None) is not None:
            raise ValueError("pyramid='simple' drops the class token; a ViT with register tokens is not supported")
        if getattr(vit, "cls_token", None) is None:
            return []
        removed = ["cls_token"]
        if vit.pos_embed is not None and not vit.no_embed_class:
            vit.pos_embed = nn.Parameter(vit.pos_embed.detach()[:, 1:].clone())  # [1, gh * gw, D]
            removed.append("pos_embed[:, 0] (the class token's entry)")
        vit.cls_token = None
        vit.num_prefix_tokens -= 1
        vit.has_class_token, vit.no_embed_class = False, True
        return removed

    def _add_rel_pos(self, backbone: str, input_grid: tuple[int, int]) -> list[str]:
        """Swaps every kept block's attention for a `RelPosAttention`; returns the new parameters' names. A backbone
        with a relative position bias of its own (BEiT) keeps it."""
        if self.rel_pos not in REL_POS:
            raise ValueError(f"rel_pos must be one of {', '.join(REL_POS)} or null, got {self.rel_pos!r}")
        if any("relative_position" in name for name, _ in self.vit.named_parameters()):
            return []
        if not getattr(self.vit, "dynamic_img_size", False) or not hasattr(self.vit.blocks[0], "attn"):
            raise ValueError(
                f"rel_pos needs a timm VisionTransformer; {backbone!r} is {type(self.vit).__name__}"
                " (BEiT brings its own relative position bias)"
            )
        # global blocks: the img_size grid (ViTDet's input_size); the 'taps' model is built at img_size
        grid = input_grid if self.grid_form else tuple(int(g) for g in self.vit.patch_embed.grid_size)
        names = []
        for i, blk in enumerate(self.vit.blocks):
            size = grid if not self.window_size or i in self.global_blocks else (self.window_size,) * 2
            blk.attn = RelPosAttention(blk.attn, size, self.rel_pos)
            names += [f"blocks.{i}.attn.{n}" for n, _ in blk.attn.named_parameters() if "rel" in n]
        return names

    def _set_rel_pos_grids(self, x: torch.Tensor) -> None:
        """Tells each `RelPosAttention` the token grid of this input: the window, or the whole (padded) image."""
        h, w = self.vit.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        for i, blk in enumerate(self.vit.blocks):
            windowed = self.window_size and i not in self.global_blocks
            blk.attn.grid = (0, self.window_size, self.window_size) if windowed else (self.vit.num_prefix_tokens, h, w)

    def init_weights(self) -> None:
        # BaseModule.init_weights would recurse into the timm model and re-run its init over the loaded weights.
        # Only the pyramid is new: PyTorch's default init for its transposed convs, unit norms (as mmseg's neck).
        for module in self.scales.modules():
            if isinstance(module, nn.ConvTranspose2d | nn.LayerNorm | nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
        self._is_init = True

    def _block_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps [B, D, h, w] of the blocks in `self.taps` (in tap order)."""
        wanted = sorted(set(self.taps))
        if self._rel_pos_added:
            self._set_rel_pos_grids(x)
        if self.window_size or self.grid_form:
            maps = self._forward_windowed(x, wanted)
        else:
            expected = tuple(self.vit.patch_embed.img_size)
            if not getattr(self.vit, "dynamic_img_size", False) and tuple(x.shape[-2:]) != expected:
                raise ValueError(
                    f"{type(self.vit).__name__} backbone takes inputs of img_size {expected} only, got "
                    f"{tuple(x.shape[-2:])}; set img_size (and the crop size) to the input size"
                )
            maps = self.vit.forward_intermediates(
                x, indices=wanted, norm=False, stop_early=True, output_fmt="NCHW", intermediates_only=True
            )
        by_block = dict(zip(wanted, maps, strict=True))
        return [by_block[t] for t in self.taps]

    def _forward_windowed(self, x: torch.Tensor, wanted: list[int]) -> list[torch.Tensor]:
        vit, window, P = self.vit, self.window_size, self.vit.num_prefix_tokens
        x = vit.patch_embed(x)  # [B, h, w, D] (dynamic size: NHWC)
        B, h, w, _ = x.shape
        if self.window_pos == "tile":
            embedded = self._tiled_pos_embed(x)
        else:
            embedded = self._grid_pos_embed(x) if self.grid_form else vit._pos_embed(x)
        x = vit.norm_pre(vit.patch_drop(embedded))  # [B, P + h*w, D]
        maps = []
        for i, blk in enumerate(vit.blocks[: max(wanted) + 1]):
            if not window or i in self.global_blocks:
                x = blk(x)
            else:  # the grid in windows; a class token attends on its own
                grid = windowed_block(blk, x[:, P:].reshape(B, h, w, -1), window).reshape(B, h * w, -1)
                x = torch.cat([blk(x[:, :P]), grid], dim=1) if P else grid
            if i in wanted:
                maps.append(x[:, P:].transpose(1, 2).reshape(B, -1, h, w))  # [B, D, h, w]
        return maps

    def _grid_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h, w, D] patches -> [B, h*w, D] tokens plus the pretrained grid's position embedding resampled to
        (h, w) (ViTDet's `get_abs_pos`)."""
        vit = self.vit
        B, h, w, D = x.shape
        x = x.reshape(B, h * w, D)
        if vit.pos_embed is not None:
            x = x + abs_pos_on_grid(vit.pos_embed, tuple(vit.patch_embed.grid_size), (h, w))
        return vit.pos_drop(x)

    def _tiled_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h, w, D] patches -> [B, P + h*w, D] tokens, the pretrained grid's position embedding (resampled to one
        window) repeated in every window, as windows are cut (Bolya et al. 2023, "Window Attention is Bugged"): each
        window sees the positions of pretraining rather than a slice of an interpolated larger grid."""
        from timm.layers import resample_abs_pos_embed

        vit, window = self.vit, self.window_size
        B, h, w, D = x.shape
        P = vit.num_prefix_tokens
        embedded_prefix = 0 if vit.no_embed_class else P
        pos = resample_abs_pos_embed(
            vit.pos_embed, new_size=(window, window), old_size=vit.patch_embed.grid_size,
            num_prefix_tokens=embedded_prefix,
        )
        grid = pos[:, embedded_prefix:].reshape(1, window, window, D)
        grid = grid.repeat(1, -(-h // window), -(-w // window), 1)[:, :h, :w]
        x = (x + grid).reshape(B, h * w, D)
        prefix = [t.expand(B, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1)
            if embedded_prefix:
                tokens = tokens + pos[:, :embedded_prefix]
            x = torch.cat([tokens, x], dim=1)
        return vit.pos_drop(x)

    def train(self, mode: bool = True) -> HarnessViT:
        super().train(mode)
        if self.frozen:  # a frozen encoder keeps its inference behaviour: no drop path, no dropout
            self.vit.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 3, H, W] -> four maps [B, C_i, H / stride_i, W / stride_i]."""
        maps = self._block_maps(x)
        return tuple(scale(m) for scale, m in zip(self.scales, maps, strict=True))
