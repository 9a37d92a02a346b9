"""The helpers the training loops share (`tasks.training`). The direction of the imports is tested in
`tests/test_import_direction.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.training import atomic_save, autocast, seed_everything


def test_atomic_save_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    atomic_save({"epoch": 1}, path)
    atomic_save({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_autocast_keeps_cpu_in_float32_and_names_a_bad_precision() -> None:
    a = torch.randn(4, 4)
    for precision in ("bf16", "fp16", "fp32", "none"):
        with autocast(torch.device("cpu"), precision):
            assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of .*'bf61'"):
        autocast(torch.device("cpu"), "bf61")


def test_seed_everything_repeats_every_generator() -> None:
    import random

    import numpy as np

    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(4)
    assert draw() != first
