"""Pretraining: MAE (He et al. 2021) and the two baselines of its tables, supervised (DeiT-style) and MoCo v3, on the
registry's timm ViTs. Every method exports the same file, `encoder.pth` = `{'model': encoder state dict in timm names,
'meta': {...}}`, which `backbones.create_backbone(name, checkpoint=path)` loads with every key accounted.

`pretrain()` is the orchestrator: resolve the recipe, build the method and its data, run the shared loop
(`harness.pretrain.engine`, which resumes an interrupted run), export, and for MAE draw the reconstruction figure.
torch is imported on first use, so that `harness pretrain --help` stays fast.
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbones.yamlio import yaml11_float

if TYPE_CHECKING:
    import torch

METHODS: dict[str, str] = {
    "mae": "harness.pretrain.mae",
    "supervised": "harness.pretrain.supervised",
    "mocov3": "harness.pretrain.moco",
}
ENCODER = "encoder.pth"
RECONSTRUCTION = "reconstruction.png"


def resolve_recipe(
    method: str, recipe: str | None = None, overrides: dict[str, Any] | None = None, epochs: int | None = None
) -> dict[str, Any]:
    """The recipe as used: `tasks/recipes/pretrain/<name>.yaml` with overrides, `epochs` replacing the recipe's."""
    from tasks.recipes import load_recipe

    if method not in METHODS:
        from backbones.registry import unknown_name_error

        raise unknown_name_error("pretraining method", method, sorted(METHODS))
    cfg = _exponent_floats(load_recipe("pretrain", recipe or f"{method}_tiny", overrides))
    if cfg.get("method") != method:
        raise ValueError(f"recipe {cfg['name']!r} is for method {cfg.get('method')!r}, not {method!r}")
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        cfg["epochs"] = epochs
    return cfg


def _exponent_floats(node: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; recipes and `--set optim.base_lr=1e-3` mean a number."""
    if isinstance(node, dict):
        return {k: _exponent_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_exponent_floats(v) for v in node]
    return yaml11_float(node)


def build_method(method: str, spec: Any, recipe: dict[str, Any]) -> torch.nn.Module:
    """The method's module: `training_loss(batch, epoch_frac)`, `encoder_state_dict()`, `no_weight_decay()`, and
    optionally `decay_every_parameter = True`."""
    return importlib.import_module(METHODS[method]).build(spec, recipe)


def build_optimizer(
    model: torch.nn.Module, recipe: dict[str, Any], eff_batch: int, fused: bool = False
) -> tuple[Any, float]:
    """AdamW over the trainable parameters with each method's reference weight decay; the absolute lr is
    `base_lr * eff_batch / 256` (MAE's linear scaling rule).

    * MAE (`main_pretrain.py`: timm's `add_weight_decay` with an empty skip list): no decay on 1-D parameters and
      biases only; `cls_token` and `mask_token` are decayed, the sin-cos position embeddings are frozen.
    * supervised (DeiT `main.py`: timm's `create_optimizer`, skip list `model.no_weight_decay()`): no decay on 1-D
      parameters, biases, `cls_token` and `pos_embed`.
    * MoCo v3 (`main_moco.py`: `AdamW(model.parameters(), weight_decay=...)` for ViTs): every trainable parameter is
      decayed, biases and norms included (its frozen patch projection and sin-cos positions are not trained).

    `fused` (CUDA only, `tasks.training.fused_optimizer`): torch's single-kernel AdamW, the same update.
    """
    import torch
    from timm.optim import param_groups_weight_decay

    opt = recipe["optim"]
    lr = opt["base_lr"] * eff_batch / 256
    if getattr(model, "decay_every_parameter", False):
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": opt["weight_decay"]}]
    else:
        groups = param_groups_weight_decay(model, opt["weight_decay"], no_weight_decay_list=model.no_weight_decay())
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt["betas"]), fused=fused or None), lr


def speed_up(model: torch.nn.Module, method: str, recipe: dict[str, Any], device: torch.device) -> bool:
    """TF32 on CUDA, and `torch.compile` of the method's forward as the recipe's `compile` says. MoCo v3 stays eager
    (its momentum, a new float every step, would recompile a static graph each step). Returns whether compiled."""
    from tasks.training import compile_model, enable_tf32, resolve_compile

    enable_tf32(device)
    value = recipe.get("compile", "auto")
    on = resolve_compile(value, device)
    if on and method == "mocov3":
        if value is True:
            raise ValueError("recipe key compile=true: mocov3 pretraining cannot be compiled (use auto or false)")
        on = False
    compile_model(model, on)
    return on


def _settings(method: str, backbone: str, seed: int, data: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run (device, progress bars and `compile` do not)."""
    recipe = {k: v for k, v in recipe.items() if k != "compile"}
    return {"method": method, "backbone": backbone, "seed": seed, "data": data, "recipe": recipe}


def _done(path: Path, settings: dict[str, Any]) -> bool:
    import torch

    if not path.is_file():
        return False
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
    except Exception:  # a damaged export is redone
        return False
    return meta.get("settings") == settings


def pretrain(
    method: str,
    backbone: str,
    out_dir: Path,
    epochs: int | None = None,
    seed: int = 0,
    data_root: Path | None = None,
    recipe: str | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    """Pretrains `backbone` with `method` ('mae', 'supervised', 'mocov3') and returns `out_dir/encoder.pth`.

    `recipe` defaults to `<method>_tiny` (Fashion-MNIST); `data_root` None means Fashion-MNIST, else an ImageNet-layout
    folder (`train/<class>/*`). A second call with the same settings returns at once; an interrupted one resumes.
    Beside the encoder, `record.json` (`harness.pretrain.record`) holds the command, budget and sanity figure.
    """
    from backbones.registry import get_spec
    from backbones.weights import file_sha256
    from harness.pretrain import data, record

    out_dir = Path(out_dir)
    cfg = resolve_recipe(method, recipe, overrides, epochs)
    spec = get_spec(backbone)
    source = "fashion-mnist" if data_root is None or str(data_root) == data.FASHION_MNIST else str(data_root)
    if source == "fashion-mnist" and cfg["data"].get("source") == "folder":
        raise ValueError(f"recipe {cfg['name']!r} trains on an ImageNet-layout folder: pass data_root (--data DIR)")
    settings = _settings(method, backbone, seed, source, cfg)
    export = out_dir / ENCODER
    if not _done(export, settings):
        model = _train_and_export(method, spec, cfg, source, seed, settings, out_dir, progress, device)
    elif not record.current(out_dir / record.RECORD, file_sha256(export)):
        model = _reloaded(method, spec, cfg, out_dir)  # a run finished before its record was written
    else:
        return export
    _write_record(method, backbone, cfg, seed, source, epochs, overrides or {}, out_dir, model)
    return export


def _train_and_export(method: str, spec: Any, cfg: dict[str, Any], source: str, seed: int, settings: dict[str, Any],
                      out_dir: Path, progress: bool, device: str | None) -> torch.nn.Module:
    """Trains (or resumes), writes `encoder.pth` (and MAE's reconstruction figure); returns the trained module."""
    import torch

    from harness.pretrain import data, engine
    from tasks.training import atomic_save, fused_optimizer, seed_everything

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed_everything(seed)  # torch's generator as before; Python's and NumPy's too (timm's folder transforms)
    model = build_method(method, spec, cfg).to(dev)
    loader = data.build_loader(cfg, None if source == "fashion-mnist" else Path(source), spec.mean, spec.std, seed, dev)
    opt = cfg["optim"]
    eff_batch = cfg["data"]["batch_size"] * opt.get("accum_iter", 1)
    optimizer, lr = build_optimizer(model, cfg, eff_batch, fused=fused_optimizer(dev))
    speed_up(model, method, cfg, dev)
    loop = engine.LoopConfig(
        epochs=cfg["epochs"], accum_iter=opt.get("accum_iter", 1), checkpoint_every=cfg.get("checkpoint_every", 1),
        clip_grad=opt.get("clip_grad"), amp=cfg.get("amp", "bf16"),
    )
    schedule = engine.Schedule(lr, cfg["epochs"], opt.get("warmup_epochs", 0), opt.get("min_lr", 0.0))
    losses = engine.train(model, model.training_loss, loader, optimizer, schedule, loop, out_dir, settings, dev,
                          progress=progress)
    meta = {
        "method": method, "backbone": settings["backbone"], "epochs": cfg["epochs"], "recipe": cfg["name"],
        "recipe_version": cfg["version"], "seed": seed, "data": source, "lr": lr, "eff_batch_size": eff_batch,
        "last_epoch_loss": losses[-1] if losses else None, "device": str(dev), "torch": str(torch.__version__),
        "python": platform.python_version(), "settings": settings,
    }
    # no wall time in meta (record.json has it): the same pretraining writes the same bytes, so the sha256 that
    # identifies the runs built on it stays the same when it is run again
    atomic_save({"model": model.encoder_state_dict(), "meta": meta}, out_dir / ENCODER)
    if method == "mae":
        from harness.pretrain.reconstruction import save_figure

        images = data.validation_images(cfg, None if source == "fashion-mnist" else Path(source), spec.mean, spec.std)
        save_figure(model, images, spec.mean, spec.std, out_dir / RECONSTRUCTION, seed=seed)
    return model


def _reloaded(method: str, spec: Any, cfg: dict[str, Any], out_dir: Path) -> torch.nn.Module | None:
    """The method's module of a finished run, from its last checkpoint (None when that is gone)."""
    import torch

    from harness.pretrain.engine import CHECKPOINT

    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    model = build_method(method, spec, cfg)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model


def _write_record(method: str, backbone: str, cfg: dict[str, Any], seed: int, source: str, epochs: int | None,
                  overrides: dict[str, Any], out_dir: Path, model: torch.nn.Module | None) -> None:
    """`out_dir/record.json`, with the sanity figure measured on `model` (None: no figure)."""
    import torch

    from backbones.registry import get_spec
    from backbones.weights import file_sha256
    from harness.pretrain import record, sanity

    digest = file_sha256(out_dir / ENCODER)
    spec = get_spec(backbone)
    figure = sanity.measure(method, model, cfg, spec.mean, spec.std) if model is not None else None
    device = str(next(model.parameters()).device.type) if model is not None else "cpu"
    rec = record.build(method=method, backbone=backbone, cfg=cfg, seed=seed, threads=torch.get_num_threads(),
                       device=device, source=source, epochs=epochs, overrides=overrides, out_dir=out_dir,
                       encoder_sha256=digest, sanity=figure, torch_version=str(torch.__version__))
    record.write(out_dir / record.RECORD, rec)


__all__ = ["METHODS", "build_method", "pretrain", "resolve_recipe"]
