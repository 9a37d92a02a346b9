"""The house has one direction: `harness` on top, `tasks` in the middle, `backbones`, `embedded` and `mmcv_tvops` at
the bottom. What a floor imports (at module level or inside a function) is read from the source, so that a lazy import
cannot hide an upward dependence."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "tasks", "backbones", "embedded", "mmcv_tvops")
# floor of each package: a module may import its own floor and the ones below
FLOOR = {"harness": 2, "tasks": 1, "backbones": 0, "embedded": 0, "mmcv_tvops": 0}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules that `name` imports, resolved to the longest known module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in MODULES:
                resolved.add(candidate)
                break
    return resolved - {name}


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_packages_exist() -> None:
    assert all(any(m.split(".")[0] == p for m in MODULES) for p in PACKAGES), sorted(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_floor_above_its_own(name: str) -> None:
    floor = FLOOR[name.split(".")[0]]
    upward = sorted(m for m in IMPORTS[name] if FLOOR[m.split(".")[0]] > floor)
    assert not upward, f"{name} ({MODULES[name].relative_to(ROOT)}) imports {upward} from a floor above its own"


def test_no_two_modules_import_each_other() -> None:
    pairs = sorted({tuple(sorted((a, b))) for a, deps in IMPORTS.items() for b in deps
                    if a in IMPORTS.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not pairs, f"modules importing each other: {pairs}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_import_check_sees_imports() -> None:  # the tests above would pass on a parser that finds nothing
    assert "tasks.mmcommon" in IMPORTS["tasks.detection"]  # `from tasks import mmcommon`
    assert "embedded.imagenet" in IMPORTS["tasks.classification.recipe"]  # inside a function
    assert "backbones.mm.compat" in IMPORTS["backbones.mm"]  # relative or absolute, from a package's __init__
