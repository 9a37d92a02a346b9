"""`harness report`: the result records as the MAE paper's comparison tables, the published numbers, and plots.

Reads `RUNS/records/*.json` once, each pruned to the fields the tables need (`harness.results`; the newest record of
each run id counts, failed ones are listed but not averaged), into a pandas frame and writes into `results/`:

* one table per task spec with columns (`tasks.spec`: `in1k`, `coco`, `ade20k`, and users' tasks whose spec file
  `harness run` saved in `RUNS/specs/`) per setting (the recipe and its `--set` overrides), as in He et al. 2021
  (Tables 3-5): the supervised baseline's row first, then one row per backbone (and pretraining length, where a
  setting holds several), each cell the mean +- sample std over seeds with its 95% t-interval and n, and Δ to the
  baseline of the same architecture, paired by seed (`harness.stats`); for recipe `paper`, the published number
  beside a row of the same family and model size; then the controls' rows and a verdict line (`harness.controls`);
* `reference`: the paper's numbers (`harness.reference`);
* `summary.csv` (one row per recipe, backbone and column, full precision: `harness.stats.SUMMARY_COLUMNS`),
  `runs.csv` (one row per run) and `results.json` (every run's identity and metrics, the cells and the tables);
* plots (`harness.plots`, PNG, SVG with `--plot-format`, drawn from the frames made here: one figure per task and per
  trend, one loss line per pretraining setting, so that their cost follows the settings, not the number of runs).

Each column reads the first of its spec's metric keys a record has, scaled as the spec says (mmdet's raw
`coco/bbox_mAP` and `coco/segm_mAP` are fractions: x100), so that every cell is in percent.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import controls, report_figures, report_html
from harness.results import recipe_label, split_overrides
from harness.stats import BASELINE_FAMILY, INTERVAL_NOTE, fmt_cell, fmt_delta, row_order, summarize
from tasks.spec import Column, TaskSpec, all_columns

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("md", "csv", "tex")
RESULTS_JSON = "results.json"  # every run's identity and metrics, the cells and the tables (`results.write_json`)
TOP1 = ("last", "best")  # which epoch's IN1K top-1 a table shows: the last (default) or the best (MAE's logs)
__all__ = ["BASELINE_FAMILY", "fmt_cell", "fmt_delta", "flatten", "summarize", "tables", "write_report"]


def _specs(specs: dict[str, TaskSpec] | None) -> dict[str, TaskSpec]:
    from tasks.spec import builtin_specs

    return builtin_specs() if specs is None else specs


def report_specs(records: str | Path) -> dict[str, TaskSpec]:
    """The built-in task specs and those of the users' tasks that a `harness run` saved beside the records."""
    from harness import store
    from tasks.spec import builtin_specs, suite_specs

    return {**builtin_specs(), **suite_specs(records_dir(records).parent / store.SPECS)}


def column_key(col: Column, rec: dict[str, Any]) -> str:
    """The column a record feeds (a split column's: one per value of its setting)."""
    return col.key_for(rec.get("extra") or {}, rec.get("recipe") or {})


def column_label(key: str, specs: dict[str, TaskSpec] | None = None) -> str:
    label = next((c.label_for(key) for c in all_columns(_specs(specs)).values() if c.label_for(key)), None)
    if label is None:
        raise KeyError(key)
    return label


def present_columns(columns: tuple[Column, ...], available: set[str]) -> list[str]:
    """The table's columns that have values, with a split column expanded into one per value (in number order)."""
    out = []
    for c in columns:
        out += sorted((a for a in available if c.split_value(a) is not None), key=lambda a, c=c: c.split_order(a))
        if c.key in available:
            out.append(c.key)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default="runs/default", help="a run folder (holding records/) or a records folder")
    parser.add_argument("--out", default="results", help="where to write (default: results/)")
    parser.add_argument("--format", default=",".join(FORMATS), help="comma-separated: md, csv, tex")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--plot-format", default="png", help="png, svg or png,svg (default png)")
    parser.add_argument("--in1k-top1", choices=TOP1, default="last",
                        help="IN1K tables show the last epoch's top-1 (default) or the best epoch's")


# --- reading ---


def records_dir(runs: str | Path) -> Path:
    runs = Path(runs)
    return runs / "records" if (runs / "records").is_dir() else runs


def _metric(metrics: dict[str, Any], column: Column, top1: str = "last") -> float | None:
    """The column's value in a record's metrics; with `top1='best'` a column with a best metric (IN1K's `top1_best`)
    reads that, and a run that did not record it has no value rather than its last epoch's."""
    keys = (column.best_metric,) if top1 == "best" and column.best_metric else column.metrics
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value) * column.scale.get(key, 1.0)
    return None


def file_stem(table: str, recipe: str, several: bool) -> str:
    """The file name of a table or plot: `coco`, or `coco_<setting>` (made file-safe) when there are several."""
    if not several:
        return table
    return f"{table}_" + (re.sub(r"[^A-Za-z0-9=-]+", "_", recipe).strip("_") or "unnamed")


def _size_key(spec: dict[str, Any] | None) -> str:
    """What makes two backbones the same model size: the architecture and its overrides."""
    spec = spec or {}
    return json.dumps([spec.get("arch"), spec.get("arch_kwargs") or {}], sort_keys=True)


def _pretrain_epochs(backbone: dict[str, Any], latest: dict[str, dict[str, Any]]) -> int | None:
    """The pretraining epochs of a run's encoder: the suite's own pretraining (as resolved), else the spec's."""
    pre = backbone.get("pretrain") or {}
    resolved = ((latest.get(pre.get("run_id") or "") or {}).get("recipe") or {}).get("epochs")
    return pre.get("epochs") or resolved or (backbone.get("spec") or {}).get("pretrain_epochs")


def _sweep_setting(backbone: dict[str, Any]) -> dict[str, Any]:
    """The `--sweep` setting whose encoder a run loads (`harness.run.sweep`), else none."""
    setting = (backbone.get("pretrain") or {}).get("sweep") or {}
    return {"sweep_key": setting.get("key"), "sweep_value": setting.get("value")}


def flatten(records: list[dict[str, Any]], top1: str = "last", specs: dict[str, TaskSpec] | None = None
            ) -> pd.DataFrame:
    """One row per (run, column) the run feeds, plus one row per run without a value (failed, a task without a
    table); columns with a best metric hold the `top1` ('last' or 'best') epoch's value."""
    import pandas as pd

    from harness import store

    specs = _specs(specs)
    split = split_overrides(specs)
    rows = []
    latest = store.latest(records)
    for rec in latest.values():
        backbone = rec.get("backbone") or {}
        spec = backbone.get("spec") or {}
        base = {
            "run_id": rec["run_id"], "status": rec["status"], "kind": rec.get("kind", "task"), "task": rec.get("task"),
            "protocol": rec.get("protocol"), "recipe": recipe_label(rec, split),
            "backbone": backbone.get("name"), "family": spec.get("family"), "model": spec.get("paper_name"),
            "size": _size_key(spec), "seed": rec.get("seed"),
            "pretrain_epochs": _pretrain_epochs(backbone, latest),
            **_sweep_setting(backbone),
            "wall_time_s": rec.get("wall_time_s"), "error": rec.get("error"), "log": rec.get("log"),
            "finished_at": rec.get("finished_at"),
        }
        spec = specs.get(str(rec.get("task")))
        for row in controls.row_bases(base, rec, spec, split):  # a control's row, beside or instead of its backbone's
            fed = False
            for col in spec.columns if spec else ():
                if not controls.feeds(col, rec, row, spec):
                    continue
                value = _metric(rec.get("metrics") or {}, col, top1) if rec["status"] == "finished" else None
                if value is not None:
                    rows.append({**row, "column": column_key(col, rec), "value": value})
                    fed = True
            if not fed:
                rows.append({**row, "column": None, "value": float("nan")})
    cols = ["run_id", "status", "kind", "task", "protocol", "recipe", "backbone", "family", "model", "size", "seed",
            "pretrain_epochs", "sweep_key", "sweep_value", "wall_time_s", "error", "log", "finished_at", "column",
            "value"]
    return pd.DataFrame(controls.name_architectures(rows), columns=cols)


# --- aggregating ---


def table_title(table: str, recipe: str, top1: str = "last", specs: dict[str, TaskSpec] | None = None,
                embedded: bool = False) -> str:
    spec = _specs(specs)[table]
    epoch = f", {top1} epoch" if spec.best_metrics else ""
    return spec.data_title(embedded) + epoch + (f", recipe {recipe}" if recipe else "")


def table_parts(summary: pd.DataFrame, specs: dict[str, TaskSpec] | None = None
                ) -> list[tuple[str, str, str, pd.DataFrame, list[str]]]:
    """(file stem, table, recipe, its summary rows, its columns) for every table the summary fills: one table per
    task spec with columns."""
    out = []
    recipes = sorted(summary["recipe"].unique()) if not summary.empty else []
    for recipe in recipes:
        part = summary[summary["recipe"] == recipe]
        for table, spec in _specs(specs).items():
            present = present_columns(spec.columns, set(part["column"]))
            if present:
                out.append((file_stem(table, recipe, len(recipes) > 1), table, recipe,
                            part[part["column"].isin(present)], present))
    return out


def tables(summary: pd.DataFrame, specs: dict[str, TaskSpec] | None = None) -> dict[str, pd.DataFrame]:
    """Display tables named by their file stem (`<table>`, or `<table>_<setting>` when several settings), one row per
    backbone (and pretraining length, when a setting holds several)."""
    import pandas as pd

    out: dict[str, pd.DataFrame] = {}
    for stem, task, recipe, part, present in table_parts(summary, specs):
        cells: dict[tuple[str, str], Any] = {}
        for h in part.itertuples(index=False):
            cells.setdefault((h.label, h.column), h)
        rows = []
        for backbone in row_order(part):
            family = next(h.family for (b, _), h in cells.items() if b == backbone)
            row: dict[str, Any] = {"backbone": backbone, "family": family}
            for c in present:
                h = cells.get((backbone, c))
                label = column_label(c, specs)
                if h is None:
                    row[label], row[f"Δ {label}"] = "", ""
                    continue
                row[label] = fmt_cell(h.mean, h.std, int(h.n))
                row[f"Δ {label}"] = fmt_delta(h.delta, h.delta_lo, h.delta_hi, int(h.delta_n))
                if recipe == "paper":
                    row[f"{label} (paper)"] = "" if h.published is None or pd.isna(h.published) \
                        else f"{h.published:.1f}"
            rows.append(row)
        out[stem] = pd.DataFrame(rows)
        out[stem].attrs["verdicts"] = controls.verdicts(part, present, _specs(specs)[task],
                                                        {c: column_label(c, specs) for c in present})
    return out


def reference_table(specs: dict[str, TaskSpec] | None = None) -> pd.DataFrame:
    import pandas as pd

    from harness.reference import rows

    frame = pd.DataFrame(rows())
    return frame.rename(columns={c.key: c.label for c in all_columns(_specs(specs)).values()})


# --- writing ---


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' own needs the tabulate package)."""
    cols = [str(c) for c in frame.columns]
    cells = [["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _write(frame: pd.DataFrame, stem: Path, formats: list[str], title: str) -> list[Path]:
    written = []
    if "md" in formats:
        p = stem.with_suffix(".md")
        p.write_text(f"### {title}\n\n{to_markdown(frame) + controls.verdict_text(frame)}")
        written.append(p)
    if "csv" in formats:
        p = stem.with_suffix(".csv")
        frame.to_csv(p, index=False)
        written.append(p)
    if "tex" in formats:
        p = stem.with_suffix(".tex")
        tex = frame.to_latex(index=False, escape=True, na_rep="")
        p.write_text(tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$"))  # pdflatex-safe
        written.append(p)
    return written


def write_report(records: str | Path, out: str | Path, formats: list[str] | tuple[str, ...] = FORMATS,
                 plots: bool = True, top1: str = "last", plot_format: str | tuple[str, ...] = ("png",)) -> list[Path]:
    """Writes tables, the reference table, CSV summaries and plots into `out`; returns the files written. IN1K
    tables show the `top1` ('last' or 'best') epoch's top-1 and say which in their title."""
    from harness import drawing, results, sweeps

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"--format: unknown {', '.join(bad)} (known: {', '.join(FORMATS)})")
    plot_format = report_figures.plot_formats(plot_format)
    if top1 not in TOP1:
        raise ValueError(f"--in1k-top1 must be one of {', '.join(TOP1)}, not {top1!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawer = drawing.Drawer(out / "plots") if plots else None  # forked while helpers parse a first reading
    specs = report_specs(records)
    recs = results.read_compact(records_dir(records), results.report_fields(specs),
                                 meanwhile=drawer and drawer.executor)
    frame = flatten(recs, top1, specs)
    summary = summarize(frame)
    summary.attrs["in1k_top1"] = top1
    summary.attrs["embedded"] = results.embedded_tasks(recs)
    written: list[Path] = []
    index = ["# Results\n", f"{len(frame['run_id'].unique())} runs in {records_dir(records)}: "
             f"{(frame.drop_duplicates('run_id')['status'] == 'finished').sum()} finished, "
             f"{(frame.drop_duplicates('run_id')['status'] == 'failed').sum()} failed.\n",
             INTERVAL_NOTE + "\n"]
    parts = table_parts(summary, specs)
    titles = {stem: table_title(table, recipe, top1, specs, table in summary.attrs["embedded"])
              for stem, table, recipe, _, _ in parts}
    labels = {c: column_label(c, specs) for c in set(frame["column"].dropna())}
    k_of = sweeps.split_ks(set(labels), specs)
    recon = report_figures.submit(frame, recs, parts, titles, labels, out / "plots", specs, plot_format, drawer) \
        if drawer else []  # drawn by the workers while the tables are written
    shown, shown_tables = [], tables(summary, specs)
    for name, table in shown_tables.items():
        title = titles[name]
        written += _write(table, out / name, formats, title)
        md = to_markdown(table) + controls.verdict_text(table)  # the verdicts under the table
        index.append(f"### {title}\n\n{md}")
        shown.append({"name": name, "title": title, "rows": table.to_dict("records"), "markdown": md,
                      "verdicts": table.attrs.get("verdicts", [])})
    for name, table in sweeps.sweep_tables(summary, labels, k_of).items():
        title = f"Sweep of pretrain.{name.removeprefix('sweep_')}: one row per value (its own pretraining)"
        written += _write(table, out / name, formats, title)
        index.append(f"### {title}\n\n{to_markdown(table)}")
    ref = reference_table(specs)
    from harness.reference import PAPER

    written += _write(ref, out / "reference", formats, f"Published ({PAPER})")
    index.append(f"### Published ({PAPER})\n\n{to_markdown(ref)}")
    unshown = frame[(frame["status"] == "finished") & (frame["kind"] == "task") & frame["column"].isna()]
    if not unshown.empty:  # a task the report has no column for, or a run without the metric its column shows
        tasks = ", ".join(sorted(map(str, unshown["task"].unique())))
        index.append(f"### Finished runs in no table\n\n{len(unshown)} finished run(s) of {tasks} feed no table: "
                     "the report has no column for their task or metric.\n\n"
                     + to_markdown(unshown[["run_id", "task", "protocol", "backbone", "seed", "log"]]))
    failed = frame[frame["status"] == "failed"].drop_duplicates("run_id")
    if not failed.empty:
        index.append("### Failed runs\n\n" + to_markdown(failed[["run_id", "task", "protocol", "backbone", "seed",
                                                                 "error", "log"]]))
    summary.to_csv(out / "summary.csv", index=False)
    frame.drop(columns=["size"]).to_csv(out / "runs.csv", index=False)
    written += [out / "summary.csv", out / "runs.csv"]
    written.append(results.write_json(out / RESULTS_JSON, results.records_frame(recs, split_overrides(specs)), summary,
                                      shown))
    page = report_html.prepare(recs, specs)  # the page's provenance, while the figures are drawn
    if drawer:
        pics = drawer.results() + recon
        pics += sweeps.write_sweeps(summary, labels, k_of, out / "plots", plot_format)
        written += pics
        shown_as = ".png" if "png" in plot_format else ".svg"
        index.append("### Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in pics
                                                  if p.suffix == shown_as or p.stem.startswith("reconstruction")))
    (out / "README.md").write_text("\n".join(index) + "\n")
    written.append(out / "README.md")
    written += report_html.write_page(out, frame=frame, tables=shown_tables, parts=parts, titles=titles,
                                      reference=ref, records=page, files=written, notes=index, specs=specs)
    return written


def run(args: argparse.Namespace) -> int:
    source = records_dir(args.runs)
    if not source.is_dir():
        print(f"harness report: no records folder at {source} (pass --runs OUT of a `harness run`)", file=sys.stderr)
        return 1
    out = Path(args.out)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    try:
        with warnings.catch_warnings(record=True) as caught:  # skipped records: one line each, naming the file
            warnings.simplefilter("always")
            written = write_report(source, out, formats=formats, plots=not args.no_plots, top1=args.in1k_top1,
                                   plot_format=args.plot_format)
    except (ValueError, OSError) as e:
        print(f"harness report: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"harness report: {w.message}", file=sys.stderr)
    print(f"wrote {len(written)} files to {out}")
    print((out / "README.md").read_text())
    return 0
