"""What a task declares about itself for the runner and the report, as data: one YAML file per task, as
lm-evaluation-harness's task configs declare `metric_list` with `higher_is_better`.

A spec names the task's entry point (`module:function`, imported only by the worker), its evaluation protocols, the
metrics the run summary shows first, the real-data layout it reads under `--data-root`, and its report table: a title
and columns, each reading the first of its metric keys a record has (scaled, e.g. mmdet's fractions to percent).
The built-in specs are `tasks/specs/*.yaml`; a user's task reaches the tables like ours with its own spec file
(`harness run --suite path/to/my_task.yaml`). Loading a spec imports only yaml, so planning and `--help` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parent / "specs"


@dataclass(frozen=True)
class Split:
    """A column split into one per value of a setting (IN1K partial fine-tuning: one column per number of blocks K),
    read from the record's `extra`, else from its resolved recipe (a dotted path)."""

    extra: str
    recipe: str
    label: str  # with `{}` for the value


@dataclass(frozen=True)
class Column:
    """A column of the task's table: the runs of `protocol` (any when None) feed it with the first of `metrics`."""

    key: str
    task: str
    label: str
    metrics: tuple[str, ...]
    protocol: str | None = None
    scale: dict[str, float] = field(default_factory=dict)  # metric key -> factor (fractions to percent)
    higher_is_better: bool = True
    best_metric: str | None = None  # the best epoch's value, for `harness report --in1k-top1 best`
    split: Split | None = None

    def key_for(self, extra: dict[str, Any], recipe: dict[str, Any]) -> str:
        """The column a run feeds: a split column's runs with different values (partial fine-tuning's K) are
        different settings, not seeds: `in1k_partial_k2`."""
        if self.split is None:
            return self.key
        value = extra.get(self.split.extra)
        if value is None:
            value = _dotted(recipe, self.split.recipe)
        return f"{self.key}_k{value}" if value is not None else self.key

    def split_value(self, key: str) -> str | None:
        """The value in a split column's key (`in1k_partial_k2` -> '2'), or None."""
        prefix = f"{self.key}_k"
        return key.removeprefix(prefix) if self.split is not None and key.startswith(prefix) else None

    def split_order(self, key: str) -> tuple[int, float | str]:
        value = str(self.split_value(key))
        try:
            return (0, float(value))
        except ValueError:
            return (1, value)

    def label_for(self, key: str) -> str | None:
        """The label of `key` if it is this column's (or one of its split columns'), else None."""
        value = self.split_value(key)
        if value is not None:
            return self.split.label.format(value)
        return self.label if key == self.key else None


def _dotted(node: Any, path: str) -> Any:
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@dataclass(frozen=True)
class DataLayout:
    """Real data: the folder under `--data-root`, the entries it must hold, and sub-folders to look in instead."""

    folder: str
    required: tuple[str, ...]
    alternatives: tuple[str, ...] = ()


CONTROLS = ("floor", "pixels")  # `harness run --controls`: the kinds of control run a task may declare


@dataclass(frozen=True)
class Control:
    """How a task runs one kind of control (`harness.controls`): a protocol and recipe overrides on a random encoder
    of each architecture (the floor), or on none (pixels); `column` names the table column its runs feed when their
    protocol is not a column's own (the pixel reference beside the linear probes)."""

    kind: str  # floor | pixels
    protocol: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    column: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    target: str  # module:function (or file.py:function) taking a TaskContext
    title: str = ""  # the report table's title; no columns: the task has no table
    protocols: tuple[str, ...] = ()
    main_metrics: tuple[str, ...] = ()
    data: DataLayout | None = None
    columns: tuple[Column, ...] = ()
    order: int = 100  # the place of its table in the report (and of its runs in the summary's metric lookup)
    path: str | None = None  # the file it was read from
    controls: dict[str, Control] = field(default_factory=dict)  # by kind (`CONTROLS`): what `--controls` runs

    def data_title(self, embedded: bool) -> str:
        """The table's title; for runs on the embedded Fashion-MNIST sets, the data set whose layout they borrow is
        named as a layout ("ImageNet-1K top-1 (%)" -> "Fashion-MNIST in the ImageNet layout: top-1 (%)")."""
        word = self.title.split()[0] if self.title else ""
        folder = self.data.folder if self.data else ""
        if not embedded or not folder or not word.lower().startswith(folder.lower()):
            return self.title
        return f"Fashion-MNIST in the {word[:len(folder)]} layout:{self.title[len(word):]}"

    @property
    def best_metrics(self) -> bool:
        """Whether the table can show the best epoch's values instead of the last's."""
        return any(c.best_metric for c in self.columns)


class SpecError(ValueError):
    """A spec file that does not say what a task spec must: the message names the file and the key."""


_TOP = {"name", "target", "title", "protocols", "main_metrics", "data", "columns", "order", "controls"}
_COLUMN = {"key", "label", "metrics", "protocol", "scale", "higher_is_better", "best_metric", "split"}


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: must be a list of names, got {value!r}")
    return tuple(value)


def _mapping(value: Any, where: str, keys: set[str], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise SpecError(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(keys))})")
    missing = [k for k in required if k not in value]
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    return value


def _column(raw: Any, task: str, where: str) -> Column:
    raw = _mapping(raw, where, _COLUMN, ("key", "label", "metrics"))
    scale = raw.get("scale") or {}
    if not isinstance(scale, dict) or not all(isinstance(v, int | float) for v in scale.values()):
        raise SpecError(f"{where}.scale: must map metric keys to numbers, got {scale!r}")
    split = None
    if raw.get("split") is not None:
        s = _mapping(raw["split"], f"{where}.split", {"extra", "recipe", "label"}, ("extra", "recipe", "label"))
        split = Split(extra=str(s["extra"]), recipe=str(s["recipe"]), label=str(s["label"]))
    if not isinstance(raw.get("higher_is_better", True), bool):
        raise SpecError(f"{where}.higher_is_better: must be true or false")
    return Column(key=str(raw["key"]), task=task, label=str(raw["label"]),
                  metrics=_strings(raw["metrics"], f"{where}.metrics"), protocol=raw.get("protocol"),
                  scale={str(k): float(v) for k, v in scale.items()},
                  higher_is_better=raw.get("higher_is_better", True), best_metric=raw.get("best_metric"), split=split)


def parse_spec(raw: Any, path: str | Path) -> TaskSpec:
    """A spec from its YAML mapping; errors name the file and the key."""
    raw = _mapping(raw, str(path), _TOP, ("name", "target"))
    name, target = raw["name"], raw["target"]
    if not isinstance(name, str) or not name or "=" in name or "," in name:
        raise SpecError(f"{path}: name: must be a task name without '=' or ',', got {name!r}")
    if not isinstance(target, str) or ":" not in target:
        raise SpecError(f"{path}: target: must look like package.module:function, got {target!r}")
    data = None
    if raw.get("data") is not None:
        d = _mapping(raw["data"], f"{path}: data", {"folder", "required", "alternatives"}, ("folder", "required"))
        data = DataLayout(folder=str(d["folder"]), required=_strings(d["required"], f"{path}: data.required"),
                          alternatives=_strings(d.get("alternatives") or [], f"{path}: data.alternatives"))
    columns = raw.get("columns") or []
    if not isinstance(columns, list):
        raise SpecError(f"{path}: columns: must be a list")
    cols = tuple(_column(c, name, f"{path}: columns[{i}]") for i, c in enumerate(columns))
    protocols = _strings(raw.get("protocols") or [], f"{path}: protocols")
    for i, c in enumerate(cols):
        if c.protocol is not None and c.protocol not in protocols:
            raise SpecError(f"{path}: columns[{i}].protocol: {c.protocol!r} is not among protocols "
                            f"({', '.join(protocols) or 'none'})")
    keys = [c.key for c in cols]
    if len(set(keys)) != len(keys):
        raise SpecError(f"{path}: columns: a key is given twice ({', '.join(keys)})")
    return TaskSpec(name=name, target=target, title=str(raw.get("title") or name), protocols=protocols,
                    main_metrics=_strings(raw.get("main_metrics") or [], f"{path}: main_metrics"), data=data,
                    columns=cols, order=_order(raw.get("order", 100), path), path=str(path),
                    controls=_controls(raw.get("controls") or {}, f"{path}: controls", cols))


def _controls(raw: Any, where: str, cols: tuple[Column, ...]) -> dict[str, Control]:
    raw = _mapping(raw, where, set(CONTROLS), ())
    out = {}
    for kind, c in raw.items():
        c = _mapping(c or {}, f"{where}.{kind}", {"protocol", "overrides", "column"}, ())
        if not isinstance(c.get("overrides") or {}, dict):
            raise SpecError(f"{where}.{kind}.overrides: must map recipe keys to values")
        if c.get("column") is not None and c["column"] not in {col.key for col in cols}:
            raise SpecError(f"{where}.{kind}.column: {c['column']!r} is not a column of the task")
        out[kind] = Control(kind=kind, protocol=c.get("protocol"), overrides=dict(c.get("overrides") or {}),
                            column=c.get("column"))
    return out


def _order(value: Any, path: str | Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{path}: order: must be an integer, got {value!r}")
    return value


def load_spec(path: str | Path) -> TaskSpec:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"task spec {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"task spec {path}: not YAML ({e})") from None
    return parse_spec(raw, path)


def is_spec_file(item: str) -> bool:
    return item.endswith((".yaml", ".yml"))


@cache
def builtin_specs() -> dict[str, TaskSpec]:
    """The specs of `tasks/specs/*.yaml`, by task name, in their `order`."""
    out: dict[str, TaskSpec] = {}
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        spec = load_spec(path)
        if spec.name in out:
            raise SpecError(f"{path}: task {spec.name} is declared by {out[spec.name].path} too")
        out[spec.name] = spec
    return dict(sorted(out.items(), key=lambda kv: (kv[1].order, kv[0])))


def suite_specs(folder: str | Path) -> dict[str, TaskSpec]:
    """The spec files in `folder` (a run folder's `specs/`: users' tasks), by task name; none when it is missing."""
    folder = Path(folder)
    specs = [load_spec(p) for p in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []
    return {s.name: s for s in sorted(specs, key=lambda s: (s.order, s.name))}


def task_spec(name_or_target: str) -> TaskSpec | None:
    """The built-in spec of a task name or of its target, or None (a user's task without a spec)."""
    specs = builtin_specs()
    if name_or_target in specs:
        return specs[name_or_target]
    return next((s for s in specs.values() if s.target == name_or_target), None)


def all_columns(specs: dict[str, TaskSpec]) -> dict[str, Column]:
    """Every column of `specs` by key; a key two tasks both declare is an error."""
    out: dict[str, Column] = {}
    for spec in specs.values():
        for col in spec.columns:
            if col.key in out and out[col.key].task != spec.name:
                raise SpecError(f"{spec.path}: column {col.key} is declared by task {out[col.key].task} too")
            out[col.key] = col
    return out
