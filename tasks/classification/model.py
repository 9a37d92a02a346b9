"""The in1k model: a timm ViT with a new head, split into the part that is frozen and the part that trains, for
end-to-end fine-tuning, linear probing (MAE `main_linprobe.py`: the head behind a `BatchNorm1d` without affine) and
partial fine-tuning of the last K blocks (He et al. 2021, section 4.3); and the pixel reference (`pixels`): the linear
probe's head on the raw normalised pixels, a control of `harness run --controls`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tasks import TaskContext


class Classifier(nn.Module):
    """A timm ViT split into a frozen part (`encode`: no gradients, eval mode) and the part that trains (`forward`).

    fine-tune: nothing frozen. partial (K blocks): the embeddings and the first depth - K blocks frozen; for a timm
    `VisionTransformer` `encode` returns their tokens, so they can be cached. linear probe: everything but the head
    frozen; `encode` returns the pooled class-token feature.
    """

    def __init__(self, vit: nn.Module, protocol: str, blocks: int = 0) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = vit
        self.protocol = protocol
        depth = len(vit.blocks)
        self.n_frozen = {"finetune": 0, "partial": depth - blocks, "linprobe": depth}[protocol]
        self.splits_tokens = protocol == "partial" and isinstance(vit, VisionTransformer)
        self.frozen = self._frozen_modules()
        for p in vit.parameters():
            p.requires_grad = protocol == "finetune"
        for module in self._trainable_modules():
            module.requires_grad_(True)

    def _trainable_modules(self) -> list[nn.Module]:
        if self.protocol == "finetune":
            return [self.vit]
        tail = ["head"] if self.protocol == "linprobe" else ["norm", "fc_norm", "head_drop", "head"]
        mods = [getattr(self.vit, n) for n in tail if isinstance(getattr(self.vit, n, None), nn.Module)]
        return mods + list(self.vit.blocks[self.n_frozen :]) if self.protocol == "partial" else mods

    def _frozen_modules(self) -> list[nn.Module]:
        if self.protocol == "finetune":
            return []
        keep = {id(m) for m in self._trainable_modules()}
        out = [m for n, m in self.vit.named_children() if n != "blocks" and id(m) not in keep]
        return out + list(self.vit.blocks[: self.n_frozen])

    @property
    def cacheable(self) -> bool:
        """Whether `encode` does all the frozen work, so that its output can be computed once."""
        return self.protocol == "linprobe" or self.splits_tokens

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for m in self.frozen:  # frozen blocks keep their pretrained behaviour: no drop path, no dropout
            m.eval()
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> what the trainable part takes: images, tokens [B, L, D] or features [B, D]."""
        vit = self.vit
        if self.protocol == "linprobe":
            return vit.forward_head(vit.forward_features(x), pre_logits=True)  # [B, D]
        if self.splits_tokens:
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # [B, L, D]
            return vit.blocks[: self.n_frozen](x)
        return x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The output of `encode` -> logits [B, classes]."""
        vit = self.vit
        if self.protocol == "linprobe":
            return vit.head(z)
        if self.splits_tokens:
            return vit.forward_head(vit.norm(vit.blocks[self.n_frozen :](z)))
        return vit(z)


class PixelClassifier(nn.Module):
    """The linear probe's head on the image itself: `BatchNorm1d` without affine, then a linear layer, on the
    normalised pixels flattened (`encode`: [B, 3, H, W] -> [B, 3 * H * W], nothing frozen to compute but the view)."""

    protocol = "pixels"
    cacheable = True
    n_frozen = 0  # no frozen block: `encode` is a view of the image

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # [B, 3 * H * W]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)


def pixel_classifier(cfg: dict[str, Any], num_classes: int, img_size: int) -> tuple[PixelClassifier, dict[str, Any]]:
    """The pixel reference, its head initialised as the linear probe's (`head_init_std`, zero bias)."""
    from timm.layers import trunc_normal_

    head = nn.Linear(3 * img_size * img_size, num_classes)
    trunc_normal_(head.weight, std=cfg["head_init_std"])
    nn.init.zeros_(head.bias)
    return PixelClassifier(head), {"checkpoint": None, "pixels": True}


def build_classifier(ctx: TaskContext, cfg: dict[str, Any], protocol: str, num_classes: int, img_size: int,
                     blocks: int) -> tuple[Classifier | PixelClassifier, dict[str, Any]]:
    from timm.layers import trunc_normal_

    from backbones.checkpoint import create_backbone

    vit = create_backbone(
        ctx.backbone, checkpoint=ctx.checkpoint, img_size=img_size, num_classes=num_classes,
        global_pool=cfg["global_pool"], drop_path_rate=cfg["drop_path"], allow_pickle=ctx.allow_pickle,
    )
    report = dict(getattr(vit, "load_report", {}) or {}, checkpoint=vit.checkpoint_path)
    trunc_normal_(vit.head.weight, std=cfg["head_init_std"])  # MAE: 2e-5 fine-tune, 0.01 linear probe
    nn.init.zeros_(vit.head.bias)
    if protocol == "linprobe":  # MAE main_linprobe.py: a BatchNorm without affine, a whitening of the features
        vit.head = nn.Sequential(nn.BatchNorm1d(vit.head.in_features, affine=False, eps=1e-6), vit.head)
    return Classifier(vit, protocol, blocks), report
