"""What the training loops of the tasks and of pretraining share: the log backends (TensorBoard, W&B through
mmengine's vis backends), an atomic `torch.save`, bf16 autocast on CUDA, seeding, and the speed options (the
`compile` recipe key, fused AdamW and TF32 on CUDA).

The checkpoint and autocast helpers follow facebookresearch/mae (`util/misc.py`'s `save_model`, `main_finetune.py`'s
`torch.cuda.amp.autocast`); the vis backends are mmengine's, built as its `Runner` builds them. torch is imported on
first use, so that the runner and the command line can read the log backend without it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib

    import torch

LOG_BACKEND_ENV = "HARNESS_LOG_BACKEND"  # set by `harness run --log-backend`
# choice -> (mmengine vis backend, the module it needs, how to get it)
LOG_BACKENDS = {
    "tensorboard": ("TensorboardVisBackend", "tensorboard", "pip install tensorboard"),
    "wandb": ("WandbVisBackend", "wandb", "pip install wandb (W&B logs without an account or network with "
              "WANDB_MODE=offline; `wandb sync` uploads later)"),
}


def log_backend() -> str | None:
    """The backend chosen for this run (`HARNESS_LOG_BACKEND`), or None: no remote logging, the default."""
    choice = os.environ.get(LOG_BACKEND_ENV, "").strip().lower()
    if not choice:
        return None
    if choice not in LOG_BACKENDS:
        raise ValueError(f"{LOG_BACKEND_ENV}={choice!r}: known backends are {', '.join(LOG_BACKENDS)}")
    return choice


def log_backend_missing(choice: str) -> str | None:
    """What to install for `choice` to work here, or None when its package is importable. Imports nothing."""
    _, module, install = LOG_BACKENDS[choice]
    return None if importlib.util.find_spec(module) else f"the {module} package is not installed: {install}"


def vis_backends() -> list[dict[str, Any]]:
    """mmengine `visualizer.vis_backends` for the run: local files always, plus TensorBoard or W&B when asked.

    Tasks that build an mmengine Runner put this list in their config; nothing is logged remotely by default."""
    backends: list[dict[str, Any]] = [{"type": "LocalVisBackend"}]
    choice = log_backend()
    if choice:
        backends.append({"type": LOG_BACKENDS[choice][0]})
    return backends


class ScalarLog:
    """The scalars of a training loop of its own (classification, pretraining) through the backends of
    `vis_backends()`, built by mmengine's registry as a Runner builds them and written where a Runner's are, under
    `work_dir/vis_data/` (`scalars.json`, TensorBoard's event files, W&B's run folder). With no backend chosen it
    holds nothing, imports nothing and writes nothing; `enabled=False` (ranks other than 0) does the same."""

    def __init__(self, work_dir: str | Path, enabled: bool = True) -> None:
        self.backends: list[Any] = []
        choice = log_backend() if enabled else None
        if choice is None:
            return
        missing = log_backend_missing(choice)
        if missing:
            raise ModuleNotFoundError(f"{LOG_BACKEND_ENV}={choice}: {missing}")
        import mmengine.visualization  # noqa: F401  (registers the vis backends)
        from mmengine.registry import VISBACKENDS

        save_dir = str(Path(work_dir) / "vis_data")
        self.backends = [VISBACKENDS.build({**cfg, "save_dir": save_dir}) for cfg in vis_backends()]

    def add(self, scalars: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.add_scalars(scalars, step=step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- checkpoints, precision, seeds --------------------------------------------------------------------------------


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, then rename: an interruption never leaves half a file (a run
    killed while saving keeps the previous epoch's checkpoint)."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": None, "none": None}  # recipe value -> autocast dtype


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 (or fp16) on CUDA only: CPU runs stay in float32, which is also what the CPU tests check.
    timm's attention is already fused (`F.scaled_dot_product_attention`); `fp32` and `none` turn autocast off."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    dtype = PRECISIONS[precision]
    if device.type != "cuda" or dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global generators (timm's augmentations draw from `random`)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- speed: torch.compile, fused AdamW, TF32 ----------------------------------------------------------------------

COMPILE_CHOICES = ("auto", True, False)  # the recipe key `compile`
# `auto` compiles on CUDA; on CPU only if benchmarks/engine_speed.py --device cpu measured a gain for the tiny ViTs
# (it did not on 2 cores: see the README's Performance paragraph)
COMPILE_ON_CPU = False


def resolve_compile(value: Any, device: torch.device) -> bool:
    """Whether to `torch.compile` the model for recipe value `value` ('auto', true, false) on `device`."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in COMPILE_CHOICES):
        raise ValueError(f"recipe key compile must be auto, true or false, not {value!r}")
    if value == "auto":
        return device.type == "cuda" or COMPILE_ON_CPU
    return bool(value)


def fused_optimizer(device: torch.device) -> bool:
    """torch's fused AdamW: one kernel for every parameter's update, CUDA only (its CPU kernel is no faster)."""
    return device.type == "cuda"


def compile_model(model: torch.nn.Module, enabled: bool) -> None:
    """Compiles `model`'s forward in place (`nn.Module.compile`: its state dict keeps its names) with static shapes:
    the training loaders drop their last incomplete batch, so a shape change, and a recompilation, is an evaluation's
    last batch only."""
    if enabled:
        model.compile(dynamic=False)


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA, for what runs outside bf16 autocast (fp32 recipes, the loss)."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
