"""ViT backbones: a registry of specs (`registry`, `zoo`), checkpoint formats (`formats`) and loading (`checkpoint`).

The mmengine adapter for detection and segmentation lives in `backbones.mm` and is imported only by those tasks.
"""

from backbones.checkpoint import CheckpointError, create_backbone, load_checkpoint, read_checkpoint
from backbones.registry import (
    BackboneSpec,
    get_spec,
    list_backbones,
    load_backbone_module,
    load_backbone_yaml,
    register_backbone,
)

__all__ = [
    "BackboneSpec",
    "CheckpointError",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "load_backbone_module",
    "load_backbone_yaml",
    "load_checkpoint",
    "read_checkpoint",
    "register_backbone",
]
