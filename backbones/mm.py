"""The mmengine adapter: any registered backbone as an mmdet / mmseg backbone, and layer-wise lr decay for it.

The simple feature pyramid, window attention and the detection backbone's form follow ViTDet (Li et al. 2022,
"Exploring Plain Vision Transformer Backbones for Object Detection"; detectron2 `modeling/backbone/vit.py` and
`utils.py`), written so that the same weights give detectron2's outputs to float precision (`vitdet_to_harness` maps
its parameter names); the four-tap pyramid and layer decay follow the BEiT / MAE segmentation code (mmseg
`Feature2Pyramid`, `LearningRateDecayOptimizerConstructor`).

Importing this module registers, in mmengine's root registries (found from both the mmdet and mmseg scopes, under
names neither library has):

* `HarnessViT` (MODELS): `dict(type='HarnessViT', backbone='mae_vit_base_patch16', checkpoint=None, img_size=(H, W),
  pyramid='taps', ...)`; the weights are loaded through `backbones.create_backbone` with every key accounted for;
* `HarnessSimpleFPN` (MODELS): ViTDet's per-level 1x1 + 3x3 convs with LayerNorm after `pyramid='simple'`, an mmdet
  neck (`dict(type='HarnessSimpleFPN', in_channels=[...], out_channels=256, num_outs=5)`);
* `HarnessLayerDecayOptimizerConstructor` (OPTIM_WRAPPER_CONSTRUCTORS): `constructor=...` with
  `paramwise_cfg=dict(layer_decay_rate=0.65)`.

Configs also name `custom_imports=dict(imports=['backbones.mm'], allow_failed_imports=False)`; tasks import this module
themselves as well, because `Runner.from_cfg` on a dict ignores `custom_imports`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

import harness.compat  # noqa: F401  (fixes applied on import)
from backbones.checkpoint import build_model, create_backbone
from backbones.registry import get_spec

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)
PYRAMIDS = ("simple", "taps")
PYRAMID_NORMS = ("bn", "syncbn", "ln")  # the x4 branch's norm; None picks the pyramid's published one
PUBLISHED_NORM = {"taps": "bn", "simple": "ln"}  # mmseg Feature2Pyramid (SyncBN in its configs); ViTDet
REL_POS = ("decomposed", "table")  # relative position bias modes of `RelPosAttention`
_KNOWN_SCALES = (4.0, 2.0, 1.0, 0.5)
# Modules of a classifier that a dense backbone never uses: removed so that DDP sees no parameter without a gradient.
_UNUSED_TOP_MODULES = ("norm", "fc_norm", "head")
DECAY_RULES = ("mmseg", "detectron2")  # weight-decay and layer-id rules of `HarnessLayerDecayOptimizerConstructor`


@lru_cache(maxsize=32)
def arch_shape(backbone: str) -> tuple[int, int, int]:
    """(embed_dim, depth, patch_size) of a backbone, from its architecture built on the meta device (no weights)."""
    with torch.device("meta"):
        model = build_model(get_spec(backbone))
    return int(model.embed_dim), len(model.blocks), int(model.patch_embed.patch_size[0])


@lru_cache(maxsize=32)
def is_plain_vit(backbone: str) -> bool:
    """True for a timm `VisionTransformer` (inputs of any size, blocks with timm's `Block` layout); False for others
    (BEiT: fixed input size, its own relative position bias)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        return isinstance(build_model(get_spec(backbone)), VisionTransformer)


def _check_pyramid(pyramid: str, scale_factors: Sequence[float]) -> None:
    if pyramid not in PYRAMIDS:
        raise ValueError(f"pyramid must be one of {', '.join(PYRAMIDS)}, not {pyramid!r}")
    bad = [s for s in scale_factors if float(s) not in _KNOWN_SCALES]
    if bad or not scale_factors:
        raise ValueError(f"scale_factors must be taken from {_KNOWN_SCALES}, got {tuple(scale_factors)}")


def _out_channels(dim: int, pyramid: str, scale: float) -> int:
    if pyramid == "taps":
        return dim
    return {4.0: dim // 4, 2.0: dim // 2}.get(float(scale), dim)  # ViTDet: upsampling halves the width per x2


def pyramid_channels(backbone: str, pyramid: str = "taps", scale_factors: Sequence[float] = SCALE_FACTORS) -> list[int]:
    """Channels of the four outputs: `[D//4, D//2, D, D]` (simple) or `[D] * 4` (taps) for scales (4, 2, 1, 0.5)."""
    _check_pyramid(pyramid, scale_factors)
    dim = arch_shape(backbone)[0]
    return [_out_channels(dim, pyramid, s) for s in scale_factors]


def pyramid_strides(
    backbone: str, scale_factors: Sequence[float] = SCALE_FACTORS, patch_size: int | None = None
) -> list[int]:
    """Strides of the outputs, patch_size / scale: 4, 8, 16, 32 for patch 16. A non-integral stride (patch 14) is
    returned as a float. `patch_size` overrides the backbone's (ViTDet runs ViT-H/14 at patch 16)."""
    _check_pyramid("taps", scale_factors)
    patch = patch_size or arch_shape(backbone)[2]
    strides = [patch / float(s) for s in scale_factors]
    return [int(s) if float(s).is_integer() else s for s in strides]


def _norm2d(norm: str, channels: int) -> nn.Module:
    from timm.layers import LayerNorm2d

    if norm == "ln":
        return LayerNorm2d(channels)
    return nn.SyncBatchNorm(channels) if norm == "syncbn" else nn.BatchNorm2d(channels)


def _rescale(dim: int, scale: float, pyramid: str, norm: str) -> nn.Module:
    """x4: two stride-2 transposed convs (with bias) with a norm + GELU between; x2: one; x1: identity; x0.5:
    max-pool. The norm is mmseg's `Feature2Pyramid`'s BatchNorm (SyncBN under DDP) for 'taps', ViTDet's LayerNorm for
    'simple'."""
    scale = float(scale)
    if scale == 4.0:
        mid = dim // 2 if pyramid == "simple" else dim
        out = _out_channels(dim, pyramid, scale)
        return nn.Sequential(
            nn.ConvTranspose2d(dim, mid, 2, 2), _norm2d(norm, mid), nn.GELU(), nn.ConvTranspose2d(mid, out, 2, 2)
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, _out_channels(dim, pyramid, scale), 2, 2)
    if scale == 1.0:
        return nn.Identity()
    return nn.MaxPool2d(2, 2)


WINDOW_POS = ("interpolate", "tile")


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, D] -> [B * nH * nW, window * window, D], zero-padding H and W up to multiples of `window`."""
    B, H, W, D = x.shape
    pad_h, pad_w = (-H) % window, (-W) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, D), (Hp, Wp)


def window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The inverse of `window_partition`: [B * nH * nW, window * window, D] -> [B, H, W, D]."""
    Hp, Wp = padded
    B = x.shape[0] // ((Hp // window) * (Wp // window))
    x = x.view(B, Hp // window, Wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, Hp, Wp, -1)[:, : size[0], : size[1]]


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


def windowed_block(blk: nn.Module, x: torch.Tensor, window: int) -> torch.Tensor:
    """A timm `Block` (its own parameters, under its own names) run as ViTDet's windowed block on `[B, H, W, D]`:
    norm1, then zero-padding to a multiple of `window` (so padded keys are zeros, not the norm's bias), attention
    within windows, unpadding, and the residuals with stochastic depth drawn per image."""
    H, W = x.shape[1:3]
    windows, padded = window_partition(blk.norm1(x), window)  # [B * nW, window * window, D]
    x = x + blk.drop_path1(blk.ls1(window_unpartition(blk.attn(windows), window, padded, (H, W))))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def rel_pos_table(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """`[q_size, k_size, C]` embeddings of the relative offsets between q_size queries and k_size keys along one axis,
    from a table of `[2 * S - 1, C]` (resampled linearly to `2 * max(q_size, k_size) - 1` rows when S differs);
    offsets are scaled to the coarser of the two grids (ViTDet's `get_rel_pos`)."""
    rows = 2 * max(q_size, k_size) - 1
    if table.shape[0] != rows:
        table = F.interpolate(table.t()[None], size=rows, mode="linear")[0].t()  # [rows, C]
    q = torch.arange(q_size, device=table.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=table.device)[None, :] * max(q_size / k_size, 1.0)
    return table[(q - k + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


@lru_cache(maxsize=32)
def rel_pos_index(h: int, w: int, prefix: int, device: torch.device | None = None) -> torch.Tensor:
    """`[N, N]` rows of a BEiT relative position bias table (N = prefix + h * w, the grid in row-major order after the
    prefix tokens): grid pairs index `(dy + h - 1) * (2w - 1) + dx + w - 1`; the last three rows are prefix -> grid,
    grid -> prefix and prefix -> prefix (BEiT's class-token entries). Cached: every block and step asks for it."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    pairs = (2 * h - 1) * (2 * w - 1)
    index = torch.empty(prefix + h * w, prefix + h * w, dtype=torch.long)
    index[prefix:, prefix:] = (ys[:, None] - ys[None] + h - 1) * (2 * w - 1) + xs[:, None] - xs[None] + w - 1
    index[:prefix, :] = pairs
    index[:, :prefix] = pairs + 1
    index[:prefix, :prefix] = pairs + 2
    return index.to(device)


class RelPosAttention(nn.Module):
    """A timm `Attention` (its own qkv, norms and projection, under the same names) plus a relative position bias on
    its logits, zero at the start so that loaded weights compute the same features until fine-tuning moves it:

    * `mode='decomposed'` (ViTDet, Li et al. 2022, Sec. 4.1; detectron2 `add_decomposed_rel_pos`, after MViTv2): query
      (y, x) and key (y', x') gain `q . R_h[y - y'] + q . R_w[x - x']`, one `[2S - 1, head_dim]` table per axis;
      prefix tokens get none.
    * `mode='table'` (BEiT, Bao et al. 2021; the MAE paper's ADE20K runs, mmseg's `MAEAttention`): a learned scalar per
      head for every 2-D offset, `relative_position_bias_table` `[(2h - 1)(2w - 1) + 3, heads]`, the last three rows for
      the class token's pairs.

    Tables are made for the grid `size`; another grid resamples them (linearly per axis; bicubically over the
    offset grid). The token grid `(prefix, h, w)` of the next calls is set by the owner (`grid`): tokens
    `prefix:` are the `h x w` grid in row-major order. A call whose token count does not match the grid (the class
    token alone, in windowed blocks) runs without bias.
    """

    def __init__(self, attn: nn.Module, size: tuple[int, int], mode: str = "decomposed") -> None:
        super().__init__()
        if mode not in REL_POS:
            raise ValueError(f"rel_pos must be one of {', '.join(REL_POS)} or null, got {mode!r}")
        if getattr(attn, "gate", None) is not None:
            raise ValueError("RelPosAttention: gated timm attention is not supported")
        self.mode, self.size = mode, (int(size[0]), int(size[1]))
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.attn_dim = attn.num_heads * attn.head_dim
        for name in ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"):
            setattr(self, name, getattr(attn, name))
        h, w = self.size
        if mode == "decomposed":
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * h - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * w - 1, self.head_dim))
        else:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1) + 3, attn.num_heads))
        self.grid: tuple[int, int, int] = (0, h, w)

    def _decomposed(self, q: torch.Tensor, prefix: int, h: int, w: int) -> torch.Tensor:
        """`[B, heads, N, N]` from queries `q` `[B, heads, N, head_dim]` (unscaled, as ViTDet)."""
        B, heads, _, C = q.shape
        rq = q[:, :, prefix:].reshape(B, heads, h, w, C)
        rel_h = torch.einsum("bnyxc,ykc->bnyxk", rq, rel_pos_table(self.rel_pos_h, h, h).to(q.dtype))  # [.., h, w, h]
        rel_w = torch.einsum("bnyxc,xkc->bnyxk", rq, rel_pos_table(self.rel_pos_w, w, w).to(q.dtype))  # [.., h, w, w]
        grid = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, h * w, h * w)
        return F.pad(grid, (prefix, 0, prefix, 0)) if prefix else grid

    def _table(self, q: torch.Tensor, prefix: int, h: int, w: int) -> torch.Tensor:
        """`[1, heads, N, N]`, the same for every image."""
        table = self.relative_position_bias_table  # [(2H - 1)(2W - 1) + 3, heads]
        H, W = self.size
        if (h, w) != (H, W):
            pairs = table[:-3].t().reshape(1, -1, 2 * H - 1, 2 * W - 1)
            pairs = F.interpolate(pairs, size=(2 * h - 1, 2 * w - 1), mode="bicubic", align_corners=False)
            table = torch.cat([pairs.reshape(self.num_heads, -1).t(), table[-3:]])
        index = rel_pos_index(h, w, prefix, table.device)
        return table[index].permute(2, 0, 1)[None].to(q.dtype)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("RelPosAttention: attention masks are not supported")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        prefix, h, w = self.grid
        bias = None
        if N == prefix + h * w:
            bias = self._decomposed(q, prefix, h, w) if self.mode == "decomposed" else self._table(q, prefix, h, w)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
        )
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        return self.proj_drop(self.proj(x))


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
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        _check_pyramid(pyramid, scale_factors)
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
        self.scales = nn.ModuleList(_rescale(dim, s, pyramid, self.pyramid_norm) for s in self.scale_factors)
        self.out_channels = [_out_channels(dim, pyramid, s) for s in self.scale_factors]
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 3, H, W] -> four maps [B, C_i, H / stride_i, W / stride_i]."""
        maps = self._block_maps(x)
        return tuple(scale(m) for scale, m in zip(self.scales, maps, strict=True))


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


def _find_harness_vit(model: nn.Module) -> tuple[str, HarnessViT]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, HarnessViT)]
    if len(found) != 1:
        raise ValueError(
            f"HarnessLayerDecayOptimizerConstructor needs a model with exactly one HarnessViT backbone, "
            f"found {len(found)} in {type(model).__name__}"
        )
    return found[0]


def _vit_prefix(model: nn.Module) -> tuple[str, HarnessViT]:
    prefix, backbone = _find_harness_vit(model)
    return (f"{prefix}.vit." if prefix else "vit."), backbone


def _layer_id(local: str | None, depth: int, rule: str) -> int:
    """Layer id of a parameter named `local` inside the ViT (None: outside it) under a reference's rule:
    embeddings 0, block i at i + 1, everything else (final norms, shared tables, pyramid, neck, heads) at L + 1.

    * 'mmseg' (`mmseg/engine/optimizers/layer_decay_optimizer_constructor.py`, `get_layer_id_for_vit`; BEiT's
      `semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py` the same): `cls_token`, `mask_token`,
      `pos_embed` and `patch_embed.*` are 0.
    * 'detectron2' (`detectron2/modeling/backbone/vit.py`, `get_vit_lr_decay_rate`): only `pos_embed` and
      `patch_embed.*` are 0; a class token (ViTDet has none) would train at the full lr.
    """
    if local is None:
        return depth + 1
    embeddings = ("pos_embed",) if rule == "detectron2" else ("cls_token", "mask_token", "pos_embed")
    if local in embeddings or local.startswith("patch_embed."):
        return 0
    if local.startswith("blocks."):
        return int(local.split(".")[1]) + 1
    return depth + 1


# detectron2 `get_default_optimizer_params`: the module types whose parameters take `weight_decay_norm`.
_TORCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
                nn.LocalResponseNorm)  # fmt: skip


def _no_decay_mmseg(name: str, param: nn.Parameter) -> bool:
    """mmseg's `LearningRateDecayOptimizerConstructor.add_params`: 1-D parameters and `.bias` are not decayed. Its
    exemption of `name in ('pos_embed', 'cls_token')` tests the segmentor's full names (`backbone.pos_embed`), so it
    never matches: the class token, the position embedding and the relative position bias tables are decayed."""
    return param.ndim == 1 or name.endswith(".bias")


def _no_decay_detectron2(local: str, owner: nn.Module, in_vit: bool) -> bool:
    """ViTDet's `configs/common/optim.py` AdamW (`weight_decay_norm=0.0`) with the COCO configs'
    `overrides={"pos_embed": {"weight_decay": 0.0}}` through `get_default_optimizer_params`: only parameters of torch
    norm modules and `pos_embed` are not decayed; biases (`weight_decay_bias` unset), rel-pos tables and tokens are.
    ViTDet builds every LayerNorm outside the ViT (pyramid, FPN convs, box and mask heads) from detectron2's own
    `LayerNorm`, which is not a `torch.nn.LayerNorm` and so is decayed: LayerNorms outside the ViT are decayed here."""
    if local == "pos_embed":
        return True
    if isinstance(owner, nn.LayerNorm):
        return in_vit
    return isinstance(owner, _TORCH_NORMS)


def param_rules(model: nn.Module, rule: str) -> dict[str, tuple[int, bool]]:
    """(layer id, no weight decay) of every trainable parameter of a model holding one `HarnessViT`, under `rule`
    ('mmseg' or 'detectron2', see `_layer_id`, `_no_decay_mmseg`, `_no_decay_detectron2`)."""
    if rule not in DECAY_RULES:
        raise ValueError(f"paramwise_cfg decay_rule must be one of {', '.join(DECAY_RULES)}, not {rule!r}")
    vit_prefix, backbone = _vit_prefix(model)
    rules = {}
    for module_name, module in model.named_modules():
        for short, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{short}" if module_name else short
            if not param.requires_grad or name in rules:
                continue
            local = name[len(vit_prefix) :] if name.startswith(vit_prefix) else None
            if rule == "mmseg":
                no_wd = _no_decay_mmseg(name, param)
            else:
                no_wd = _no_decay_detectron2(local or short, module, local is not None)
            rules[name] = (_layer_id(local, backbone.depth, rule), no_wd)
    return rules


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class HarnessLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay (BEiT, Bao et al. 2021): layer i of a depth-L ViT trains at lr * decay ** (L + 1 - i), with
    L the backbone's depth (mmseg's `num_layers`, detectron2's `num_layers`), and weight decay by the rule of the
    reference code the task follows:

    * `decay_rule='mmseg'` (ADE20K, the MAE/BEiT UperNet): no decay on 1-D parameters and biases only;
    * `decay_rule='detectron2'` (COCO, ViTDet): no decay on the ViT's norms, other torch norms, and `pos_embed`.

    `paramwise_cfg=dict(layer_decay_rate=0.65, decay_rule='mmseg')`; the depth is read from the model's `HarnessViT`.
    """

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "", is_dcn_module: Any = None) -> None:
        unknown = sorted(set(self.paramwise_cfg) - {"layer_decay_rate", "decay_rule"})
        if unknown:
            raise KeyError(f"HarnessLayerDecayOptimizerConstructor: unknown paramwise_cfg key(s) {', '.join(unknown)}")
        if "decay_rule" not in self.paramwise_cfg:
            raise KeyError(f"HarnessLayerDecayOptimizerConstructor: paramwise_cfg needs decay_rule ({DECAY_RULES})")
        decay = float(self.paramwise_cfg.get("layer_decay_rate", 1.0))
        rules = param_rules(module, self.paramwise_cfg["decay_rule"])
        top = _vit_prefix(module)[1].depth + 1
        base_wd = self.base_wd or 0.0
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in module.named_parameters():
            if name not in rules:
                continue
            layer, no_wd = rules[name]
            scale = decay ** (top - layer)
            group = groups.setdefault(
                (layer, no_wd),
                {
                    "params": [],
                    "param_names": [],
                    "lr": self.base_lr * scale,
                    "lr_scale": scale,
                    "layer_id": layer,
                    "weight_decay": 0.0 if no_wd else base_wd,
                },
            )
            group["params"].append(param)
            group["param_names"].append(name)
        params.extend(groups[k] for k in sorted(groups))
