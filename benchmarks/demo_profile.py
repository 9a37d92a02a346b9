"""Where the time of one demo run goes: process start, imports, setup (recipe, data sets), model (build and weights),
data (datasets, loaders, cached features), train, eval, checkpoints, record, and the rest, in wall and CPU seconds.

    PYTHONPATH=$PWD python benchmarks/demo_profile.py --out /tmp/demo_profile \\
        --checkpoint mae_vit_tiny_patch4=/path/to/encoder.pth [--kinds in1k/linprobe,coco] [--repeat 2]

One run of each kind (in1k finetune, linprobe, partial; coco; ade20k) of `--backbone` with the tiny preset is planned
as `harness run` plans it (`harness.run.plan.build_plan`, timed: the runner's own start) and its job file is run by a
fresh `python -m harness.worker`-like process, one at a time, with the thread share the demo gives a worker
(`--threads`, default 1 = two runs at once on two cores). That process (this file with `--worker JOB`) times named
functions of the harness, the tasks and mmengine by wrapping them; a phase's time excludes the phases called inside it,
and every module import (`importlib._bootstrap._find_and_load`) is counted as `imports` wherever it happens. `start`
is the interpreter's own start before this file's first line (wall: from the parent's `Popen`); CPU time is the
process's user+sys (its threads, and its reaped children: loader workers). The closing report's cost over the
profiled records is printed last. Nothing pretrains: give each pretrained backbone an encoder with `--checkpoint`.
Each run starts from an empty work folder (no resume); the frozen features are shared as `harness run` shares them
(`OUT/work/features`): with `--repeat 2` the second table shows a run that reads them, as a suite's other seeds do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

T_LAUNCH_ENV = "DEMO_PROFILE_LAUNCH"  # the parent's time.time() just before Popen
KINDS = ("in1k/finetune", "in1k/linprobe", "in1k/partial", "coco", "ade20k")

# phase -> (module, attribute path) of the functions whose time is that phase's
TARGETS = {
    "setup": [("tasks.classification.recipe", "load_setup"), ("tasks.detection", "data_root"),
              ("tasks.segmentation", "resolve_data"), ("tasks.detection", "check_coco_root"),
              ("tasks.segmentation", "check_data")],
    "model": [("tasks.classification.model", "build_classifier"), ("mmengine.runner", "Runner.build_model"),
              ("mmengine.runner", "Runner.load_or_resume"), ("mmengine.runner", "Runner.wrap_model")],
    "data": [("tasks.classification.data", "load_splits"), ("mmengine.runner", "Runner.build_dataloader")],
    "train": [("tasks.classification.engine", "train_one_epoch"), ("mmengine.runner", "Runner.train"),
              ("mmengine.runner", "IterBasedTrainLoop.run_iter")],
    "eval": [("tasks.classification.engine", "evaluate"), ("mmengine.runner", "ValLoop.run"),
             ("mmengine.runner", "TestLoop.run")],
    "checkpoint": [("tasks.classification.checkpoint", "save_checkpoint"),
                   ("tasks.classification.checkpoint", "load_checkpoint"),
                   ("mmengine.runner", "Runner.save_checkpoint")],
    "record": [("harness.store", "write_record")],
}
PHASES = ("start", "imports", *TARGETS, "other")


def cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Exclusive wall and CPU seconds per phase: entering a phase pauses the one it was called from."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.stack = ["other"]
        self.packages: dict[str, float] = {}  # top-level package -> wall seconds of the imports it started
        self.mark = (time.perf_counter(), cpu())

    def _switch(self, to: str | None) -> None:
        now = (time.perf_counter(), cpu())
        top = self.stack[-1]
        self.wall[top] += now[0] - self.mark[0]
        self.cpu[top] += now[1] - self.mark[1]
        self.mark = now
        if to is None:
            self.stack.pop()
        else:
            self.stack.append(to)

    def wrap(self, phase: str, fn):  # noqa: ANN001, ANN201
        import functools

        @functools.wraps(fn)
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self._switch(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch(None)

        timed.__demo_profile__ = True
        return timed


def _patch(clock: Clock, module: object, path: str, phase: str) -> None:
    owner, _, name = path.rpartition(".")
    target = getattr(module, owner, None) if owner else module
    fn = getattr(target, name, None) if target is not None else None
    if fn is None or getattr(fn, "__demo_profile__", False):
        return
    import inspect

    static = isinstance(inspect.getattr_static(target, name), staticmethod)  # mmengine's Runner.build_dataloader
    setattr(target, name, staticmethod(clock.wrap(phase, fn)) if static else clock.wrap(phase, fn))


def install(clock: Clock) -> None:
    """Counts imports, and wraps each target as soon as its module has been imported (before any `from m import f`
    binds the original)."""
    import importlib._bootstrap as bootstrap

    by_module: dict[str, list[tuple[str, str]]] = {}
    for phase, targets in TARGETS.items():
        for module, path in targets:
            by_module.setdefault(module, []).append((path, phase))
    original = bootstrap._find_and_load

    def find_and_load(name, import_):  # noqa: ANN001, ANN202
        outermost = clock.stack[-1] != "imports"
        clock._switch("imports")
        t0 = time.perf_counter()
        try:
            module = original(name, import_)
        finally:
            clock._switch(None)
            if outermost:  # what each package costs where it is first imported, its dependencies included
                top = name.partition(".")[0]
                clock.packages[top] = clock.packages.get(top, 0.0) + time.perf_counter() - t0
        for path, phase in by_module.get(name, ()):
            _patch(clock, module, path, phase)
        return module

    bootstrap._find_and_load = find_and_load


def worker(job: str, out: str) -> int:
    """This process is the run's worker, timed."""
    launched = float(os.environ.get(T_LAUNCH_ENV, time.time()))
    start_wall, start_cpu = time.time() - launched, cpu()
    clock = Clock()
    install(clock)
    from harness import worker as harness_worker

    try:
        code = harness_worker.main([job])
    finally:
        clock._switch("other")
        wall, cpus = dict(clock.wall), dict(clock.cpu)
        wall["start"], cpus["start"] = start_wall, start_cpu
        Path(out).write_text(json.dumps({"wall": wall, "cpu": cpus, "packages": clock.packages}))
    return code


def plan_jobs(args: argparse.Namespace, out: Path) -> tuple[dict[str, Path], float, float]:
    """One job file per kind, planned as `harness run` plans them; and the plan's wall and CPU seconds."""
    from harness.run.launch import job_for
    from harness.run.options import RunOptions
    from harness.run.plan import build_plan

    suites = sorted({k.split("/")[0] for k in args.kinds})
    protocols = sorted({k.split("/")[1] for k in args.kinds if "/" in k})
    opts = RunOptions(suite=",".join(suites), backbones=args.backbone, preset="tiny", seeds="0",
                      protocols=",".join(protocols) or None, out=str(out), checkpoint=tuple(args.checkpoint),
                      no_report=True)
    t0, c0 = time.perf_counter(), cpu()
    plan = build_plan(opts)
    wall, cpus = time.perf_counter() - t0, cpu() - c0
    jobs = {}
    for run in plan.runs:
        kind = f"{run.task}/{run.protocol}" if run.protocol else run.task
        if run.kind != "task" or kind not in args.kinds:
            continue
        job = job_for(plan, run, "profile", "none", opts)
        Path(job.work_dir).mkdir(parents=True, exist_ok=True)
        jobs[kind] = job.to_json(Path(job.work_dir) / "job.json")
    missing = [k for k in args.kinds if k not in jobs]
    if missing:
        raise SystemExit(f"demo_profile: the plan has no run of {', '.join(missing)} (pretraining needed? give "
                         f"--checkpoint NAME=PATH)")
    return jobs, wall, cpus


def run_one(job: Path, threads: int, out: Path) -> dict[str, dict[str, float]]:
    work = job.parent
    for child in work.iterdir():  # a fresh run each time: no resume from a previous repeat
        if child.name != "job.json":
            child.unlink() if child.is_file() else None
    for folder in ("logs", "records"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    times = work / "profile.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "HARNESS_FEATURE_CACHE": str((out / "work" / "features").resolve())}  # as harness run's workers
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH", "")]))
    log = out / "logs" / f"{work.name}.profile.log"
    env[T_LAUNCH_ENV] = repr(time.time())
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, __file__, "--worker", str(job), "--times", str(times)], stdout=f,
                               stderr=subprocess.STDOUT, env=env)
    total = time.perf_counter() - t0
    if code or not times.is_file():
        raise SystemExit(f"demo_profile: {job} failed (exit {code}); see {log}")
    result = json.loads(times.read_text())
    result["total"] = {"wall": total, "cpu": sum(result["cpu"].values())}
    return result


def report_cost(out: Path) -> tuple[float, float]:
    from harness.report import write_report

    t0, c0 = time.perf_counter(), cpu()
    write_report(out / "records", out / "results")
    return time.perf_counter() - t0, cpu() - c0


def table(results: dict[str, list[dict]], key: str, i: int) -> str:
    def value(kind: str, phase: str) -> float:
        r = results[kind][i]
        return r["total"][key] if phase == "total" else r[key][phase]

    head = f"{'phase':<12}" + "".join(f"{k:>15}" for k in results)
    rows = [f"{p:<12}" + "".join(f"{value(k, p):>15.2f}" for k in results) for p in (*PHASES, "total")]
    return "\n".join([head, *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--times", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="/tmp/demo_profile", help="output folder (planned like harness run --out)")
    parser.add_argument("--backbone", default="mae_vit_tiny_patch4")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="an encoder for the backbone, so that nothing pretrains")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the worker (the demo's share)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind (the next ones read the features "
                        "the first computed, as the other seeds of a suite do)")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.times)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(KINDS)}")
    out = Path(args.out)
    jobs, plan_wall, plan_cpu = plan_jobs(args, out)
    print(f"runner's plan (harness run's start, {len(jobs)} runs): wall {plan_wall:.2f} s, CPU {plan_cpu:.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; worker threads {args.threads}")
    shutil.rmtree(out / "work" / "features", ignore_errors=True)  # the first run of each kind computes its own
    results: dict[str, list[dict]] = {k: [] for k in jobs}
    for _ in range(args.repeat):
        for kind, job in jobs.items():
            results[kind].append(run_one(job, args.threads, out))
            r = results[kind][-1]["total"]
            top = sorted(results[kind][-1]["packages"].items(), key=lambda kv: -kv[1])[:6]
            print(f"  {kind}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s; imports (wall s, dependencies included): "
                  + ", ".join(f"{name} {sec:.2f}" for name, sec in top), flush=True)
    for i in range(args.repeat):
        when = "the first: caches cold" if i == 0 else "again: the frozen features read from the first"
        for key in ("cpu", "wall"):
            print(f"\n{key} seconds, run {i + 1} of each kind ({when})\n{table(results, key, i)}")
    wall, cpus = report_cost(out)
    print(f"\nreport over {sum(map(len, results.values()))} records: wall {wall:.2f} s, CPU {cpus:.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
