"""The direction of dependence, read from the source (every import statement, also those inside functions): the bottom
floor (backbones, mmcv_tvops, embedded) imports neither harness nor tasks, and no two modules import each other."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOTTOM = ("backbones", "mmcv_tvops", "embedded")
UPPER = ("harness", "tasks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, with `from a import b` counted as `a` and `a.b` (b may be a submodule)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _modules(packages: tuple[str, ...]) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


@pytest.mark.parametrize("package", BOTTOM)
def test_the_bottom_floor_imports_nothing_above_it(package: str) -> None:
    above = {
        (module, name)
        for module, names in _modules((package,)).items()
        for name in names
        if name.split(".")[0] in UPPER
    }
    assert not above, sorted(above)


def test_no_two_modules_import_each_other() -> None:
    modules = _modules((*BOTTOM, *UPPER))
    assert len(modules) > 20  # the walk found the project
    mutual = [(a, b) for a, b in itertools.combinations(sorted(modules), 2) if b in modules[a] and a in modules[b]]
    assert not mutual, mutual


def test_the_mm_tasks_take_the_compat_fixes_and_data_sets_from_below() -> None:
    for name in ("detection", "segmentation", "mmcommon"):
        imports = _imports(ROOT / "tasks" / f"{name}.py")
        upward = sorted(i for i in imports if i.startswith(("harness.compat", "harness.data")))
        assert not upward, (name, upward)
