"""The supervised baseline of the MAE paper's tables: the same timm ViT trained from scratch with labels (cross-entropy
with label smoothing, as DeiT, Touvron et al. 2021), exported like the other methods, encoder only (the class head is
dropped; a transfer task puts a fresh one on).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.checkpoint import build_model
from backbones.registry import BackboneSpec


class SupervisedViT(nn.Module):
    """A timm ViT with a `num_classes` head; `training_loss((images, labels), t)` is the smoothed cross-entropy."""

    def __init__(self, encoder: nn.Module, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if encoder.num_classes == 0:
            raise ValueError("the supervised baseline needs a ViT built with num_classes > 0")
        self.encoder = encoder
        self.label_smoothing = label_smoothing

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{k}" for k in self.encoder.no_weight_decay()}  # cls_token, pos_embed (timm's own list)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)  # [N, num_classes]

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch_frac: float) -> torch.Tensor:
        images, labels = batch[0], batch[-1]
        return F.cross_entropy(self(images).float(), labels, label_smoothing=self.label_smoothing)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}


def build(spec: BackboneSpec, recipe: dict[str, Any]) -> SupervisedViT:
    cfg = recipe.get("model", {})
    if "num_classes" not in cfg:
        raise KeyError(f"recipe {recipe.get('name')!r} lacks model.num_classes for the supervised baseline")
    encoder = build_model(spec, num_classes=cfg["num_classes"])
    return SupervisedViT(encoder, label_smoothing=cfg.get("label_smoothing", 0.1))
