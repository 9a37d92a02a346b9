"""What the mmengine-based tasks (COCO detection, ADE20K segmentation) share: the backbone and optimizer parts of their
configs, the runtime part (work_dir, resume, launcher, hooks), and building the Runner with the fixes applied.

Stable interface for `tasks.detection` and `tasks.segmentation`; change a signature here only together with both:

* `CUSTOM_IMPORTS`, `import_adapter()`
* `use_cuda(device)`, `world_size(launcher)`, `per_gpu_batch(total, launcher, key)`
* `backbone_cfg(ctx, img_size, pyramid, drop_path_rate, window_size, global_blocks, taps, scale_factors, rel_pos)`
* `data_preprocessor_stats(backbone)`
* `optim_wrapper_cfg(optimizer, layer_decay, device, clip_grad=None, decay_rule='mmseg')`,
  `poly_schedule(warmup_iters, max_iters, ...)`
* `runtime_cfg(ctx, scope, max_iters, val_interval, checkpoint_interval, log_interval)`
* `latest_checkpoint(work_dir)`, `build_runner(cfg, work_dir)`, `train_and_validate(runner) -> dict`,
  `cudnn_benchmark_off_in_eval()`
* `nonfinite_loss_hook()` (every runner of `build_runner` has it)

Configs are plain dicts of registered type names (mmengine 0.10.7 cannot dump a config holding class objects: yapf
raises `SyntaxError: Failed to format the config file`), with
`custom_imports` written in; the adapter is also imported here before building, because `Runner.from_cfg` on a dict
ignores `custom_imports`.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import NonFiniteLoss, TaskContext

if TYPE_CHECKING:
    from tasks.cost import CostMeter

CUSTOM_IMPORTS = dict(imports=["backbones.mm"], allow_failed_imports=False)
LAUNCHERS = ("none", "pytorch", "slurm")


def import_adapter() -> None:
    """Registers `HarnessViT` and the layer-decay constructor, and applies `backbones.mm.compat`."""
    import backbones.mm  # noqa: F401


def use_cuda(device: str) -> bool:
    """True for a CUDA device; 'cuda' asked without a GPU is an error rather than a silent CPU run."""
    if not device.startswith("cuda"):
        return False
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
    return True


def world_size(launcher: str) -> int:
    """Processes of the run, read from the launcher's environment (torchrun: WORLD_SIZE; slurm: SLURM_NTASKS)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    if launcher == "pytorch":
        return int(os.environ.get("WORLD_SIZE", 1))
    if launcher == "slurm":
        return int(os.environ.get("SLURM_NTASKS", 1))
    return 1


def per_gpu_batch(total: int, launcher: str, key: str = "data.batch_size") -> int:
    """The per-process batch of a recipe's total batch; it must divide evenly, so the recipe's batch is the batch."""
    n = world_size(launcher)
    if total % n:
        raise ValueError(f"recipe {key}={total} is not divisible by the {n} processes of this run")
    return total // n


def data_preprocessor_stats(backbone: str) -> dict[str, list[float]]:
    """The backbone's normalisation on the 0..255 scale mm data preprocessors use."""
    from backbones.registry import get_spec

    spec = get_spec(backbone)
    return dict(mean=[255.0 * m for m in spec.mean], std=[255.0 * s for s in spec.std])


def backbone_cfg(
    ctx: TaskContext,
    img_size: tuple[int, int] | list[int],
    pyramid: str = "taps",
    drop_path_rate: float = 0.1,
    window_size: int = 0,
    global_blocks: tuple[int, ...] | list[int] = (),
    taps: list[int] | None = None,
    scale_factors: tuple[float, ...] | list[float] | None = None,
    rel_pos: str | None = None,
    window_pos: str = "interpolate",
    frozen: bool = False,
) -> dict[str, Any]:
    """The `HarnessViT` config of the run's backbone, with the run's checkpoint and trust setting; `frozen` (recipe
    key `model.freeze_backbone`) keeps the encoder's weights as loaded and out of the optimizer."""
    cfg = dict(
        type="HarnessViT",
        backbone=ctx.backbone,
        checkpoint=str(ctx.checkpoint) if ctx.checkpoint else None,
        img_size=tuple(int(s) for s in img_size),
        pyramid=pyramid,
        taps=list(taps) if taps is not None else None,
        drop_path_rate=float(drop_path_rate),
        window_size=int(window_size),
        global_blocks=tuple(global_blocks),
        rel_pos=rel_pos or None,
        window_pos=window_pos,
        allow_pickle=bool(ctx.allow_pickle),
        frozen=bool(frozen),
    )
    if scale_factors is not None:
        cfg["scale_factors"] = tuple(float(s) for s in scale_factors)
    return cfg


def optim_wrapper_cfg(
    optimizer: dict[str, Any],
    layer_decay: float | None,
    device: str,
    clip_grad: dict[str, Any] | None = None,
    decay_rule: str = "mmseg",
) -> dict[str, Any]:
    """bf16 autocast (`AmpOptimWrapper`) on CUDA, a plain `OptimWrapper` on CPU (AmpOptimWrapper asserts CUDA);
    layer-wise lr decay through `HarnessLayerDecayOptimizerConstructor` when `layer_decay` is set, with the weight
    decay and layer ids of `decay_rule` ('mmseg': ADE20K's reference, 'detectron2': COCO's; `backbones.mm`)."""
    cfg: dict[str, Any] = dict(type="OptimWrapper", optimizer=dict(optimizer))
    if use_cuda(device):
        cfg.update(type="AmpOptimWrapper", dtype="bfloat16")
    if clip_grad:
        cfg["clip_grad"] = dict(clip_grad)
    if layer_decay is not None:
        cfg["constructor"] = "HarnessLayerDecayOptimizerConstructor"
        cfg["paramwise_cfg"] = dict(layer_decay_rate=float(layer_decay), decay_rule=decay_rule)
    return cfg


def poly_schedule(warmup_iters: int, max_iters: int, power: float = 1.0, eta_min: float = 0.0) -> list[dict]:
    """Linear warmup, then polynomial decay to `eta_min` (the BEiT / MAE ADE20K schedule)."""
    warmup_iters = min(int(warmup_iters), int(max_iters))
    schedule = []
    if warmup_iters > 0:
        schedule.append(dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters))
    if max_iters > warmup_iters:
        schedule.append(
            dict(type="PolyLR", eta_min=eta_min, power=power, by_epoch=False, begin=warmup_iters, end=max_iters)
        )
    return schedule


def runtime_cfg(
    ctx: TaskContext, scope: str, max_iters: int, val_interval: int, checkpoint_interval: int, log_interval: int = 50
) -> dict[str, Any]:
    """Work dir, launcher, seed, iteration-based loops, hooks and resume: everything but model, data and optimizer.

    Each Runner gets its own `experiment_name` (in mmengine 0.10.7 the default, a timestamp to the second, is also the
    key of its default scope, so an mmdet and an mmseg runner made in the same second would share one).
    """
    world_size(ctx.launcher)  # validates the name
    return dict(
        default_scope=scope,
        custom_imports=CUSTOM_IMPORTS,
        work_dir=str(ctx.work_dir),
        experiment_name=f"{scope}-{time.strftime('%Y%m%d_%H%M%S')}-{uuid.uuid4().hex[:8]}",
        launcher=ctx.launcher,
        randomness=dict(seed=int(ctx.seed)),
        env_cfg=dict(
            cudnn_benchmark=use_cuda(ctx.device),
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl" if use_cuda(ctx.device) else "gloo"),
        ),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=int(max_iters), val_interval=int(val_interval)),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=int(log_interval), log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(
                type="CheckpointHook",
                by_epoch=False,
                interval=int(checkpoint_interval),
                max_keep_ckpts=1,
                save_last=True,
            ),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),  # fmt: skip
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        load_from=None,
        resume=True,  # from the latest checkpoint in work_dir, when there is one
    )


def latest_checkpoint(work_dir: str | Path) -> str | None:
    """The checkpoint a Runner on `work_dir` resumes from (mmengine's `last_checkpoint` file), or None."""
    from mmengine.runner import find_latest_checkpoint

    path = find_latest_checkpoint(str(work_dir)) if Path(work_dir).is_dir() else None
    return path if path and Path(path).is_file() else None


def nonfinite_loss_hook() -> Any:
    """An mmengine hook that stops training at the first iteration whose loss is not finite, raising
    `tasks.NonFiniteLoss` with the iteration and the loss (mmengine would go on and validate a NaN model)."""
    from mmengine.hooks import Hook

    class NonFiniteLossHook(Hook):
        priority = "VERY_HIGH"

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            loss = (outputs or {}).get("loss")
            value = float(loss) if loss is not None else 0.0
            if not math.isfinite(value):
                raise NonFiniteLoss(runner.iter + 1, value)

    return NonFiniteLossHook()


def build_runner(cfg: dict[str, Any], work_dir: str | Path) -> Any:
    """An mmengine Runner from a config dict, stopping at a non-finite loss; checkpoints under `work_dir` (the run's
    own) may be unpickled."""
    import_adapter()
    from mmengine.config import Config
    from mmengine.runner import Runner

    from backbones.mm.compat import trust_checkpoint_dir

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    trust_checkpoint_dir(work_dir)
    runner = Runner.from_cfg(Config(cfg, format_python_code=False))  # yapf formatting costs seconds per runner
    runner.register_hook(nonfinite_loss_hook())
    return runner


def attach_cost_meter(runner: Any, device: str) -> CostMeter:
    """A `CostMeter` fed by the runner's training and validation steps (`extra["cost"]` of the result)."""
    from tasks.cost import CostMeter, cost_hook

    meter = CostMeter("cuda" if use_cuda(device) else "cpu")
    runner.register_hook(cost_hook(meter))
    return meter


def cudnn_benchmark_off_in_eval() -> Any:
    """A hook that turns `torch.backends.cudnn.benchmark` off while validating or testing, and back after.

    Training runs under bf16 autocast, evaluation in fp32 (mmengine's `ValLoop` default). With benchmarking on, cuDNN
    times every fp32 convolution algorithm the first time it sees a shape, FFT ones included, each with a workspace
    as large as the free GPU memory allows (the UPerHead's 3x3 convs at stride 4, e.g. 768 -> 768 channels on a 128 x
    128 map, ask for tens of GB): the evaluation's peak then grows with the GPU rather than with the model. cuDNN's
    heuristics pick an algorithm without that search. The features do not depend on the choice beyond float rounding.
    """
    from mmengine.hooks import Hook

    class CudnnBenchmarkOffInEval(Hook):
        priority = "VERY_HIGH"

        def __init__(self) -> None:
            self.saved: bool | None = None

        def _off(self, runner: Any) -> None:
            import torch

            self.saved = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = False

        def _restore(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
            import torch

            if self.saved is not None:
                torch.backends.cudnn.benchmark, self.saved = self.saved, None

        before_val = before_test = _off
        after_val = after_test = _restore

    return CudnnBenchmarkOffInEval()


def train_and_validate(runner: Any) -> dict[str, float]:
    """Trains (resuming when work_dir holds a checkpoint) and returns the last validation's metrics; a run that was
    already complete is only validated. Evaluation runs without cuDNN's benchmark search
    (`cudnn_benchmark_off_in_eval`).

    mmengine's iteration and epoch loops both validate after their last iteration or epoch, whatever the interval, so
    a call that trained has validated the final model; only a call that had nothing left to train validates here."""
    from mmengine.hooks import Hook

    class LastMetricsHook(Hook):
        priority = "LOWEST"

        def __init__(self) -> None:
            self.metrics: dict[str, float] | None = None

        def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
            self.metrics = dict(metrics or {})

    hook = LastMetricsHook()
    runner.register_hook(hook)
    runner.register_hook(cudnn_benchmark_off_in_eval())
    runner.train()
    if hook.metrics is None:
        hook.metrics = dict(runner.val())
    return {k: float(v) for k, v in hook.metrics.items()}
