"""MoCo v3 for ViTs (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"),
after facebookresearch/moco-v3 `moco/builder.py`, `vits.py` and `main_moco.py`.

A base encoder (the registry's timm ViT, its `head` replaced by a 3-layer projection MLP with BatchNorm) and a
prediction MLP (2 layers) learn against a momentum encoder (an EMA copy of the base encoder with its own projection
MLP, no predictor) whose momentum rises from `momentum` to 1 on a half-cosine over training. The loss is InfoNCE of
each view's prediction against the other view's momentum key, temperature `T`, symmetric, scaled by 2T as in the
official code. As in `vits.py`, the position embedding is the fixed 2D sin-cos one and the patch projection is frozen
at its random init ("random patch projection", the paper's stability fix). Only the base encoder is exported.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.checkpoint import build_model
from backbones.pos_embed import get_2d_sincos_pos_embed
from backbones.registry import BackboneSpec


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """moco-v3's `_build_mlp`: bias-free linears, BN + ReLU between, an affine-free BN at the end if `last_bn`."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=False))  # follows SimCLR's design
    return nn.Sequential(*layers)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries `[N, C]` against keys `[N, C]`; the positive of q_i is k_i. Scaled by 2T as moco-v3."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    logits = q @ k.t() / temperature  # [N, N]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def momentum_at(epoch_frac: float, epochs: int, base: float) -> float:
    """moco-v3's `adjust_moco_momentum`: from `base` at the start to 1 at the end, on a half-cosine."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch_frac / epochs)) * (1.0 - base)


class MoCoV3ViT(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        epochs: int,
        dim: int = 256,
        mlp_dim: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
        stop_grad_patch_embed: bool = True,
    ) -> None:
        super().__init__()
        self.epochs, self.temperature, self.momentum = epochs, temperature, momentum
        grid = tuple(encoder.patch_embed.grid_size)
        encoder.pos_embed.data.copy_(get_2d_sincos_pos_embed(encoder.embed_dim, grid, cls_token=True)[None])
        encoder.pos_embed.requires_grad_(False)
        if stop_grad_patch_embed:
            encoder.patch_embed.proj.requires_grad_(False)
        encoder.head = build_mlp(3, encoder.embed_dim, mlp_dim, dim)  # the projector sits in the encoder's head
        self.base_encoder = encoder
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_encoder.requires_grad_(False)
        self.predictor = build_mlp(2, dim, mlp_dim, dim, last_bn=False)

    decay_every_parameter = True  # main_moco.py: AdamW over model.parameters(), one weight decay for all

    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.no_grad()
    def update_momentum_encoder(self, m: float) -> None:
        """EMA of the parameters (not the BatchNorm statistics, which each encoder keeps from its own batches)."""
        base = list(self.base_encoder.parameters())
        ema = list(self.momentum_encoder.parameters())
        torch._foreach_mul_(ema, m)
        torch._foreach_add_(ema, base, alpha=1.0 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(x1))  # [N, dim]
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self.update_momentum_encoder(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        t = self.temperature
        return contrastive_loss(q1, k2, t) + contrastive_loss(q2, k1, t)

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch_frac: float) -> torch.Tensor:
        x1, x2 = batch[0], batch[1]
        return self(x1, x2, momentum_at(epoch_frac, self.epochs, self.momentum))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        sd = self.base_encoder.state_dict()
        return {k: v.detach().clone() for k, v in sd.items() if not k.startswith("head.")}


def build(spec: BackboneSpec, recipe: dict[str, Any]) -> MoCoV3ViT:
    cfg = recipe.get("model", {})
    return MoCoV3ViT(
        build_model(spec),
        epochs=recipe["epochs"],
        dim=cfg.get("dim", 256),
        mlp_dim=cfg.get("mlp_dim", 4096),
        temperature=cfg.get("temperature", 0.2),
        momentum=cfg.get("momentum", 0.99),
        stop_grad_patch_embed=cfg.get("stop_grad_patch_embed", True),
    )
