"""Checkpoint formats: one pure `state_dict -> state_dict` filter per source, turning its keys into timm's.

Each filter unwraps its container, renames keys and drops exactly the parts that are not the backbone (decoders,
momentum encoders, projection and prediction heads). It never resamples or guesses: `backbones.checkpoint` then
accounts for every remaining key against the model, so a format whose keys drift fails loudly instead of loading
half a network (the `strict=False` failure of most detection and segmentation codebases).

Layouts follow the released code of each method:
* MAE (facebookresearch/mae `main_pretrain.py`): `{'model': encoder}` in timm names; full pretraining checkpoints
  also hold `decoder_*` and `mask_token`.
* timm / DeiT: a bare dict or `{'model': ...}`; DeiT III's `gamma_1/2` are timm's `ls1/ls2.gamma`.
* MoCo v3 (facebookresearch/moco-v3 `main_moco.py`): `{'state_dict': {'module.base_encoder.*',
  'module.momentum_encoder.*', 'module.predictor.*'}}`, the projection MLP being `base_encoder.head`.
* DINO (facebookresearch/dino): the released backbone as a bare dict, or a training checkpoint with `teacher`/`student`
  whose keys start with `backbone.` (and `module.` for the student), next to the DINO head.
* BEiT (microsoft/unilm): `{'model': ...}` with `q_bias`/`v_bias`, `gamma_1/2`, relative position bias tables per block
  or one shared `rel_pos_bias` table, and the pretraining `lm_head` and `mask_token`.
* mmpretrain / mmselfsup: `{'state_dict': {'backbone.*', 'neck.*', 'head.*'}}` with `layers.i.ln1`, `ffn.layers.0.0`,
  `patch_embed.projection` and the final norm as `ln1`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from backbones.spec import unknown_name_error

StateDict = dict[str, torch.Tensor]
FormatFilter = Callable[[Mapping[str, Any]], StateDict]
FORMATS: dict[str, FormatFilter] = {}


def checkpoint_format(fn: FormatFilter) -> FormatFilter:
    """Registers a filter under its function name (the value of `BackboneSpec.checkpoint_format`)."""
    if fn.__name__ in FORMATS:
        raise ValueError(f"checkpoint format {fn.__name__!r} is already registered")
    FORMATS[fn.__name__] = fn
    return fn


def get_format(name: str) -> FormatFilter:
    if name not in FORMATS:
        raise unknown_name_error("checkpoint format", name, sorted(FORMATS))
    return FORMATS[name]


def _unwrap(ckpt: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """The first of `keys` that holds a dict, else the checkpoint itself (a bare state dict)."""
    for key in keys:
        inner = ckpt.get(key)
        if isinstance(inner, Mapping):
            return inner
    return ckpt


def _tensors(sd: Mapping[str, Any]) -> StateDict:
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys under `prefix` with the prefix removed; every other key is dropped."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _drop(sd: Mapping[str, torch.Tensor], pattern: str) -> StateDict:
    rx = re.compile(pattern)
    return {k: v for k, v in sd.items() if not rx.search(k)}


@checkpoint_format
def mae(ckpt: Mapping[str, Any]) -> StateDict:
    sd = _tensors(_unwrap(ckpt, "model"))
    return _drop(sd, r"^(decoder_|mask_token$)")


@checkpoint_format
def harness(ckpt: Mapping[str, Any]) -> StateDict:
    """The project's own pretraining output (`harness.pretrain`): the official MAE layout plus a `meta` entry."""
    return mae(ckpt)


@checkpoint_format
def timm(ckpt: Mapping[str, Any]) -> StateDict:
    sd = _tensors(_unwrap(ckpt, "model", "state_dict"))
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(blocks\.\d+)\.gamma_(\d)$", r"\1.ls\2.gamma", k)  # DeiT III layer scale
        out[k] = v
    return _drop(out, r"^(dist_token$|head_dist\.)")  # DeiT distillation token and head


@checkpoint_format
def mocov3(ckpt: Mapping[str, Any]) -> StateDict:
    sd = _tensors(_unwrap(ckpt, "state_dict"))
    prefix = "module.base_encoder." if any(k.startswith("module.") for k in sd) else "base_encoder."
    return _drop(_strip(sd, prefix), r"^head\.")  # base_encoder.head is the projection MLP


@checkpoint_format
def dino(ckpt: Mapping[str, Any]) -> StateDict:
    sd = _tensors(_unwrap(ckpt, "teacher", "student", "state_dict", "model"))  # the teacher is what DINO evaluates
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        sd = _strip(sd, "backbone.")
    return _drop(sd, r"^head\.")


@checkpoint_format
def beit(ckpt: Mapping[str, Any]) -> StateDict:
    sd = _tensors(_unwrap(ckpt, "model", "module", "state_dict"))
    sd = _drop(sd, r"(^lm_head\.|^mask_token$|relative_position_index$)")
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:  # pretraining shares one table; fine-tuning gives each block a copy (unilm/beit)
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        for i in range(depth):
            sd.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    return sd


_MMPRETRAIN_RENAMES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attn\.gamma1\.weight$", r"blocks.\1.ls1.gamma"),
    (r"^layers\.(\d+)\.attn\.", r"blocks.\1.attn."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.ffn\.gamma2\.weight$", r"blocks.\1.ls2.gamma"),
    (r"^ln1\.", "norm."),  # mmpretrain's final norm
]


@checkpoint_format
def mmpretrain(ckpt: Mapping[str, Any]) -> StateDict:
    sd = _strip(_tensors(_unwrap(ckpt, "state_dict")), "backbone.")
    out = {}
    for k, v in sd.items():
        for pattern, repl in _MMPRETRAIN_RENAMES:
            k, n = re.subn(pattern, repl, k)
            if n:
                break
        out[k] = v
    return out
