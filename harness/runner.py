"""`harness run`: every task of a suite for every backbone, each in its own process, resumable, then the report.

The plan is a list of runs, one per (backbone, task, protocol, seed), after the pretrainings a preset makes itself.
Each run has an id hashed from everything that determines its result (backbone spec and checkpoint sha256, task,
protocol, recipe name, version and overrides, seed, the data's content fingerprint: `harness.data.fingerprint`), a
stable work folder `OUT/work/<run_id>/` from which an interrupted task resumes, a log `OUT/logs/<run_id>.log`, and
result records in `OUT/records/` (`harness.store`).
A run whose newest record is finished is skipped unless `--force`; a failing run is recorded and the suite goes on.
The exit status is the number of runs that did not finish (failed, blocked by a failed pretraining, or held by another
live process: a run whose lock a live `harness run` holds is left alone and counted), at most 125; 126 means the suite
could not start (bad input: the message names the flag, file or folder), and nothing ran.

Launchers reuse existing engines: `local` (one `python -m harness.worker` at a time), `torchrun` (the worker under
`torch.distributed.run --nproc_per_node N`, ctx.launcher='pytorch') and `slurm` (submitit; `--slurm-cluster local` runs
the same jobs with submitit's local executor). Nothing here imports torch at module level, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import provenance, store

if TYPE_CHECKING:
    from tasks.spec import TaskSpec

DID_NOT_START = 126
MAX_FAILED = 125
# What a pretraining's summary shows (task runs show their spec's main metrics).
PRETRAIN_METRICS = ("final_loss",)
PRETRAIN_DATA = "in1k"  # the task whose real data the pretrainings read
# Spec fields that do not change what a run measures (the checkpoint's sha256 stands for the weights).
_SPEC_NOT_IN_ID = ("name", "description", "license", "checkpoint", "url", "sha256", "paper_name", "pretrain_epochs")


class PlanError(ValueError):
    """Bad input found while planning: nothing has run."""


def configure(parser: argparse.ArgumentParser) -> None:
    from harness.presets import DEFAULT

    parser.add_argument("--suite", help="comma-separated tasks: in1k, coco, ade20k, or NAME=module:function")
    parser.add_argument("--backbones", help="comma-separated registry names or backbone YAML files")
    parser.add_argument("--preset", default=DEFAULT, help=f"tiny | paper | short | a preset YAML (default {DEFAULT})")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--protocols", help="in1k protocols: finetune,linprobe,partial (default: the preset's)")
    parser.add_argument("--recipe", action="append", default=[], metavar="[TASK=]NAME",
                        help="recipe of every task, or of one task (repeatable; default: the preset's)")
    parser.add_argument("--pretrain-epochs", type=int, help="epochs of the preset's pretrainings (default: recipe's)")
    parser.add_argument("--data-root", help="DIR holding imagenet/, coco/, ade20k/, or TASK=DIR,TASK=DIR")
    parser.add_argument("--out", default="runs/default", help="output folder (work/, logs/, records/, results/)")
    parser.add_argument("--launcher", choices=("local", "torchrun", "slurm"), default="local")
    parser.add_argument("--gpus", type=int, default=1, help="processes (GPUs) per run under torchrun / slurm")
    parser.add_argument("--jobs", type=int, help="runs at once on this machine, each with its share of the CPU "
                        "threads or its own GPUs (default: the preset's, else 1)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per run under slurm")
    parser.add_argument("--slurm-partition", help="Slurm partition")
    parser.add_argument("--slurm-time", type=int, default=72 * 60, help="Slurm time limit per run, minutes")
    parser.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                        help="submitit executor: slurm, or local / debug to try the slurm path on this machine")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (ids, done or not) and stop")
    parser.add_argument("--force", action="store_true", help="re-run finished runs from scratch")
    parser.add_argument("--backbone-module", action="append", default=[], help="import a module that registers more")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="weights for a backbone, replacing the registry's or the preset's pretraining")
    parser.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE", dest="overrides",
                        help="recipe override for one task, e.g. in1k.optim.lr=1e-3 (value read as YAML)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled checkpoints (runs their code)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument("--log-backend", choices=("tensorboard", "wandb"),
                        help="also log to TensorBoard / W&B (tasks read HARNESS_LOG_BACKEND)")
    parser.add_argument("--report-format", default="md,csv,tex", help="formats of the closing report")
    parser.add_argument("--no-report", action="store_true", help="skip the closing report")


# --- the plan ---


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
        return f"{what} {self.backbone} seed {self.seed}"


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


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PlanError(f"{flag} {item!r} must look like NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2`: at least one seed, each an integer >= 0, none twice (a seed twice would run each run twice)."""
    items = _split(text)
    if not items or not all(re.fullmatch(r"\d+", s) for s in items):
        raise PlanError(f"--seeds {text!r}: allowed are comma-separated integers >= 0, e.g. --seeds 0,1,2")
    seeds = [int(s) for s in items]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise PlanError(f"--seeds {text!r}: seed {', '.join(map(str, twice))} given twice")
    return seeds


def parse_suite(items: list[str], extra: dict[str, str]) -> list[tuple[str, str]]:
    """Suite entries -> (task name, target). Entries: a known name, a task spec file (my_task.yaml), NAME=module:fn,
    NAME=file.py:fn or module:fn."""
    from tasks.spec import builtin_specs, is_spec_file

    known = {**{n: s.target for n, s in builtin_specs().items()}, **extra}
    out = []
    for item in items:
        name, sep, target = item.partition("=")
        if is_spec_file(item):
            spec = user_spec(item)
            out.append((spec.name, spec.target))
        elif sep:
            out.append((name, target))
        elif ":" in item:
            out.append((item, item))
        elif item in known:
            out.append((item, known[item]))
        else:
            from backbones.registry import unknown_name_error

            raise PlanError(f"--suite: {unknown_name_error('task', item, sorted(known)).args[0]}")
    if not out:
        raise PlanError("--suite names no task")
    return out


def user_spec(path: str) -> TaskSpec:
    """A user's task spec file (`--suite my_task.yaml`); its name must not be a built-in task's."""
    from tasks.spec import SpecError, builtin_specs, load_spec

    try:
        spec = load_spec(path)
    except SpecError as e:
        raise PlanError(f"--suite: {e}") from None
    if spec.name in builtin_specs():
        raise PlanError(f"--suite: {path}: name: {spec.name} is a built-in task's; give the task a name of its own")
    return spec


def suite_specs(suite: list[tuple[str, str]], items: list[str]) -> dict[str, TaskSpec]:
    """The spec of each task of the suite that has one: a spec file, or the built-in spec of its name (whatever its
    target: a preset may run a built-in task's protocols and table with a target of its own)."""
    from tasks.spec import builtin_specs, is_spec_file

    names = {name for name, _ in suite}
    out = {n: s for n, s in builtin_specs().items() if n in names}
    for item in items:
        if is_spec_file(item):
            spec = user_spec(item)
            out[spec.name] = spec
    return out


def parse_overrides(items: list[str], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """`--set in1k.optim.lr=1e-3` -> {'in1k': {'optim.lr': 0.001}}."""
    from tasks.recipes import parse_override

    out: dict[str, dict[str, Any]] = {t: {} for t in tasks}
    for item in items:
        try:
            dotted, value = parse_override(item)
        except ValueError as e:
            raise PlanError(f"--set {item!r}: {e}") from None
        task, _, key = dotted.partition(".")
        if task not in out or not key:
            raise PlanError(f"--set {item!r} must start with a task of the suite ({', '.join(tasks)}), e.g. "
                            f"{tasks[0]}.optim.lr=1e-3")
        out[task][key] = value
    return out


def recipe_version(task: str, target: str, recipe: str, overrides: dict[str, Any]) -> Any:
    """The recipe's version (part of the run id). Also checks that the recipe exists and the overrides name its keys.

    A task of the built-in registry must have its recipe under tasks/recipes/<task>/; a task given as module:function
    may keep its recipes elsewhere (its version is then unknown here: None).
    """
    from tasks.recipes import RECIPE_DIR, load_recipe
    from tasks.spec import task_spec

    own = Path(recipe).suffix in (".yaml", ".yml") or (RECIPE_DIR / task / f"{recipe}.yaml").is_file()
    builtin = task_spec(task)
    if not own and (builtin is None or builtin.name != task or builtin.target != target):
        return None
    try:
        return load_recipe(task, recipe, overrides).get("version")
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise PlanError(f"task {task}: {msg}") from None


def check_data(tasks: list[str], data_root: str | None, specs: dict[str, TaskSpec]) -> dict[str, str]:
    """Per-task data folders for real data (the specs' layouts); raises naming what was looked for, where, and what
    to pass instead."""
    layouts = {t: specs[t].data for t in tasks if t in specs and specs[t].data is not None}
    if not data_root:
        raise PlanError(
            f"tasks {', '.join(tasks)} need real data: pass --data-root DIR (with "
            + ", ".join(f"{layouts[t].folder}/" for t in tasks if t in layouts)
            + ") or per task --data-root in1k=DIR,coco=DIR; or use --preset tiny for the embedded Fashion-MNIST sets"
        )
    per_task = _pairs(_split(data_root), "--data-root") if "=" in data_root else {}
    out, problems = {}, []
    for task in tasks:
        if task not in layouts:
            if task in per_task:
                out[task] = per_task[task]
            elif not per_task:
                out[task] = data_root
            continue
        sub, needed, alternatives = layouts[task].folder, layouts[task].required, layouts[task].alternatives
        root = Path(per_task[task]) if task in per_task else Path(data_root) / sub
        if per_task and task not in per_task:
            problems.append(f"{task}: no folder given (add {task}=DIR to --data-root)")
            continue
        for candidate in (root, *(root / a for a in alternatives)):
            if all((candidate / n).exists() for n in needed):
                out[task] = str(candidate)
                break
        else:
            missing = [n for n in needed if not (root / n).exists()]
            problems.append(f"{task}: looked in {root} for {', '.join(needed)}; missing {', '.join(missing)} "
                            f"(pass --data-root {task}=DIR for another folder)")
    if problems:
        raise PlanError("data not found:\n  " + "\n  ".join(problems))
    return out


def check_embedded_data() -> Path:
    """The Fashion-MNIST folder every embedded set is made from."""
    from harness.data.fashion_mnist import find_dir

    try:
        return find_dir()
    except FileNotFoundError as e:
        raise PlanError(str(e)) from None


def data_fingerprints(tasks: list[str], data_roots: dict[str, str], embedded: Path | None) -> dict[str, str]:
    """Each task's data fingerprint (`harness.data.fingerprint`), by task; 'pretrain' reads in1k's data."""
    from harness.data.fingerprint import fingerprint

    if embedded is not None:
        fp = fingerprint(embedded)
        return {t: fp for t in [*tasks, "pretrain"]}
    by_root: dict[str, str] = {}
    out = {}
    for task, root in data_roots.items():
        if root not in by_root:
            by_root[root] = fingerprint(root)
        out[task] = by_root[root]
    if PRETRAIN_DATA in out:
        out["pretrain"] = out[PRETRAIN_DATA]
    return out


def check_log_backend(flag: str | None) -> None:
    """The backend the workers will log to, `--log-backend` or else a `HARNESS_LOG_BACKEND` they inherit, needs its
    package where they run (this interpreter): say what to install, now."""
    from tasks.training import LOG_BACKEND_ENV, log_backend, log_backend_missing

    try:
        choice = flag or log_backend()
    except ValueError as e:  # an unknown name in the inherited variable
        raise PlanError(str(e)) from None
    missing = log_backend_missing(choice) if choice else None
    if missing and flag:
        raise PlanError(f"--log-backend {choice}: {missing}; or leave out --log-backend (no remote logging)")
    if missing:
        raise PlanError(f"{LOG_BACKEND_ENV}={choice} (from the environment): {missing}; or unset {LOG_BACKEND_ENV}")


def check_launcher(launcher: str) -> None:
    """`--launcher slurm` submits through submitit, an optional dependency: say what to install, now."""
    if launcher == "slurm" and importlib.util.find_spec("submitit") is None:
        raise PlanError("--launcher slurm: the submitit package is not installed: "
                        "pip install 'mae-transfer-harness[slurm]' (or pip install submitit)")


def resolve_weights(name: str, spec: Any, given: str | None) -> str | None:
    """The local checkpoint of a backbone, without downloading: a given file, the spec's file or the cached URL."""
    from backbones.weights import cached_path

    if given:
        if not Path(given).expanduser().is_file():
            raise PlanError(f"--checkpoint {name}={given}: the file does not exist")
        return str(Path(given).expanduser().resolve())
    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise PlanError(f"backbone {name}: its checkpoint {spec.checkpoint} does not exist; "
                            f"pass --checkpoint {name}=PATH")
        return spec.checkpoint
    if spec.url:
        cached = cached_path(spec.url)
        if not cached.is_file():
            raise PlanError(f"backbone {name}: weights not in the cache (looked for {cached}); run "
                            f"`harness download {name}`, or pass --checkpoint {name}=PATH")
        return str(cached)
    return None


def _pretrain_done(plan_records: dict[str, dict[str, Any]], run: Run) -> bool:
    rec = plan_records.get(str(run.run_id))
    return bool(rec and rec["status"] == "finished" and Path(rec.get("extra", {}).get("encoder", "")).is_file())


@dataclass
class Inputs:
    """The flags and the preset, resolved and checked."""

    preset: Any
    suite: list[tuple[str, str]]
    task_specs: dict[str, TaskSpec]  # by task name, for the tasks that have one
    specs: dict[str, Any]  # by backbone name
    backbone_files: list[str]  # the backbone YAML files among them, which each worker reads again
    seeds: list[int]
    given: dict[str, str]
    overrides: dict[str, dict[str, Any]]
    recipes: dict[str, str | None]
    data: str  # embedded | real
    data_roots: dict[str, str]
    fingerprints: dict[str, str]  # by task ('pretrain' too): the content of what its runs read


def read_inputs(args: argparse.Namespace) -> Inputs:
    from backbones.registry import get_spec, load_backbone_module
    from harness.presets import load_preset

    try:
        preset = load_preset(args.preset)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise PlanError(f"--preset: {e.args[0] if isinstance(e, KeyError) else e}") from None
    for module in args.backbone_module:
        try:
            load_backbone_module(module)
        except ModuleNotFoundError as e:
            raise PlanError(str(e)) from None
    items = _split(args.suite) or preset.suite
    suite = parse_suite(items, preset.tasks)
    task_specs = suite_specs(suite, items)
    backbones = _split(args.backbones) or preset.backbones
    if not backbones:
        raise PlanError(f"no backbones: pass --backbones (preset {preset.name} names none)")
    specs, files = {}, []
    for name in backbones:
        try:
            spec = get_spec(name)
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise PlanError(f"--backbones: {e.args[0] if isinstance(e, KeyError) else e}") from None
        if spec.name in specs:
            raise PlanError(f"--backbones: {spec.name} is given twice")
        specs[spec.name] = spec  # a backbone file's runs, records and rows go by its `name:`, not by its path
        if name != spec.name:
            files.append(str(Path(name).resolve()))
            given_as = {name: spec.name}
            args.checkpoint = [f"{given_as.get(c.partition('=')[0], c.partition('=')[0])}={c.partition('=')[2]}"
                               if "=" in c else c for c in args.checkpoint]
    seeds = parse_seeds(args.seeds) if args.seeds is not None else preset.seeds
    given = _pairs(args.checkpoint, "--checkpoint")
    for name in given:
        if name not in specs:
            raise PlanError(f"--checkpoint {name}=...: {name} is not among the backbones ({', '.join(specs)})")
    tasks = [t for t, _ in suite]
    recipes: dict[str, str | None] = {"*": None, **_pairs([r if "=" in r else f"*={r}" for r in args.recipe],
                                                          "--recipe")}
    embedded = preset.data == "embedded" and not args.data_root
    fashion = check_embedded_data() if embedded else None
    data_roots = {} if embedded else check_data(tasks, args.data_root, task_specs)
    return Inputs(preset=preset, suite=suite, task_specs=task_specs, specs=specs, backbone_files=files, seeds=seeds,
                  given=given,
                  overrides=parse_overrides(args.overrides, tasks), recipes=recipes,
                  data="embedded" if embedded else "real", data_roots=data_roots,
                  fingerprints=data_fingerprints(tasks, data_roots, fashion))


def pretrain_runs(inp: Inputs, records: dict[str, dict[str, Any]], force: bool, epochs: int | None) -> dict[str, Run]:
    """The preset's pretrainings, for its backbones that no --checkpoint replaces."""
    pre, made = inp.preset.pretrain, {}
    for name, spec in inp.specs.items():
        if not pre or name not in pre.backbones or name in inp.given:
            continue
        method = pre.backbones[name]
        recipe = pre.recipe.format(method=method) if pre.recipe else None
        run = Run(kind="pretrain", task="pretrain", target=pre.target, backbone=name, spec=spec.to_dict(),
                  recipe=recipe, overrides=pre.overrides, data=inp.data, method=method, epochs=epochs or pre.epochs,
                  data_root=inp.data_roots.get(PRETRAIN_DATA), data_fingerprint=inp.fingerprints.get("pretrain"))
        if recipe:
            run.recipe_version = recipe_version("pretrain", pre.target, recipe, pre.overrides)
        run.assign_id()
        run.status = "done" if _pretrain_done(records, run) and not force else "todo"
        made[name] = run
    return made


def local_weights(inp: Inputs, made: dict[str, Run]) -> dict[str, str | None]:
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


def task_runs(inp: Inputs, made: dict[str, Run], weights: dict[str, str | None], records: dict[str, dict[str, Any]],
              sha_cache: Path, args: argparse.Namespace) -> list[Run]:
    """One run per (seed, task, protocol, backbone): a whole table per seed first."""
    runs = []
    for seed in inp.seeds:
        for task, target in inp.suite:
            recipe = inp.recipes.get(task) or inp.recipes["*"] or inp.preset.recipe_for(task)
            version = recipe_version(task, target, recipe, inp.overrides[task])
            for protocol in _protocols(inp.task_specs.get(task), args.protocols, inp.preset.protocols):
                for name, spec in inp.specs.items():
                    run = Run(kind="task", task=task, target=target, backbone=name, spec=spec.to_dict(), seed=seed,
                              protocol=protocol, recipe=recipe, recipe_version=version,
                              overrides=inp.overrides[task], data=inp.data, data_root=inp.data_roots.get(task),
                              data_fingerprint=inp.fingerprints.get(task),
                              after=made.get(name), checkpoint=None if name in made else weights[name])
                    _resolve(run, records, sha_cache, args.force)
                    runs.append(run)
    return runs


def check_flags(args: argparse.Namespace) -> None:
    """The numbers, formats and folders of the flags, before anything else is read."""
    from harness.report import FORMATS

    for flag, value in (("--gpus", args.gpus), ("--nodes", args.nodes), ("--slurm-time", args.slurm_time)):
        if value < 1:
            raise PlanError(f"{flag} {value}: must be at least 1")
    bad = [f for f in _split(args.report_format) if f not in FORMATS]
    if bad or not _split(args.report_format):
        raise PlanError(f"--report-format {args.report_format!r}: allowed are comma-separated {', '.join(FORMATS)}")
    check_out(Path(args.out))


def check_out(out: Path) -> None:
    """`--out` is a folder this process may write, or can become one (its nearest existing parent is writable)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PlanError(f"--out {out}: {existing} is a file, not a folder")
    try:  # a probe, not os.access: a read-only mount refuses even root
        fd, probe = tempfile.mkstemp(prefix=".harness-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PlanError(f"--out {out}: cannot write in {existing} ({e.strerror})") from None


def build_plan(args: argparse.Namespace) -> Plan:
    """Resolves flags and preset into runs, and checks data, weights, recipes and logging before anything runs."""
    check_flags(args)
    check_log_backend(args.log_backend)
    check_launcher(args.launcher)
    inp = read_inputs(args)
    out = Path(args.out)
    records = store.latest(store.read_records(out / "records"))
    made = pretrain_runs(inp, records, args.force, args.pretrain_epochs)
    weights = local_weights(inp, made)
    runs = task_runs(inp, made, weights, records, out / "work" / "sha256_cache.json", args)
    jobs = args.jobs if args.jobs is not None else inp.preset.jobs
    if jobs < 1:
        raise PlanError(f"--jobs must be at least 1, got {jobs}")
    shares = [{}] if args.launcher == "slurm" else machine_shares(
        jobs, args.gpus if args.launcher == "torchrun" else 1, args.device)
    return Plan(out=out, runs=[*made.values(), *runs], preset=inp.preset.name, task_specs=inp.task_specs,
                backbone_modules=list(args.backbone_module), backbone_files=inp.backbone_files, shares=shares)


def _protocols(spec: TaskSpec | None, flag: str | None, preset: dict[str, list[str]]) -> list[str | None]:
    known = spec.protocols if spec else ()
    if not known:
        return [None]
    task = spec.name
    chosen = _split(flag) or preset.get(task) or list(known)
    bad = [p for p in chosen if p not in known]
    if bad:
        raise PlanError(f"--protocols: unknown {', '.join(bad)} for {task} (known: {', '.join(known)})")
    return list(chosen)


def _resolve(run: Run, records: dict[str, dict[str, Any]], sha_cache: Path, force: bool) -> None:
    """Gives a task run its checkpoint, sha256, id and plan status, once its weights exist."""
    if run.after is not None:
        if run.after.status not in ("done", "finished"):
            run.status = "pending"
            return
        run.checkpoint = records[str(run.after.run_id)]["extra"]["encoder"]
    run.sha256 = provenance.cached_sha256(run.checkpoint, sha_cache) if run.checkpoint else None
    run.assign_id()
    rec = records.get(str(run.run_id))
    if rec and rec["status"] == "finished" and not force:
        run.status = "done"
    else:
        run.status = "failed" if rec and rec["status"] == "failed" else "todo"


# --- printing ---


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
        rows.append([str(rid), r.kind, r.backbone, r.task, what, str(r.seed), str(r.recipe), r.status])
    todo = sum(r.status != "done" for r in plan.runs)
    print(f"plan for {plan.out} (preset {plan.preset}): {len(plan.runs)} runs, {len(plan.runs) - todo} done, "
          f"{todo} to run")
    print(_table(rows, ["run_id", "kind", "backbone", "task", "protocol", "seed", "recipe", "status"]))


# --- progress: a live view of the current run, from the tail of its log ---

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


# --- running one run ---


def job_dict(plan: Plan, run: Run, attempt: str, launcher: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "run_id": run.run_id, "attempt": attempt, "kind": run.kind, "task": run.task, "target": run.target,
        "protocol": run.protocol, "backbone": run.backbone, "backbone_spec": run.spec, "checkpoint": run.checkpoint,
        "checkpoint_sha256": run.sha256, "recipe": run.recipe, "recipe_version": run.recipe_version,
        "overrides": run.overrides, "seed": run.seed, "data_root": run.data_root,
        "data_fingerprint": run.data_fingerprint, "method": run.method,
        "epochs": run.epochs, "pretrain_run": ({"run_id": run.after.run_id, "method": run.after.method,
                                                "epochs": run.after.epochs} if run.after else None),
        "work_dir": str(plan.work_dir(run).resolve()), "log": str(plan.log(run).resolve()),
        "records": str(plan.records.resolve()), "backbone_modules": plan.backbone_modules,
        "backbone_files": plan.backbone_files,
        "allow_pickle": args.trust_checkpoint, "launcher": launcher, "device": args.device,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


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


def prepare(plan: Plan, run: Run, launcher: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any], int] | None:
    """Claims the work folder (emptied under --force), writes the log header and the job file of a new attempt.

    None when another `harness run` is running this run now (the run is then 'busy'), or has finished it since this
    plan was made ('done'): the plan is read again under the lock, so that no run is ever run twice."""
    work = plan.work_dir(run)
    lock = claim(work)
    if lock is None:
        holder = (work / "worker.pid").read_text().strip() if (work / "worker.pid").is_file() else "?"
        run.status, run.error = "busy", f"another process (worker pid {holder}) holds {work / '.lock'}"
        return None
    if not args.force and finished_meanwhile(plan, run):  # another runner finished it after this plan was made
        os.close(lock)
        run.status = "done"
        return None
    if args.force:
        for child in work.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    plan.log(run).parent.mkdir(parents=True, exist_ok=True)
    job = job_dict(plan, run, store.new_attempt(), launcher, args)
    with open(plan.log(run), "a") as log:
        log.write(f"\n===== {provenance.now()} run {run.run_id} attempt {job['attempt']}: {run.label} =====\n")
    path = work / "job.json"
    _write_json(path, job)
    return path, job, lock


def worker_command(job_path: Path, launcher: str, gpus: int) -> list[str]:
    """The command of one run: the worker, directly or under torchrun (`--standalone`: a free port per run)."""
    worker = ["-m", "harness.worker", str(job_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(gpus), *worker]
    return [sys.executable, *worker]


def worker_env(args: argparse.Namespace, share: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(provenance.PROJECT_ROOT), os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["HARNESS_RUNNER_PID"] = str(os.getpid())  # harness.worker.PARENT_ENV: the worker exits when this one does
    if args.log_backend:
        env["HARNESS_LOG_BACKEND"] = args.log_backend  # harness.worker.vis_backends() reads it
    env.update(share or {})
    return env


def visible_gpus() -> list[str]:
    """The GPUs runs may use: `CUDA_VISIBLE_DEVICES` as given, else every device torch sees."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
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


def record_crash(plan: Plan, run: Run, job: dict[str, Any], reason: str, started: str, wall: float) -> None:
    """The record of an attempt that ended without writing its own (a signal, the OOM killer, a torchrun failure)."""
    from harness.worker import build_record

    rec = build_record(job, "failed", error=f"worker {reason}; see {job['log']}", started_at=started,
                       wall_time_s=wall)
    store.write_record(plan.records, rec)


def finish(plan: Plan, run: Run, job: dict[str, Any], code: int | None, started: str, wall: float) -> None:
    """Reads the attempt's record (or writes the crash record) and sets the run's final status."""
    if not store.has_attempt(plan.records, str(run.run_id), job["attempt"]):
        record_crash(plan, run, job, exit_reason(code), started, wall)
    rec = next(r for r in store.read_records(plan.records) if r["attempt"] == job["attempt"])
    run.status, run.wall, run.metrics, run.error = rec["status"], wall, rec.get("metrics") or {}, rec.get("error")
    run.log = job["log"]


@dataclass
class Active:
    """A run whose worker is going."""

    run: Run
    job: dict[str, Any]
    proc: subprocess.Popen
    lock: int
    started: str
    t0: float


def start_local(plan: Plan, run: Run, args: argparse.Namespace, share: dict[str, str]) -> Active | None:
    """Starts the run's worker (directly, or under torchrun) in a session of its own, armed to be killed when this
    process dies (`harness.worker.die_with_parent`); None when the run is busy or done meanwhile."""
    from harness.worker import kill_me_with_parent

    launcher = "pytorch" if args.launcher == "torchrun" else "none"
    prepared = prepare(plan, run, launcher, args)
    if prepared is None:
        return None
    job_path, job, lock = prepared
    started, t0 = provenance.now(), time.time()
    try:
        with open(plan.log(run), "ab") as log:
            proc = subprocess.Popen(worker_command(job_path, args.launcher, args.gpus), stdout=log,
                                    stderr=subprocess.STDOUT, env=worker_env(args, share), start_new_session=True,
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


def run_pool(plan: Plan, runs: list[Run], args: argparse.Namespace, progress: Progress) -> None:
    """Runs as many workers at once as the plan has shares of the machine, in plan order, a task run as soon as its
    pretraining has finished; Ctrl-C stops every worker and records each attempt."""
    shares = plan.shares
    pending, active, free = list(runs), {}, list(range(len(shares)))
    try:
        while pending or active:
            for run in list(pending):
                if not free:
                    break
                state = readiness(plan, run, args.force)
                if state == "wait":
                    continue
                pending.remove(run)
                if state != "ready":
                    continue
                progress.start(run)
                run.status = "running"
                slot = free.pop(0)
                started = start_local(plan, run, args, shares[slot])
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
            elif pending and all(readiness(plan, r, args.force) == "wait" for r in pending):
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


def slurm_executor(plan: Plan, args: argparse.Namespace) -> Any:
    import submitit

    cluster = None if args.slurm_cluster == "slurm" else args.slurm_cluster
    ex = submitit.AutoExecutor(folder=plan.out / "slurm" / "%j", cluster=cluster)
    params: dict[str, Any] = {"timeout_min": args.slurm_time, "tasks_per_node": args.gpus, "nodes": args.nodes}
    if args.slurm_cluster == "slurm":
        params.update(gpus_per_node=args.gpus, slurm_partition=args.slurm_partition)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def run_slurm(plan: Plan, runs: list[Run], args: argparse.Namespace, progress: Progress) -> None:
    """Submits the runs as submitit jobs (they run in parallel on the cluster) and waits for all of them."""
    from harness.worker import SubmititJob

    ex = slurm_executor(plan, args)
    jobs = []
    for run in runs:
        prepared = prepare(plan, run, "slurm", args)
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


# --- the command ---


def execute(plan: Plan, args: argparse.Namespace) -> list[Run]:
    """Runs what is not done: pretrainings first, each task run once the weights it loads exist."""
    todo = [r for r in plan.runs if r.status != "done"]
    progress = Progress(len(todo))
    try:
        if args.launcher != "slurm":
            run_pool(plan, todo, args, progress)
            return plan.runs
        for phase in ("pretrain", "task"):  # slurm: each phase's jobs run in parallel on the cluster
            batch = []
            for run in (r for r in todo if r.kind == phase):
                if readiness(plan, run, args.force) == "ready":
                    batch.append(run)
            run_slurm(plan, batch, args, progress)
    finally:
        progress.stop()
    return plan.runs


def _after_finished(plan: Plan, run: Run, force: bool) -> bool:
    """Once its pretraining has finished: the checkpoint, sha256, id and done-ness of a pending run."""
    assert run.after is not None
    if run.after.status not in ("done", "finished"):
        return False
    records = store.latest(store.read_records(plan.records))
    _resolve(run, records, plan.out / "work" / "sha256_cache.json", force)
    return True


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


def save_specs(plan: Plan) -> None:
    """Copies the spec files of users' tasks into OUT/specs/, where `harness report --runs OUT` finds their tables."""
    from tasks.spec import SPEC_DIR

    for spec in plan.task_specs.values():
        if spec.path and Path(spec.path).resolve().parent != SPEC_DIR:
            dest = plan.out / store.SPECS / f"{spec.name}.yaml"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(spec.path, dest)


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


@contextlib.contextmanager
def _stop_signals_interrupt(received: list[int]) -> Iterator[None]:
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


def run(args: argparse.Namespace) -> int:
    try:
        plan = build_plan(args)
    except PlanError as e:
        print(f"harness run: {e}", file=sys.stderr)
        return DID_NOT_START
    if args.dry_run:
        print_plan(plan)
        return 0
    save_specs(plan)
    received: list[int] = []
    try:
        with _stop_signals_interrupt(received):
            execute(plan, args)
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
    if not args.no_report:
        _report(plan, args)
    return min(failed, MAX_FAILED)


def _report(plan: Plan, args: argparse.Namespace) -> None:
    try:
        from harness.report import write_report

        written = write_report(plan.records, plan.out / "results", formats=_split(args.report_format))
    except Exception as e:  # the runs are recorded; a report problem must not hide that
        print(f"harness run: the report failed ({type(e).__name__}: {e}); run `harness report --runs {plan.out}`",
              file=sys.stderr)
        return
    print(f"report: {len(written)} files in {plan.out / 'results'}")


