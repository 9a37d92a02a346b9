"""Reading checkpoints safely and loading them into timm models with every key accounted for.

A checkpoint is untrusted input: `torch.load(weights_only=True)` or safetensors; full unpickling only when the caller
passes `allow_pickle=True` (`--trust-checkpoint`). After the format filter, the keys must match the model exactly,
except for the parts a fresh task head replaces (`head`, `fc_norm`) and the final norm that global average pooling
discards: the same contract as `assert set(msg.missing_keys) == {...}` in MAE's `main_finetune.py`.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.formats import StateDict, get_format
from backbones.registry import BackboneSpec, get_spec
from backbones.weights import WeightsError, cached_path, fetch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the backbone; the message names the file."""


def resolve_checkpoint(spec: BackboneSpec, checkpoint: str | Path | None) -> Path | None:
    """The local file to load: the caller's path or URL, else the spec's local file, else its cached URL."""
    source = checkpoint or spec.checkpoint
    if source is None and spec.url:
        source = spec.url
    if source is None:
        return None
    source = str(source)
    if re.match(r"^https?://", source):
        return _downloaded(spec, source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (backbone {spec.name!r})")
    _check_own_file(spec, path)
    return path


def _check_own_file(spec: BackboneSpec, path: Path) -> None:
    """The entry's own local file (the project's shipped tiny encoders) must have the entry's sha256."""
    from backbones.weights import file_sha256, hash_matches

    if not (spec.checkpoint and spec.sha256) or path.resolve() != Path(spec.checkpoint).expanduser().resolve():
        return
    digest = file_sha256(path)
    if not hash_matches(digest, spec.sha256.lower()):
        raise CheckpointError(
            f"{path} has sha256 {digest}, but backbone {spec.name!r} pins {spec.sha256}: the file was changed; "
            f"restore it, or remake it with the command in its record ({path.with_suffix('.json').name})"
        )


def _downloaded(spec: BackboneSpec, url: str) -> Path:
    """The cached file of `url`, downloaded once if missing; the entry's own url only when its hash can be checked."""
    dest = cached_path(url)
    if dest.is_file():
        return dest
    own = url == spec.url
    if own and not spec.sha256:
        raise CheckpointError(
            f"backbone {spec.name!r}: weights not in the cache ({dest}) and its publisher gives no sha256 to check a "
            f"download against; run `harness download {spec.name}` (with --sha256 HEX or --accept-sha256), "
            f"or pass --checkpoint {spec.name}=PATH (checkpoint=PATH)"
        )
    try:
        fetch(url, dest, spec.sha256 if own else None)
    except WeightsError as e:
        raise CheckpointError(
            f"{e}; fetch it on a machine with internet and pass it with --checkpoint PATH (checkpoint=PATH), "
            f"or place it at {dest}"
        ) from None
    return dest


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Mapping[str, Any]:
    """Reads a checkpoint file without executing code from it unless `allow_pickle`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors... by file damage
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e) and re.search(r"Unsupported global|GLOBAL", str(e)):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects beyond tensors and plain containers; loading it runs code "
                f"from the file, so it needs --trust-checkpoint (allow_pickle=True) if you trust its source"
            ) from None
        damaged = isinstance(e, EOFError | zipfile.BadZipFile) or "zip archive" in msg or "central directory" in msg
        if damaged:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {msg}") from None
        if "Weights only load failed" in msg:  # a pickle stream torch cannot parse: not a checkpoint at all
            raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint, or is corrupt") from None
        raise CheckpointError(f"checkpoint {path} is unreadable: {msg}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _has_params(model: nn.Module, name: str) -> bool:
    module = getattr(model, name, None)
    return isinstance(module, nn.Module) and any(True for _ in module.parameters())


def _fresh_modules(model: nn.Module) -> tuple[str, ...]:
    """Modules a task initialises afresh; a checkpoint may lack them."""
    return ("head", "fc_norm")


def _resample_pos_embed(sd: StateDict, model: nn.Module) -> None:
    """Resamples an absolute position embedding to the model's grid, keeping the prefix (class) tokens as they are."""
    from timm.layers import resample_abs_pos_embed

    pe = sd.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pe is None or not isinstance(target, torch.Tensor) or pe.shape == target.shape:
        return
    num_prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    old_tokens = pe.shape[1] - num_prefix
    old_side = int(round(old_tokens**0.5))
    if old_side * old_side != old_tokens or pe.shape[-1] != target.shape[-1]:
        return  # not a square grid of the same width: the shape check below reports it
    sd["pos_embed"] = resample_abs_pos_embed(
        pe, new_size=list(model.patch_embed.grid_size), old_size=[old_side, old_side], num_prefix_tokens=num_prefix
    )


def _resample_patch_embed(sd: StateDict, model: nn.Module) -> None:
    """A patch-embedding kernel of another size, resampled to the model's as ViTDet converted MAE ViT-H/14 to patch 16:
    bicubic interpolation of the kernel (`F.interpolate`, align_corners=False; not timm's pseudo-inverse
    `resample_patch_embed`). Only when the model was built with another patch size than the checkpoint's."""
    key = "patch_embed.proj.weight"
    own = model.state_dict().get(key)
    w = sd.get(key)
    if own is None or w is None or w.ndim != 4 or w.shape[:2] != own.shape[:2] or w.shape[2:] == own.shape[2:]:
        return
    sd[key] = F.interpolate(w.float(), size=tuple(own.shape[2:]), mode="bicubic", align_corners=False).to(w.dtype)


def _resize_rel_pos_tables(sd: StateDict, model: nn.Module) -> None:
    """BEiT's relative position bias tables, resized for another window (timm's own helper)."""
    from timm.layers import resize_rel_pos_bias_table

    own = model.state_dict()
    for k, v in list(sd.items()):
        if k.endswith("relative_position_bias_table") and k in own and v.shape != own[k].shape:
            attn = model.get_submodule(k.rsplit(".", 1)[0])
            sd[k] = resize_rel_pos_bias_table(v, new_window_size=attn.window_size, new_bias_shape=own[k].shape)


def load_state_dict_strict(model: nn.Module, sd: StateDict, source: str) -> dict[str, list[str]]:
    """Loads `sd` into `model`, allowing only the mismatches a fresh task head explains. Returns what was skipped."""
    own = model.state_dict()
    fresh = _fresh_modules(model)
    skipped: list[str] = []
    for k in list(sd):
        top = k.split(".", 1)[0]
        unused = k not in own and top in ("head", "fc_norm", "norm") and not _has_params(model, top)
        head_resized = k in own and top == "head" and sd[k].shape != own[k].shape
        if unused or head_resized:  # e.g. a 1000-way head into a 10-way model, `norm` under global average pooling
            skipped.append(k)
            del sd[k]
    missing = sorted(k for k in own if k not in sd and k.split(".", 1)[0] not in fresh)
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not match the model: {len(missing)} missing key(s) "
            f"{_preview(missing)}, {len(unexpected)} unexpected key(s) {_preview(unexpected)}"
        )
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"checkpoint {source} is for another architecture: {k} has shape {got}, the model expects {want}"
            + (f" ({len(bad) - 1} more mismatches)" if len(bad) > 1 else "")
        )
    result = model.load_state_dict(sd, strict=False)
    fresh_missing = sorted(result.missing_keys)
    return {"initialised_fresh": fresh_missing, "skipped": sorted(skipped)}


def _preview(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


def build_model(
    spec: BackboneSpec, img_size: int | None = None, pretrained: bool = False, **overrides: Any
) -> nn.Module:
    """The timm model of a spec, without weights unless `pretrained` (timm's own loading, for `timm:` entries).
    `num_classes` defaults to 0 (features only)."""
    import timm

    kwargs = {"num_classes": 0, **spec.arch_kwargs, **overrides}
    kwargs.setdefault("img_size", img_size or spec.img_size)
    if img_size:
        kwargs["img_size"] = img_size
    return timm.create_model(spec.arch, pretrained=pretrained, **kwargs)


def load_checkpoint(
    model: nn.Module, path: str | Path, checkpoint_format: str, allow_pickle: bool = False
) -> dict[str, list[str]]:
    """Reads `path`, converts it with the format's filter and loads it into `model` with every key accounted."""
    raw = read_checkpoint(path, allow_pickle=allow_pickle)
    sd = get_format(checkpoint_format)(raw)
    if not sd:
        raise CheckpointError(f"checkpoint {path} holds no tensors in the {checkpoint_format!r} layout")
    _resample_patch_embed(sd, model)
    _resample_pos_embed(sd, model)
    _resize_rel_pos_tables(sd, model)
    return load_state_dict_strict(model, sd, source=f"{path} (format {checkpoint_format!r})")


def create_backbone(
    name: str,
    checkpoint: str | Path | None = None,
    img_size: int | None = None,
    allow_pickle: bool = False,
    pretrained: bool = True,
    checkpoint_format: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """A timm model for a registered backbone (or a YAML file), with its weights loaded and every key accounted.

    A `timm:` entry without `checkpoint` is loaded by timm (`pretrained=True`: its filter, the Hugging Face hub cache).
    `checkpoint` (path or URL) replaces the entry's weights, read in the entry's format unless `checkpoint_format` names
    another; `pretrained=False` builds without any. The spec is kept on the model as `model.backbone_spec`, the loaded
    file as `model.checkpoint_path`.
    """
    spec = get_spec(name)
    if spec.timm_pretrained and pretrained and checkpoint is None:
        return _timm_pretrained(spec, img_size, **overrides)
    model = build_model(spec, img_size=img_size, **overrides)
    path = resolve_checkpoint(spec, checkpoint) if pretrained else None
    model.backbone_spec = spec
    model.checkpoint_path = str(path) if path else None
    if path is not None:
        fmt = checkpoint_format or spec.checkpoint_format
        model.load_report = load_checkpoint(model, path, fmt, allow_pickle=allow_pickle)
    return model


def _timm_pretrained(spec: BackboneSpec, img_size: int | None, **overrides: Any) -> nn.Module:
    """A `timm:` entry with timm's weights; timm resamples the position embedding and drops a head of another size."""
    try:
        model = build_model(spec, img_size=img_size, pretrained=True, **overrides)
    except (OSError, RuntimeError) as e:  # no network and nothing in the hub cache, or a file that does not fit
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"backbone {spec.name!r}: timm cannot load its pretrained weights ({msg}); run `harness download "
            f"{spec.name}` on a machine with internet (same HF_HOME), or pass --checkpoint {spec.name}=PATH"
        ) from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    model.backbone_spec = spec
    model.checkpoint_path = cfg.get("file") or (
        f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg.get("url")
    )
    model.load_report = {"loaded_by": ["timm"]}
    return model
