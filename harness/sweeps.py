"""The report's sweep curves, as the MAE paper draws its ablations (He et al. 2021, Figure 5: mask ratio, Figure 9:
partial fine-tuning; Table 1: decoder depth): accuracy against the swept value, from the report's summary.

* `sweep_<key>`: for a `harness run --sweep pretrain.KEY=...`, one panel per column (IN1K fine-tune, linear, and the
  other tasks' columns), x = the swept value, one line per backbone, the mean over seeds with its 95% interval as
  error bars when n >= 2; beside it a table, one row per value;
* `partial_k`: IN1K partial fine-tuning's top-1 against K (the blocks tuned) when several K were run, one line per
  backbone and setting.

Each point is one summary cell (`harness.stats.summarize`): settings are never pooled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.plots import _grid, _save, text_width

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from tasks.spec import TaskSpec

PANELS_PER_ROW = 3
PARTIAL = "partial fine-tuning"  # the K curve's one panel


def sweep_points(summary: pd.DataFrame, key: str, k_of: dict[str, float]) -> pd.DataFrame:
    """The cells of the swept `key` (split columns such as partial's K left to `k_points`), x = the swept value."""
    part = summary[(summary["sweep_key"] == key) & ~summary["column"].isin(k_of)]
    return part.assign(x=part["sweep_value"], line=part["backbone"]).sort_values(["line", "column", "x"])


def k_points(summary: pd.DataFrame, k_of: dict[str, float]) -> pd.DataFrame:
    """The split columns' cells (partial fine-tuning's `in1k_partial_k<K>`) with x = K, on lines (backbone and
    setting, i.e. the table row) that have two or more K."""
    part = summary[summary["column"].isin(k_of)]
    part = part.assign(x=part["column"].map(k_of), line=part["label"], column=PARTIAL)
    several = part.groupby(["recipe", "line"])["x"].transform("nunique") > 1
    return part[several].sort_values(["line", "x"])


def sweep_table(points: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """One row per swept value (and backbone), one cell per column: mean ± std [interval] (n)."""
    import pandas as pd

    from harness.stats import fmt_cell

    rows: dict[tuple[Any, str], dict[str, Any]] = {}
    for p in points.itertuples(index=False):
        row = rows.setdefault((p.x, p.line), {"value": p.x, "backbone": p.line})
        row[labels.get(p.column, p.column)] = fmt_cell(p.mean, p.std, int(p.n))
    return pd.DataFrame([rows[k] for k in sorted(rows, key=lambda k: (k[1], str(type(k[0])), k[0]))])


def curve_chart(points: pd.DataFrame, labels: dict[str, str], xlabel: str, stem: Path,
                formats: tuple[str, ...] = ("png",)) -> list[Path]:
    return [] if points.empty else _save(curve_figure(points, labels, xlabel), stem, formats)


def curve_figure(points: pd.DataFrame, labels: dict[str, str], xlabel: str) -> Figure:
    """One panel per column (as the paper's Figure 5: fine-tuning, linear probing), one line per backbone (and recipe
    of the transfers, when several), the same colour in every panel: the mean with its 95% interval."""
    columns = sorted(points["column"].unique())
    series = sorted({(r, li) for r, li in zip(points["recipe"], points["line"], strict=True)})
    several = len({r for r, _ in series}) > 1
    names = [f"{li}, {r or 'default'}" if several else str(li) for r, li in series]
    fig, axes = _grid(len(columns), PANELS_PER_ROW, (3.0, 2.2), (0.55, text_width(names, 7) + 0.6, 0.5, 0.3),
                      (0.55, 0.75))
    for ax, col in zip(axes, columns, strict=True):
        for j, (recipe, line) in enumerate(series):
            pts = points[(points["column"] == col) & (points["recipe"] == recipe) & (points["line"] == line)]
            if pts.empty:
                continue
            lo = (pts["mean"] - pts["ci_lo"]).where(pts["n"] >= 2, 0.0).fillna(0.0)
            hi = (pts["ci_hi"] - pts["mean"]).where(pts["n"] >= 2, 0.0).fillna(0.0)
            ax.errorbar(pts["x"], pts["mean"], yerr=[lo, hi], marker="o", markersize=3, capsize=2,
                        color=f"C{j % 10}", label=names[j])
        xs = list(points.loc[points["column"] == col, "x"].unique())
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs):  # else categories, as given
            ax.set_xticks(sorted(xs))
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(labels.get(col, col), fontsize=9)
    handles, shown = [], []
    for ax in axes:  # one legend for the figure
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in shown:
                handles.append(h)
                shown.append(n)
    fig.legend(handles, shown, loc="upper right", fontsize=7)
    return fig


def split_ks(columns: set[str], specs: dict[str, TaskSpec]) -> dict[str, float]:
    """Column key -> K for the split columns among `columns` whose value is a number (`in1k_partial_k2` -> 2)."""
    out = {}
    for key in columns:
        for col in (c for s in specs.values() for c in s.columns if c.split is not None):
            value = col.split_value(key)
            if value is not None and re.fullmatch(r"-?\d+(\.\d+)?", value):
                out[key] = float(value)
    return out


def sweep_tables(summary: pd.DataFrame, labels: dict[str, str], k_of: dict[str, float]) -> dict[str, pd.DataFrame]:
    """`sweep_<key>` -> its table (`sweep_table`), one per swept key in the summary."""
    keys = sorted(summary["sweep_key"].dropna().unique()) if "sweep_key" in summary else []
    return {_stem(k): sweep_table(sweep_points(summary, k, k_of), labels) for k in keys}


def _stem(key: str) -> str:
    return "sweep_" + re.sub(r"[^A-Za-z0-9_-]+", "_", str(key))


def write_sweeps(summary: pd.DataFrame, labels: dict[str, str], k_of: dict[str, float], out: Path,
                 formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """The sweep curves (`sweep_<key>`, one per swept key) and the K curve (`partial_k`); nothing when the summary
    holds neither."""
    files = []
    for key in sorted(summary["sweep_key"].dropna().unique()) if "sweep_key" in summary else []:
        files += curve_chart(sweep_points(summary, key, k_of), labels, f"pretrain.{key}", out / _stem(key), formats)
    return files + curve_chart(k_points(summary, k_of), labels, "blocks fine-tuned (K)", out / "partial_k", formats)
