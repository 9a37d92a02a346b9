"""What a backbone is, as data: `BackboneSpec` (as timm keeps a model's `pretrained_cfg` apart from its code), and the
error for a name that is not known, with the closest matches ("did you mean", as lm-evaluation-harness says it).

The registry (`backbones.registry`) and the `timm:` names (`backbones.timm_hub`) both make specs; this module, below
both, is what they share.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

TIMM_PREFIX = "timm:"
RANDOM_PREFIX = "random:"  # `random:<name>`: the architecture of <name>, randomly initialised (no weights)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the harness needs to know about a backbone, as data.

    `arch` is a timm model name and `arch_kwargs` its overrides (a tiny ViT is `vit_tiny_patch16_224` with a smaller
    patch, image and depth). `checkpoint_format` names a filter in `backbones.formats`. `url` is the official download
    and `sha256` its published checksum: the full hex digest, or the leading hex digits a torch.hub file name carries
    (`check_hash`'s convention), or None when the publisher gives none. A local file given at load time always wins.
    `timm_pretrained` entries (`timm:` names) have no url: `arch` is a timm `model.tag` loaded with `pretrained=True`.
    """

    name: str
    arch: str
    family: str  # mae | supervised | mocov3 | dino | beit | scratch | custom: the row label of the paper's tables
    checkpoint_format: str = "timm"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    sha256: str | None = None
    timm_pretrained: bool = False
    checkpoint: str | None = None  # a local file that stands in for `url` (YAML entries, the project's own pretraining)
    img_size: int = 224
    patch_size: int = 16
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = "unknown"
    layer_decay: float = 0.65  # recommended layer-wise lr decay for fine-tuning (MAE: 0.65 for B, 0.75 for L and H)
    dense_taps: tuple[int, ...] = ()  # 0-based blocks that dense tasks tap (quarter points, e.g. 3, 5, 7, 11 for B)
    pretrain_epochs: int | None = None
    paper_name: str | None = None  # how the MAE paper's tables name it, when they do (e.g. "ViT-B")
    description: str = ""
    params: int | None = None  # parameters of the features-only model (num_classes=0), so listing needs no torch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unknown_name_error(kind: str, name: str, known: list[str]) -> KeyError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return KeyError(f"unknown {kind} {name!r}{hint}")
