"""The built-in backbones as one table of data (as timm's `default_cfgs`): the pretrained ViTs the MAE paper compares
(He et al. 2021, Tables 3-5 and 12), the tiny ViTs the embedded Fashion-MNIST preset pretrains itself, and test entries.

One row per weight file: architecture, checkpoint format, url and sha256, licence, preprocessing and the recipe hints
tasks read. Licences are those of the released weights. Dense taps are the quarter points of the depth (0-based), as
in the segmentation recipes of BEiT/MAE; layer decay is the MAE fine-tuning recipe (0.65 for B, 0.75 for L/H).

`sha256` holds what the publisher states: DeiT's file name carries the first 8 hex digits of its sha256 (torch.hub's
`check_hash` convention, used by DeiT's `hubconf.py` and timm's `default_cfgs`); MAE, MoCo v3, DINO, DeiT III and
BEiT publish no checksum, so theirs is None and `harness download` asks the user to pass or accept one.
`params` counts the features-only model (`num_classes=0`); tests/test_registry.py checks it against the built model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backbones.registry import BackboneSpec, register_spec

CC_BY_NC = "CC-BY-NC-4.0"
APACHE = "Apache-2.0"
MIT = "MIT"
TAPS_12 = (3, 5, 7, 11)
TAPS_24 = (7, 11, 15, 23)
TAPS_32 = (7, 15, 23, 31)
BEIT_NORM = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
B16 = {"arch": "vit_base_patch16_224", "layer_decay": 0.65, "dense_taps": TAPS_12, "paper_name": "ViT-B"}
S16 = {"arch": "vit_small_patch16_224", "layer_decay": 0.65, "dense_taps": TAPS_12, "paper_name": "ViT-S"}
L16 = {"layer_decay": 0.75, "dense_taps": TAPS_24, "paper_name": "ViT-L"}

# The tiny ViT of the embedded preset: 32x32 inputs (Fashion-MNIST padded from 28), 4x4 patches -> an 8x8 grid.
# Its weights come from `harness pretrain`: the three pretrained ones ship in backbones/pretrained/ (`tiny_weights`).
TINY = {
    "arch": "vit_tiny_patch16_224", "checkpoint_format": "harness",
    "arch_kwargs": {"patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3},
    "img_size": 32, "patch_size": 4, "license": APACHE, "layer_decay": 0.75, "dense_taps": (1, 2, 3, 5),
    # Fashion-MNIST statistics (grey replicated to RGB), measured on its 60,000 training images.
    "mean": (0.2860, 0.2860, 0.2860), "std": (0.3530, 0.3530, 0.3530), "params": 682_272,
}  # fmt: skip

# The tiny encoders this project pretrains and ships: `<name>.pth` (official-MAE format, as `harness pretrain` exports
# it) with `<name>.json` beside it, its record: the `harness pretrain` command that remakes the file bit for bit, the
# compute budget, the sanity figure. Every load checks the file against this sha256.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
TINY_SHA256 = {
    "mae_vit_tiny_patch4": "5ff2e2ee2f6f0d6621a22b4a3f522a1674a97bf7056563738efd0cdc4a4f18ce",
    "supervised_vit_tiny_patch4": "49ebf7599bab42aef655e178aac7907e369394126fd72c6e12c6d0886cd7d511",
    "mocov3_vit_tiny_patch4": "1c603929b6b3e388f9255a25135e899197e70345e4489954c3fe1edf26c436f2",
}


def tiny_weights(name: str) -> dict[str, str]:
    return {"checkpoint": str(PRETRAINED_DIR / f"{name}.pth"), "sha256": TINY_SHA256[name]}


MAE_URL = "https://dl.fbaipublicfiles.com/mae/pretrain/"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/"
MOCO_URL = "https://dl.fbaipublicfiles.com/moco-v3/"
BEIT_URL = "https://conversationhub.blob.core.windows.net/beit-share-public/beit/"

# name -> BackboneSpec fields (the name is the key; `family` and `description` are in every row).
DEFAULT_SPECS: dict[str, dict[str, Any]] = {
    # --- MAE (facebookresearch/mae, 1600-epoch pretraining, encoder only) ---
    "mae_vit_base_patch16": dict(
        **B16, family="mae", checkpoint_format="mae", url=MAE_URL + "mae_pretrain_vit_base.pth", sha256=None,
        license=CC_BY_NC, pretrain_epochs=1600, params=85_798_656, description="MAE ViT-B/16, ImageNet-1K, 1600 epochs",
    ),
    "mae_vit_large_patch16": dict(
        **L16, arch="vit_large_patch16_224", family="mae", checkpoint_format="mae",
        url=MAE_URL + "mae_pretrain_vit_large.pth", sha256=None, license=CC_BY_NC, pretrain_epochs=1600,
        params=303_301_632, description="MAE ViT-L/16, ImageNet-1K, 1600 epochs",
    ),
    "mae_vit_huge_patch14": dict(
        arch="vit_huge_patch14_224", family="mae", checkpoint_format="mae", url=MAE_URL + "mae_pretrain_vit_huge.pth",
        sha256=None, patch_size=14, license=CC_BY_NC, layer_decay=0.75, dense_taps=TAPS_32, pretrain_epochs=1600,
        paper_name="ViT-H", params=630_764_800, description="MAE ViT-H/14, ImageNet-1K, 1600 epochs",
    ),
    # --- Supervised ImageNet-1K (DeiT, DeiT III: timm VisionTransformer weights) ---
    "supervised_vit_base_patch16": dict(
        **B16, family="supervised", checkpoint_format="timm",
        url="https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth", sha256="b5f2ef4d",
        license=APACHE, pretrain_epochs=300, params=85_798_656, description="DeiT-B/16 supervised on ImageNet-1K",
    ),
    "supervised_vit_large_patch16": dict(
        **L16, arch="deit3_large_patch16_224", family="supervised", checkpoint_format="timm",
        url="https://dl.fbaipublicfiles.com/deit/deit_3_large_224_1k.pth", sha256=None, license=APACHE,
        pretrain_epochs=800, params=303_349_760, description="DeiT III ViT-L/16 supervised on ImageNet-1K",
    ),
    # --- MoCo v3 (facebookresearch/moco-v3, 300 epochs) ---
    "mocov3_vit_small_patch16": dict(
        **S16, family="mocov3", checkpoint_format="mocov3",
        arch_kwargs={"num_heads": 12},  # MoCo v3's ViT-S has 12 heads (timm's has 6)
        url=MOCO_URL + "vit-s-300ep/vit-s-300ep.pth.tar", sha256=None, license=CC_BY_NC, pretrain_epochs=300,
        params=21_665_664, description="MoCo v3 ViT-S/16, ImageNet-1K, 300 epochs",
    ),
    "mocov3_vit_base_patch16": dict(
        **B16, family="mocov3", checkpoint_format="mocov3", url=MOCO_URL + "vit-b-300ep/vit-b-300ep.pth.tar",
        sha256=None, license=CC_BY_NC, pretrain_epochs=300, params=85_798_656,
        description="MoCo v3 ViT-B/16, ImageNet-1K, 300 epochs",
    ),
    # --- DINO (facebookresearch/dino, released backbones) ---
    "dino_vit_small_patch16": dict(
        **S16, family="dino", checkpoint_format="dino",
        url=DINO_URL + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth", sha256=None, license=APACHE,
        pretrain_epochs=800, params=21_665_664, description="DINO ViT-S/16, ImageNet-1K",
    ),
    "dino_vit_base_patch16": dict(
        **B16, family="dino", checkpoint_format="dino",
        url=DINO_URL + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth", sha256=None, license=APACHE,
        pretrain_epochs=400, params=85_798_656, description="DINO ViT-B/16, ImageNet-1K",
    ),
    # --- BEiT (microsoft/unilm, self-supervised checkpoints before any fine-tuning) ---
    "beit_base_patch16": dict(
        **BEIT_NORM, arch="beit_base_patch16_224", layer_decay=0.65, dense_taps=TAPS_12, paper_name="ViT-B",
        family="beit", checkpoint_format="beit",
        url=BEIT_URL + "beit_base_patch16_224_pt22k.pth", sha256=None, license=MIT, pretrain_epochs=800,
        params=85_761_984, description="BEiT-B/16 self-supervised (DALL-E tokens)",
    ),
    "beit_large_patch16": dict(
        **L16, **BEIT_NORM, arch="beit_large_patch16_224", family="beit", checkpoint_format="beit",
        url=BEIT_URL + "beit_large_patch16_224_pt22k.pth", sha256=None, license=MIT, pretrain_epochs=800,
        params=303_405_568, description="BEiT-L/16 self-supervised (DALL-E tokens)",
    ),
    # --- Tiny ViTs of the embedded preset ---
    "mae_vit_tiny_patch4": dict(
        **TINY, **tiny_weights("mae_vit_tiny_patch4"), family="mae",
        description="tiny ViT, MAE-pretrained by this project on Fashion-MNIST"
    ),
    "supervised_vit_tiny_patch4": dict(
        **TINY, **tiny_weights("supervised_vit_tiny_patch4"), family="supervised",
        description="tiny ViT, supervised by this project on Fashion-MNIST"
    ),
    "mocov3_vit_tiny_patch4": dict(
        **TINY, **tiny_weights("mocov3_vit_tiny_patch4"), family="mocov3",
        description="tiny ViT, MoCo v3 by this project on Fashion-MNIST"
    ),
    "scratch_vit_tiny_patch4": dict(
        **TINY, family="scratch", description="tiny ViT, random initialisation (the floor)"
    ),
    # --- Test entries: no weights, small enough for CPU unit tests of every path ---
    "test_vit": dict(
        arch="vit_tiny_patch16_224", family="custom", checkpoint_format="timm",
        arch_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}, img_size=32, patch_size=8,
        license=APACHE, dense_taps=(0, 1, 2, 3), params=57_632, description="4-block ViT for tests",
    ),
    "test_beit": dict(
        arch="beit_base_patch16_224", family="beit", checkpoint_format="beit",
        arch_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}, img_size=32, patch_size=8,
        license=APACHE, dense_taps=(0, 0, 1, 1), params=31_952, description="2-block BEiT for tests",
    ),
}  # fmt: skip


def _register_defaults() -> None:
    for name, fields in DEFAULT_SPECS.items():
        register_spec(BackboneSpec(name=name, **fields), origin=__name__)


_register_defaults()
