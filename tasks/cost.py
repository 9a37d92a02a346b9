"""What a run costs: step time, throughput, the share of time spent waiting for data and peak accelerator memory,
for training and for evaluation apart.

`CostMeter` times the steps of each phase (the interval between consecutive steps, data loading included, so the
median is the steady-state step time) and reads `torch.cuda.max_memory_allocated` over each phase, the peak counter
reset when a phase starts. A step may carry its number of images and the seconds it was blocked on the loader (a part
of its interval): images/s and the data-wait share (wait / interval, in [0, 1]) tell a data-bound run (share near 1)
from a compute-bound one. `window()` gives those figures over the steps since its last call (a log line, an epoch).
The classification loop wraps its loaders with `timed`, which measures both; the pretraining loop calls `fetch` and
`step` itself; mmengine runners get `CostHook` (step times only). Tasks record `summary()` in the result's
`extra["cost"]`. On CPU the peaks are None.
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
        self.waits: dict[str, list[float]] = {p: [] for p in PHASES}  # seconds blocked on the loader, per step
        self.images: dict[str, list[int]] = {p: [] for p in PHASES}  # images per step (0: not known)
        self._last: dict[str, float | None] = {p: None for p in PHASES}
        self._wait: dict[str, float] = {p: 0.0 for p in PHASES}  # blocked so far in the running step
        self._mark: dict[str, int] = {p: 0 for p in PHASES}  # first step of the running window
        self._fetching: set[str] = set()  # phases whose data wait is measured (not mmengine's)

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()  # the step's kernels are done, not only queued
        return time.perf_counter()

    def start(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._last[phase] = self._now()

    def fetch(self, phase: str, it: Iterator[T]) -> T:
        """`next(it)`, its time counted as the running step's data wait. No synchronization: the accelerator's
        queue is what the step's `_now` waits for, the loader is what this waits for."""
        self._fetching.add(phase)
        t0 = time.perf_counter()
        try:
            return next(it)
        finally:
            self._wait[phase] += time.perf_counter() - t0

    def step(self, phase: str, images: int = 0) -> None:
        now, last = self._now(), self._last[phase]
        if last is not None:
            interval = now - last
            self.steps[phase].append(interval)
            self.waits[phase].append(min(self._wait[phase], interval))
            self.images[phase].append(images)
        self._wait[phase] = 0.0
        self._last[phase] = now

    def window(self, phase: str) -> dict[str, float | None]:
        """Images/s, mean step time and data-wait share over the steps since the last call; None where no step
        (or no image count) was recorded."""
        i = self._mark[phase]
        self._mark[phase] = len(self.steps[phase])
        return rates(self.steps[phase][i:], self._waits(phase)[i:], self.images[phase][i:])

    def _waits(self, phase: str) -> list[float]:
        return self.waits[phase] if phase in self._fetching else []

    def eta_s(self, phase: str, steps_left: int) -> float | None:
        """Seconds for `steps_left` more steps at the median step time so far (a compiling first step is an
        outlier that the median ignores)."""
        times = self.steps[phase]
        return round(statistics.median(times) * steps_left, 3) if times else None

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
            whole = rates(times, self._waits(p), self.images[p])
            out[f"images_per_s_{p}"] = whole["images_per_s"]
            out[f"data_wait_share_{p}"] = whole["data_wait_share"]
        return out


def rates(times: list[float], waits: list[float], images: list[int]) -> dict[str, float | None]:
    """Throughput figures of a run of steps: images/s (None without image counts), mean step time, data-wait share
    (None without waits measured)."""
    total = sum(times)
    if not times or total <= 0:
        return {"images_per_s": None, "step_time_s": None, "data_wait_share": None}
    n = sum(images)
    return {"images_per_s": round(n / total, 2) if n else None, "step_time_s": round(total / len(times), 6),
            "data_wait_share": round(min(1.0, sum(waits) / total), 4) if waits else None}


def batch_size(item: Any) -> int:
    """Images in a batch: the length of its first tensor (a tuple `(images, labels)`, or a tensor); 0 if unknown."""
    first = item[0] if isinstance(item, (tuple, list)) and item else item
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 0


class Timed(Iterable[T]):
    """An iterable of known length whose iteration is one phase of a `CostMeter`."""

    def __init__(self, meter: CostMeter, phase: str, items: Any) -> None:
        self.meter, self.phase, self.items = meter, phase, items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        self.meter.start(self.phase)
        it = iter(self.items)
        try:
            while True:
                try:
                    item = self.meter.fetch(self.phase, it)
                except StopIteration:
                    return
                yield item
                self.meter.step(self.phase, batch_size(item))
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
