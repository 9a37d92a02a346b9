"""What a worker runs: the job's task (`module:function` on a `tasks.TaskContext`, or a file.py:function) or its
pretraining (`harness.pretrain.pretrain`), on the device it picks, with the job's extra backbones registered.
Each returns (metrics, the resolved recipe, extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import provenance
from harness.records import Job, json_number


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


def run_task(job: Job, device: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from tasks import TaskContext

    ctx = TaskContext(
        backbone=job.backbone, work_dir=Path(job.work_dir), recipe=job.recipe or "tiny",
        checkpoint=job.checkpoint, data_root=Path(job.data_root) if job.data_root else None,
        protocol=job.protocol, overrides=dict(job.overrides), seed=job.seed,
        device=device, launcher=job.launcher, allow_pickle=job.allow_pickle,
    )
    result = resolve_target(job.target)(ctx)
    if not isinstance(getattr(result, "metrics", None), dict):
        raise TypeError(f"task {job.target} returned {type(result).__name__}, not a TaskResult with metrics")
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


def run_pretrain(job: Job, device: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    out_dir = Path(job.work_dir)
    fn = resolve_target(job.target)
    overrides = dict(job.overrides)
    encoder = fn(job.method, job.backbone, out_dir, epochs=job.epochs, seed=job.seed,
                 data_root=job.data_root, recipe=job.recipe, overrides=overrides, progress=True,
                 device=device)
    encoder = Path(encoder)
    if not encoder.is_file():
        raise FileNotFoundError(f"pretraining returned {encoder}, which does not exist")
    metrics: dict[str, Any] = {"final_loss": last_loss(out_dir / "log.jsonl")}
    record = out_dir / "record.json"  # harness.pretrain's: its sanity figure {name, value, split, n} on held-out data
    if record.is_file() and (sanity := json.loads(record.read_text()).get("sanity")):
        metrics["sanity"] = sanity
    recon = out_dir / "reconstruction.png"
    extra = {"encoder": str(encoder), "encoder_sha256": provenance.file_sha256(encoder),
             "log_jsonl": str(out_dir / "log.jsonl"), "reconstruction": str(recon) if recon.is_file() else None}
    cost = out_dir / "cost.json"  # step time, images/s, data-wait share of the training loop (harness.pretrain.engine)
    if cost.is_file():
        extra["cost"] = json.loads(cost.read_text())
    resolve = getattr(sys.modules.get(fn.__module__), "resolve_recipe", None)  # harness.pretrain has one
    if resolve is not None:
        recipe = resolve(job.method, job.recipe, overrides, job.epochs)
    else:
        recipe = {"name": job.recipe, "method": job.method, "epochs": job.epochs}
    return metrics, recipe, extra


def nonfinite_metrics(metrics: dict[str, Any]) -> list[str]:
    """The metrics that are numbers but NaN or infinite: such a run measured nothing."""
    out = []
    for key, value in metrics.items():
        number = json_number(value)
        if isinstance(number, float) and not math.isfinite(number):
            out.append(f"{key}={number}")
    return out


def load_backbones(job: Job) -> None:
    """Registers the job's extra backbones here too: modules, and YAML files under their `name:`. Imports the registry
    (and torch with it) only when there are any."""
    modules, files = job.backbone_modules, job.backbone_files
    if not modules and not files:
        return
    from backbones.registry import load_backbone_module, load_backbone_yaml

    for module in modules:
        load_backbone_module(module)
    for file in files:
        load_backbone_yaml(file)
