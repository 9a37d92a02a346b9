"""The in1k loops, after facebookresearch/mae `engine_finetune.py`: one training epoch with gradient accumulation and
the lr set per optimizer step (`util/lr_sched.py`), and top-1 / top-5 evaluation over every rank's shard."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from tasks import NonFiniteLoss
from tasks.classification.distributed import Dist
from tasks.classification.model import Classifier
from tasks.training import autocast


@dataclass
class Trainer:
    """What a training epoch needs besides its data."""

    model: Classifier
    wrapped: nn.Module  # the model, or its DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's CosineLRScheduler, stepped per optimizer step
    criterion: nn.Module
    mixup: Any  # timm's Mixup, or None
    accum: int  # micro batches per optimizer step
    clip_grad: float | None
    device: torch.device
    precision: str
    cached: bool  # the loader yields the frozen part's output, not images


def train_one_epoch(t: Trainer, loader: DataLoader, first_update: int) -> tuple[float, int]:
    """One pass; an optimizer step every `accum` micro batches (the lr set per step, as MAE's `lr_sched`).

    Returns the mean loss and the number of optimizer steps taken.
    """
    t.model.train()
    updates, total, count = 0, 0.0, 0
    n_micro = (len(loader) // t.accum) * t.accum  # an incomplete accumulation at the end is dropped
    for i, (x, y) in enumerate(loader):
        if i >= n_micro:
            break
        if i % t.accum == 0:
            t.scheduler.step_update(first_update + updates)
        x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        if t.mixup is not None:
            x, y = t.mixup(x, y)
        z = x if t.cached else t.model.encode(x)  # the frozen part's output: computed once, or now
        last = (i + 1) % t.accum == 0
        sync = contextlib.nullcontext() if last or not hasattr(t.wrapped, "no_sync") else t.wrapped.no_sync()
        with sync:
            with autocast(t.device, t.precision):
                loss = t.criterion(t.wrapped(z), y)
            (loss / t.accum).backward()
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(first_update + updates + 1, loss.item())
        total, count = total + loss.item(), count + 1
        if last:
            _step(t)
            updates += 1
    return total / max(count, 1), updates


def _step(t: Trainer) -> None:
    if t.clip_grad:
        nn.utils.clip_grad_norm_([p for p in t.model.parameters() if p.requires_grad], t.clip_grad)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model: Classifier, loader: DataLoader, dist_: Dist, device: torch.device, precision: str,
             num_classes: int, cached: bool = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) over every rank's shard of the val set."""
    model.eval()
    k = min(5, num_classes)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # [top1 hits, top5 hits, images]
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x if cached else model.encode(x))  # [B, classes]
        top = logits.float().topk(k, dim=1).indices  # [B, k]
        hits = top == y[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), torch.tensor(len(y), device=device)])
    if dist_.world > 1:
        dist.all_reduce(counts)
    return {"top1": float(100 * counts[0] / counts[2]), "top5": float(100 * counts[1] / counts[2])}
