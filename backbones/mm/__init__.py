"""The mmengine adapter: any registered backbone as an mmdet / mmseg backbone, and layer-wise lr decay for it.

The simple feature pyramid, window attention and the detection backbone's form follow ViTDet (Li et al. 2022,
"Exploring Plain Vision Transformer Backbones for Object Detection"; detectron2 `modeling/backbone/vit.py` and
`utils.py`), written so that the same weights give detectron2's outputs to float precision (`vitdet_to_harness` maps
its parameter names); the four-tap pyramid and layer decay follow the BEiT / MAE segmentation code (mmseg
`Feature2Pyramid`, `LearningRateDecayOptimizerConstructor`). One concern per module, as facebookresearch/mae splits
its code:

* `compat`: the fixes the OpenMMLab stack needs on current torch, applied on import (first, before mmcv's ops load);
* `attention`: window partitioning, ViTDet's windowed block, `RelPosAttention` (decomposed or BEiT-table bias);
* `neck`: the pyramid's shapes and rescaling branches, `HarnessSimpleFPN`, `vitdet_to_harness`;
* `vit`: `HarnessViT`;
* `optim`: layer ids, weight-decay rules and `HarnessLayerDecayOptimizerConstructor`.

Importing this package registers, in mmengine's root registries (found from both the mmdet and mmseg scopes, under
names neither library has):

* `HarnessViT` (MODELS): `dict(type='HarnessViT', backbone='mae_vit_base_patch16', checkpoint=None, img_size=(H, W),
  pyramid='taps', ...)`; the weights are loaded through `backbones.create_backbone` with every key accounted for;
* `HarnessSimpleFPN` (MODELS): ViTDet's per-level 1x1 + 3x3 convs with LayerNorm after `pyramid='simple'`, an mmdet
  neck (`dict(type='HarnessSimpleFPN', in_channels=[...], out_channels=256, num_outs=5)`);
* `HarnessLayerDecayOptimizerConstructor` (OPTIM_WRAPPER_CONSTRUCTORS): `constructor=...` with
  `paramwise_cfg=dict(layer_decay_rate=0.65)`.

Configs also name `custom_imports=dict(imports=['backbones.mm'], allow_failed_imports=False)`; tasks import this package
themselves as well, because `Runner.from_cfg` on a dict ignores `custom_imports`.
"""

from backbones.mm import compat  # (first: its fixes apply on import, before mmcv's ops are loaded)
from backbones.mm.attention import (
    REL_POS,
    RelPosAttention,
    rel_pos_index,
    rel_pos_table,
    window_partition,
    window_unpartition,
    windowed_block,
)
from backbones.mm.neck import (
    PUBLISHED_NORM,
    PYRAMID_NORMS,
    PYRAMIDS,
    SCALE_FACTORS,
    HarnessSimpleFPN,
    arch_shape,
    pyramid_channels,
    pyramid_strides,
    vitdet_to_harness,
)
from backbones.mm.optim import DECAY_RULES, HarnessLayerDecayOptimizerConstructor, param_rules
from backbones.mm.vit import WINDOW_POS, HarnessViT, abs_pos_on_grid, is_plain_vit

__all__ = [
    "DECAY_RULES",
    "PUBLISHED_NORM",
    "PYRAMIDS",
    "PYRAMID_NORMS",
    "REL_POS",
    "SCALE_FACTORS",
    "WINDOW_POS",
    "HarnessLayerDecayOptimizerConstructor",
    "HarnessSimpleFPN",
    "HarnessViT",
    "RelPosAttention",
    "abs_pos_on_grid",
    "arch_shape",
    "compat",
    "is_plain_vit",
    "param_rules",
    "pyramid_channels",
    "pyramid_strides",
    "rel_pos_index",
    "rel_pos_table",
    "vitdet_to_harness",
    "window_partition",
    "window_unpartition",
    "windowed_block",
]
