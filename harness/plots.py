"""The report's figures with matplotlib (Agg backend), each saved as PNG and SVG.

* `<table>[_<recipe>]`: a grouped bar chart per task, backbones on the x axis, one bar per column (fine-tune, linear,
  partial; APbox, APmask; mIoU) with the std over seeds as error bars (cf. MAE Figure 9 / Tables 3-5);
* `<column>_vs_epochs`, `<column>_vs_size`: accuracy against pretraining epochs or model size, one line per family,
  only when the runs vary them (MAE Figures 7 and 8);
* `pretrain_loss`: the loss curves of the pretrainings, from their `log.jsonl`;
* `reconstruction_<backbone>`: the MAE reconstruction figure the pretraining wrote, copied.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Model sizes in the order of the ViT family names, for a size axis without counting parameters.
SIZE_ORDER = ("tiny", "small", "base", "large", "huge", "giant")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=150 if p.suffix == ".png" else None, bbox_inches="tight")
    _pyplot().close(fig)
    return paths


def bar_chart(part: pd.DataFrame, columns: list[str], labels: dict[str, str], title: str, stem: Path) -> list[Path]:
    """Grouped bars: x = backbones, one bar per column, error bars = std over seeds (none for n = 1)."""
    import numpy as np

    plt = _pyplot()
    backbones = sorted(part["label"].unique())  # backbone, with its pretraining epochs where those vary
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(backbones)), 3.2))
    x = np.arange(len(backbones))
    for i, col in enumerate(columns):
        hit = part[part["column"] == col].set_index("label").reindex(backbones)
        err = hit["std"].fillna(0.0).to_numpy()  # one seed: no spread to show
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, hit["mean"].to_numpy(), width,
                      yerr=err if err.any() else None, capsize=3, label=labels[col])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.margins(y=0.12)  # room for the value labels
    ax.set_xticks(x, backbones, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, stem)


def _size_rank(size_key: str) -> tuple[int, int]:
    arch, kwargs = json.loads(size_key)
    rank = next((i for i, s in enumerate(SIZE_ORDER) if s in str(arch)), len(SIZE_ORDER))
    return rank, int((kwargs or {}).get("embed_dim", 0))


def trend_charts(frame: pd.DataFrame, labels: dict[str, str], out: Path) -> list[Path]:
    """Accuracy against pretraining epochs and model size, where some family has runs at two or more values."""
    plt = _pyplot()
    written: list[Path] = []
    done = frame[frame["column"].notna() & frame["value"].notna()]
    for axis, name in (("pretrain_epochs", "epochs"), ("size", "size")):
        for col, part in done.groupby("column"):
            varied = part.groupby("family")[axis].nunique()
            if varied.empty or varied.max() < 2:
                continue
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for family, fam in part.groupby("family"):
                stats = fam.groupby(axis)["value"].agg(["mean", "std"]).reset_index()
                if axis == "size":
                    stats = stats.sort_values(axis, key=lambda s: s.map(_size_rank))
                    xs = [json.loads(k)[0] for k in stats[axis]]
                else:
                    stats = stats.sort_values(axis)
                    xs = stats[axis].to_numpy()
                ax.errorbar(xs, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=3, label=family)
            ax.set_xlabel("pretraining epochs" if axis == "pretrain_epochs" else "model")
            ax.set_ylabel(labels[col])
            ax.legend(fontsize=8)
            written += _save(fig, out / f"{col}_vs_{name}")
    return written


def read_loss(log_jsonl: Path) -> tuple[list[float], list[float]]:
    """(steps, losses) of a pretraining log; lines cut by a kill are skipped."""
    steps, losses = [], []
    for i, line in enumerate(log_jsonl.read_text().splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry.get("loss"), int | float) and math.isfinite(entry["loss"]):
            steps.append(float(entry.get("step", i)))
            losses.append(float(entry["loss"]))
    return steps, losses


def loss_curves(pretrains: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    curves = []
    for rec in pretrains:
        log = (rec.get("extra") or {}).get("log_jsonl")
        if log and Path(log).is_file():
            steps, losses = read_loss(Path(log))
            if losses:
                curves.append((f"{rec.get('method')} ({(rec.get('backbone') or {}).get('name')})", steps, losses))
    if not curves:
        return []
    # one panel per pretraining: MAE's pixel MSE, cross-entropy and MoCo's InfoNCE are on different scales
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (label, steps, losses) in zip(axes[0], curves, strict=True):
        ax.plot(steps, losses)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("training loss")
    fig.suptitle("pretraining loss")
    return _save(fig, out / "pretrain_loss")


def reconstructions(pretrains: list[dict[str, Any]], out: Path) -> list[Path]:
    written = []
    for rec in pretrains:
        src = (rec.get("extra") or {}).get("reconstruction")
        if src and Path(src).is_file():
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", str((rec.get("backbone") or {}).get("name")))
            dest = out / f"reconstruction_{name}.png"
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            written.append(dest)
    return written


def write_plots(frame: pd.DataFrame, summary: pd.DataFrame, records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Every figure the records allow; returns the files written."""
    from harness import store
    from harness.report import column_label, table_parts, table_title

    labels = {c: column_label(c) for c in set(frame["column"].dropna())}
    written: list[Path] = []
    for stem, table, recipe, part, present in table_parts(summary):
        title = table_title(table, recipe, summary.attrs.get("in1k_top1", "last"))
        written += bar_chart(part, present, labels, title, out / stem)
    written += trend_charts(frame, labels, out)
    latest = store.latest(records).values()
    pretrains = [r for r in latest if r.get("kind") == "pretrain" and r["status"] == "finished"]
    written += loss_curves(pretrains, out)
    written += reconstructions(pretrains, out)
    return written
