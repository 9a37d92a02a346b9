"""The plan of `harness run`: one run per (backbone, task, protocol, seed), after the pretrainings a preset makes
itself, each with an id hashed from everything that determines its result, and whether it is done.

A run's id (`Run.identity`) covers the backbone spec and checkpoint sha256, task, protocol, recipe name, version and
overrides, seed and the data's content fingerprint (`harness.data.fingerprint`): the same run gets the same id in any
output folder, and a changed input a new one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import provenance, store
from harness.records import Record
from harness.run.inputs import (
    PRETRAIN_DATA,
    Inputs,
    PlanError,
    check_flags,
    check_launcher,
    check_log_backend,
    read_inputs,
    recipe_version,
    resolve_weights,
    split_list,
)
from harness.run.options import RunOptions
from harness.run.sweep import FLAG as SWEEP_FLAG
from harness.run.sweep import Sweep, parse_sweep, swept_methods

if TYPE_CHECKING:
    from tasks.spec import TaskSpec

# Spec fields that do not change what a run measures (the checkpoint's sha256 stands for the weights).
_SPEC_NOT_IN_ID = ("name", "description", "license", "checkpoint", "url", "sha256", "paper_name", "pretrain_epochs")


@dataclass
class Run:
    """One process of the suite: a pretraining (kind 'pretrain') or a task run (kind 'task')."""

    kind: str
    task: str
    target: str
    backbone: str
    spec: dict[str, Any]
    seed: int = 0
    protocol: str | None = None
    recipe: str | None = None
    recipe_version: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "embedded"  # embedded | real: part of the id; the path itself is not
    data_root: str | None = None
    data_fingerprint: str | None = None  # part of the id: the content of the data, wherever it lies
    checkpoint: str | None = None
    sha256: str | None = None
    method: str | None = None  # pretraining method
    epochs: int | None = None  # pretraining epochs (None: the recipe's)
    after: Run | None = None  # the pretraining whose encoder this run loads
    sweep: dict[str, Any] | None = None  # a pretraining's setting of `--sweep`: {key, value}
    control: str | None = None  # floor | pixels: a control run (`harness.controls`); its id is a task run's
    run_id: str | None = None  # None while `after` has not produced its encoder
    status: str = "todo"  # plan: todo | done | failed | pending; after running: finished | failed | blocked | busy
    wall: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    log: str | None = None

    def identity(self) -> dict[str, Any]:
        spec = {k: v for k, v in self.spec.items() if k not in _SPEC_NOT_IN_ID}
        ident = {"kind": self.kind, "task": self.task, "target": self.target, "backbone": spec, "seed": self.seed,
                 "recipe": self.recipe, "recipe_version": self.recipe_version, "overrides": self.overrides,
                 "data": self.data, "checkpoint_sha256": self.sha256}
        if self.data_fingerprint is not None:
            ident["data_fingerprint"] = self.data_fingerprint
        if self.kind == "pretrain":
            ident.update(method=self.method, epochs=self.epochs)
        else:
            ident["protocol"] = self.protocol
        return ident

    def assign_id(self) -> None:
        self.run_id = provenance.stable_hash(self.identity())

    @property
    def label(self) -> str:
        what = f"pretrain {self.method}" if self.kind == "pretrain" else self.task + (f"/{self.protocol}" if
                                                                                         self.protocol else "")
        return f"{what} {self.backbone}{f' ({self.control})' if self.control else ''} seed {self.seed}"


@dataclass
class Plan:
    out: Path
    runs: list[Run]
    preset: str
    backbone_modules: list[str]
    backbone_files: list[str] = field(default_factory=list)
    task_specs: dict[str, TaskSpec] = field(default_factory=dict)  # by task name
    shares: list[dict[str, str]] = field(default_factory=lambda: [{}])  # per concurrent job: its GPUs or threads

    @property
    def records(self) -> Path:
        return self.out / "records"

    def work_dir(self, run: Run) -> Path:
        return self.out / "work" / str(run.run_id)

    def log(self, run: Run) -> Path:
        return self.out / "logs" / f"{run.run_id}.log"


def build_plan(opts: RunOptions) -> Plan:
    """Resolves flags and preset into runs, and checks data, weights, recipes and logging before anything runs."""
    check_flags(opts)
    check_log_backend(opts.log_backend)
    check_launcher(opts.launcher)
    inp = read_inputs(opts)
    jobs = opts.jobs if opts.jobs is not None else inp.preset.jobs
    if jobs < 1:
        raise PlanError(f"--jobs must be at least 1, got {jobs}")
    out = Path(opts.out)
    records = latest_records(out / "records")
    sweep = sweep_of(opts)
    retrain = opts.pretrain or sweep is not None or opts.pretrain_epochs is not None  # both mean a pretraining
    if opts.pretrain and inp.preset.pretrain is None:
        raise PlanError(f"--pretrain: preset {inp.preset.name} makes no pretraining (a preset with a 'pretrain' "
                        "section, such as tiny, does)")
    made = pretrain_runs(inp, records, opts.force, opts.pretrain_epochs, sweep, retrain)
    weights = local_weights(inp, made)
    sha_cache = None if opts.dry_run else out / "work" / "sha256_cache.json"  # a dry run writes nothing
    controls = control_runs(inp, records, opts)  # before any file is hashed: bad controls leave no cache behind
    runs = task_runs(inp, made, weights, records, sha_cache, opts)
    planned = {r.run_id for r in runs}
    runs = by_seed(runs + [c for c in controls if c.run_id not in planned], inp.seeds, [t for t, _ in inp.suite])
    shares = [{}] if opts.launcher == "slurm" else machine_shares(
        jobs, opts.gpus if opts.launcher == "torchrun" else 1, opts.device)
    pretrains = [r for rs in made.values() for r in rs]
    return Plan(out=out, runs=[*pretrains, *runs], preset=inp.preset.name, task_specs=inp.task_specs,
                backbone_modules=list(opts.backbone_module), backbone_files=inp.backbone_files, shares=shares)


def sweep_of(opts: RunOptions) -> Sweep | None:
    given = (opts.sweep,) if isinstance(opts.sweep, str) else tuple(opts.sweep or ())
    if len(given) > 1:
        raise PlanError(f"{SWEEP_FLAG} given {len(given)} times ({', '.join(given)}): one key at a time")
    sweep = parse_sweep(given[0] if given else None)
    if sweep and sweep.key == "epochs" and opts.pretrain_epochs is not None:
        raise PlanError(f"{SWEEP_FLAG} pretrain.epochs and --pretrain-epochs: give one of them")
    return sweep


def pretrain_runs(inp: Inputs, records: dict[str, Record], force: bool, epochs: int | None,
                  sweep: Sweep | None = None, retrain: bool = True) -> dict[str, list[Run]]:
    """The preset's pretrainings, for its backbones that no --checkpoint replaces and, unless `retrain` (--pretrain),
    that ship no weights: one per backbone, or one per value of `sweep` for the backbones whose recipe has the key."""
    pre, made = inp.preset.pretrain, {}
    names = [n for n in inp.specs if pre and n in pre.backbones and n not in inp.given
             and (retrain or not (inp.specs[n].checkpoint or inp.specs[n].url))]
    if sweep and not names:
        raise PlanError(f"{SWEEP_FLAG} pretrain.{sweep.key}: the preset makes no pretraining to sweep")
    recipes = {pre.backbones[n]: pre.recipe.format(method=pre.backbones[n]) if pre.recipe else None for n in names}
    for recipe in recipes.values():
        if recipe:
            recipe_version("pretrain", pre.target, recipe, pre.overrides)
    swept = swept_methods(sweep, recipes, pre.overrides) if sweep else set()
    for name in names:
        method = pre.backbones[name]
        settings = [sweep.setting(v) for v in sweep.values] if sweep and method in swept else [None]
        made[name] = [_pretrain_run(inp, name, recipes[method], epochs, setting) for setting in settings]
        for run in made[name]:
            run.status = "done" if _pretrain_done(records, run) and not force else "todo"
    return made


def _pretrain_run(inp: Inputs, name: str, recipe: str | None, epochs: int | None,
                  setting: dict[str, Any] | None) -> Run:
    """One pretraining; a sweep's setting of `epochs` is its length, any other key a recipe override."""
    pre = inp.preset.pretrain
    assert pre is not None
    overrides, epochs = dict(pre.overrides), epochs or pre.epochs
    if setting is not None and setting["key"] == "epochs":
        epochs = setting["value"]
    elif setting is not None:
        overrides[setting["key"]] = setting["value"]
    run = Run(kind="pretrain", task="pretrain", target=pre.target, backbone=name, spec=inp.specs[name].to_dict(),
              recipe=recipe, overrides=overrides, data=inp.data, method=pre.backbones[name], epochs=epochs,
              data_root=inp.data_roots.get(PRETRAIN_DATA), data_fingerprint=inp.fingerprints.get("pretrain"),
              sweep=setting)
    if recipe:
        run.recipe_version = recipe_version("pretrain", pre.target, recipe, overrides)
    run.assign_id()
    return run


def latest_records(folder: Path) -> dict[str, Record]:
    """The newest record of each run id in `folder`."""
    return {run_id: Record.from_dict(rec) for run_id, rec in store.latest(store.read_records(folder)).items()}


def _pretrain_done(plan_records: dict[str, Record], run: Run) -> bool:
    rec = plan_records.get(str(run.run_id))
    return bool(rec and rec.status == "finished" and Path((rec.extra or {}).get("encoder", "")).is_file())


def local_weights(inp: Inputs, made: dict[str, list[Run]]) -> dict[str, str | None]:
    """Every other backbone's checkpoint, all checked at once so that one message lists every missing file."""
    weights, problems = {}, []
    for name, spec in inp.specs.items():
        if name in made:
            continue
        try:
            weights[name] = resolve_weights(name, spec, inp.given.get(name))
        except PlanError as e:
            problems.append(str(e))
    if problems:
        raise PlanError("weights not found:\n  " + "\n  ".join(problems))
    return weights


def task_runs(inp: Inputs, made: dict[str, list[Run]], weights: dict[str, str | None], records: dict[str, Record],
              sha_cache: Path | None, opts: RunOptions) -> list[Run]:
    """One run per (seed, task, protocol, backbone, pretraining setting): a whole table per seed first."""
    runs = []
    for seed in inp.seeds:
        for task, target in inp.suite:
            recipe = inp.recipes.get(task) or inp.recipes["*"] or inp.preset.recipe_for(task)
            version = recipe_version(task, target, recipe, inp.overrides[task])
            for protocol in _protocols(inp.task_specs.get(task), opts.protocols, inp.preset.protocols):
                for name, spec in inp.specs.items():
                    for after in made.get(name) or [None]:
                        run = Run(kind="task", task=task, target=target, backbone=name, spec=spec.to_dict(),
                                  seed=seed, protocol=protocol, recipe=recipe, recipe_version=version,
                                  overrides=inp.overrides[task], data=inp.data, data_root=inp.data_roots.get(task),
                                  data_fingerprint=inp.fingerprints.get(task),
                                  after=after, checkpoint=None if name in made else weights[name])
                        _resolve(run, records, sha_cache, opts.force)
                        runs.append(run)
    return runs


def control_runs(inp: Inputs, records: dict[str, Record], opts: RunOptions) -> list[Run]:
    """The control runs of `--controls` (else the preset's), per seed and task (`harness.controls`): a random frozen
    encoder per architecture of the suite's backbones, a pixel reference per classification task. They load no
    weights, so no file is hashed; the caller drops a control that is already a task run (the in1k linear probe of a
    from-scratch backbone)."""
    from backbones.registry import get_spec
    from harness.controls import control_settings, parse_controls

    try:
        kinds = parse_controls(opts.controls, "--controls") if opts.controls is not None else inp.preset.controls
    except ValueError as e:
        raise PlanError(str(e)) from None
    # a from-scratch entry given weights (--checkpoint) is no random encoder
    specs = {name: {**spec.to_dict(), "checkpoint": inp.given.get(name) or spec.checkpoint}
             for name, spec in inp.specs.items()}
    planned, out = set(), []
    for seed in inp.seeds:
        for task, target in inp.suite:
            recipe = inp.recipes.get(task) or inp.recipes["*"] or inp.preset.recipe_for(task)
            for control, backbone in control_settings(inp.task_specs.get(task), kinds, specs):
                overrides = {**inp.overrides[task], **control.overrides}
                try:
                    version = recipe_version(task, target, recipe, overrides)
                except PlanError as e:  # a recipe without the control's key (`model.freeze_backbone`)
                    raise PlanError(f"--controls {control.kind}: {e}") from None
                run = Run(kind="task", task=task, target=target, backbone=backbone, spec=get_spec(backbone).to_dict(),
                          seed=seed, protocol=control.protocol, recipe=recipe, recipe_version=version,
                          overrides=overrides, data=inp.data, data_root=inp.data_roots.get(task),
                          data_fingerprint=inp.fingerprints.get(task), control=control.kind)
                _resolve(run, records, None, opts.force)
                if run.run_id not in planned:
                    planned.add(run.run_id)
                    out.append(run)
    return out


def by_seed(runs: list[Run], seeds: list[int], tasks: list[str] | None = None) -> list[Run]:
    """Runs in the order of `--seeds` (as given, not sorted), each seed's task by task in the suite's order (`tasks`),
    each task's in the order given: a whole table per seed first, its controls beside its task's runs, so that a long
    control (a COCO floor) does not run alone at the end while the other job slots idle."""
    order = {seed: i for i, seed in enumerate(seeds)}
    task_order = {task: i for i, task in enumerate(tasks or [])}
    return sorted(runs, key=lambda r: (order.get(r.seed, len(order)), task_order.get(r.task, len(task_order))))


def _protocols(spec: TaskSpec | None, flag: str | None, preset: dict[str, list[str]]) -> list[str | None]:
    known = spec.protocols if spec else ()
    if not known:
        return [None]
    task = spec.name
    chosen = split_list(flag) or preset.get(task) or list(known)
    bad = [p for p in chosen if p not in known]
    if bad:
        raise PlanError(f"--protocols: unknown {', '.join(bad)} for {task} (known: {', '.join(known)})")
    return list(chosen)


def _resolve(run: Run, records: dict[str, Record], sha_cache: Path | None, force: bool) -> None:
    """Gives a task run its checkpoint, sha256, id and plan status, once its weights exist."""
    if run.after is not None:
        if run.after.status not in ("done", "finished"):
            run.status = "pending"
            return
        run.checkpoint = records[str(run.after.run_id)].extra["encoder"]
    run.sha256 = provenance.cached_sha256(run.checkpoint, sha_cache) if run.checkpoint else None
    run.assign_id()
    rec = records.get(str(run.run_id))
    if rec and rec.status == "finished" and not force:
        run.status = "done"
    else:
        run.status = "failed" if rec and rec.status == "failed" else "todo"


def readiness(plan: Plan, run: Run, force: bool) -> str:
    """'ready', 'wait' (its pretraining is still to finish), 'blocked' (the pretraining failed) or 'done'."""
    if run.run_id is not None:
        return "ready"
    assert run.after is not None
    if run.after.status in ("todo", "pending", "running"):
        return "wait"
    if not _after_finished(plan, run, force):
        run.status, run.error = "blocked", f"pretraining {run.after.run_id} did not finish"
        return "blocked"
    return "done" if run.status == "done" else "ready"


def _after_finished(plan: Plan, run: Run, force: bool) -> bool:
    """Once its pretraining has finished: the checkpoint, sha256, id and done-ness of a pending run."""
    assert run.after is not None
    if run.after.status not in ("done", "finished"):
        return False
    records = latest_records(plan.records)
    _resolve(run, records, plan.out / "work" / "sha256_cache.json", force)
    return True


def visible_gpus() -> list[str]:
    """The GPUs runs may use: `CUDA_VISIBLE_DEVICES` as given, else every device torch sees."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    if not (Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/kfd").exists()):
        return []  # no NVIDIA driver, no ROCm device: spare the runner torch's import (1.6 s of CPU)
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def machine_shares(jobs: int, procs_per_run: int, device: str) -> list[dict[str, str]]:
    """What each of `jobs` concurrent runs gets, as environment variables: its own GPUs when there are enough for all
    of them, else (CPU) an equal share of the cores as OpenMP/MKL threads. One job keeps the environment as it is."""
    if jobs == 1:
        return [{}]
    gpus = visible_gpus() if device != "cpu" else []
    if gpus:
        need = jobs * procs_per_run
        if len(gpus) < need:
            raise PlanError(f"--jobs {jobs} with {procs_per_run} GPU(s) per run needs {need} GPUs; {len(gpus)} "
                            f"visible ({', '.join(gpus)}); lower --jobs or pass --device cpu")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * procs_per_run:(i + 1) * procs_per_run])}
                for i in range(jobs)]
    threads = str(max(1, (os.cpu_count() or 1) // (jobs * procs_per_run)))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(jobs)]


def save_specs(plan: Plan) -> None:
    """Copies the spec files of users' tasks into OUT/specs/, where `harness report --runs OUT` finds their tables."""
    from tasks.spec import SPEC_DIR

    for spec in plan.task_specs.values():
        if spec.path and Path(spec.path).resolve().parent != SPEC_DIR:
            dest = plan.out / store.SPECS / f"{spec.name}.yaml"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(spec.path, dest)
