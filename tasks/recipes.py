"""Recipes as data: `tasks/recipes/<task>/<name>.yaml`, versioned, with `include:` for variants.

A recipe file holds `version` (bumped whenever a value changes what a run measures; it is part of the run id) and any
nested settings. `include: base.yaml` (or a list) merges the named files first, then this file on top. Overrides are
dotted keys (`optim.lr=1e-3`) applied last; an override of a key that no recipe level defines is an error, so a typo
cannot silently do nothing, and so is a value of another kind than the recipe's (`_allowed`: an integer for an integer,
a finite number for a number, not negative where the recipe's is not), so that a bad value fails while planning.
Null (the recipe's "default" or "off") may replace a value where some recipe of the same task writes null. A few
top-level keys take one of a fixed set of values of mixed kinds (`compile: auto|true|false`): a file or an override
with another value fails while planning, naming the key.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from backbones.yamlio import load_yaml_mapping, yaml11_float
from tasks.training import COMPILE_CHOICES

RECIPE_DIR = Path(__file__).parent / "recipes"
CHOICES: dict[str, tuple[Any, ...]] = {"compile": COMPILE_CHOICES}  # top-level key -> the values it takes


def _choice_error(key: str, value: Any, source: str) -> str | None:
    choices = CHOICES.get(key)
    if choices is None or any(value is c or (type(value) is type(c) and value == c) for c in choices):
        return None
    allowed = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
    return f"recipe key {key}={value!r} in {source}: allowed: {allowed}"


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
    data = load_yaml_mapping(path, "recipe")
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
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        reason = str(getattr(e, "problem", None) or e).strip()
        raise ValueError(f"value {value!r} is not valid YAML ({reason}); quote a string, write a list as [1, 2]") \
            from None
    return key.strip(), yaml11_float(parsed)  # YAML 1.1 reads 4e-3 as a string


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _allowed(old: Any, new: Any) -> str | None:
    """None when `new` may replace the recipe's `old`, else what is allowed there. An override keeps the kind of value
    the recipe declares: an integer stays an integer, a number a finite number, a count or rate that is not negative
    in the recipe stays not negative, a flag a boolean, a list a list (of numbers, if it holds numbers). A mapping
    (a value per model size) may be replaced by one value for every size; null (off) replaces no number or flag."""
    old, new = yaml11_float(old), yaml11_float(new)
    sign = " >= 0" if _is_number(old) and old >= 0 else ""
    if isinstance(old, bool):
        return None if isinstance(new, bool) else "true or false"
    if isinstance(old, int):
        ok = isinstance(new, int) and not isinstance(new, bool) and (not sign or new >= 0)
        return None if ok else f"an integer{sign}"
    if isinstance(old, float):
        ok = _is_number(new) and math.isfinite(new) and (not sign or new >= 0)
        return None if ok else f"a finite number{sign}"
    if isinstance(old, str):
        return None if new is None or isinstance(new, str) else "a string (or null)"
    if isinstance(old, list):
        if new is not None and not isinstance(new, list):
            return "a list, e.g. [1, 2] (or null)"
        if new and old and all(_is_number(v) for v in old) and not all(_is_number(v) for v in new):
            return "a list of numbers"
    return None


def _null_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in node.items():
        if isinstance(v, dict):
            keys |= _null_keys(v, f"{prefix}{k}.")
        elif v is None:
            keys.add(f"{prefix}{k}")
    return keys


def nullable_keys(task: str) -> set[str]:
    """Dotted keys that some recipe of `task` sets to null: the task reads null there (a default, or off)."""
    keys: set[str] = set()
    for path in sorted((RECIPE_DIR / task).glob("*.yaml")):
        keys |= _null_keys(_read(path.resolve()))
    return keys


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any], source: str,
                    nullable: set[str] = frozenset()) -> dict[str, Any]:
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
        if dotted in CHOICES:
            if error := _choice_error(dotted, value, source):
                raise ValueError(f"override {error}")
            node[leaf] = value
            continue
        allowed = None if value is None and dotted in nullable else _allowed(node[leaf], value)
        if allowed:
            raise ValueError(f"override {dotted}={value!r}: {source} has {node[leaf]!r} there; allowed: {allowed}")
        node[leaf] = value
    return out


def load_recipe(task: str, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved recipe, with `name` and `version` always present."""
    path = recipe_path(task, name)
    recipe = _read(path.resolve())
    if "version" not in recipe:
        raise ValueError(f"recipe {path} has no 'version'")
    recipe = apply_overrides(recipe, overrides or {}, str(path), nullable_keys(task) if overrides else frozenset())
    for key in CHOICES.keys() & recipe.keys():
        if error := _choice_error(key, recipe[key], str(path)):
            raise ValueError(error)
    recipe.setdefault("name", path.stem)
    return recipe
