"""ViT backbones: a registry of specs (`registry`, `zoo`), checkpoint formats (`formats`) and loading (`checkpoint`).

The mmengine adapter for detection and segmentation lives in `backbones.mm` and is imported only by those tasks.
Importing the package is cheap: the registry needs no torch, and the loading functions import it on first use, so
that listing the registry (`harness backbones`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from backbones.registry import (
    BackboneSpec,
    get_spec,
    list_backbones,
    load_backbone_module,
    load_backbone_yaml,
    register_backbone,
)

_LAZY = {name: "backbones.checkpoint" for name in ("CheckpointError", "create_backbone", "load_checkpoint",
                                                   "read_checkpoint")}  # fmt: skip

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'backbones' has no attribute {name!r}")
