"""Layer-wise lr decay (BEiT, Bao et al. 2021; the MAE paper's fine-tuning) for a model holding one `HarnessViT`: the
layer id and weight-decay rule of every parameter, as the reference code of each task computes them, and the mmengine
optimizer-wrapper constructor that turns them into parameter groups (as facebookresearch/mae's `util/lr_decay.py` does
for classification). Registered in mmengine's root `OPTIM_WRAPPER_CONSTRUCTORS` by `import backbones.mm`.
"""

from __future__ import annotations

from typing import Any

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from backbones.mm.vit import HarnessViT

DECAY_RULES = ("mmseg", "detectron2")  # weight-decay and layer-id rules of `HarnessLayerDecayOptimizerConstructor`


def _find_harness_vit(model: nn.Module) -> tuple[str, HarnessViT]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, HarnessViT)]
    if len(found) != 1:
        raise ValueError(
            f"HarnessLayerDecayOptimizerConstructor needs a model with exactly one HarnessViT backbone, "
            f"found {len(found)} in {type(model).__name__}"
        )
    return found[0]


def _vit_prefix(model: nn.Module) -> tuple[str, HarnessViT]:
    prefix, backbone = _find_harness_vit(model)
    return (f"{prefix}.vit." if prefix else "vit."), backbone


def _layer_id(local: str | None, depth: int, rule: str) -> int:
    """Layer id of a parameter named `local` inside the ViT (None: outside it) under a reference's rule:
    embeddings 0, block i at i + 1, everything else (final norms, shared tables, pyramid, neck, heads) at L + 1.

    * 'mmseg' (`mmseg/engine/optimizers/layer_decay_optimizer_constructor.py`, `get_layer_id_for_vit`; BEiT's
      `semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py` the same): `cls_token`, `mask_token`,
      `pos_embed` and `patch_embed.*` are 0.
    * 'detectron2' (`detectron2/modeling/backbone/vit.py`, `get_vit_lr_decay_rate`): only `pos_embed` and
      `patch_embed.*` are 0; a class token (ViTDet has none) would train at the full lr.
    """
    if local is None:
        return depth + 1
    embeddings = ("pos_embed",) if rule == "detectron2" else ("cls_token", "mask_token", "pos_embed")
    if local in embeddings or local.startswith("patch_embed."):
        return 0
    if local.startswith("blocks."):
        return int(local.split(".")[1]) + 1
    return depth + 1


# detectron2 `get_default_optimizer_params`: the module types whose parameters take `weight_decay_norm`.
_TORCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
                nn.LocalResponseNorm)  # fmt: skip


def _no_decay_mmseg(name: str, param: nn.Parameter) -> bool:
    """mmseg's `LearningRateDecayOptimizerConstructor.add_params`: 1-D parameters and `.bias` are not decayed. Its
    exemption of `name in ('pos_embed', 'cls_token')` tests the segmentor's full names (`backbone.pos_embed`), so it
    never matches: the class token, the position embedding and the relative position bias tables are decayed."""
    return param.ndim == 1 or name.endswith(".bias")


def _no_decay_detectron2(local: str, owner: nn.Module, in_vit: bool) -> bool:
    """ViTDet's `configs/common/optim.py` AdamW (`weight_decay_norm=0.0`) with the COCO configs'
    `overrides={"pos_embed": {"weight_decay": 0.0}}` through `get_default_optimizer_params`: only parameters of torch
    norm modules and `pos_embed` are not decayed; biases (`weight_decay_bias` unset), rel-pos tables and tokens are.
    ViTDet builds every LayerNorm outside the ViT (pyramid, FPN convs, box and mask heads) from detectron2's own
    `LayerNorm`, which is not a `torch.nn.LayerNorm` and so is decayed: LayerNorms outside the ViT are decayed here."""
    if local == "pos_embed":
        return True
    if isinstance(owner, nn.LayerNorm):
        return in_vit
    return isinstance(owner, _TORCH_NORMS)


def param_rules(model: nn.Module, rule: str) -> dict[str, tuple[int, bool]]:
    """(layer id, no weight decay) of every trainable parameter of a model holding one `HarnessViT`, under `rule`
    ('mmseg' or 'detectron2', see `_layer_id`, `_no_decay_mmseg`, `_no_decay_detectron2`)."""
    if rule not in DECAY_RULES:
        raise ValueError(f"paramwise_cfg decay_rule must be one of {', '.join(DECAY_RULES)}, not {rule!r}")
    vit_prefix, backbone = _vit_prefix(model)
    rules = {}
    for module_name, module in model.named_modules():
        for short, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{short}" if module_name else short
            if not param.requires_grad or name in rules:
                continue
            local = name[len(vit_prefix) :] if name.startswith(vit_prefix) else None
            if rule == "mmseg":
                no_wd = _no_decay_mmseg(name, param)
            else:
                no_wd = _no_decay_detectron2(local or short, module, local is not None)
            rules[name] = (_layer_id(local, backbone.depth, rule), no_wd)
    return rules


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class HarnessLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay (BEiT, Bao et al. 2021): layer i of a depth-L ViT trains at lr * decay ** (L + 1 - i), with
    L the backbone's depth (mmseg's `num_layers`, detectron2's `num_layers`), and weight decay by the rule of the
    reference code the task follows:

    * `decay_rule='mmseg'` (ADE20K, the MAE/BEiT UperNet): no decay on 1-D parameters and biases only;
    * `decay_rule='detectron2'` (COCO, ViTDet): no decay on the ViT's norms, other torch norms, and `pos_embed`.

    `paramwise_cfg=dict(layer_decay_rate=0.65, decay_rule='mmseg')`; the depth is read from the model's `HarnessViT`.
    """

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "", is_dcn_module: Any = None) -> None:
        unknown = sorted(set(self.paramwise_cfg) - {"layer_decay_rate", "decay_rule"})
        if unknown:
            raise KeyError(f"HarnessLayerDecayOptimizerConstructor: unknown paramwise_cfg key(s) {', '.join(unknown)}")
        if "decay_rule" not in self.paramwise_cfg:
            raise KeyError(f"HarnessLayerDecayOptimizerConstructor: paramwise_cfg needs decay_rule ({DECAY_RULES})")
        decay = float(self.paramwise_cfg.get("layer_decay_rate", 1.0))
        rules = param_rules(module, self.paramwise_cfg["decay_rule"])
        top = _vit_prefix(module)[1].depth + 1
        base_wd = self.base_wd or 0.0
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in module.named_parameters():
            if name not in rules:
                continue
            layer, no_wd = rules[name]
            scale = decay ** (top - layer)
            group = groups.setdefault(
                (layer, no_wd),
                {
                    "params": [],
                    "param_names": [],
                    "lr": self.base_lr * scale,
                    "lr_scale": scale,
                    "layer_id": layer,
                    "weight_decay": 0.0 if no_wd else base_wd,
                },
            )
            group["params"].append(param)
            group["param_names"].append(name)
        params.extend(groups[k] for k in sorted(groups))
