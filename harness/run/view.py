"""What `harness run` prints: the plan (`--dry-run`), a live view of the runs going on (rich on a terminal, one line
per event otherwise, each run's step and eta read from the tail of its log), and the closing summary.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from harness.run.plan import Plan, Run

# What a pretraining's summary shows (task runs show their spec's main metrics).
PRETRAIN_METRICS = ("final_loss",)


def _table(rows: list[list[str]], header: list[str]) -> str:
    width = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, width, strict=False)).rstrip()
             for r in [header, ["-" * w for w in width], *rows]]
    return "\n".join(lines)


def print_plan(plan: Plan) -> None:
    rows = []
    for r in plan.runs:
        rid = r.run_id or (f"after:{r.after.run_id}" if r.after else "-")
        what = r.method if r.kind == "pretrain" else (r.protocol or "-")
        setting = (r.sweep if r.kind == "pretrain" else r.after.sweep if r.after else None) or {}
        if setting:  # a --sweep setting: the pretraining's, or the one whose encoder a transfer loads
            what += f" {setting['key']}={setting['value']}"
        rows.append([str(rid), r.control or r.kind, r.backbone, r.task, what, str(r.seed), str(r.recipe), r.status])
    todo = sum(r.status != "done" for r in plan.runs)
    print(f"plan for {plan.out} (preset {plan.preset}): {len(plan.runs)} runs, {len(plan.runs) - todo} done, "
          f"{todo} to run")
    print(_table(rows, ["run_id", "kind", "backbone", "task", "protocol", "seed", "recipe", "status"]))


_MM_STEP = re.compile(r"\[\s*(\d+)/(\d+)\]")  # mmengine: Epoch(train) [1][ 50/100] ... eta: 0:01:02
_MM_ETA = re.compile(r"eta: ((?:\d+ days?, )?\d+:\d\d:\d\d)")
_TQDM = re.compile(r"(\d+)/(\d+) \[[\d:]+<([\d:?]+)")  # tqdm: 40/100 [00:10<00:15, ...]
_STEP = re.compile(r"\bstep (\d+)/(\d+)")  # tasks' own lines


def log_progress(log: Path, tail: int = 4096) -> str:
    """'step 50/100, eta 0:00:15' from the last line of the log that reports one, or ''."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(re.split(r"[\r\n]", text)):
        if m := _TQDM.search(line):
            return f"step {m[1]}/{m[2]}, eta {m[3]}"
        if m := _MM_STEP.search(line):
            eta = _MM_ETA.search(line)
            return f"step {m[1]}/{m[2]}" + (f", eta {eta[1]}" if eta else "")
        if m := _STEP.search(line):
            return f"step {m[1]}/{m[2]}"
    return ""


class Progress:
    """A rich live view of the runs going on (one line each) on a terminal; one plain line per event otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0
        self.active: dict[int, tuple[Run, int, float, str]] = {}  # id(run) -> (run, its number, start, detail)
        self.live = None
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(), refresh_per_second=2, transient=True)
            self.live.start()

    def start(self, run: Run) -> None:
        self.index += 1
        self.active[id(run)] = (run, self.index, time.time(), "starting")
        self._refresh()
        if self.live is None:
            print(f"[{self.index}/{self.total}] {run.run_id} {run.label} ...", flush=True)

    def line(self, run: Run, detail: str) -> None:
        if id(run) in self.active:
            r, index, t0, _ = self.active[id(run)]
            self.active[id(run)] = (r, index, t0, detail)
        self._refresh()

    def _refresh(self) -> None:
        if self.live is None:
            return
        from rich.text import Text

        now = time.time()
        lines = [f"[{index}/{self.total}] {run.label}  {time.strftime('%M:%S', time.gmtime(now - t0))}  {detail}"
                 for run, index, t0, detail in sorted(self.active.values(), key=lambda a: a[1])]
        self.live.update(Text("\n".join(lines)))

    def end(self, run: Run) -> None:
        _, index, _, _ = self.active.pop(id(run), (run, self.index, 0.0, ""))
        msg = f"[{index}/{self.total}] {run.run_id} {run.label}: {run.status}"
        if run.wall is not None:
            msg += f" in {run.wall:.1f} s"
        if run.status == "failed":
            msg += f" ({run.error}; log {run.log})"
        if self.live is not None:
            self.live.console.print(msg, markup=False, highlight=False)
            self._refresh()
        else:
            print(msg, flush=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def main_metrics(plan: Plan, run: Run) -> tuple[str, ...]:
    """What the summary shows of a run, the first present: its task's main metrics, else any task's of the suite."""
    if run.kind == "pretrain":
        return PRETRAIN_METRICS
    spec = plan.task_specs.get(run.task)
    if spec is not None:
        return spec.main_metrics
    from tasks.spec import builtin_specs

    specs = {**builtin_specs(), **plan.task_specs}
    return tuple(k for s in specs.values() for k in s.main_metrics) + PRETRAIN_METRICS


def summary(plan: Plan) -> str:
    rows = []
    for r in plan.runs:
        keys = main_metrics(plan, r)
        main = next(((k, r.metrics[k]) for k in keys if k in r.metrics), next(iter(r.metrics.items()), None))
        shown = f"{main[0]}={main[1]:.4g}" if main and isinstance(main[1], int | float) else ""
        status = {"done": "skipped (done)", "busy": "skipped (running elsewhere)"}.get(r.status, r.status)
        note = r.error or ""
        if r.status == "failed":
            note = f"{note}; log {plan.log(r)}"
        rows.append([str(r.run_id or "-"), r.label, status, f"{r.wall:.1f}" if r.wall else "", shown, note])
    return _table(rows, ["run_id", "run", "status", "wall s", "metric", "note"])


def print_tables(results: Path) -> None:
    """The report's main tables (Markdown, each under its title), as `harness report` wrote them in `results.json`."""
    import json

    from harness.report import RESULTS_JSON

    path = results / RESULTS_JSON
    try:
        tables = json.loads(path.read_text())["tables"]
    except (OSError, ValueError, KeyError) as e:
        print(f"harness run: cannot read the tables from {path} ({e})", file=sys.stderr)
        return
    for table in tables:
        print(f"\n### {table['title']}\n\n{table['markdown']}", end="")
