"""The run's own checkpoint (facebookresearch/mae `util/misc.py`'s `save_model` / `load_model`): written atomically
after every epoch, resumed only under the same recipe; and the best epoch beside the last, as MAE's logs report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tasks.training import atomic_save

CHECKPOINT = "checkpoint.pth"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a run killed while saving keeps the previous epoch's checkpoint."""
    atomic_save(state, path)


def load_checkpoint(path: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The run's own last checkpoint, if any; one written under another recipe is an error, not a silent restart."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # written by this task: tensors and containers
    if state.get("recipe") != recipe:
        raise RuntimeError(f"{path} was written with another recipe; use a fresh work_dir or remove it to restart "
                           f"(checkpoint: {state.get('recipe')}, now: {recipe})")
    return state


def best_epoch(history: list[dict[str, Any]], last_top1: float, epochs: int) -> dict[str, float]:
    """The best epoch's top-1 and its epoch (the first, on ties), next to the last epoch's that `top1` holds: MAE's
    logs report `max_accuracy` over epochs, which a table of last-epoch results would not match."""
    scored = [(h["top1"], -h["epoch"]) for h in history if "top1" in h] or [(last_top1, -epochs)]
    top1, neg_epoch = max(scored)
    return {"top1_best": top1, "top1_best_epoch": -neg_epoch}
