"""The in1k optimizer, schedule and loss, from timm: AdamW with layer-wise lr decay (timm's
`param_groups_layer_decay`, the grouping of facebookresearch/mae `util/lr_decay.py`) or LARS on the head (MAE's
`util/lars.py`), MAE's per-step `util/lr_sched.py`, and the losses of `main_finetune.py`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tasks.classification.model import Classifier


def build_optimizer(model: Classifier, cfg: dict[str, Any], lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW with layer-wise lr decay (fine-tune, partial) or LARS on the head (linear probe), from timm. `fused`
    (CUDA only, `tasks.training.fused_optimizer`) takes torch's single-kernel AdamW, the same update."""
    from timm.optim import Lars, create_optimizer_v2

    if cfg["opt"] == "adamw":
        # block i (1-based) gets lr scale decay^(depth + 1 - i); norms, biases, tokens and pos_embed no weight decay
        return create_optimizer_v2(model.vit, opt="adamw", lr=lr, weight_decay=cfg["weight_decay"],
                                   layer_decay=cfg["layer_decay"], **({"fused": True} if fused else {}))
    if cfg["opt"] == "lars":
        params = [p for p in model.parameters() if p.requires_grad]
        # MAE's LARS: weight decay and the trust ratio on weights only; biases take plain momentum SGD
        groups = [
            dict(params=[p for p in params if p.ndim > 1], weight_decay=cfg["weight_decay"], always_adapt=True),
            dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, always_adapt=False),
        ]
        return Lars([g for g in groups if g["params"]], lr=lr, momentum=cfg["momentum"], trust_coeff=0.001)
    raise ValueError(f"recipe key 'opt' must be adamw or lars, not {cfg['opt']!r}")


def build_criterion(cfg: dict[str, Any], mixup_active: bool) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:  # smoothing is folded into the mixed targets
        return SoftTargetCrossEntropy()
    if cfg.get("smoothing", 0.0) > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    return nn.CrossEntropyLoss()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], per_epoch: int) -> Any:
    """Linear warmup from 0, then half-cosine to `min_lr`, stepped per optimizer step (MAE's `lr_sched`)."""
    from timm.scheduler import CosineLRScheduler

    total, warmup = cfg["epochs"] * per_epoch, round(cfg["warmup_epochs"] * per_epoch)
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=cfg["min_lr"], warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
