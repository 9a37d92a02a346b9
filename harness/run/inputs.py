"""`harness run`'s input: flags and preset resolved and checked (suite and task specs, backbones and their weights,
seeds, recipes and overrides, data folders and fingerprints, log backend, launcher, output folder) before anything
runs. Bad input raises `PlanError`, whose message names the flag, file or folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.run.options import RunOptions

if TYPE_CHECKING:
    from tasks.spec import TaskSpec

PRETRAIN_DATA = "in1k"  # the task whose real data the pretrainings read


class PlanError(ValueError):
    """Bad input found while planning: nothing has run."""


def split_list(text: str | None) -> list[str]:
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
    items = split_list(text)
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
    per_task = _pairs(split_list(data_root), "--data-root") if "=" in data_root else {}
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
    from embedded.fashion_mnist import find_dir

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


def check_flags(opts: RunOptions) -> None:
    """The numbers, formats and folders of the flags, before anything else is read."""
    from harness.report import FORMATS

    for flag, value in (("--gpus", opts.gpus), ("--nodes", opts.nodes), ("--slurm-time", opts.slurm_time)):
        if value < 1:
            raise PlanError(f"{flag} {value}: must be at least 1")
    bad = [f for f in split_list(opts.report_format) if f not in FORMATS]
    if bad or not split_list(opts.report_format):
        raise PlanError(f"--report-format {opts.report_format!r}: allowed are comma-separated {', '.join(FORMATS)}")
    check_out(Path(opts.out))


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


def read_inputs(opts: RunOptions) -> Inputs:
    from backbones.registry import get_spec, load_backbone_module
    from harness.presets import load_preset

    try:
        preset = load_preset(opts.preset)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise PlanError(f"--preset: {e.args[0] if isinstance(e, KeyError) else e}") from None
    for module in opts.backbone_module:
        try:
            load_backbone_module(module)
        except ModuleNotFoundError as e:
            raise PlanError(str(e)) from None
    items = split_list(opts.suite) or preset.suite
    suite = parse_suite(items, preset.tasks)
    task_specs = suite_specs(suite, items)
    backbones = split_list(opts.backbones) or preset.backbones
    if not backbones:
        raise PlanError(f"no backbones: pass --backbones (preset {preset.name} names none)")
    specs, files, checkpoints = {}, [], list(opts.checkpoint)  # --checkpoint FILE.yaml=... goes by the spec's name
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
            checkpoints = [f"{given_as.get(c.partition('=')[0], c.partition('=')[0])}={c.partition('=')[2]}"
                           if "=" in c else c for c in checkpoints]
    seeds = parse_seeds(opts.seeds) if opts.seeds is not None else preset.seeds
    given = _pairs(checkpoints, "--checkpoint")
    for name in given:
        if name not in specs:
            raise PlanError(f"--checkpoint {name}=...: {name} is not among the backbones ({', '.join(specs)})")
    tasks = [t for t, _ in suite]
    recipes: dict[str, str | None] = {"*": None, **_pairs([r if "=" in r else f"*={r}" for r in opts.recipe],
                                                          "--recipe")}
    embedded = preset.data == "embedded" and not opts.data_root
    fashion = check_embedded_data() if embedded else None
    data_roots = {} if embedded else check_data(tasks, opts.data_root, task_specs)
    return Inputs(preset=preset, suite=suite, task_specs=task_specs, specs=specs, backbone_files=files, seeds=seeds,
                  given=given,
                  overrides=parse_overrides(opts.overrides, tasks), recipes=recipes,
                  data="embedded" if embedded else "real", data_roots=data_roots,
                  fingerprints=data_fingerprints(tasks, data_roots, fashion))
