"""The backbone registry: one decorator on a small factory, keyed by the factory's name (as timm's `_registry.py`).

A factory returns a `BackboneSpec`, which is data only: the timm architecture, where the weights come from and in
which checkpoint format, preprocessing, licence and the recipe hints that tasks read (layer decay, the blocks dense
tasks tap).
Users add entries three ways, none of which depends on an import they can forget:

* the decorator in a module of theirs, imported with `load_backbone_module("my_pkg.backbones")`
  (`--backbone-module` on the command line);
* an entry point in the group `harness.backbones` of their installed package (loaded when the registry is first read);
* a YAML file naming an architecture, a checkpoint and its format (`load_backbone_yaml`, or the file's path given where
  a backbone name is expected).

A name `timm:<model>.<tag>` needs no registration: its spec is derived from timm's pretrained config and its weights
come through timm's own pretrained machinery (`backbones.timm_hub`). A name `random:<name>` is the architecture and
preprocessing of `<name>` without any weights (family `scratch`): the floor of `harness run --controls`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backbones.spec import RANDOM_PREFIX, TIMM_PREFIX, BackboneSpec, unknown_name_error
from backbones.yamlio import load_yaml_mapping

ENTRY_POINT_GROUP = "harness.backbones"

SpecFactory = Callable[[], BackboneSpec]
_FACTORIES: dict[str, SpecFactory] = {}
_entry_points_loaded = False


def register_backbone(fn: SpecFactory) -> SpecFactory:
    """Registers `fn` under its own name. A second registration of the same name raises."""
    name = fn.__name__
    if name in _FACTORIES:
        other = _FACTORIES[name]
        raise ValueError(
            f"backbone {name!r} is already registered by {other.__module__}.{other.__qualname__}; "
            f"pick another function name in {fn.__module__}"
        )
    _FACTORIES[name] = fn
    return fn


def register_spec(spec: BackboneSpec, origin: str) -> None:
    """Registers a spec given as data (the zoo's table, a YAML file), as if a factory named `spec.name` returned it.

    `origin` stands for the factory's module in messages; registering the same name from the same origin again
    replaces the entry (a YAML file read twice), from another one raises.
    """

    def factory() -> BackboneSpec:
        return spec

    factory.__name__ = factory.__qualname__ = spec.name
    factory.__module__ = origin
    existing = _FACTORIES.get(spec.name)
    if existing is not None and existing.__module__ == origin:
        _FACTORIES[spec.name] = factory
    else:
        register_backbone(factory)


def _ensure_builtins() -> None:
    global _entry_points_loaded
    importlib.import_module("backbones.zoo")
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plug-in must not hide the built-ins; say which one broke
            where = f"entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r}"
            raise ImportError(f"{where} failed: {e}") from e
        if callable(obj) and not isinstance(obj, type):
            obj()  # an entry point may name a function that registers (or a module, whose import registered)


def list_backbones(pattern: str = "*") -> list[str]:
    import fnmatch

    _ensure_builtins()
    return sorted(n for n in _FACTORIES if fnmatch.fnmatch(n, pattern))


def get_spec(name: str, **overrides: Any) -> BackboneSpec:
    """The spec of a registered name, or of a YAML file's path. `overrides` replace spec fields."""
    if name.startswith(RANDOM_PREFIX):
        return random_spec(get_spec(name[len(RANDOM_PREFIX) :]), **overrides)
    if name.startswith(TIMM_PREFIX):
        from backbones.timm_hub import timm_spec

        spec = timm_spec(name)
        return dataclasses.replace(spec, **overrides) if overrides else spec
    if name.endswith((".yaml", ".yml")):
        name = load_backbone_yaml(name)
    _ensure_builtins()
    if name not in _FACTORIES:
        raise unknown_name_error("backbone", name, sorted(_FACTORIES))
    spec = _FACTORIES[name]()
    if spec.name != name:
        spec = dataclasses.replace(spec, name=name)
    return dataclasses.replace(spec, **overrides) if overrides else spec


def random_spec(spec: BackboneSpec, **overrides: Any) -> BackboneSpec:
    """`spec`'s architecture and preprocessing, randomly initialised: no checkpoint, url or timm weights."""
    name = spec.name if spec.name.startswith(RANDOM_PREFIX) else f"{RANDOM_PREFIX}{spec.name}"
    return dataclasses.replace(spec, name=name, family="scratch", url=None, sha256=None, checkpoint=None,
                               timm_pretrained=False, pretrain_epochs=None, paper_name=None,
                               description=f"{spec.name}'s architecture, random initialisation", **overrides)


def load_backbone_module(module: str) -> None:
    """Imports a user module whose `@register_backbone` factories register on import."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"--backbone-module {module!r} cannot be imported: {e}") from e


_YAML_REQUIRED = ("name", "arch", "checkpoint_format")
# What each YAML key may hold (the BackboneSpec field it fills), and how to say it.
_YAML_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (lambda v: isinstance(v, str) and v != "", "a non-empty string")
       for k in ("name", "arch", "family", "checkpoint_format")},
    **{k: (lambda v: v is None or isinstance(v, str), "a string") for k in
       ("url", "sha256", "checkpoint", "license", "paper_name", "description")},
    "arch_kwargs": (lambda v: isinstance(v, dict), "a mapping of timm model arguments"),
    "img_size": (lambda v: _int(v) and v > 0, "a positive integer, in pixels"),
    "patch_size": (lambda v: _int(v) and v > 0, "a positive integer, in pixels"),
    "pretrain_epochs": (lambda v: v is None or (_int(v) and v >= 0), "an integer >= 0 or null"),
    "layer_decay": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "mean": (lambda v: isinstance(v, list) and len(v) == 3 and all(map(_num, v)), "a list of 3 numbers"),
    "std": (lambda v: isinstance(v, list) and len(v) == 3 and all(_num(x) and x > 0 for x in v),
            "a list of 3 positive numbers"),
    "dense_taps": (lambda v: isinstance(v, list) and all(_int(x) and x >= 0 for x in v),
                   "a list of 0-based block indices, e.g. [3, 5, 7, 11]"),
}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_yaml_values(data: dict[str, Any], path: Path) -> None:
    """Every value of a backbone file of the kind its field takes; one message names each bad key."""
    bad = [f"{k}: {data[k]!r} (allowed: {_YAML_KINDS[k][1]})" for k in data
           if k in _YAML_KINDS and not _YAML_KINDS[k][0](data[k])]
    if bad:
        raise ValueError(f"backbone file {path}: " + "; ".join(bad))


def _yaml_checkpoint(given: str, path: Path) -> str:
    """A backbone file's `checkpoint`: absolute as written, or relative to the file's folder and inside it."""
    if Path(given).is_absolute():
        return given
    folder = path.parent.resolve()
    resolved = (folder / given).resolve()
    if not resolved.is_relative_to(folder):
        raise ValueError(f"backbone file {path}: checkpoint {given!r} resolves to {resolved}, outside the file's "
                         f"folder {folder}; write an absolute path to use a file elsewhere")
    return str(resolved)


def load_backbone_yaml(path: str | Path) -> str:
    """Registers the backbone a YAML file describes and returns its name.

    Keys are `BackboneSpec` fields; `name`, `arch` and `checkpoint_format` are required, `family` defaults to custom.
    A relative `checkpoint` is taken relative to the YAML file.
    """
    path = Path(path)
    fields = {f.name for f in dataclasses.fields(BackboneSpec)}
    data = load_yaml_mapping(path, "backbone file", keys=fields, allow_empty=False)
    missing = [k for k in _YAML_REQUIRED if k not in data]
    if missing:
        raise ValueError(f"backbone file {path} lacks the key(s) {', '.join(missing)}")
    data.setdefault("family", "custom")
    _check_yaml_values(data, path)
    for key in ("mean", "std", "dense_taps"):
        if key in data:
            data[key] = tuple(data[key])
    if data.get("checkpoint"):
        data["checkpoint"] = _yaml_checkpoint(str(data["checkpoint"]), path)
    _ensure_builtins()
    existing = _FACTORIES.get(data["name"])
    if existing is not None and not existing.__module__.startswith("yaml:"):
        raise ValueError(f"backbone file {path}: name {data['name']!r} is a backbone of {existing.__module__} "
                         "already; give the file's entry a name of its own")
    spec = BackboneSpec(**data)
    register_spec(spec, origin=f"yaml:{path}")
    return spec.name
