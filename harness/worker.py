"""One run of the suite in its own process: `python -m harness.worker OUT/work/<run_id>/job.json`.

The runner (`harness.run`) writes the job file (`harness.records.Job`) and starts this module directly, under
`torchrun`, or inside a submitit job; its stdout and stderr go to `OUT/logs/<run_id>.log`. The worker calls the task
or the pretraining (`harness.dispatch`), then writes the run's result record (`harness.records.Record`): finished
with the metrics, or failed with the error when the task raised. A loss that is NaN or infinite (`tasks.NonFiniteLoss`,
raised by every training loop) fails the run with `failure: {step, loss}`; a non-finite metric fails it too, and a
failed record keeps no metric. Under several processes only rank 0 writes. A worker dies with the process that started
it (`die_with_parent`); one that dies without a record (a signal, the OOM killer) is recorded as failed by the runner,
which sees the exit status. Optional logging to TensorBoard or W&B lives in `tasks.training`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from harness import provenance, store
from harness.dispatch import load_backbones, nonfinite_metrics, pick_device, rank, run_pretrain, run_task
from harness.records import Job, build_record
from tasks import NonFiniteLoss

PARENT_ENV = "HARNESS_RUNNER_PID"  # the runner's pid: a worker exits when that process is gone


def execute(job: Job) -> int:
    """Runs the job and writes its record (rank 0). Returns the exit status: 0 finished, 1 failed."""
    started, t0 = provenance.now(), time.time()
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    print(f"[harness.worker] run {job.run_id} attempt {job.attempt} pid {os.getpid()} rank {rank()}", flush=True)
    metrics = recipe = extra = failure = None
    error = None
    try:
        load_backbones(job)
        device = pick_device(job.device, job.launcher)
        run = run_pretrain if job.kind == "pretrain" else run_task
        metrics, recipe, extra = run(job, device)
        bad = nonfinite_metrics(metrics)
        if bad:
            raise FloatingPointError(f"non-finite metrics {', '.join(bad)}: the run measured nothing")
    except NonFiniteLoss as e:  # the loop stopped at the step: the record says where, and keeps no metric
        traceback.print_exc()
        error, failure, metrics = f"{type(e).__name__}: {e}", {"step": e.step, "loss": str(e.loss)}, None
    except Exception as e:  # any failure of the task is a result to record, not a crash of the suite
        traceback.print_exc()
        error, metrics = f"{type(e).__name__}: {e}", None
    status = "failed" if error else "finished"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank() == 0:
        rec = build_record(job, status, metrics=metrics, recipe=recipe, extra=extra, error=error, failure=failure,
                           started_at=started, wall_time_s=time.time() - t0, world_size=world)
        path = store.write_record(job.records, rec)
        print(f"[harness.worker] {status}: record {path}", flush=True)
    sys.stdout.flush()
    return 0 if status == "finished" else 1


class SubmititJob:
    """The callable a submitit executor runs: one job, its output appended to the run's log."""

    def __init__(self, job_path: str) -> None:
        self.job_path = job_path

    def __call__(self) -> int:
        job = Job.from_json(self.job_path)
        if _num_tasks() > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR, ... for torch
        with open(job.log, "ab", buffering=0) as log:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                code = execute(job)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        if code:
            raise RuntimeError(f"run {job.run_id} failed; see {job.log}")
        return code


def _num_tasks() -> int:
    try:
        import submitit

        return submitit.JobEnvironment().num_tasks
    except Exception:  # not inside a submitit job
        return 1


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once (so that a child between fork and exec only calls it), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


PRCTL = _prctl()


def kill_me_with_parent() -> bool:
    """Asks the kernel to SIGKILL this process when the thread that started it dies (Linux). False when it cannot."""
    import signal

    return PRCTL is not None and PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0


def die_with_parent(parent: int) -> None:
    """A worker never outlives what started it (the runner, or torchrun under it): a killed runner would otherwise
    leave it running unattended, holding the run's lock. The kernel's parent-death signal where there is one, else a
    thread that watches the parent id and kills this process group (the worker's session: its data loaders too)."""
    import signal
    import threading

    if kill_me_with_parent():
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(137)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(137)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="the job file the runner wrote (OUT/work/<run_id>/job.json)")
    args = parser.parse_args(argv)
    runner = int(os.environ.get(PARENT_ENV) or 0)
    if runner and runner != os.getppid() and os.environ.get("LOCAL_RANK") is None and not _alive(runner):
        return 137  # the runner that started this worker died before it got here
    die_with_parent(os.getppid())  # the runner, or under torchrun its agent (which follows the runner)
    try:
        job = Job.from_json(args.job)
    except ValueError as e:  # the message names the file and the key
        print(f"harness.worker: {e}", file=sys.stderr)
        return 2
    return execute(job)


if __name__ == "__main__":
    sys.exit(main())
