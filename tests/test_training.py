"""The helpers the training loops share (`tasks.training`), and the direction of the imports of the middle floor:
`tasks/` below `harness/`, no two modules importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tasks.training import atomic_save, autocast, seed_everything

ROOT = Path(__file__).resolve().parents[1]
# what tasks/ still reads from harness/ until those modules move below it (the embedded data sets, the mm fixes)
NOT_YET_MOVED = ("harness.data", "harness.compat")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function; `from pkg import sub` counts as `pkg.sub` when
    `sub` is a module of the project."""
    out: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").is_file() or (
                    ROOT / sub.replace(".", "/") / "__init__.py").is_file()
                out.add(sub if is_module else base)
    return out


def _modules(*folders: str) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for f in folders for p in sorted((ROOT / f).rglob("*.py"))}


def test_tasks_import_nothing_of_the_floor_above() -> None:
    bad = {name: sorted(i for i in imports if i.split(".")[0] == "harness" and not i.startswith(NOT_YET_MOVED))
           for name, imports in _modules("tasks").items()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_two_modules_import_each_other() -> None:
    graph = _modules("tasks", "harness/pretrain")
    pairs = sorted({tuple(sorted((a, b))) for a, imports in graph.items() for b in imports
                    if b != a and a in graph.get(b, set())})
    assert pairs == []


def test_the_import_check_sees_imports() -> None:  # the two tests above would pass on a parser that finds nothing
    graph = _modules("tasks", "harness/pretrain")
    assert "tasks.training" in graph["harness.pretrain.engine"]
    assert "tasks.mmcommon" in graph["tasks.detection"]  # `from tasks import mmcommon`
    assert "harness.data.imagenet" in graph["tasks.classification.recipe"]  # inside a function


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
