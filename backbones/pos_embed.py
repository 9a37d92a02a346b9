"""Fixed 2D sine-cosine position embeddings, as facebookresearch/mae `util/pos_embed.py` (after MoCo v3 and the
Transformer's 1D form).

Half of the channels encode the column (x) of a patch and half its row (y); each half is `[sin(pos * w_k), cos(pos *
w_k)]` with `w_k = 1 / 10000 ** (k / (D / 4))`. Patches are flattened row-major, as a ViT flattens its grid. With
`cls_token=True` a row of zeros for the class token comes first. MAE's released checkpoints hold exactly these values,
so the layout (x half first, sin before cos) is part of the checkpoint format and sits behind a golden test.
"""

from __future__ import annotations

import torch


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """`[M, embed_dim]` for the positions `pos` (any shape, flattened to M)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a sin-cos embedding, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [M, D/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [M, D]


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> torch.Tensor:
    """`[gh * gw (+1), embed_dim]` float32: the embedding of a `grid_size` grid, class-token row of zeros first."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for a 2D sin-cos embedding, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # [gh, gw] each
    emb_x = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, cols)  # MAE's `grid[0]`: the column index
    emb_y = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, rows)
    emb = torch.cat([emb_x, emb_y], dim=1)  # [gh * gw, D]
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
