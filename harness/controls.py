"""Controls: the runs that say where a task's numbers lie, planned by `harness run --controls` and shown by the report.

* floor: the same architecture as the suite's backbones, randomly initialised and frozen, with the task's heads
  trained by the same recipe (in1k: the random encoder's linear probe; coco, ade20k: `model.freeze_backbone`). A
  pretraining that does not clear it has learnt nothing the task can use.
* pixels: a linear classifier on the raw normalised pixels with the linear probe's recipe (in1k protocol `pixels`),
  the reference a linear probe of any encoder should beat.

Each task spec declares its controls (`tasks.spec.Control`). The report gives them rows of their own after the
backbones, draws the floor as the charts' dashed line, and says under each table whether the task separates the
backbones from the floor: with two seeds or more per cell, it does when the best backbone's mean exceeds the floor's
by more than `SEPARATION` times the larger of their seed standard deviations (a gap that seed noise explains seldom),
as controls are read in probing studies (Hewitt and Liang 2019, "Designing and Interpreting Probes with Control
Tasks").
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tasks.spec import CONTROLS, Column, Control, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

LABELS = {"floor": "random frozen (floor)", "pixels": "pixels, linear"}  # their rows in tables and charts
FAMILIES = tuple(LABELS)  # a control row's `family` is its kind
SEPARATION = 3.0  # the gap, in seed standard deviations, that separates the best backbone from the floor
RANDOM_FAMILY = "scratch"  # the family of a backbone without weights (`random:<name>` included)
NO_SEPARATION = "this task does not separate these backbones at this budget"


def parse_controls(value: str | list[str] | tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    """`floor,pixels`, a list of them, or `none` -> the kinds; anything else raises naming `where`."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or []) if str(v).strip()]
    if isinstance(value, str) and not items:
        raise ValueError(f"{where} is empty: give none or comma-separated {', '.join(CONTROLS)}")
    if items == ["none"]:
        return ()
    bad = [v for v in items if v not in CONTROLS]
    if bad:
        raise ValueError(f"{where} {','.join(map(str, items))!r}: allowed are none or comma-separated "
                         f"{', '.join(CONTROLS)}")
    return tuple(dict.fromkeys(items))


# --- planning ---


def arch_key(spec: dict[str, Any]) -> str:
    """What makes two backbones the same architecture for a floor: the timm model, its overrides and input."""
    return json.dumps([spec.get("arch"), spec.get("arch_kwargs") or {}, spec.get("img_size"),
                       spec.get("patch_size")], sort_keys=True)


def floor_backbones(specs: dict[str, dict[str, Any]]) -> list[str]:
    """One random encoder per architecture among `specs` (name -> spec dict), in their order: a backbone of the suite
    that has no weights (a from-scratch entry, whose linear probe is then the floor itself), else `random:<name>`."""
    out: dict[str, str] = {}
    for name, spec in specs.items():
        key = arch_key(spec)
        if spec.get("family") == RANDOM_FAMILY and not spec.get("url") and not spec.get("checkpoint"):
            out[key] = name
        else:
            out.setdefault(key, f"random:{name}")
    return list(out.values())


def control_settings(spec: TaskSpec | None, kinds: Iterable[str], specs: dict[str, dict[str, Any]]
                     ) -> list[tuple[Control, str]]:
    """(control, backbone) of every control run of one task and seed: a floor per architecture, one pixel run (on the
    first architecture's random encoder, which gives it the image size and normalisation)."""
    if spec is None:
        return []
    floors = floor_backbones(specs)
    out = []
    for kind in kinds:
        control = spec.controls.get(kind)
        if control is not None and floors:
            out += [(control, name) for name in (floors if kind == "floor" else floors[:1])]
    return out


# --- reading records ---


def control_of(rec: dict[str, Any], spec: TaskSpec | None) -> Control | None:
    """The control a record is a run of, from its task's spec, else None."""
    if spec is None or rec.get("kind", "task") != "task":
        return None
    pixels = spec.controls.get("pixels")
    if pixels is not None and pixels.protocol is not None and rec.get("protocol") == pixels.protocol:
        return pixels
    floor = spec.controls.get("floor")
    backbone = rec.get("backbone") or {}
    if floor is None or (backbone.get("spec") or {}).get("family") != RANDOM_FAMILY or backbone.get("pretrain") \
            or backbone.get("checkpoint"):  # weights given to a from-scratch entry: no longer random
        return None
    if floor.protocol is not None and rec.get("protocol") != floor.protocol:
        return None
    given = rec.get("overrides") or {}
    return floor if all(given.get(k) == v for k, v in floor.overrides.items()) else None


def row_bases(base: dict[str, Any], rec: dict[str, Any], spec: TaskSpec | None,
              split: frozenset[str]) -> list[dict[str, Any]]:
    """The report rows (`harness.report.flatten`'s `base`) a record gives: its backbone's, its control's, or both (a
    from-scratch backbone's linear probe is also the in1k floor). A control row keeps the setting of the runs it
    controls: its own overrides are not part of the recipe label."""
    control = control_of(rec, spec)
    if control is None:
        return [base]
    from harness.results import recipe_label

    overrides = {k: v for k, v in (rec.get("overrides") or {}).items() if k not in control.overrides}
    name = str((rec.get("backbone") or {}).get("name") or "")
    row = {**base, "backbone": LABELS[control.kind], "family": control.kind, "_source": name.removeprefix("random:"),
           "recipe": recipe_label({**rec, "overrides": overrides}, split)}
    own = control.kind == "floor" and not control.overrides and not name.startswith("random:")
    return [base, row] if own else [row]


def name_architectures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Control rows of one task and setting that stand for several architectures (a floor per architecture) are
    named by theirs: `random frozen (floor), ViT-L` (the paper's name, else the backbone it takes it from)."""
    sizes: dict[tuple[Any, ...], set[str]] = {}
    for row in rows:
        if row.get("family") in FAMILIES:
            sizes.setdefault((row["task"], row["recipe"], row["backbone"]), set()).add(row["size"])
    for row in rows:
        if row.get("family") in FAMILIES and len(sizes[(row["task"], row["recipe"], row["backbone"])]) > 1:
            row["backbone"] = f"{row['backbone']}, {row.get('model') or row.get('_source')}"
    return rows


def feeds(col: Column, rec: dict[str, Any], row: dict[str, Any], spec: TaskSpec | None) -> bool:
    """Whether a record's row feeds a column: its protocol's columns, or the column its control names."""
    control = spec.controls.get(str(row.get("family"))) if spec is not None else None
    if control is not None and control.column is not None:
        return col.key == control.column
    return not col.protocol or rec.get("protocol") == col.protocol


# --- the verdict ---


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.1f} ± {std:.1f} (n={n})" if n > 1 and not math.isnan(std) else f"{mean:.1f} (n={n})"


def verdict(part: pd.DataFrame, column: str, label: str, higher_is_better: bool = True) -> list[str]:
    """The lines under a table for one column: whether its best pretrained backbone (a from-scratch one is no
    candidate: its linear probe is the in1k floor itself) clears the floor of its architecture, with the numbers; none
    when the column has no floor row or no pretrained backbone's row."""
    floors = part[(part["column"] == column) & (part["family"] == "floor")]
    rows = part[(part["column"] == column) & ~part["family"].isin((*FAMILIES, RANDOM_FAMILY))]
    lines = []
    for _, f in floors.iterrows():
        same = rows[rows["size"] == f["size"]]
        if not same.empty:
            where = label if len(floors) == 1 else f"{label}, {f['label']}"
            lines.append(_line(same, f, where, higher_is_better))
    return lines


def _line(rows: pd.DataFrame, f: pd.Series, label: str, higher_is_better: bool) -> str:
    best = rows.loc[rows["mean"].idxmax() if higher_is_better else rows["mean"].idxmin()]
    numbers = f"best {best['label']} {_fmt(best['mean'], best['std'], int(best['n']))}, floor " \
              f"{_fmt(f['mean'], f['std'], int(f['n']))}"
    if min(int(best["n"]), int(f["n"])) < 2:
        return f"{label}: one seed cannot tell whether this task separates the backbones from the floor ({numbers}); " \
               "run several seeds (--seeds 0,1,2)"
    gap = (best["mean"] - f["mean"]) * (1 if higher_is_better else -1)
    bar = SEPARATION * max(float(best["std"]), float(f["std"]))
    if gap > bar:
        return f"{label}: separates: {numbers}; gap {gap:.1f} > {SEPARATION:g} × the larger std = {bar:.1f}"
    return f"{label}: {NO_SEPARATION} ({numbers}; gap {gap:.1f} ≤ {SEPARATION:g} × the larger std = {bar:.1f})"


def verdicts(part: pd.DataFrame, present: list[str], spec: TaskSpec, labels: dict[str, str]) -> list[str]:
    """One line per column of a table that has a floor row; without any, a line that says how to get one."""
    higher = {c.key: c.higher_is_better for c in spec.columns}
    lines = [line for c in present for line in verdict(part, c, labels.get(c, c), higher.get(c, True))]
    if not lines and "floor" in spec.controls and not (part["family"] == "floor").any():
        lines = ["No floor row: run with --controls floor to see whether this task separates the backbones."]
    return lines


def verdict_text(table: pd.DataFrame) -> str:
    """A table's verdict lines (`harness.report.tables` keeps them in `attrs`) as Markdown under it, or nothing."""
    lines = table.attrs.get("verdicts") or []
    return "\n" + "".join(f"> {line}\n" for line in lines) if lines else ""
