"""Golden tests of the fixed 2D sin-cos position embedding (MAE `util/pos_embed.py`), which checkpoints depend on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backbones.pos_embed import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed


def closed_form(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Entry by entry: patch (r, c) at row r * gw + c; channels [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)]."""
    q = dim // 4
    out = torch.empty(gh * gw, dim, dtype=torch.float64)
    for r in range(gh):
        for c in range(gw):
            for k in range(q):
                w = 1.0 / 10000 ** (k / q)
                out[r * gw + c, k] = math.sin(c * w)
                out[r * gw + c, q + k] = math.cos(c * w)
                out[r * gw + c, 2 * q + k] = math.sin(r * w)
                out[r * gw + c, 3 * q + k] = math.cos(r * w)
    return out


def mae_reference(embed_dim: int, grid_size: int, cls_token: bool) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py, verbatim in numpy (np.float -> np.float64)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


@pytest.mark.parametrize("dim,gh,gw", [(16, 3, 3), (32, 4, 5), (8, 1, 6)])
def test_matches_closed_form(dim: int, gh: int, gw: int) -> None:
    emb = get_2d_sincos_pos_embed(dim, (gh, gw))
    assert emb.shape == (gh * gw, dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.double(), closed_form(dim, gh, gw), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dim,grid", [(96, 8), (64, 14), (768, 14)])
def test_matches_official_mae(dim: int, grid: int) -> None:
    ours = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
    ref = torch.from_numpy(mae_reference(dim, grid, cls_token=True)).float()
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_class_token_row_is_zero_and_first() -> None:
    with_cls = get_2d_sincos_pos_embed(16, 4, cls_token=True)
    assert with_cls.shape == (17, 16)
    assert torch.all(with_cls[0] == 0)
    torch.testing.assert_close(with_cls[1:], get_2d_sincos_pos_embed(16, 4))


def test_distinct_positions_and_unit_pairs() -> None:
    emb = get_2d_sincos_pos_embed(32, 6).double()
    assert torch.unique(emb, dim=0).shape[0] == 36  # every patch gets its own code
    q = 8
    # sin^2 + cos^2 = 1 for each frequency of each axis
    torch.testing.assert_close(emb[:, :q] ** 2 + emb[:, q : 2 * q] ** 2, torch.ones(36, q, dtype=torch.float64))


def test_bad_dims_raise() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        get_2d_sincos_pos_embed(10, 4)
    with pytest.raises(ValueError, match="even"):
        get_1d_sincos_pos_embed_from_grid(5, torch.arange(3))
