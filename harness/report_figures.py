"""The figures of `harness report`: the bar charts' panels (one per table), the finished pretrainings' loss curves and
reconstruction figures, from the report's frames, handed to `harness.drawing.Drawer` (`harness.plots` draws them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from harness import drawing
    from tasks.spec import TaskSpec


def plot_formats(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    from harness.plots import FORMATS as PLOT_FORMATS

    formats = tuple(f.strip() for f in (value.split(",") if isinstance(value, str) else value) if f.strip())
    bad = [f for f in formats if f not in PLOT_FORMATS]
    if bad or not formats:
        raise ValueError(f"--plot-format: unknown {', '.join(bad) or 'nothing'} (known: {', '.join(PLOT_FORMATS)})")
    return formats


def submit(frame: pd.DataFrame, records: list[dict[str, Any]], parts: list[tuple[Any, ...]], titles: dict[str, str],
           labels: dict[str, str], out: Path, specs: dict[str, TaskSpec], formats: tuple[str, ...],
           drawer: drawing.Drawer) -> list[Path]:
    """The figures, from the report's frames, tables (`parts`: stem, task, recipe, summary rows, columns; `titles` by
    stem), column `labels` and the finished pretrainings' loss logs, handed to `drawer`; returns the reconstruction
    figures, copied."""
    from harness import plots, results, store

    bars: dict[str, list[tuple[str, pd.DataFrame, list[str]]]] = {}
    for stem, table, _, part, present in parts:
        bars.setdefault(table, []).append((titles[stem], part, present))
    latest = sorted(store.latest(records).values(), key=lambda r: str(r.get("finished_at") or ""))
    pretrains = [r for r in latest if r.get("kind") == "pretrain" and r["status"] == "finished"]
    figures = {str((r.get("backbone") or {}).get("name")): r["extra"]["reconstruction"]
               for r in pretrains if (r.get("extra") or {}).get("reconstruction")}  # the newest of each backbone
    jobs = plots.plot_jobs(bars, frame, labels, None, out, formats)
    # the loss logs are read by the job: its inputs are their names, sizes and mtimes, and an unchanged figure is
    # neither drawn nor read again
    jobs.append((loss_figure, (results.loss_logs(pretrains, results.split_overrides(specs)), out, formats)))
    drawer.submit(jobs)
    return plots.reconstructions(figures, out)


def loss_figure(logs: list[tuple[tuple[str, str], str, list[int]]], out: Path, formats: tuple[str, ...]
                ) -> list[Path]:
    """`pretrain_loss`: the curves of the pretraining `logs` (`harness.results.loss_logs`) drawn."""
    from harness import plots, results

    return plots.loss_curves(results.curves_from_logs(logs), out, formats)
