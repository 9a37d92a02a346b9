"""The two types that cross the process boundary: the `Job` the runner hands a worker (`OUT/work/<run_id>/job.json`)
and the result `Record` the worker writes (`harness.store`), as lm-evaluation-harness keeps one JSON record per run.

Both sides import these, so that a key is named in one place. `Job.from_json` checks the file and names the key that is
missing or of the wrong type. `Record.to_dict()` is the record's JSON, key for key as records have always been
written; `Record.from_dict` reads older records too (a key they lack takes its default).
"""

from __future__ import annotations

import functools
import json
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class Job:
    """One attempt of one run, as the worker needs it."""

    run_id: str
    attempt: str  # unique per attempt: the record's file name holds it
    kind: str  # task | pretrain
    task: str
    target: str  # module:function or file.py:function
    protocol: str | None = None
    backbone: str  # registry name
    backbone_spec: dict[str, Any] | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    recipe: str | None = None  # name or YAML path
    recipe_version: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    data_root: str | None = None  # None: the embedded data sets
    data_fingerprint: str | None = None
    method: str | None = None  # pretraining method
    epochs: int | None = None  # pretraining epochs (None: the recipe's)
    pretrain_run: dict[str, Any] | None = None  # {run_id, method, epochs} of the pretraining whose encoder it loads
    work_dir: str
    log: str
    records: str  # the folder the record goes to
    backbone_modules: list[str] = field(default_factory=list)
    backbone_files: list[str] = field(default_factory=list)
    allow_pickle: bool = False
    launcher: str = "none"  # none | pytorch (torchrun) | slurm
    device: str = "auto"

    def to_json(self, path: str | Path) -> Path:
        """Writes the job file atomically (a temporary name, then a rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Job:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"job file {path} is unreadable: {e}") from e
        if not isinstance(raw, dict):
            raise ValueError(f"job file {path} holds {type(raw).__name__}, not a mapping")
        return cls(**_checked(cls, raw, f"job file {path}"))


@dataclass(kw_only=True)
class Record:
    """The result of one attempt: what ran, what it measured, and where and with what it ran."""

    run_id: str
    attempt: str
    status: str  # finished | failed
    kind: str = "task"
    task: str | None = None
    target: str | None = None
    protocol: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # empty when failed
    recipe: dict[str, Any] = field(default_factory=dict)  # the resolved recipe, as used
    recipe_name: str | None = None
    recipe_version: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    backbone: dict[str, Any] = field(default_factory=dict)  # name, spec, checkpoint, sha256, pretrain
    method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the task's own: pyramid kind, a pretraining's encoder
    error: str | None = None
    failure: dict[str, Any] | None = None  # {step, loss} of a non-finite loss
    launcher: str = "none"
    world_size: int = 1
    versions: dict[str, Any] = field(default_factory=dict)  # provenance.collect(): packages, git, hardware
    git: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    log: str | None = None
    work_dir: str | None = None
    data_root: str | None = None
    data_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Record:
        """A record as read back (`store.read_records`); keys it does not know (`_path`) are left out."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


_SIMPLE = {"str": str, "int": int, "bool": bool, "float": (int, float), "dict": dict, "list": list}

# Mappings inside a record that readers walk with `.get`: (path, may be null)
_NESTED = (("backbone.spec", True), ("backbone.pretrain", True), ("backbone.pretrain.sweep", True),
           ("recipe.partial", True), ("extra", True))


def record_problem(raw: dict[str, Any]) -> str | None:
    """What makes `raw` (a record as read back, whole or pruned) unfit to read: the first of its fields whose value
    is not of `Record`'s declared type, or a mapping inside it that is not one; None when it is fit."""
    hints, types = _record_types()
    for name, value in raw.items():
        accepted = types.get(name)
        if accepted is not None and not (value is None and accepted[1]) and \
                (not isinstance(value, accepted[0]) or (isinstance(value, bool) and bool not in accepted[0])):
            return f"{name} is {_short(value)}, not {_type_name(hints[name])}"
    for path, nullable in _NESTED:
        node: Any = raw
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not (isinstance(node, dict) or (node is None and nullable)):
            return f"{path} is {_short(node)}, not a mapping"
    return None


@functools.cache
def _record_types() -> tuple[dict[str, Any], dict[str, tuple[tuple[type, ...], bool]]]:
    """`Record`'s type hints, and for each field but `Any` ones: (the types it accepts, whether it may be null)."""
    hints = typing.get_type_hints(Record)
    types = {}
    for name, hint in hints.items():
        if hint is Any:
            continue
        options = typing.get_args(hint) if isinstance(hint, type(int | None)) else (hint,)
        accepted: list[type] = []
        for option in options:
            if option is not type(None):
                simple = _SIMPLE[(typing.get_origin(option) or option).__name__]
                accepted += simple if isinstance(simple, tuple) else [simple]
        types[name] = (tuple(accepted), type(None) in options)
    return hints, types


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked(cls: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """`raw` if it has every required field of `cls`, no unknown key and values of the declared types."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key {', '.join(unknown)}")
    missing = [n for n, f in known.items() if n not in raw and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        if not _is_a(value, hints[name]):
            raise ValueError(f"{where}: {name} is {value!r}, not {_type_name(hints[name])}")
    return raw


def _is_a(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    options = typing.get_args(hint) if isinstance(hint, type(int | None)) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        origin = typing.get_origin(option) or option
        expected = _SIMPLE.get(getattr(origin, "__name__", ""))
        if expected is not None and isinstance(value, expected) and not (origin is not bool and
                                                                         isinstance(value, bool)):
            return True
    return False


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def json_number(v: Any) -> Any:
    """A metric as a float where it is a number (a tensor, a numpy scalar), else as it is."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def build_record(job: Job, status: str, *, metrics: dict[str, Any] | None = None,
                 recipe: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, error: str | None = None,
                 failure: dict[str, Any] | None = None, started_at: str, wall_time_s: float,
                 world_size: int = 1) -> Record:
    """The record of one attempt of `job`, with the environment it ran in (`provenance.collect`)."""
    from harness import provenance

    backbone = {"name": job.backbone, "spec": job.backbone_spec, "checkpoint": job.checkpoint,
                "sha256": job.checkpoint_sha256, "pretrain": job.pretrain_run}
    return Record(
        run_id=job.run_id, attempt=job.attempt, status=status, kind=job.kind, task=job.task, target=job.target,
        protocol=job.protocol, metrics={k: json_number(v) for k, v in (metrics or {}).items()},
        recipe=recipe or {}, recipe_name=job.recipe, recipe_version=job.recipe_version, overrides=job.overrides or {},
        seed=job.seed, backbone=backbone, method=job.method, extra=extra or {}, error=error, failure=failure,
        launcher=job.launcher, world_size=world_size, **provenance.collect(), wall_time_s=round(wall_time_s, 3),
        started_at=started_at, finished_at=provenance.now(), log=job.log, work_dir=job.work_dir,
        data_root=job.data_root, data_fingerprint=job.data_fingerprint,
    )
