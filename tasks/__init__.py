"""Transfer tasks. Each is a module with `run(ctx: TaskContext) -> TaskResult`, declared by a spec file in
`tasks/specs/` (`tasks.spec`: its target as a `module:function` string, so that listing tasks imports neither mmdet nor
mmseg, as lm-evaluation-harness's lazy registry; its protocols, metrics, table and data layout).

The runner (`harness.run`) owns run ids, processes, result records and resume bookkeeping; a task owns its data,
its model and its training loop, keeps everything it writes under `ctx.work_dir`, resumes from the last checkpoint
there, and returns its metrics and the recipe it actually used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class NonFiniteLoss(FloatingPointError):
    """A training loop met a loss that is NaN or infinite: the run stops there and is recorded as failed, with the
    step and the loss (`harness.worker`). Every loop raises this one type: the mmengine tasks through
    `tasks.mmcommon.NonFiniteLossHook`, classification and pretraining in their own loops."""

    def __init__(self, step: int, loss: float, hint: str = "lower the lr or check the data") -> None:
        super().__init__(f"loss is {loss} at step {step}; {hint}")
        self.step, self.loss = int(step), float(loss)


@dataclass
class TaskContext:
    """Everything a task needs for one run. Recipes are resolved by the task (`tasks.recipes.load_recipe`)."""

    backbone: str  # registry name, or a backbone YAML file
    work_dir: Path  # private to this run: checkpoints, logs; a second call with the same dir resumes
    recipe: str = "tiny"  # recipe name under tasks/recipes/<task>/
    checkpoint: str | None = None  # weights replacing the registry's (the preset's own pretraining output)
    data_root: Path | None = None  # None: the embedded Fashion-MNIST set, written on demand
    protocol: str | None = None  # in1k: finetune | linprobe | partial
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted recipe keys -> values
    seed: int = 0
    device: str = "cpu"
    launcher: str = "none"  # none | pytorch (torchrun) | slurm
    allow_pickle: bool = False


@dataclass
class TaskResult:
    metrics: dict[str, float]  # e.g. {'top1': 71.2, 'top5': 98.0} or {'bbox_mAP': ..., 'segm_mAP': ...}
    recipe: dict[str, Any]  # the resolved recipe, as used
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. pyramid kind, load report of the backbone
