"""Time and peak memory of `harness report` against the number of result records (a sweep of seeds and settings).

Writes N synthetic records into a temporary run folder, as `harness run` would: the demo's suite (MAE, supervised and
MoCo v3 tiny ViTs pretrained for 100 to 800 epochs, a from-scratch floor; IN1K fine-tune / linear / partial, COCO,
ADE20K), two recipes per task, the paper's recipe on ViT-B/L, repeated over seeds; a few failed runs and re-runs
(older attempts of the same run id). Records carry the fields the worker writes (resolved recipe, backbone spec,
per-epoch history, provenance); each pretraining writes a `log.jsonl` of 50 to 200 loss points. Then it times
`python -m harness report --format md,csv,tex` on them as a subprocess (everything the default writes: tables, CSVs,
`results.json`, the PNG figures and `index.html`), start-up and imports included, with the CPU seconds of the report
and of its worker processes, and the peak resident memory of the largest of them (`wait4`): first on records it has
not seen (no records cache, no figures), then again on the same records (the records cache is warm and no figure's
data has changed: nothing is parsed or drawn again).

    python benchmarks/report_scale.py                     # N = 100, 1000, 10000
    python benchmarks/report_scale.py --n 1000 --baseline main --keep /tmp/scale   # also an older commit's report

`--baseline REF` runs the report of a git commit (its `harness/`, `tasks/` and `backbones/`, exported into a
temporary folder) on the same records, first and repeated, before this one, prints its figures and the ratio of CPU
seconds, and checks that both wrote the same tables, CSVs, `results.json`, `README.md` and `index.html`, byte for
byte. `--keep DIR` leaves records and results in DIR to look at.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

METHODS = {"mae": "mae_vit_tiny_patch4", "supervised": "supervised_vit_tiny_patch4",
           "mocov3": "mocov3_vit_tiny_patch4"}
SCRATCH = "scratch_vit_tiny_patch4"
PAPER_BACKBONES = ("mae_vit_base_patch16", "mae_vit_large_patch16", "supervised_vit_base_patch16")
EPOCHS = (100, 200, 400, 800)
LOSS_POINTS = {100: 50, 200: 100, 400: 150, 800: 200}  # logged steps per pretraining
TASKS = (("in1k", "finetune"), ("in1k", "linprobe"), ("in1k", "partial"), ("coco", None), ("ade20k", None))
RECIPES = {"in1k": (("tiny", {}), ("tiny", {"finetune.blr": 0.008})), "coco": (("tiny", {}), ("short", {})),
           "ade20k": (("tiny", {}), ("short", {}))}
# one value per family, moved by pretraining length and seed (top-1 / AP / mIoU in percent)
LEVEL = {"mae": 70.0, "supervised": 66.0, "mocov3": 64.0, "scratch": 45.0}
FAILED_EVERY, RERUN_EVERY = 53, 31  # about 2% failed, 3% re-run


class Writer:
    """Writes records and pretraining logs into `root` the way the worker and the pretraining engine do."""

    def __init__(self, root: Path) -> None:
        from backbones import get_spec

        self.root, self.count, self.clock = root, 0, 0
        (root / "records").mkdir(parents=True)
        self.provenance = {
            "versions": {"python": "3.11.7", "torch": "2.14.1", "timm": "1.0.31", "mmengine": "0.10.7",
                         "mmcv": "2.1.0", "mmdet": "3.3.0", "mmseg": "1.2.2", "numpy": "1.26.4",
                         "pycocotools": "2.0.8"},
            "git": {"commit": "cc1046c8f1d9a3b1e7c1f2f0f5f0d5a7a9c3e2b1", "dirty": False},
            "hardware": {"host": "node-17", "cpu": "AMD EPYC 7742 64-Core Processor", "cpu_count": 64,
                         "gpus": ["NVIDIA A100-SXM4-80GB"] * 8},
        }
        self.specs = {n: get_spec(n).to_dict() for n in (*METHODS.values(), SCRATCH, *PAPER_BACKBONES)}
        self.recipes: dict[tuple[str, str, str], dict[str, Any]] = {}

    def recipe(self, task: str, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        key = (task, name, json.dumps(overrides, sort_keys=True))
        if key not in self.recipes:
            from tasks.recipes import load_recipe

            self.recipes[key] = load_recipe(task, name, overrides)
        return self.recipes[key]

    def write(self, rec: dict[str, Any]) -> None:
        from harness.store import record_name

        self.clock += 1
        rec["finished_at"] = f"2026-03-{1 + self.clock // 80000:02d}T{(self.clock // 3600) % 24:02d}:" \
                             f"{(self.clock // 60) % 60:02d}:{self.clock % 60:02d}.{self.clock % 10**6:06d}+00:00"
        rec["attempt"] = f"{self.clock:012x}"
        text = json.dumps(rec, indent=1, sort_keys=True, default=str)
        (self.root / "records" / record_name(rec)).write_text(text)
        self.count += 1

    def base(self, run_id: str, kind: str, task: str, backbone: str, seed: int, recipe_name: str,
             overrides: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
        work = self.root / "work" / run_id
        return {
            "run_id": run_id, "attempt": "", "status": "finished", "kind": kind, "task": task,
            "target": "harness.pretrain:pretrain" if kind == "pretrain" else f"tasks.{task}:run", "protocol": None,
            "metrics": {}, "recipe": recipe, "recipe_name": recipe_name, "recipe_version": recipe.get("version", 1),
            "overrides": overrides, "seed": seed,
            "backbone": {"name": backbone, "spec": self.specs[backbone], "checkpoint": None, "sha256": None,
                         "pretrain": None},
            "method": None, "extra": {}, "error": None, "launcher": "none", "world_size": 1, **self.provenance,
            "wall_time_s": 0.0, "started_at": "2026-03-01T00:00:00.000000+00:00", "finished_at": "",
            "log": str(self.root / "logs" / f"{run_id}.log"), "work_dir": str(work), "data_root": None,
        }


def loss_log(path: Path, method: str, epochs: int, rng: random.Random) -> float:
    """A pretraining's log.jsonl: a decaying loss with noise, as the engine writes it (one line per logged step)."""
    points, steps_per_epoch = LOSS_POINTS[epochs], 117
    start, floor = {"mae": (1.1, 0.35), "supervised": (2.3, 0.6), "mocov3": (5.5, 3.9)}[method]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines, loss = [], start
    every = max(1, epochs * steps_per_epoch // points)
    for i in range(points):
        step = i * every
        loss = floor + (start - floor) * math.exp(-4.0 * i / points) + rng.gauss(0, 0.02 * start)
        lines.append(json.dumps({"epoch": step // steps_per_epoch, "step": step, "loss": loss,
                                 "lr": 1.5e-4 * min(1.0, (i + 1) / (0.1 * points))}))
    path.write_text("\n".join(lines) + "\n")
    return loss


def pretrain_record(w: Writer, method: str, epochs: int, seed: int, rng: random.Random) -> dict[str, Any]:
    backbone, run_id = METHODS[method], f"pre-{method}-{epochs}-s{seed}"
    recipe = {**w.recipe("pretrain", f"{method}_tiny", {}), "epochs": epochs}
    rec = w.base(run_id, "pretrain", "pretrain", backbone, seed, f"{method}_tiny", {}, recipe)
    log = Path(rec["work_dir"]) / "log.jsonl"
    rec["metrics"] = {"final_loss": loss_log(log, method, epochs, rng)}
    rec["method"] = method
    rec["extra"] = {"encoder": str(log.with_name("encoder.pth")), "encoder_sha256": "0" * 64, "log_jsonl": str(log),
                    "reconstruction": None}
    rec["wall_time_s"] = round(epochs * 1.4 + rng.random(), 3)
    return rec


def task_record(w: Writer, backbone: str, family: str, pre: str | None, epochs: int | None, task: str,
                protocol: str | None, recipe_name: str, overrides: dict[str, Any], seed: int,
                rng: random.Random) -> dict[str, Any]:
    tag = "-".join(f"{k}={v}" for k, v in overrides.items())
    run_id = f"{task}-{protocol or 'main'}-{backbone}-{epochs or 0}-{recipe_name}{tag}-s{seed}"
    rec = w.base(run_id, "task", task, backbone, seed, recipe_name, overrides, w.recipe(task, recipe_name, overrides))
    rec["protocol"] = protocol
    rec["backbone"]["pretrain"] = {"run_id": pre, "method": family, "epochs": epochs} if pre else None
    level = LEVEL[family] + (4.0 * math.log2(epochs / 100) if epochs else 0.0) - (5.0 if overrides else 0.0)
    value = level + rng.gauss(0, 1.0)
    if task == "in1k":
        n_epochs = {"finetune": 3, "linprobe": 90, "partial": 6}[protocol]
        rec["metrics"] = {"top1": value, "top5": min(99.9, value + 20), "loss": 0.9}
        rec["extra"] = {"protocol": protocol, "section": protocol, "blocks": 1 if protocol == "partial" else None,
                        "num_classes": 10, "num_train": 3000, "num_val": 1000,
                        "cached_features": protocol != "finetune",
                        "history": [{"epoch": e + 1, "loss": 2.0 / (e + 1), "lr": 1e-3, "seconds": 0.4}
                                    for e in range(n_epochs)],
                        "load_report": {"initialised_fresh": ["head.weight", "head.bias"], "skipped": []}}
    elif task == "coco":
        rec["metrics"] = {"bbox_mAP": value / 4, "segm_mAP": value / 4.5, "bbox_mAP_50": value / 2}
        rec["extra"] = {"pyramid": "simple", "strides": [4, 8, 16, 32], "detected": True, "embedded_data": True}
    else:
        rec["metrics"] = {"mIoU": value / 2, "mAcc": value / 1.6, "aAcc": value + 10}
        rec["extra"] = {"pyramid": "simple", "taps": [1, 2, 3, 5]}
    rec["wall_time_s"] = round(30 + rng.random() * 60, 3)
    return rec


def seed_block(w: Writer, seed: int, rng: random.Random) -> list[dict[str, Any]]:
    """Every run of one seed of the sweep: the pretrainings, then every task on every encoder and recipe."""
    runs = [pretrain_record(w, m, e, seed, rng) for m in METHODS for e in EPOCHS]
    encoders = [(METHODS[m], m, f"pre-{m}-{e}-s{seed}", e) for m in METHODS for e in EPOCHS]
    encoders.append((SCRATCH, "scratch", None, None))
    for backbone, family, pre, epochs in encoders:
        for task, protocol in TASKS:
            for recipe_name, overrides in RECIPES[task]:
                runs.append(task_record(w, backbone, family, pre, epochs, task, protocol, recipe_name, overrides,
                                        seed, rng))
    for backbone in PAPER_BACKBONES:
        family = w.specs[backbone]["family"]
        for task, protocol in TASKS:
            runs.append(task_record(w, backbone, family, None, None, task, protocol, "paper", {}, seed, rng))
    return runs


def write_records(root: Path, n: int) -> None:
    """`n` record files: whole seeds of the sweep, the last one cut; every FAILED_EVERY-th run failed, every
    RERUN_EVERY-th run also has an older attempt."""
    w, rng, seed = Writer(root), random.Random(0), 0
    while w.count < n:
        for i, rec in enumerate(seed_block(w, seed, rng)):
            if w.count >= n:
                break
            if i % RERUN_EVERY == 5 and w.count + 1 < n:
                w.write({**rec, "metrics": {k: v - 3.0 for k, v in rec["metrics"].items()}})  # the superseded one
            if (i + seed) % FAILED_EVERY == 7 and rec["kind"] == "task":
                rec = {**rec, "status": "failed", "metrics": {},
                       "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
            w.write(rec)
        seed += 1


def baseline_tree(ref: str, dest: Path) -> Path:
    """The project's packages at commit `ref`, exported (not checked out) into `dest`."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "harness", "tasks", "backbones"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def time_child(cmd: list[str], code: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak resident MB) of a Python child process with the project at `code` first on
    the path. On a shared machine the wall time depends on the load; the CPU time much less."""
    env = {**os.environ, "PYTHONPATH": str(code), "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:4])} failed ({proc.returncode}) at {code}:\n{err[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def time_report(code: Path, runs: Path, out: Path, first: bool) -> tuple[float, float, float]:
    """A report's (wall s, CPU s, peak MB); `first`: on records it has not seen (no records cache, no results)."""
    if first:
        (runs / "records" / ".report-cache").unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
    return time_child([sys.executable, "-m", "harness", "report", "--runs", str(runs), "--out", str(out),
                       "--format", "md,csv,tex"], code)


def same_outputs(a: Path, b: Path) -> list[str]:
    """The files (not the figures) that differ between two reports' folders, or that only one wrote."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and p.suffix in OUTPUTS and not p.name.startswith(".")}

    names = files(a) | files(b)
    return sorted(n for n in names if not ((a / n).is_file() and (b / n).is_file()
                                          and (a / n).read_bytes() == (b / n).read_bytes()))


OUTPUTS = (".md", ".csv", ".tex", ".json", ".html")  # index.html inlines the figures: the same PNG bytes too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,1000,10000", help="comma-separated numbers of records")
    parser.add_argument("--baseline", help="a git commit whose report runs on the same records, for a ratio")
    parser.add_argument("--keep", type=Path, help="write into this folder (emptied first) and leave it there")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # only write --n records into this folder
    args = parser.parse_args()
    if args.write:
        return write_records(args.write, int(args.n))
    sizes = [int(n) for n in args.n.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="report_scale-"))
    base = args.keep or tmp
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
    try:
        old = baseline_tree(args.baseline, tmp / "baseline") if args.baseline else None
        floor, floor_cpu, floor_mb = time_child([sys.executable, "-c", "import pandas, matplotlib.figure"], ROOT)
        print(f"start-up floor (python, pandas and matplotlib imported): {floor:.2f} s ({floor_cpu:.2f} s CPU), "
              f"{floor_mb:.0f} MB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        cols = f"{'wall s':>7} {'CPU s':>6} {'peak MB':>8} {'repeat wall s':>13} {'CPU s':>6} {'peak MB':>8}"
        print(f"{'records':>8} {'pretrain':>8} {cols}" + (f" | baseline: {cols} | speed-up (CPU) first, repeat"
                                                        if old else ""))
        for n in sizes:
            runs = base / f"n{n}"
            # in a process of its own: the backbone specs import torch, whose pages a forked child would count
            subprocess.run([sys.executable, __file__, "--write", str(runs), "--n", str(n)], check=True)
            pre = sum(1 for _ in (runs / "work").iterdir())
            if old:
                before = [time_report(old, runs, runs / "results_baseline", first) for first in (True, False)]
            after = [time_report(ROOT, runs, runs / "results", first) for first in (True, False)]
            line = f"{n:>8} {pre:>8} " + " ".join(f"{w:>{7 if i == 0 else 13}.2f} {c:>6.2f} {mb:>8.0f}"
                                                   for i, (w, c, mb) in enumerate(after))
            if old:
                line += " | " + " ".join(f"{w:>{7 if i == 0 else 13}.2f} {c:>6.2f} {mb:>8.0f}"
                                         for i, (w, c, mb) in enumerate(before))
                line += f" | {before[0][1] / after[0][1]:.1f}x, {before[1][1] / after[1][1]:.1f}x"
                differ = same_outputs(runs / "results_baseline", runs / "results")
                line += f"; outputs {'identical' if not differ else 'DIFFER: ' + ', '.join(differ[:5])}"
            print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
