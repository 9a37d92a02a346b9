"""The report's figures with matplotlib (Agg), saved as PNG (and SVG on request), drawn from frames the report has
ready.

* `<table>` (`in1k`, `coco`, `ade20k`): a grouped bar chart per task, one panel per setting (recipe with its
  overrides), backbones on the x axis, one bar per column (fine-tune, linear, partial; APbox, APmask; mIoU) with the
  95% interval of the mean as error bars, the baseline first and the controls last, the published value as a marker
  and the floor control (a random encoder, frozen: `harness.controls`) as a dashed line (cf. MAE Figure 9 / Tables
  3-5);
* `trend_vs_epochs`, `trend_vs_size`: accuracy against pretraining epochs or model size, one panel per column, one
  line per setting and family where that line has two or more values (MAE Figures 7 and 8); settings are never
  pooled;
* `pretrain_loss`: the pretraining loss, one panel per method, one line per setting (mean over seeds, a band of one
  std), from `harness.results.loss_curves`;
* `reconstruction_<backbone>`: the MAE reconstruction figure the pretraining wrote, copied.
* `sweep_<key>`, `partial_k`: accuracy against a swept pretraining setting or against partial fine-tuning's K, drawn
  by `harness.sweeps`.

Figures are made with `matplotlib.figure.Figure`, not pyplot: nothing global to close, and no GUI backend to load.
SVG text is kept as text (not glyph outlines): smaller files, written in a fraction of the time.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
# Model sizes in the order of the ViT family names, for a size axis without counting parameters.
SIZE_ORDER = ("tiny", "small", "base", "large", "huge", "giant")
PNG_DPI = 110
PNG_COMPRESSION = 1  # zlib level: files a few % larger than at PIL's default 6, written about 12% faster
TICK_SIZE, TICK_ROTATION = 7, 30
LOSS_PANELS_PER_ROW = 3
TREND_PANELS_PER_ROW = 3
BAR_VALUES_MAX = 16  # bars in a panel up to which each carries its value
# Panel titles at a fixed height, just above the axes (where matplotlib puts them when nothing is in the way: the
# panels have no ticks on top and no offset text): placing them itself would measure every tick label at each save.
TITLE_Y = 1.0


def text_width(labels: Any, size: float) -> float:
    """The width in inches of the longest label at `size` points (DejaVu Sans averages about 0.6 em a character)."""
    return max((len(str(t)) for t in labels), default=0) * size * 0.6 / 72


def _grid(n: int, per_row: int, panel: tuple[float, float], margins: tuple[float, float, float, float],
          gaps: tuple[float, float]) -> tuple[Figure, list[Any]]:
    """A figure of `n` panels of `panel` = (width, height) inches, `per_row` to a row, with `margins` (left, right,
    bottom, top) and `gaps` (between columns, between rows) in inches. The layout is set here from the labels'
    lengths, once: a layout engine would measure every text again at each save, which costs more than the drawing."""
    from matplotlib.figure import Figure

    cols = min(n, per_row)
    rows = -(-n // cols)
    (w, h), (left, right, bottom, top), (wgap, hgap) = panel, margins, gaps
    width, height = left + cols * w + (cols - 1) * wgap + right, bottom + rows * h + (rows - 1) * hgap + top
    fig = Figure(figsize=(width, height))
    axes = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = left + c * (w + wgap), height - top - (r + 1) * h - r * hgap
        axes.append(fig.add_axes((x0 / width, y0 / height, w / width, h / height)))
    return fig, axes


def _save(fig: Figure, stem: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """The figure as `stem.png` and/or `stem.svg` (`FORMATS`)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    if "png" in formats:
        paths.append(stem.with_suffix(".png"))
        fig.savefig(paths[-1], dpi=PNG_DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
    if "svg" in formats:
        import matplotlib

        paths.append(stem.with_suffix(".svg"))
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(paths[-1])
    return paths


def _bar_panel(ax: Any, part: pd.DataFrame, columns: list[str], labels: dict[str, str], title: str) -> None:
    """Grouped bars: x = backbones in the report's order (the baseline first), one bar per column, error bars = the
    95% interval of the mean (`ci_lo`, `ci_hi`; none for n = 1), the published value as a black marker where the
    setting matches the paper's, and the floor's mean (`control` rows: a random encoder, frozen) as a dashed line; the
    values are written on the bars while they are few enough to read."""
    import numpy as np

    backbones = list(dict.fromkeys(part["label"]))  # backbone, with its pretraining epochs where those vary
    width = 0.8 / len(columns)
    x = np.arange(len(backbones))
    for i, col in enumerate(columns):
        hit = part[part["column"] == col].drop_duplicates("label").set_index("label").reindex(backbones)
        mean = hit["mean"].to_numpy(dtype=float)
        err = np.vstack([mean - hit["ci_lo"].to_numpy(dtype=float), hit["ci_hi"].to_numpy(dtype=float) - mean])
        err = np.nan_to_num(err)  # one seed: no interval to show
        at = x + (i - (len(columns) - 1) / 2) * width
        bars = ax.bar(at, mean, width, yerr=err if err.any() else None, capsize=2, label=labels[col], color=f"C{i}")
        if len(backbones) * len(columns) <= BAR_VALUES_MAX:
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=2)
        paper = _floats(hit["published"]) if "published" in hit else np.full(len(backbones), np.nan)
        if np.isfinite(paper).any():
            ax.scatter(at, paper, marker="D", s=14, color="black", zorder=3,
                       label="published" if not _has_label(ax, "published") else None)
        controls = hit[hit["control"].fillna(False).astype(bool)] if "control" in hit else hit.iloc[:0]
        for label, value in controls["mean"].items():
            ax.axhline(value, color=f"C{i}", linestyle="--", linewidth=1, label=f"{label}, {labels[col]}")
    ax.margins(y=0.12)  # room for the value labels
    ax.set_xlim(-0.5, len(backbones) - 0.5)
    ax.set_xticks(x, backbones, rotation=TICK_ROTATION, ha="right", rotation_mode="anchor", fontsize=TICK_SIZE)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("% (error bars: 95% t-interval)", fontsize=7)
    ax.set_title(title, fontsize=9, y=TITLE_Y)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _floats(values: Any) -> Any:
    """Values with None for missing as a float array with NaN."""
    import numpy as np

    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _has_label(ax: Any, label: str) -> bool:
    return label in ax.get_legend_handles_labels()[1]


def bar_chart(panels: list[tuple[str, pd.DataFrame, list[str]]], labels: dict[str, str], stem: Path,
              formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """One figure per task, one panel per setting (title, its summary rows, its columns), stacked."""
    import math

    widest = max(len(part["label"].unique()) * len(cols) for _, part, cols in panels)
    ticks = text_width([b for _, part, _ in panels for b in part["label"].unique()], TICK_SIZE)
    floors = [f"{b}, {labels[c]}" for _, part, cols in panels if "control" in part
              for b, c, k in zip(part["label"], part["column"], part["control"], strict=True) if k and c in cols]
    legend = text_width([labels[c] for _, _, cols in panels for c in cols] + floors, 7) + 0.6
    angle = math.radians(TICK_ROTATION)
    fig, axes = _grid(len(panels), 1, (max(3.5, 0.2 * widest), 2.2),
                      (max(0.6, ticks * math.cos(angle) - 0.1), legend, ticks * math.sin(angle) + 0.25, 0.3),
                      (0.0, ticks * math.sin(angle) + 0.55))
    for ax, (title, part, columns) in zip(axes, panels, strict=True):
        _bar_panel(ax, part, columns, labels, title)
    return _save(fig, stem, formats)


def _size_rank(size_key: str) -> tuple[int, int]:
    arch, kwargs = json.loads(size_key)
    rank = next((i for i, s in enumerate(SIZE_ORDER) if s in str(arch)), len(SIZE_ORDER))
    return rank, int((kwargs or {}).get("embed_dim", 0))


def _size_name(size_key: str) -> str:
    arch, kwargs = json.loads(size_key)
    return str(arch) + (f" d={kwargs['embed_dim']}" if (kwargs or {}).get("embed_dim") else "")


def trend_lines(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """mean and std over seeds per (column, setting, family, value of `axis`), for the lines that have two or more
    values of `axis`: a setting's runs are never pooled with another setting's."""
    done = frame[frame["column"].notna() & frame["value"].notna() & frame[axis].notna()]
    done = done.fillna({"recipe": "", "family": ""})
    keys = ["column", "recipe", "family"]
    stats = done.groupby([*keys, axis])["value"].agg(["mean", "std"]).reset_index()
    return stats[stats.groupby(keys)[axis].transform("nunique") >= 2]


def trend_chart(frame: pd.DataFrame, labels: dict[str, str], axis: str, stem: Path,
                formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Accuracy against `axis` (pretraining epochs or model size): one panel per column, one line per setting and
    family, with the same colour in every panel; nothing when no line has two values."""
    lines = trend_lines(frame, axis)
    if lines.empty:
        return []
    columns = sorted(lines["column"].unique())
    series = sorted({(r, f) for r, f in zip(lines["recipe"], lines["family"], strict=True)})
    names = [f"{f}, {r}" if r else f for r, f in series]
    order = sorted(lines[axis].unique(), key=_size_rank) if axis == "size" else []
    ticks = text_width([_size_name(k) for k in order], TICK_SIZE) * 0.26 if order else 0.0  # rotated by 15 degrees
    fig, axes = _grid(len(columns), TREND_PANELS_PER_ROW, (3.0, 2.2), (0.55, text_width(names, 7) + 0.6,
                      ticks + 0.45, 0.3), (0.55, ticks + 0.75))
    if axis == "size":
        lines = lines.assign(x=lines[axis].map({k: i for i, k in enumerate(order)}))
    else:
        lines = lines.assign(x=lines[axis])
    for ax, col in zip(axes, columns, strict=True):
        for j, (recipe, family) in enumerate(series):
            line = lines[(lines["column"] == col) & (lines["recipe"] == recipe) & (lines["family"] == family)]
            if not line.empty:
                line = line.sort_values("x")
                ax.errorbar(line["x"], line["mean"], yerr=line["std"].fillna(0.0), marker="o", markersize=3,
                            capsize=2, color=f"C{j % 10}", label=names[j])
        if axis == "size":
            ax.set_xticks(range(len(order)), [_size_name(k) for k in order], rotation=15, ha="right",
                          rotation_mode="anchor")
            ax.set_xlim(-0.3, len(order) - 0.7)
            ax.set_xlabel("model", fontsize=8)
        else:
            values = sorted(lines.loc[lines["column"] == col, "x"].unique())
            ax.set_xscale("log", base=2)  # 100, 200, 400, 800 epochs at even steps, as MAE Figure 7
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
            ax.set_xlabel("pretraining epochs", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(labels[col], fontsize=9, y=TITLE_Y)
    handles, shown = [], []
    for ax in axes:  # one legend for the figure: a setting's colour is the same in every panel
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in shown:
                handles.append(h)
                shown.append(n)
    fig.legend(handles, shown, loc="upper right", fontsize=7)
    return _save(fig, stem, formats)


def loss_figure(curves: pd.DataFrame) -> Figure | None:
    """One panel per method, one line per setting (the mean over seeds) with a band of one std where n > 1."""
    import numpy as np

    if curves.empty:
        return None
    panels = sorted(curves["panel"].unique())
    fig, axes = _grid(len(panels), LOSS_PANELS_PER_ROW, (4.0, 2.8), (0.6, 0.15, 0.45, 0.55), (0.6, 0.75))
    fig.suptitle("pretraining loss (mean over seeds, band: ± 1 std)", fontsize=10)
    for ax, panel in zip(axes, panels, strict=True):
        for setting, line in curves[curves["panel"] == panel].groupby("setting", sort=True):
            steps, mean, std = line["step"].to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
            n = int(line["n"].max())
            (drawn,) = ax.plot(steps, mean, linewidth=1.2, label=f"{setting} (n={n})")
            if np.isfinite(std).any():
                ax.fill_between(steps, mean - std, mean + std, color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(panel, fontsize=9, y=TITLE_Y)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    return fig


def loss_curves(curves: pd.DataFrame, out: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    fig = loss_figure(curves)
    return [] if fig is None else _save(fig, out / "pretrain_loss", formats)


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


def _draw(jobs: list[tuple[Callable[..., list[Path]], tuple[Any, ...]]], svg: bool = False) -> list[Path]:
    """Runs the figure `jobs` (function, arguments), on as many CPUs as there are (forked processes that have the
    libraries loaded already: a figure is drawn in Python, one CPU each), else one after the other."""
    import multiprocessing
    import os
    import threading
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    # a fork copies one thread only: from a process with others (a live display, a logger) it could copy a held lock
    if workers < 2 or threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [p for fn, args in jobs for p in fn(*args)]
    import matplotlib.backends.backend_agg  # noqa: F401  loaded once, before the fork, rather than in every worker
    import matplotlib.figure  # noqa: F401

    if svg:
        import matplotlib.backends.backend_svg  # noqa: F401

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        return [p for f in futures for p in f.result()]


def plot_jobs(bars: dict[str, list[tuple[str, pd.DataFrame, list[str]]]], frame: pd.DataFrame,
              labels: dict[str, str], curves: pd.DataFrame | None, out: Path, formats: tuple[str, ...] = ("png",)
              ) -> list[tuple[Callable[..., list[Path]], tuple[Any, ...]]]:
    """The figures of `write_plots` as jobs (function, arguments), each writing its files into `out`; the loss
    figure only with `curves`."""
    trends = frame[["column", "value", "recipe", "family", "pretrain_epochs", "size"]]
    jobs: list[tuple[Callable[..., list[Path]], tuple[Any, ...]]] = [
        (trend_chart, (trends, labels, axis, out / f"trend_vs_{name}", formats))
        for axis, name in (("pretrain_epochs", "epochs"), ("size", "size"))]
    jobs += [(bar_chart, (panels, labels, out / task, formats)) for task, panels in bars.items()]
    if curves is not None:
        jobs.append((loss_curves, (curves, out, formats)))
    return jobs


def write_plots(bars: dict[str, list[tuple[str, pd.DataFrame, list[str]]]], frame: pd.DataFrame,
                labels: dict[str, str], curves: pd.DataFrame, figures: dict[str, str], out: Path,
                formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Every figure in `formats` (`FORMATS`): `bars` (task -> its panels: title, summary rows, columns), the trends in
    `frame` (the report's rows), the loss `curves` (`harness.results.loss_curves`) and reconstruction `figures`;
    returns the files written."""
    return _draw(plot_jobs(bars, frame, labels, curves, out, formats), "svg" in formats) + reconstructions(figures, out)
