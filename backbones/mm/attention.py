"""Attention for the ViT backbones of the mm tasks: ViTDet's window attention and two relative position biases.

Window partitioning and the windowed block follow ViTDet (Li et al. 2022, "Exploring Plain Vision Transformer Backbones
for Object Detection"; detectron2 `modeling/backbone/utils.py` `window_partition`, `window_unpartition`,
`get_rel_pos`, `add_decomposed_rel_pos`), written so that the same weights give detectron2's outputs to float precision;
the table form of the bias follows BEiT (Bao et al. 2021; timm `beit.py`, mmseg's `MAEAttention`). Every module here
reuses a timm `Block`'s own parameters under their own names, so checkpoints load unchanged.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

REL_POS = ("decomposed", "table")  # relative position bias modes of `RelPosAttention`


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
