"""The training loop every pretraining method shares, after facebookresearch/mae `engine_pretrain.py` and
`util/lr_sched.py`: per-step cosine learning rate with linear warmup, gradient accumulation, bf16 autocast on CUDA, a
JSON-lines log and an atomic checkpoint from which an interrupted run resumes to the same result.

Reproducibility across an interruption: the checkpoint (written at the end of an epoch) holds the model, optimizer,
grad scaler and the global RNG states as tensors; the data order and augmentation of epoch `e` come from a generator
seeded with `seed + e` (see `harness.pretrain.data`), so epoch `e` sees the same batches whether or not the run
stopped before it. Checkpoints are read back with `weights_only=True`: they hold tensors and plain containers only.

With `harness run --log-backend` (`HARNESS_LOG_BACKEND`), the numbers of the JSON-lines log (loss and lr at the same
steps) and each epoch's mean loss also go to TensorBoard or W&B through mmengine's vis backends
(`tasks.training.ScalarLog`, under `out_dir/vis_data/`). Every log line also holds the throughput since
the line before (`images_per_s`, `step_time_s`, `data_wait_share`: the share of that time blocked on the loader) and
`eta_s`; `cost.json` sums them up for the whole call (the record's `extra["cost"]`). Atomic save and autocast are
the ones the classification loop uses (`tasks.training`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tasks import NonFiniteLoss
from tasks.cost import CostMeter, batch_size
from tasks.training import ScalarLog, atomic_save, autocast

CHECKPOINT = "checkpoint-last.pth"
LOG = "log.jsonl"
COST = "cost.json"  # this call's step time, images/s and data-wait share (tasks.cost.CostMeter.summary)


class Loader(Protocol):
    def __len__(self) -> int: ...

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]: ...


LossFn = Callable[[tuple[torch.Tensor, ...], float], torch.Tensor]  # (batch, fractional epoch) -> scalar loss


@dataclass(frozen=True)
class Schedule:
    """MAE's `adjust_learning_rate`: linear warmup to `lr`, then a half-cosine to `min_lr` (in epochs, fractional)."""

    lr: float
    epochs: int
    warmup_epochs: float = 0.0
    min_lr: float = 0.0

    def __call__(self, t: float) -> float:
        if t < self.warmup_epochs:
            return self.lr * t / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-8)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (t - self.warmup_epochs) / span))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# --- checkpoints ---


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, epoch: int,
    settings: dict[str, Any],
) -> None:
    atomic_save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
         "epoch": epoch, "rng": rng_state(), "settings": settings},
        path,
    )


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    settings: dict[str, Any],
) -> int:
    """Restores a run from `path` and returns the next epoch. A checkpoint of other settings is refused."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # a file this run wrote: tensors and containers
    if ckpt.get("settings") != settings:
        raise ValueError(
            f"{path} belongs to a run with other settings ({_diff(ckpt.get('settings') or {}, settings)}); "
            f"use another output folder, or delete the checkpoint to start over"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]) + 1


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unreadable settings"


def _truncate_log(path: Path, before_epoch: int) -> None:
    """Drops log lines of epochs a resumed run will repeat."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] < before_epoch]
    path.write_text("".join(ln + "\n" for ln in lines))


# --- the loop ---


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    accum_iter: int = 1
    checkpoint_every: int = 1  # epochs; the last epoch is always checkpointed
    clip_grad: float | None = None
    amp: str = "bf16"
    log_every: int = 1  # steps


def train(
    model: nn.Module,
    loss_fn: LossFn,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    cfg: LoopConfig,
    out_dir: Path,
    settings: dict[str, Any],
    device: torch.device,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> list[float]:
    """Trains to `cfg.epochs`, resuming from `out_dir/checkpoint-last.pth` if it exists. Returns the mean loss of each
    epoch run in this call. `stop_after_epoch` ends the call early, as an interruption would (tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out_dir / CHECKPOINT, out_dir / LOG
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.amp == "fp16")
    start = load_checkpoint(ckpt_path, model, optimizer, scaler, settings) if ckpt_path.is_file() else 0
    _truncate_log(log_path, start)
    steps = len(loader)
    if steps < cfg.accum_iter:
        raise ValueError(f"an epoch has {steps} batches, fewer than optim.accum_iter={cfg.accum_iter}")
    losses, meter = [], CostMeter(device)
    with ScalarLog(out_dir) as scalars:  # harness run --log-backend: the log's numbers, also to TensorBoard / W&B
        for epoch in range(start, cfg.epochs):
            model.train()
            optimizer.zero_grad(set_to_none=True)  # a partial accumulation never crosses an epoch (nor a checkpoint)
            bar = _progress(loader.batches(epoch), steps, f"epoch {epoch + 1}/{cfg.epochs}", progress)
            batches = iter(bar)
            total, t0 = 0.0, time.time()
            meter.start("train")
            with open(log_path, "a", buffering=1) as log:  # line-buffered: tail -f works
                for step in range(steps):
                    batch = meter.fetch("train", batches)  # the time blocked on the loader: the step's data wait
                    t = epoch + step / steps
                    if step % cfg.accum_iter == 0:
                        set_lr(optimizer, schedule(t))  # per iteration, as MAE's lr_sched
                    with autocast(device, cfg.amp):
                        loss = loss_fn(batch, t)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise NonFiniteLoss(epoch * steps + step, value, f"epoch {epoch}; lower the lr")
                    scaler.scale(loss / cfg.accum_iter).backward()
                    if (step + 1) % cfg.accum_iter == 0:
                        _optimizer_step(model, optimizer, scaler, cfg.clip_grad)
                    meter.step("train", batch_size(batch))
                    total += value
                    lr = optimizer.param_groups[0]["lr"]
                    if step % cfg.log_every == 0:
                        record = {"epoch": epoch, "step": epoch * steps + step, "loss": value, "lr": lr,
                                  **_speed(meter, (cfg.epochs - epoch) * steps - step - 1)}
                        log.write(json.dumps(record) + "\n")
                        scalars.add({"loss": value, "lr": lr}, step=record["step"])
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)
            meter.stop("train")
            losses.append(total / steps)
            scalars.add({"epoch_loss": losses[-1]}, step=(epoch + 1) * steps - 1)  # at the epoch's last step
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                save_checkpoint(ckpt_path, model, optimizer, scaler, epoch, settings)
            if progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f} ({time.time() - t0:.1f} s)", flush=True)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    atomic_write_json(out_dir / COST, meter.summary())
    return losses


def _optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_grad: float | None
) -> None:
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _speed(meter: CostMeter, steps_left: int) -> dict[str, float | None]:
    """Throughput since the previous log line, and the time the run still needs at the median step time."""
    return {**meter.window("train"), "eta_s": meter.eta_s("train", steps_left)}


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def _progress(it: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
