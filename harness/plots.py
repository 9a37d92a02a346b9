"""The report's figures with matplotlib (Agg), each saved as PNG and SVG, drawn from frames the report has ready.

* `<table>[_<recipe>]`: a grouped bar chart per task, backbones on the x axis, one bar per column (fine-tune, linear,
  partial; APbox, APmask; mIoU) with the std over seeds as error bars (cf. MAE Figure 9 / Tables 3-5);
* `<column>_vs_epochs`, `<column>_vs_size`: accuracy against pretraining epochs or model size, one line per setting
  (recipe with its overrides) and family, only when the runs vary them (MAE Figures 7 and 8); settings are never
  pooled;
* `pretrain_loss`: the pretraining loss, one panel per method, one line per setting (mean over seeds, a band of one
  std), from `harness.results.loss_curves`;
* `reconstruction_<backbone>`: the MAE reconstruction figure the pretraining wrote, copied.

Figures are made with `matplotlib.figure.Figure`, not pyplot: nothing global to close, and no GUI backend to load.
SVG text is kept as text (not glyph outlines): smaller files, written in a fraction of the time.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Model sizes in the order of the ViT family names, for a size axis without counting parameters.
SIZE_ORDER = ("tiny", "small", "base", "large", "huge", "giant")
PNG_DPI = 120
LOSS_PANELS_PER_ROW = 3


def _figure(width: float, height: float, **kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def _save(fig: Figure, stem: Path) -> list[Path]:
    import matplotlib

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for p in paths:
            fig.savefig(p, dpi=PNG_DPI if p.suffix == ".png" else None)
    return paths


def bar_chart(part: pd.DataFrame, columns: list[str], labels: dict[str, str], title: str, stem: Path) -> list[Path]:
    """Grouped bars: x = backbones, one bar per column, error bars = std over seeds (none for n = 1)."""
    import numpy as np

    backbones = sorted(part["label"].unique())  # backbone, with its pretraining epochs where those vary
    width = 0.8 / len(columns)
    fig = _figure(max(4.5, 0.35 * len(columns) * len(backbones) + 2.0), 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(backbones))
    for i, col in enumerate(columns):
        hit = part[part["column"] == col].set_index("label").reindex(backbones)
        err = hit["std"].fillna(0.0).to_numpy()  # one seed: no spread to show
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, hit["mean"].to_numpy(), width,
                      yerr=err if err.any() else None, capsize=3, label=labels[col])
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=2)
    ax.margins(y=0.12)  # room for the value labels
    ax.set_xticks(x, backbones, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, stem)


def _size_rank(size_key: str) -> tuple[int, int]:
    arch, kwargs = json.loads(size_key)
    rank = next((i for i, s in enumerate(SIZE_ORDER) if s in str(arch)), len(SIZE_ORDER))
    return rank, int((kwargs or {}).get("embed_dim", 0))


def _size_name(size_key: str) -> str:
    arch, kwargs = json.loads(size_key)
    return str(arch) + (f" d={kwargs['embed_dim']}" if (kwargs or {}).get("embed_dim") else "")


def trend_charts(frame: pd.DataFrame, labels: dict[str, str], out: Path) -> list[Path]:
    """Accuracy against pretraining epochs and model size, one line per setting and family, where some line has
    runs at two or more values. The size axis is shared by all lines of a figure, ordered by model size."""
    written: list[Path] = []
    done = frame[frame["column"].notna() & frame["value"].notna()].fillna({"recipe": "", "family": ""})
    for axis, name in (("pretrain_epochs", "epochs"), ("size", "size")):
        for col, part in done.groupby("column"):
            part = part[part[axis].notna()]
            stats = part.groupby(["recipe", "family", axis])["value"].agg(["mean", "std"]).reset_index()
            varied = stats.groupby(["recipe", "family"])[axis].nunique()
            if varied.empty or varied.max() < 2:
                continue
            fig = _figure(6.0, 3.4)
            ax = fig.add_subplot()
            several = stats["recipe"].nunique() > 1
            if axis == "size":
                order = sorted(stats[axis].unique(), key=_size_rank)
                ax.set_xticks(range(len(order)), [_size_name(k) for k in order], rotation=15, ha="right",
                              fontsize=7)
            for (recipe, family), line in stats.groupby(["recipe", "family"]):
                if axis == "size":
                    line = line.assign(x=line[axis].map({k: i for i, k in enumerate(order)})).sort_values("x")
                    xs = line["x"].to_numpy()
                else:
                    line = line.sort_values(axis)
                    xs = line[axis].to_numpy()
                ax.errorbar(xs, line["mean"], yerr=line["std"].fillna(0.0), marker="o", capsize=3,
                            label=f"{family}, {recipe}" if several else family)
            ax.set_xlabel("pretraining epochs" if axis == "pretrain_epochs" else "model")
            ax.set_ylabel(labels[col])
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            written += _save(fig, out / f"{col}_vs_{name}")
    return written


def loss_figure(curves: pd.DataFrame) -> Figure | None:
    """One panel per method, one line per setting (the mean over seeds) with a band of one std where n > 1."""
    import numpy as np

    if curves.empty:
        return None
    panels = sorted(curves["panel"].unique())
    cols = min(len(panels), LOSS_PANELS_PER_ROW)
    rows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 3.6 * rows)
    fig.suptitle("pretraining loss (mean over seeds, band: ± 1 std)", fontsize=10)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for setting, line in curves[curves["panel"] == panel].groupby("setting", sort=True):
            steps, mean, std = line["step"].to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
            n = int(line["n"].max())
            (drawn,) = ax.plot(steps, mean, linewidth=1.2, label=f"{setting} (n={n})")
            if np.isfinite(std).any():
                ax.fill_between(steps, mean - std, mean + std, color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    return fig


def loss_curves(curves: pd.DataFrame, out: Path) -> list[Path]:
    fig = loss_figure(curves)
    return [] if fig is None else _save(fig, out / "pretrain_loss")


def reconstructions(figures: dict[str, str], out: Path) -> list[Path]:
    """Copies each backbone's reconstruction figure (backbone name -> PNG written by its pretraining)."""
    written = []
    for backbone, src in sorted(figures.items()):
        if src and Path(src).is_file():
            dest = out / f"reconstruction_{re.sub(r'[^A-Za-z0-9_.-]', '_', backbone)}.png"
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            written.append(dest)
    return written


def write_plots(bars: list[tuple[str, str, pd.DataFrame, list[str]]], frame: pd.DataFrame, labels: dict[str, str],
                curves: pd.DataFrame, figures: dict[str, str], out: Path) -> list[Path]:
    """Every figure: `bars` (file stem, title, summary rows, columns), the trends in `frame` (the report's rows),
    the loss `curves` (`harness.results.loss_curves`) and reconstruction `figures`; returns the files written."""
    written: list[Path] = []
    for stem, title, part, present in bars:
        written += bar_chart(part, present, labels, title, out / stem)
    written += trend_charts(frame, labels, out)
    written += loss_curves(curves, out)
    written += reconstructions(figures, out)
    return written
