"""Launching the runs of a plan: each run's work folder claimed under a lock, its job file written, its worker
started (`python -m harness.worker JOB`, directly or under torchrun, as many at once as the plan has shares of the
machine; or as submitit jobs on Slurm) and its record read back, or written for a worker that died without one.
SIGTERM and SIGHUP take Ctrl-C's path, so that no worker runs on unattended.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import provenance, store
from harness.records import Job, Record, build_record
from harness.run.options import RunOptions
from harness.run.plan import Plan, Run, readiness
from harness.run.view import Progress, log_progress


def job_for(plan: Plan, run: Run, attempt: str, launcher: str, opts: RunOptions) -> Job:
    """The job file's content: the run as its worker needs it."""
    after = {"run_id": run.after.run_id, "method": run.after.method, "epochs": run.after.epochs} if run.after else None
    if after is not None and run.after.sweep is not None:  # the setting the report groups by
        after["sweep"] = run.after.sweep
    return Job(
        run_id=str(run.run_id), attempt=attempt, kind=run.kind, task=run.task, target=run.target,
        protocol=run.protocol, backbone=run.backbone, backbone_spec=run.spec, checkpoint=run.checkpoint,
        checkpoint_sha256=run.sha256, recipe=run.recipe, recipe_version=run.recipe_version, overrides=run.overrides,
        seed=run.seed, data_root=run.data_root, data_fingerprint=run.data_fingerprint, method=run.method,
        epochs=run.epochs, pretrain_run=after, work_dir=str(plan.work_dir(run).resolve()),
        log=str(plan.log(run).resolve()), records=str(plan.records.resolve()),
        backbone_modules=plan.backbone_modules, backbone_files=plan.backbone_files,
        allow_pickle=opts.trust_checkpoint, launcher=launcher, device=opts.device,
    )


def claim(work: Path) -> int | None:
    """An exclusive lock on a run's work folder (a descriptor to keep open), or None when another process holds it.

    The worker inherits the descriptor, so a worker that outlives a killed runner still holds the run."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def finished_meanwhile(plan: Plan, run: Run) -> bool:
    """Whether the run's newest record, read again now that this process holds the run, is a finished one."""
    rec = store.latest(r for r in store.read_records(plan.records) if r["run_id"] == run.run_id).get(str(run.run_id))
    return bool(rec and rec["status"] == "finished")


def prepare(plan: Plan, run: Run, launcher: str, opts: RunOptions) -> tuple[Path, Job, int] | None:
    """Claims the work folder (emptied under --force), writes the log header and the job file of a new attempt.

    None when another `harness run` is running this run now (the run is then 'busy'), or has finished it since this
    plan was made ('done'): the plan is read again under the lock, so that no run is ever run twice."""
    work = plan.work_dir(run)
    lock = claim(work)
    if lock is None:
        holder = (work / "worker.pid").read_text().strip() if (work / "worker.pid").is_file() else "?"
        run.status, run.error = "busy", f"another process (worker pid {holder}) holds {work / '.lock'}"
        return None
    if not opts.force and finished_meanwhile(plan, run):  # another runner finished it after this plan was made
        os.close(lock)
        run.status = "done"
        return None
    if opts.force:
        for child in work.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    plan.log(run).parent.mkdir(parents=True, exist_ok=True)
    job = job_for(plan, run, store.new_attempt(), launcher, opts)
    with open(plan.log(run), "a") as log:
        log.write(f"\n===== {provenance.now()} run {run.run_id} attempt {job.attempt}: {run.label} =====\n")
    return job.to_json(work / "job.json"), job, lock


def worker_command(job_path: Path, launcher: str, gpus: int) -> list[str]:
    """The command of one run: the worker, directly or under torchrun (`--standalone`: a free port per run)."""
    worker = ["-m", "harness.worker", str(job_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(gpus), *worker]
    return [sys.executable, *worker]


def worker_env(opts: RunOptions, share: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(provenance.PROJECT_ROOT), os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["HARNESS_RUNNER_PID"] = str(os.getpid())  # harness.worker.PARENT_ENV: the worker exits when this one does
    # tasks.classification.features: the frozen part's features of one encoder, computed once for all its seeds
    env["HARNESS_FEATURE_CACHE"] = str((Path(opts.out) / "work" / "features").resolve())
    if opts.log_backend:
        env["HARNESS_LOG_BACKEND"] = opts.log_backend  # tasks.training.vis_backends() reads it
    env.update(share or {})
    return env


def exit_reason(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == 137:
        return "killed (exit 137: SIGKILL, often the out-of-memory killer)"
    return f"exit status {code}"


def record_crash(plan: Plan, run: Run, job: Job, reason: str, started: str, wall: float) -> None:
    """The record of an attempt that ended without writing its own (a signal, the OOM killer, a torchrun failure)."""
    rec = build_record(job, "failed", error=f"worker {reason}; see {job.log}", started_at=started,
                       wall_time_s=wall)
    store.write_record(plan.records, rec)


def finish(plan: Plan, run: Run, job: Job, code: int | None, started: str, wall: float) -> None:
    """Reads the attempt's record (or writes the crash record) and sets the run's final status."""
    if not store.has_attempt(plan.records, str(run.run_id), job.attempt):
        record_crash(plan, run, job, exit_reason(code), started, wall)
    rec = Record.from_dict(next(r for r in store.read_records(plan.records) if r["attempt"] == job.attempt))
    run.status, run.wall, run.metrics, run.error = rec.status, wall, rec.metrics or {}, rec.error
    run.log = job.log


@dataclass
class Active:
    """A run whose worker is going."""

    run: Run
    job: Job
    proc: subprocess.Popen
    lock: int
    started: str
    t0: float


def start_local(plan: Plan, run: Run, opts: RunOptions, share: dict[str, str]) -> Active | None:
    """Starts the run's worker (directly, or under torchrun) in a session of its own, armed to be killed when this
    process dies (`harness.worker.die_with_parent`); None when the run is busy or done meanwhile."""
    from harness.worker import kill_me_with_parent

    launcher = "pytorch" if opts.launcher == "torchrun" else "none"
    prepared = prepare(plan, run, launcher, opts)
    if prepared is None:
        return None
    job_path, job, lock = prepared
    started, t0 = provenance.now(), time.time()
    try:
        with open(plan.log(run), "ab") as log:
            proc = subprocess.Popen(worker_command(job_path, opts.launcher, opts.gpus), stdout=log,
                                    stderr=subprocess.STDOUT, env=worker_env(opts, share), start_new_session=True,
                                    pass_fds=(lock,), preexec_fn=kill_me_with_parent)
    except BaseException:
        os.close(lock)
        raise
    (plan.work_dir(run) / "worker.pid").write_text(str(proc.pid))
    return Active(run, job, proc, lock, started, t0)


def end_local(plan: Plan, active: Active) -> None:
    """Once the worker has exited: its record (or the crash record) and the run's status; releases the run."""
    try:
        finish(plan, active.run, active.job, active.proc.returncode, active.started, time.time() - active.t0)
    finally:
        os.close(active.lock)


def run_pool(plan: Plan, runs: list[Run], opts: RunOptions, progress: Progress) -> None:
    """Runs as many workers at once as the plan has shares of the machine, in plan order, a task run as soon as its
    pretraining has finished; Ctrl-C stops every worker and records each attempt."""
    shares = plan.shares
    pending, active, free = list(runs), {}, list(range(len(shares)))
    try:
        while pending or active:
            for run in list(pending):
                if not free:
                    break
                state = readiness(plan, run, opts.force)
                if state == "wait":
                    continue
                pending.remove(run)
                if state != "ready":
                    continue
                progress.start(run)
                run.status = "running"
                slot = free.pop(0)
                started = start_local(plan, run, opts, shares[slot])
                if started is None:
                    free.insert(0, slot)
                    progress.end(run)
                    continue
                active[slot] = started
            for slot, a in list(active.items()):
                if a.proc.poll() is None:
                    progress.line(a.run, log_progress(plan.log(a.run)))
                    continue
                del active[slot]
                free.append(slot)
                end_local(plan, a)
                progress.end(a.run)
            if active:
                time.sleep(0.25)
            elif pending and all(readiness(plan, r, opts.force) == "wait" for r in pending):
                raise RuntimeError(f"runs wait for pretrainings that are not planned: {pending[0].label}")
    except KeyboardInterrupt:  # workers have sessions of their own: stop them (and torchrun's children) ourselves
        for a in active.values():
            _stop(a.proc)
            end_local(plan, a)
        raise


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def slurm_executor(plan: Plan, opts: RunOptions) -> Any:
    import submitit

    cluster = None if opts.slurm_cluster == "slurm" else opts.slurm_cluster
    ex = submitit.AutoExecutor(folder=plan.out / "slurm" / "%j", cluster=cluster)
    params: dict[str, Any] = {"timeout_min": opts.slurm_time, "tasks_per_node": opts.gpus, "nodes": opts.nodes}
    if opts.slurm_cluster == "slurm":
        params.update(gpus_per_node=opts.gpus, slurm_partition=opts.slurm_partition)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def run_slurm(plan: Plan, runs: list[Run], opts: RunOptions, progress: Progress) -> None:
    """Submits the runs as submitit jobs (they run in parallel on the cluster) and waits for all of them."""
    from harness.worker import SubmititJob

    ex = slurm_executor(plan, opts)
    jobs = []
    for run in runs:
        prepared = prepare(plan, run, "slurm", opts)
        if prepared is None:
            progress.end(run)
            continue
        job_path, job, lock = prepared
        jobs.append((run, job, lock, ex.submit(SubmititJob(str(job_path))), provenance.now(), time.time()))
        print(f"submitted {run.run_id} {run.label} as job {jobs[-1][3].job_id}", flush=True)
    for run, job, lock, sub, started, t0 in jobs:
        progress.start(run)
        code: int | None = 0
        try:
            sub.results()
        except Exception as e:  # the job failed: its record (or the crash record below) says why
            code = 1
            print(f"job {sub.job_id} of {run.run_id}: {str(e).strip().splitlines()[-1] if str(e) else e}",
                  flush=True)
        finally:
            os.close(lock)
        finish(plan, run, job, code, started, time.time() - t0)
        progress.end(run)


def execute(plan: Plan, opts: RunOptions) -> list[Run]:
    """Runs what is not done: pretrainings first, each task run once the weights it loads exist."""
    todo = [r for r in plan.runs if r.status != "done"]
    progress = Progress(len(todo))
    try:
        if opts.launcher != "slurm":
            run_pool(plan, todo, opts, progress)
            return plan.runs
        for phase in ("pretrain", "task"):  # slurm: each phase's jobs run in parallel on the cluster
            batch = []
            for run in (r for r in todo if r.kind == phase):
                if readiness(plan, run, opts.force) == "ready":
                    batch.append(run)
            run_slurm(plan, batch, opts, progress)
    finally:
        progress.stop()
    return plan.runs


@contextlib.contextmanager
def stop_signals_interrupt(received: list[int]) -> Iterator[None]:
    """SIGTERM and SIGHUP (a scheduler's or a closed terminal's stop) take Ctrl-C's path while the suite runs: the
    workers, which have sessions of their own and would otherwise go on unattended, are stopped and their attempts
    recorded. The signals received are appended to `received`."""

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in wanted}
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
