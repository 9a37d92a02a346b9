"""`harness run`: every task of a suite for every backbone, each in its own process, resumable, then the report.

The plan (`plan`, from the flags and preset resolved and checked by `inputs`) is a list of runs, one per (backbone,
task, protocol, seed), after the pretrainings a preset makes itself (one per value of a `--sweep`, `sweep`, whose
transfers run once per setting). Each run has an id hashed from everything that
determines its result, a stable work folder `OUT/work/<run_id>/` from which an interrupted task resumes, a log
`OUT/logs/<run_id>.log`, and result records in `OUT/records/` (`harness.store`).
A run whose newest record is finished is skipped unless `--force`; a failing run is recorded and the suite goes on.
The exit status is the number of runs that did not finish (failed, blocked by a failed pretraining, or held by another
live process: a run whose lock a live `harness run` holds is left alone and counted), at most 125; 126 means the suite
could not start (bad input: the message names the flag, file or folder), and nothing ran.

Launchers (`launch`) reuse existing engines: `local` (`python -m harness.worker`, up to `--jobs` at once), `torchrun`
(the worker under `torch.distributed.run --nproc_per_node N`, ctx.launcher='pytorch') and `slurm` (submitit;
`--slurm-cluster local` runs the same jobs with submitit's local executor); `view` prints the plan, the live progress
and the summary. Nothing here imports torch at module level, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import sys

from harness.run.inputs import PlanError, split_list
from harness.run.launch import execute, stop_signals_interrupt
from harness.run.options import RunOptions, configure
from harness.run.plan import Plan, build_plan, save_specs
from harness.run.view import print_plan, print_tables, summary

__all__ = ["DID_NOT_START", "MAX_FAILED", "PlanError", "RunOptions", "configure", "run"]

DID_NOT_START = 126
MAX_FAILED = 125


def run(args: RunOptions | argparse.Namespace) -> int:
    """The command: plan, then (unless --dry-run) launch what is not done, summarize, report and print the report's
    tables (not with --no-report)."""
    opts = args if isinstance(args, RunOptions) else RunOptions.from_args(args)
    try:
        plan = build_plan(opts)
    except PlanError as e:
        print(f"harness run: {e}", file=sys.stderr)
        return DID_NOT_START
    if opts.dry_run:
        print_plan(plan)
        return 0
    save_specs(plan)
    received: list[int] = []
    try:
        with stop_signals_interrupt(received):
            execute(plan, opts)
    except KeyboardInterrupt:
        print(summary(plan))
        name = signal.Signals(received[-1]).name if received else "SIGINT"
        print(f"harness run: interrupted ({name}); run the same command again to resume", file=sys.stderr)
        return 128 + (received[-1] if received else signal.SIGINT)
    print(summary(plan))
    failed = sum(r.status in ("failed", "blocked", "busy") for r in plan.runs)
    busy = [r for r in plan.runs if r.status == "busy"]
    if busy:
        print(f"harness run: {len(busy)} run(s) left alone, held by another live process ({busy[0].error}); "
              "run the same command again once it has ended", file=sys.stderr)
    if not opts.no_report:
        _report(plan, opts)
    return min(failed, MAX_FAILED)


def _report(plan: Plan, opts: RunOptions) -> None:
    try:
        from harness.report import write_report

        written = write_report(plan.records, plan.out / "results", formats=split_list(opts.report_format))
    except Exception as e:  # the runs are recorded; a report problem must not hide that
        print(f"harness run: the report failed ({type(e).__name__}: {e}); run `harness report --runs {plan.out}`",
              file=sys.stderr)
        return
    print(f"report: {len(written)} files in {plan.out / 'results'}")
    print_tables(plan.out / "results")
