"""ImageNet-1K classification: end-to-end fine-tuning, linear probing and partial fine-tuning of a pretrained ViT.

Follows He et al. 2021 ("Masked Autoencoders Are Scalable Vision Learners"), Tables 9 and 10, section 4.3 and
appendix A.1-A.3, and its code (facebookresearch/mae `main_finetune.py`, `main_linprobe.py`, `util/lr_decay.py`,
`util/lars.py`, `util/lr_sched.py`), split as that code splits it: `engine` (the loops), `model`, `optim` (parameter
groups, schedule, loss), `data`, `recipe`, `distributed` and `checkpoint`; this module puts them together.

* fine-tune: AdamW with layer-wise lr decay (timm's `param_groups_layer_decay`, the same grouping as MAE's
  `lr_decay.py`), RandAugment, mixup/cutmix, label smoothing, random erasing, drop path, global average pooling with
  `fc_norm`;
* linear probe: the backbone frozen, the class token through the backbone's final norm, `BatchNorm1d` without affine
  before the linear head, LARS (timm's `Lars`, adapted on weights only, as MAE's `LARS`);
* partial fine-tune: the last K blocks (and what follows them) tuned with the fine-tuning recipe, the rest frozen and
  run in eval mode; K = 0 is the linear probe;
* pixels (a control, `harness run --controls`): the linear probe's head and recipe on the raw normalised pixels.

The recipe is data (`tasks/recipes/in1k/<name>.yaml`, one section per protocol); values that depend on the model size
are mappings `{base: .., large: .., huge: ..}`, resolved from the backbone's width and recorded.
`lr = blr * batch / 256` with `batch` the effective batch, held on small machines by gradient accumulation. A frozen
part whose input is not augmented can be computed once (`cache_features`): the tiny recipes train heads and last
blocks on cached features. With `harness run --log-backend`, each epoch's loss, lr, top-1 and top-5 also go to
TensorBoard or W&B through mmengine's vis backends (`tasks.training.ScalarLog`, under the work dir; the
step is the epoch). Each epoch's line of the history also holds its training throughput (`images_per_s`,
`step_time_s` per micro batch, `data_wait_share`: the share of that time blocked on the loader) and `eta_s`; `cost`
in the record sums them up over the run. The val set is evaluated after every epoch, as MAE's scripts do: `top1` /
`top5` are the last epoch's, `top1_best` / `top1_best_epoch` the best epoch's (MAE's logs print that maximum).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tasks import TaskContext, TaskResult
from tasks.classification.checkpoint import CHECKPOINT, best_epoch, load_checkpoint, save_checkpoint
from tasks.classification.data import (
    MemoryImageFolder,
    Splits,
    _posterize,
    batches,
    build_mixup,
    build_transform,
    encode_all,
    load_splits,
    open_split,
    patch_timm_posterize,
)
from tasks.classification.distributed import Dist, init_distributed, resolve_device
from tasks.classification.engine import Trainer, evaluate, train_one_epoch
from tasks.classification.model import Classifier, build_classifier, pixel_classifier
from tasks.classification.optim import build_criterion, build_optimizer, build_scheduler
from tasks.classification.recipe import (
    PROTOCOLS,
    SIZES,
    Plan,
    Setup,
    _accumulation,
    _comparable,
    augmented,
    embed_dim,
    load_setup,
    model_size,
    plan,
    resolve_section,
)
from tasks.cost import CostMeter
from tasks.training import ScalarLog, compile_model, enable_tf32, fused_optimizer, seed_everything

__all__ = [  # the entry point, and the parts other code and the tests reach through the package
    "CHECKPOINT", "PROTOCOLS", "SIZES", "Classifier", "Dist", "MemoryImageFolder", "_accumulation", "_posterize",
    "augmented", "batches", "best_epoch", "build_classifier", "build_criterion", "build_mixup", "build_optimizer",
    "build_scheduler", "build_transform", "embed_dim", "encode_all", "evaluate", "load_checkpoint", "model_size",
    "open_split", "patch_timm_posterize", "pixel_classifier", "resolve_section", "run", "save_checkpoint",
    "train_one_epoch",
]

log = logging.getLogger(__name__)


def run(ctx: TaskContext) -> TaskResult:
    """Trains and evaluates one protocol; resumes from `ctx.work_dir/checkpoint.pth`."""
    t_start = time.time()
    setup = load_setup(ctx)
    dist_ = init_distributed(ctx, torch.device(ctx.device))
    device = resolve_device(ctx, dist_.local_rank)
    try:
        return _run(ctx, setup, device, dist_, t_start)
    finally:
        if dist_.owns_group:
            dist.destroy_process_group()


def _run(ctx: TaskContext, s: Setup, device: torch.device, dist_: Dist, t_start: float) -> TaskResult:
    p = plan(s, dist_.world, device)
    seed_everything(ctx.seed)  # the same initial weights on every rank
    if s.protocol == "pixels":
        model, report = pixel_classifier(p.cfg, len(s.classes), s.img_size)
    else:
        model, report = build_classifier(ctx, p.cfg, s.section, len(s.classes), s.img_size, s.blocks or 0)
    model.to(device)
    data = load_splits(model, s, p, device)
    per_epoch = len(data.train) // dist_.world // p.micro // p.accum
    if per_epoch == 0:
        raise ValueError(f"{s.section}.batch_size={p.cfg['batch_size']} exceeds the {len(data.train)} training "
                         f"images of {s.data_root}/train")
    r = _Loop(ctx, s, p, dist_, _trainer(model, s, p, data.cached, dist_, device, per_epoch), data,
              CostMeter(device), per_epoch)
    work_dir = Path(ctx.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, history = _resume(r, work_dir / CHECKPOINT)
    t_train = time.time()
    with ScalarLog(work_dir, enabled=dist_.main) as scalars:  # harness run --log-backend; nothing without it
        for epoch in range(start_epoch, p.cfg["epochs"]):
            history.append(_epoch(r, epoch))
            scalars.add({k: history[-1][k] for k in ("loss", "lr", "top1", "top5")}, step=epoch + 1)
            _save(r, work_dir / CHECKPOINT, epoch, history)
        train_seconds = time.time() - t_train
        metrics = _metrics(r, history)
    extra = {
        "protocol": s.protocol, "section": s.section, "blocks": s.blocks, "load_report": report,
        "num_classes": len(s.classes), "num_train": len(data.train), "num_val": len(data.val),
        "data_root": str(s.data_root), "cached_features": data.cached, "resumed_from_epoch": start_epoch,
        "history": history, "train_seconds": train_seconds, "wall_seconds": time.time() - t_start,
        "device": str(device), "compiled": p.compiled, "rank": dist_.rank,
        "trainable_params": _trainable(r.trainer.optimizer),
        "cost": r.meter.summary(),  # micro-batch step time and peak memory, training and evaluation apart
    }
    if dist_.main:
        log.info("%s top1 %.2f top5 %.2f (last epoch); best top1 %.2f at epoch %d", s.section, metrics["top1"],
                 metrics["top5"], metrics["top1_best"], metrics["top1_best_epoch"])
    return TaskResult(metrics=metrics, recipe=p.resolved, extra=extra)


@dataclass(frozen=True)
class _Loop:
    """Everything the epoch loop reads."""

    ctx: TaskContext
    s: Setup
    p: Plan
    dist_: Dist
    trainer: Trainer
    data: Splits
    meter: CostMeter
    per_epoch: int  # optimizer steps an epoch


def _trainer(model: Classifier, s: Setup, p: Plan, cached: bool, dist_: Dist, device: torch.device,
             per_epoch: int) -> Trainer:
    """The optimizer, the DDP wrapper, the schedule, mixup and the loss, in the order their state is created."""
    optimizer = build_optimizer(model, p.cfg, p.lr, fused=fused_optimizer(device))
    enable_tf32(device)
    compile_model(model, p.compiled)  # before DDP wraps it; state dict names unchanged
    wrapped: nn.Module = model
    if dist_.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    scheduler = build_scheduler(optimizer, p.cfg, per_epoch)
    mixup = build_mixup(p.aug, p.cfg.get("smoothing", 0.0), len(s.classes))
    criterion = build_criterion(p.cfg, mixup is not None)
    return Trainer(model, wrapped, optimizer, scheduler, criterion, mixup, p.accum, p.cfg.get("clip_grad"), device,
                   p.precision, cached)


def _resume(r: _Loop, path: Path) -> tuple[int, list[dict[str, Any]]]:
    """(first epoch to run, history so far) from the run's own checkpoint, restoring the model and optimizer."""
    state = load_checkpoint(path, _comparable(r.p.resolved))
    if state is None:
        return 0, []
    r.trainer.model.load_state_dict(state["model"])
    r.trainer.optimizer.load_state_dict(state["optimizer"])
    if r.dist_.main:
        log.info("resuming %s from %s (epoch %d of %d)", r.s.section, path, state["epoch"], r.p.cfg["epochs"])
    return state["epoch"], list(state.get("history", []))


def _epoch(r: _Loop, epoch: int) -> dict[str, Any]:
    """Trains one epoch, then evaluates, every epoch, as MAE's main_finetune / main_linprobe (whose logs report the
    best epoch's top-1). Returns the epoch's line of the history."""
    t0, seed, t = time.time(), r.ctx.seed, r.trainer
    seed_everything(seed * 1_000_003 + epoch * 1009 + r.dist_.rank)  # resume replays the same randomness
    loader = batches(r.data.train, r.p.micro, r.dist_, seed, epoch, r.data.workers, t.device, train=True)
    loss, _ = train_one_epoch(t, r.meter.timed("train", loader), epoch * r.per_epoch)
    seconds, speed = time.time() - t0, r.meter.window("train")  # this epoch's images/s, step time, data-wait share
    top = _evaluate(r)
    eta = round((time.time() - t0) * (r.p.cfg["epochs"] - epoch - 1), 3)  # at this epoch's pace, evaluation included
    if r.dist_.main:
        log.info("%s epoch %d/%d loss %.4f top1 %.2f (%.1fs, %s img/s, data wait %s, eta %.0fs)", r.s.section,
                 epoch + 1, r.p.cfg["epochs"], loss, top["top1"], seconds, speed["images_per_s"],
                 speed["data_wait_share"], eta)
    return {"epoch": epoch + 1, "loss": loss, "lr": max(g["lr"] for g in t.optimizer.param_groups),
            "seconds": seconds, **top, **speed, "eta_s": eta}


def _evaluate(r: _Loop) -> dict[str, float]:
    t = r.trainer
    loader = batches(r.data.val, r.p.micro, r.dist_, r.ctx.seed, 0, r.data.workers, t.device, train=False)
    return evaluate(t.model, r.meter.timed("eval", loader), r.dist_, t.device, t.precision, len(r.s.classes),
                    r.data.cached)


def _save(r: _Loop, path: Path, epoch: int, history: list[dict[str, Any]]) -> None:
    if r.dist_.main:
        t = r.trainer
        save_checkpoint(path, {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                               "epoch": epoch + 1, "recipe": _comparable(r.p.resolved), "history": history})
    if r.dist_.world > 1:
        dist.barrier()  # the checkpoint is complete before any rank can be stopped


def _metrics(r: _Loop, history: list[dict[str, Any]]) -> dict[str, float]:
    """The last epoch's top-1 and top-5, and the best epoch's top-1."""
    if history and "top1" in history[-1]:
        metrics = {k: history[-1][k] for k in ("top1", "top5")}
    else:  # resumed from a finished run whose checkpoint predates per-epoch evaluation
        metrics = _evaluate(r)
    return {**metrics, **best_epoch(history, metrics["top1"], r.p.cfg["epochs"])}


def _trainable(optimizer: torch.optim.Optimizer) -> int:
    return sum(p.numel() for g in optimizer.param_groups for p in g["params"])
