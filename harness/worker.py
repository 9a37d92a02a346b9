"""One run of the suite in its own process: `python -m harness.worker OUT/work/<run_id>/job.json`.

The runner (`harness.runner`) writes the job file and starts this module directly, under `torchrun`, or inside a
submitit job; its stdout and stderr go to `OUT/logs/<run_id>.log`. The worker calls the task (`module:function` on a
`tasks.TaskContext`) or a pretraining (`harness.pretrain.pretrain`), then writes the run's result record: finished
with the metrics, or failed with the error when the task raised. A loss that is NaN or infinite (`tasks.NonFiniteLoss`,
raised by every training loop) fails the run with `failure: {step, loss}`; a non-finite metric fails it too, and a
failed record keeps no metric. Under several processes only rank 0 writes. A worker dies with the process that started
it (`die_with_parent`); one that dies without a record (a signal, the OOM killer) is recorded as failed by the runner,
which sees the exit status. Optional logging to TensorBoard or W&B lives in `tasks.training`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import provenance, store
from tasks import NonFiniteLoss
from tasks.training import ScalarLog, log_backend, log_backend_missing, vis_backends  # noqa: F401  (their old home)

PARENT_ENV = "HARNESS_RUNNER_PID"  # the runner's pid: a worker exits when that process is gone
# Keys of a job file (written by `harness.runner.Run.job`).
JOB_KEYS = ("run_id", "attempt", "kind", "task", "target", "backbone", "work_dir", "log", "records")


def resolve_target(target: str) -> Callable[..., Any]:
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    module, sep, fn = target.rpartition(":")
    if not sep or not module or not fn:
        raise ValueError(f"task target {target!r} must look like package.module:function or file.py:function")
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"task target {target!r}: {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"harness_user_task_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    if not hasattr(mod, fn):
        raise AttributeError(f"task target {target!r}: {module} has no {fn!r}")
    return getattr(mod, fn)


def load_job(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        job = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"job file {path} is unreadable: {e}") from e
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:
        raise ValueError(f"job file {path} lacks {', '.join(missing)}")
    return job


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def pick_device(requested: str, launcher: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if launcher != "none":
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cuda"


def _run_task(job: dict[str, Any], device: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from tasks import TaskContext

    ctx = TaskContext(
        backbone=job["backbone"], work_dir=Path(job["work_dir"]), recipe=job.get("recipe") or "tiny",
        checkpoint=job.get("checkpoint"), data_root=Path(job["data_root"]) if job.get("data_root") else None,
        protocol=job.get("protocol"), overrides=dict(job.get("overrides") or {}), seed=int(job.get("seed", 0)),
        device=device, launcher=job.get("launcher", "none"), allow_pickle=bool(job.get("allow_pickle", False)),
    )
    result = resolve_target(job["target"])(ctx)
    if not isinstance(getattr(result, "metrics", None), dict):
        raise TypeError(f"task {job['target']} returned {type(result).__name__}, not a TaskResult with metrics")
    return dict(result.metrics), dict(result.recipe or {}), dict(getattr(result, "extra", None) or {})


def last_loss(log_jsonl: Path) -> float | None:
    """The loss of the last step a pretraining logged."""
    if not log_jsonl.is_file():
        return None
    loss = None
    for line in log_jsonl.read_text().splitlines():
        try:
            loss = json.loads(line).get("loss", loss)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return loss


def _run_pretrain(job: dict[str, Any], device: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    out_dir = Path(job["work_dir"])
    fn = resolve_target(job["target"])
    overrides = dict(job.get("overrides") or {})
    encoder = fn(job["method"], job["backbone"], out_dir, epochs=job.get("epochs"), seed=int(job.get("seed", 0)),
                 data_root=job.get("data_root"), recipe=job.get("recipe"), overrides=overrides, progress=True,
                 device=device)
    encoder = Path(encoder)
    if not encoder.is_file():
        raise FileNotFoundError(f"pretraining returned {encoder}, which does not exist")
    metrics = {"final_loss": last_loss(out_dir / "log.jsonl")}
    recon = out_dir / "reconstruction.png"
    extra = {"encoder": str(encoder), "encoder_sha256": provenance.file_sha256(encoder),
             "log_jsonl": str(out_dir / "log.jsonl"), "reconstruction": str(recon) if recon.is_file() else None}
    resolve = getattr(sys.modules.get(fn.__module__), "resolve_recipe", None)  # harness.pretrain has one
    if resolve is not None:
        recipe = resolve(job["method"], job.get("recipe"), overrides, job.get("epochs"))
    else:
        recipe = {"name": job.get("recipe"), "method": job["method"], "epochs": job.get("epochs")}
    return metrics, recipe, extra


def _json_number(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def nonfinite_metrics(metrics: dict[str, Any]) -> list[str]:
    """The metrics that are numbers but NaN or infinite: such a run measured nothing."""
    out = []
    for key, value in metrics.items():
        number = _json_number(value)
        if isinstance(number, float) and not math.isfinite(number):
            out.append(f"{key}={number}")
    return out


def build_record(job: dict[str, Any], status: str, *, metrics: dict[str, Any] | None = None,
                 recipe: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, error: str | None = None,
                 failure: dict[str, Any] | None = None, started_at: str, wall_time_s: float,
                 world_size: int = 1) -> dict[str, Any]:
    """The result record of one attempt: what ran, what it measured, and where and with what it ran."""
    return {
        "run_id": job["run_id"], "attempt": job["attempt"], "status": status, "kind": job["kind"],
        "task": job["task"], "target": job["target"], "protocol": job.get("protocol"),
        "metrics": {k: _json_number(v) for k, v in (metrics or {}).items()},
        "recipe": recipe or {}, "recipe_name": job.get("recipe"), "recipe_version": job.get("recipe_version"),
        "overrides": job.get("overrides") or {}, "seed": job.get("seed", 0),
        "backbone": {"name": job["backbone"], "spec": job.get("backbone_spec"), "checkpoint": job.get("checkpoint"),
                     "sha256": job.get("checkpoint_sha256"), "pretrain": job.get("pretrain_run")},
        "method": job.get("method"), "extra": extra or {}, "error": error, "failure": failure,
        "launcher": job.get("launcher", "none"), "world_size": world_size,
        **provenance.collect(),
        "wall_time_s": round(wall_time_s, 3), "started_at": started_at, "finished_at": provenance.now(),
        "log": job["log"], "work_dir": job["work_dir"], "data_root": job.get("data_root"),
        "data_fingerprint": job.get("data_fingerprint"),
    }


def load_backbones(job: dict[str, Any]) -> None:
    """Registers the job's extra backbones here too: modules, and YAML files under their `name:`. Imports the registry
    (and torch with it) only when there are any."""
    modules, files = job.get("backbone_modules") or [], job.get("backbone_files") or []
    if not modules and not files:
        return
    from backbones.registry import load_backbone_module, load_backbone_yaml

    for module in modules:
        load_backbone_module(module)
    for file in files:
        load_backbone_yaml(file)


def execute(job: dict[str, Any]) -> int:
    """Runs the job and writes its record (rank 0). Returns the exit status: 0 finished, 1 failed."""
    started, t0 = provenance.now(), time.time()
    Path(job["work_dir"]).mkdir(parents=True, exist_ok=True)
    print(f"[harness.worker] run {job['run_id']} attempt {job['attempt']} pid {os.getpid()} rank {rank()}", flush=True)
    metrics = recipe = extra = failure = None
    error = None
    try:
        load_backbones(job)
        device = pick_device(job.get("device", "auto"), job.get("launcher", "none"))
        run = _run_pretrain if job["kind"] == "pretrain" else _run_task
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
        path = store.write_record(job["records"], rec)
        print(f"[harness.worker] {status}: record {path}", flush=True)
    sys.stdout.flush()
    return 0 if status == "finished" else 1


class SubmititJob:
    """The callable a submitit executor runs: one job, its output appended to the run's log."""

    def __init__(self, job_path: str) -> None:
        self.job_path = job_path

    def __call__(self) -> int:
        job = load_job(self.job_path)
        if _num_tasks() > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR, ... for torch
        with open(job["log"], "ab", buffering=0) as log:
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
            raise RuntimeError(f"run {job['run_id']} failed; see {job['log']}")
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
    return execute(load_job(args.job))


if __name__ == "__main__":
    sys.exit(main())
