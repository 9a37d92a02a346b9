"""Recipes as data: `tasks/recipes/<task>/<name>.yaml`, versioned, with `include:` for variants.

A recipe file holds `version` (bumped whenever a value changes what a run measures; it is part of the run id) and any
nested settings. `include: base.yaml` (or a list) merges the named files first, then this file on top. Overrides are
dotted keys (`optim.lr=1e-3`) applied last; an override of a key that no recipe level defines is an error, so a typo
cannot silently do nothing.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"
_FLOAT_NO_DOT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def recipe_path(task: str, name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = RECIPE_DIR / task / f"{name}.yaml"
    if not path.is_file():
        from backbones.registry import unknown_name_error

        known = sorted(p.stem for p in (RECIPE_DIR / task).glob("*.yaml") if not p.stem.startswith("_"))
        raise unknown_name_error(f"{task} recipe", name, known)
    return path


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ValueError(f"recipe {path} includes itself through {' -> '.join(map(str, seen))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping")
    includes = data.pop("include", [])
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged = deep_merge(merged, _read((path.parent / inc).resolve(), (*seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=VALUE` with VALUE read as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str) and _FLOAT_NO_DOT.match(parsed):  # YAML 1.1 reads 4e-3 as a string
        parsed = float(parsed)
    return key.strip(), parsed


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    out = copy.deepcopy(recipe)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise KeyError(f"override {dotted!r}: {source} has no section {p!r}")
            node = node[p]
        if leaf not in node:
            raise KeyError(f"override {dotted!r}: {source} has no key {leaf!r} (known: {', '.join(sorted(node))})")
        node[leaf] = value
    return out


def load_recipe(task: str, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved recipe, with `name` and `version` always present."""
    path = recipe_path(task, name)
    recipe = _read(path.resolve())
    if "version" not in recipe:
        raise ValueError(f"recipe {path} has no 'version'")
    recipe = apply_overrides(recipe, overrides or {}, str(path))
    recipe.setdefault("name", path.stem)
    return recipe
