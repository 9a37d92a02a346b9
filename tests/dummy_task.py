"""A tiny deterministic task and pretraining for the runner's tests (as lm-evaluation-harness's dummy model).

`run(ctx)` follows the task contract of `tasks/__init__.py`: it takes `steps` steps of `sleep` seconds, saving its
step in `ctx.work_dir/state.json` after each one, and resumes from there when called again on the same folder, so a
worker killed mid-way resumes. It prints `step k/N` lines (the runner's progress reads them), fails on purpose for the
backbone named by `fail_on`, and under `ctx.launcher == 'pytorch'` joins a gloo process group and all-reduces its
rank. Its metric is a deterministic function of (backbone, protocol, seed). Recipes are YAML files passed by path.

`pretrain(...)` has the signature of `harness.pretrain.pretrain` and writes a stand-in encoder, `log.jsonl` and
`reconstruction.png`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tasks import TaskContext, TaskResult

DEFAULTS = {"version": 1, "steps": 3, "sleep": 0.0, "fail_on": None, "metric": "top1", "base": 50.0}


def _recipe(ctx: TaskContext) -> dict[str, Any]:
    from tasks.recipes import apply_overrides, load_recipe

    if str(ctx.recipe).endswith((".yaml", ".yml")):
        return load_recipe("dummy", ctx.recipe, ctx.overrides)
    return apply_overrides({**DEFAULTS, "name": ctx.recipe}, ctx.overrides, "the dummy task's defaults")


def score(backbone: str, protocol: str | None, seed: int, base: float) -> float:
    """A deterministic number in [base, base + 10) for a setting."""
    h = hashlib.sha256(f"{backbone}|{protocol}|{seed}".encode()).digest()
    return base + h[0] / 25.6


def _all_reduce_rank() -> tuple[int, float]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        return dist.get_world_size(), float(t.item())
    finally:
        dist.destroy_process_group()


def run(ctx: TaskContext) -> TaskResult:
    recipe = {**DEFAULTS, **_recipe(ctx)}
    state_file = Path(ctx.work_dir) / "state.json"
    start = json.loads(state_file.read_text())["step"] if state_file.is_file() else 0
    print(f"dummy task: {ctx.backbone} protocol {ctx.protocol} seed {ctx.seed}, resuming from step {start}", flush=True)
    if recipe["fail_on"] == ctx.backbone:
        raise RuntimeError(f"dummy failure for {ctx.backbone}")
    for step in range(start, int(recipe["steps"])):
        time.sleep(float(recipe["sleep"]))
        if os.environ.get("RANK", "0") == "0":  # as the real tasks, rank 0 alone checkpoints
            tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"step": step + 1}))
            os.replace(tmp, state_file)
        print(f"step {step + 1}/{recipe['steps']}", flush=True)
    metrics = {recipe["metric"]: score(ctx.backbone, ctx.protocol, ctx.seed, float(recipe["base"])),
               "resumed_from": start}
    if ctx.launcher == "pytorch":
        metrics["world_size"], metrics["rank_sum"] = _all_reduce_rank()
    extra = {"pid": os.getpid(), "checkpoint": ctx.checkpoint, "data_root": str(ctx.data_root),
             "omp_threads": os.environ.get("OMP_NUM_THREADS"), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return TaskResult(metrics=metrics, recipe=recipe, extra=extra)


def pretrain(method: str, backbone: str, out_dir: str | Path, epochs: int | None = None, seed: int = 0,
             data_root: str | Path | None = None, recipe: str | None = None, overrides: dict | None = None,
             progress: bool = True, device: str | None = None) -> Path:
    """A stand-in pretraining: an 'encoder' file determined by its arguments, a loss log and a picture."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = epochs or 2
    time.sleep(float((overrides or {}).get("sleep", 0.0)))
    with open(out_dir / "log.jsonl", "w") as log:
        for step in range(4 * epochs):
            loss = 1.0 / (1 + step) + (0.1 if method == "mae" else 0.2)
            log.write(json.dumps({"epoch": step // 4, "step": step, "loss": loss, "lr": 1e-3}) + "\n")
    if method == "mae":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        plt.imsave(out_dir / "reconstruction.png", np.linspace(0, 1, 64).reshape(8, 8), cmap="gray")
    encoder = out_dir / "encoder.pth"
    setting = json.dumps(overrides or {}, sort_keys=True)  # a sweep's settings make different encoders
    encoder.write_bytes(f"{method}|{backbone}|{epochs}|{seed}|{setting}".encode())
    return encoder
