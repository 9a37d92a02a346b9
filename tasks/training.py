"""What the training loops of every task share: optional logging to TensorBoard or W&B through the backends mmengine
has (`harness run --log-backend`, off by default). `vis_backends()` is for the tasks that build an mmengine Runner,
`ScalarLog` for the loops of their own (classification, pretraining); the runner checks `log_backend_missing` before
anything runs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

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
