"""Fixes for the OpenMMLab stack (mmengine 0.10.7, mmcv 2.1.0, mmdet 3.3.0, mmseg 1.2.2) on torch >= 2.6, applied
once on import (`backbones.mm` imports this module before anything else, so every mm task and config has them).

Only what breaks on the harness's own paths is patched here; everything a config can fix is fixed in the config the
task writes (each Runner gets its own `experiment_name`; a plain `OptimWrapper` on CPU, where `AmpOptimWrapper`
asserts CUDA; see `tasks.mmcommon`). Each fix has a test in `tests/test_compat.py` that fails without it.

1. torch >= 2.6 loads with `weights_only=True` by default, and mmengine 0.10.7's local checkpoint loader does not say
   otherwise, so `resume` / `load_from` of a checkpoint mmengine itself wrote (it pickles the message hub's
   `HistoryBuffer`s and numpy scalars) fails with "Weights only load failed" (mmengine#1655; fixed only on mmengine's
   unreleased main, PR #1670). The local loader is re-registered: a file under a directory the run trusts (its own
   `work_dir`, registered with `trust_checkpoint_dir`) is unpickled, every other file is read with
   `weights_only=True`, so a user-supplied file never runs code.
2. mmcv-lite (the lock's mmcv) has no compiled `mmcv._ext`; `mmcv_tvops.install()` serves it from torchvision's
   kernels, here as well as from the venv's `mmcv_tvops.pth`, so an install without that file works for this
   project's code. A compiled mmcv, where installed, is found first and used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import mmcv_tvops

_TRUSTED_DIRS: set[Path] = set()
_applied = False


def trust_checkpoint_dir(path: str | Path) -> Path:
    """Lets mmengine unpickle checkpoints under `path` (a run's own work_dir: files this harness wrote)."""
    resolved = Path(path).expanduser().resolve()
    _TRUSTED_DIRS.add(resolved)
    return resolved


def untrust_checkpoint_dir(path: str | Path) -> None:
    _TRUSTED_DIRS.discard(Path(path).expanduser().resolve())


def is_trusted(path: str | Path) -> bool:
    resolved = Path(path).expanduser().resolve()
    return any(resolved.is_relative_to(d) for d in _TRUSTED_DIRS)


def load_from_local(filename: str, map_location: str | torch.device | None = None) -> object:
    """mmengine's local checkpoint loader, with `weights_only` decided by where the file lies."""
    path = Path(os.path.expanduser(filename))
    if not path.is_file():
        raise FileNotFoundError(f"{filename} can not be found.")  # mmengine's own message, which callers match
    trusted = is_trusted(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except Exception as e:
        if not trusted and "Weights only load failed" in str(e):
            raise RuntimeError(
                f"checkpoint {path} holds Python objects beyond tensors; it is read with weights_only=True because "
                f"it lies outside the run's own work_dir (trusted: {sorted(map(str, _TRUSTED_DIRS)) or 'none'})"
            ) from e
        raise


def _register_checkpoint_loader() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)


def apply() -> None:
    """Applies every fix once (idempotent)."""
    global _applied
    if _applied:
        return
    mmcv_tvops.install()
    _register_checkpoint_loader()
    _applied = True


apply()
