"""What a run costs: step time and peak accelerator memory, for training and for evaluation apart.

`CostMeter` times the steps of each phase (the interval between consecutive steps, data loading included, so the
median is the steady-state step time) and reads `torch.cuda.max_memory_allocated` over each phase, the peak counter
reset when a phase starts. The classification loop wraps its loaders with `timed`; mmengine runners get `CostHook`.
Tasks record `summary()` in the result's `extra["cost"]`. On CPU the peaks are None.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

import torch

T = TypeVar("T")
PHASES = ("train", "eval")
GB = 1024**3


class CostMeter:
    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.steps: dict[str, list[float]] = {p: [] for p in PHASES}
        self.peak: dict[str, int] = {p: 0 for p in PHASES}
        self._last: dict[str, float | None] = {p: None for p in PHASES}

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()  # the step's kernels are done, not only queued
        return time.perf_counter()

    def start(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._last[phase] = self._now()

    def step(self, phase: str) -> None:
        now, last = self._now(), self._last[phase]
        if last is not None:
            self.steps[phase].append(now - last)
        self._last[phase] = now

    def stop(self, phase: str) -> None:
        if self._last[phase] is None:  # not running: the counter holds another phase's peak
            return
        if self.cuda:
            self.peak[phase] = max(self.peak[phase], torch.cuda.max_memory_allocated())
        self._last[phase] = None

    def timed(self, phase: str, items: Sized) -> Timed:
        """`items` (a DataLoader), with a step counted each time the consumer comes back for the next one."""
        return Timed(self, phase, items)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in PHASES:
            times = self.steps[p]
            out[f"step_time_{p}_s"] = round(statistics.median(times), 4) if times else None
            out[f"steps_{p}"] = len(times)
            out[f"peak_mem_{p}_gb"] = round(self.peak[p] / GB, 3) if self.cuda else None
        return out


class Timed(Iterable[T]):
    """An iterable of known length whose iteration is one phase of a `CostMeter`."""

    def __init__(self, meter: CostMeter, phase: str, items: Any) -> None:
        self.meter, self.phase, self.items = meter, phase, items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        self.meter.start(self.phase)
        try:
            for item in self.items:
                yield item
                self.meter.step(self.phase)
        finally:
            self.meter.stop(self.phase)


def cost_hook(meter: CostMeter) -> Any:
    """An mmengine hook feeding `meter`: training iterations, and each validation as its own phase."""
    from mmengine.hooks import Hook

    class CostHook(Hook):
        priority = "VERY_LOW"
        training = False

        def before_train(self, runner: Any) -> None:
            self.training = True
            meter.start("train")

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            meter.step("train")

        def before_val_epoch(self, runner: Any) -> None:
            meter.stop("train")
            meter.start("eval")

        def after_val_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            meter.step("eval")

        def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
            meter.stop("eval")
            if self.training and runner.iter < runner.max_iters:
                meter.start("train")  # training goes on after this evaluation

        def after_train(self, runner: Any) -> None:
            self.training = False
            meter.stop("train")

    return CostHook()
