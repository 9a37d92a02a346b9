"""Training steps as the engines run them by default against the plain eager configuration, in one run.

"Default" is what `harness.pretrain` and the in1k task build from a recipe with `compile: auto`: `torch.compile` of
the model on CUDA (static shapes), fused AdamW and TF32 on CUDA, bf16 autocast on CUDA. "Eager" is the same model and
recipe with no compile and torch's default (foreach, unfused) AdamW. A step is what the loops do per batch: forward
under autocast, backward, optimizer step (MAE pretraining: `training_loss`; in1k fine-tuning: the classifier's
cross-entropy). Images are synthetic tensors already on the device: this measures compute, not the loader (the
training logs' `data_wait_share` says how much a real run waits for data).

    python benchmarks/engine_speed.py --device cpu                     # tiny MAE (32 px), tiny fine-tune, on CPU
    python benchmarks/engine_speed.py --device cpu --compile true      # does compile help on this CPU?
    python benchmarks/engine_speed.py --device cuda --arch mae_vit_large_patch16 --recipe mae_paper --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backbones.registry import get_spec  # noqa: E402
from harness.pretrain import build_method, build_optimizer, resolve_recipe  # noqa: E402
from tasks.training import autocast, compile_model, enable_tf32, fused_optimizer, resolve_compile  # noqa: E402

Step = Callable[[], None]


def mae_step(arch: str, recipe: str, batch: int, device: torch.device, engine: bool, compile_: str) -> Step:
    """One MAE pretraining step, the model and optimizer built as `harness.pretrain.pretrain` builds them."""
    cfg = resolve_recipe("mae", recipe)
    spec = get_spec(arch)
    torch.manual_seed(0)
    model = build_method("mae", spec, cfg).to(device).train()
    optimizer, _ = build_optimizer(model, cfg, batch, fused=engine and fused_optimizer(device))
    if engine:
        enable_tf32(device)
        compile_model(model, resolve_compile(_flag(compile_), device))
    imgs = torch.randn(batch, 3, spec.img_size, spec.img_size, device=device)
    amp = cfg.get("amp", "bf16")

    def step() -> None:
        _tf32(device, engine)
        with autocast(device, amp):
            loss = model.training_loss((imgs,), 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def finetune_step(arch: str, batch: int, device: torch.device, engine: bool, compile_: str) -> Step:
    """One in1k fine-tuning step: the registry's ViT (random weights: speed does not depend on them) with a
    1000-class head, AdamW over every parameter."""
    from backbones.checkpoint import build_model

    spec = get_spec(arch)
    torch.manual_seed(0)
    model = build_model(spec, num_classes=1000, global_pool="avg").to(device).train()
    kwargs = {"fused": True} if engine and fused_optimizer(device) else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **kwargs)
    if engine:
        enable_tf32(device)
        compile_model(model, resolve_compile(_flag(compile_), device))
    imgs = torch.randn(batch, 3, spec.img_size, spec.img_size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        _tf32(device, engine)
        with autocast(device, "bf16"):
            loss = F.cross_entropy(model(imgs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _tf32(device: torch.device, on: bool) -> None:
    """TF32 is a global switch: each configuration's steps set it as that configuration has it."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def _flag(value: str) -> str | bool:
    return {"true": True, "false": False}.get(value, value)


def images_per_s(steps: dict[str, Step], batch: int, device: torch.device, warmup: int, n: int,
                 rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median images/s of each configuration over `rounds` rounds of `n` steps, the configurations taking turns in
    every round, so that a machine whose load drifts (a shared CPU) weighs on both alike; and the seconds of each
    one's warmup steps (with compile: the compilation, which a short run pays once)."""
    warm: dict[str, float] = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):  # the first compiled steps compile
            step()
        _sync(device)
        warm[name] = time.perf_counter() - t0
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            _sync(device)
            rates[name].append(batch * n / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}, warm


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--arch", default=None, help="registry backbone (default: mae_vit_tiny_patch4 on CPU, "
                                                "mae_vit_base_patch16 on CUDA)")
    p.add_argument("--recipe", default=None, help="pretraining recipe for the MAE decoder (default: mae_tiny on CPU, "
                                                  "mae_paper on CUDA)")
    p.add_argument("--compile", default="auto", choices=("auto", "true", "false"), help="the engine side's recipe key")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on CPU, 256 on CUDA")
    p.add_argument("--warmup", type=int, default=None, help="default: 3 on CPU, 10 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="per round; default: 5 on CPU, 20 on CUDA")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, eager and engine taking turns")
    p.add_argument("--tasks", default="mae,finetune", help="comma-separated: mae, finetune")
    args = p.parse_args(argv)
    device, gpu = torch.device(args.device), args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    arch = args.arch or ("mae_vit_base_patch16" if gpu else "mae_vit_tiny_patch4")
    recipe = args.recipe or ("mae_paper" if gpu else "mae_tiny")
    batch, warmup, steps = args.batch or (256 if gpu else 64), args.warmup or (10 if gpu else 3), args.steps or (
        20 if gpu else 5)
    compiled = resolve_compile(_flag(args.compile), device)
    where = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{arch} on {where}, batch {batch}, torch {torch.__version__}; engine: compile={args.compile} "
          f"({'on' if compiled else 'off'}), fused AdamW {'on' if fused_optimizer(device) else 'off'}", flush=True)
    rows = []
    for task in args.tasks.split(","):
        if task == "mae":
            built = {k: mae_step(arch, recipe, batch, device, k == "engine", args.compile) for k in ("eager", "engine")}
        else:
            built = {k: finetune_step(arch, batch, device, k == "engine", args.compile) for k in ("eager", "engine")}
        speeds, warm = images_per_s(built, batch, device, warmup, steps, args.rounds)
        print(f"  {task}: eager {speeds['eager']:.1f} img/s, engine {speeds['engine']:.1f} img/s; {warmup} warmup "
              f"steps {warm['eager']:.1f} s eager, {warm['engine']:.1f} s engine", flush=True)
        del built
        torch._dynamo.reset()
        rows.append((task, speeds["eager"], speeds["engine"], speeds["engine"] / speeds["eager"]))
    print("\n| step | eager img/s | engine img/s | ratio |\n|---|---|---|---|")
    for task, eager, fast, ratio in rows:
        print(f"| {task} | {eager:.1f} | {fast:.1f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
