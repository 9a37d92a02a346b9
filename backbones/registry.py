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
come through timm's own pretrained machinery (`backbones.timm_hub`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.yamlio import load_yaml_mapping

ENTRY_POINT_GROUP = "harness.backbones"
TIMM_PREFIX = "timm:"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the harness needs to know about a backbone, as data.

    `arch` is a timm model name and `arch_kwargs` its overrides (a tiny ViT is `vit_tiny_patch16_224` with a smaller
    patch, image and depth). `checkpoint_format` names a filter in `backbones.formats`. `url` is the official download
    and `sha256` its published checksum: the full hex digest, or the leading hex digits a torch.hub file name carries
    (`check_hash`'s convention), or None when the publisher gives none. A local file given at load time always wins.
    `timm_pretrained` entries (`timm:` names) have no url: `arch` is a timm `model.tag` loaded with `pretrained=True`.
    """

    name: str
    arch: str
    family: str  # mae | supervised | mocov3 | dino | beit | scratch | custom: the row label of the paper's tables
    checkpoint_format: str = "timm"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    sha256: str | None = None
    timm_pretrained: bool = False
    checkpoint: str | None = None  # a local file that stands in for `url` (YAML entries, the project's own pretraining)
    img_size: int = 224
    patch_size: int = 16
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = "unknown"
    layer_decay: float = 0.65  # recommended layer-wise lr decay for fine-tuning (MAE: 0.65 for B, 0.75 for L and H)
    dense_taps: tuple[int, ...] = ()  # 0-based blocks that dense tasks tap (quarter points, e.g. 3, 5, 7, 11 for B)
    pretrain_epochs: int | None = None
    paper_name: str | None = None  # how the MAE paper's tables name it, when they do (e.g. "ViT-B")
    description: str = ""
    params: int | None = None  # parameters of the features-only model (num_classes=0), so listing needs no torch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def unknown_name_error(kind: str, name: str, known: list[str]) -> KeyError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return KeyError(f"unknown {kind} {name!r}{hint}")


def get_spec(name: str, **overrides: Any) -> BackboneSpec:
    """The spec of a registered name, or of a YAML file's path. `overrides` replace spec fields."""
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
