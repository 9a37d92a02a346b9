"""The built-in backbones: the pretrained ViTs the MAE paper compares (He et al. 2021, Tables 3-5 and 12), and tiny ViTs
that the embedded Fashion-MNIST preset pretrains itself.

Licences are those of the released weights. Dense taps are the quarter points of the depth (0-based), as in the
segmentation recipes of BEiT/MAE; layer decay is the MAE fine-tuning recipe (0.65 for B, 0.75 for L/H).
"""

from __future__ import annotations

from backbones.registry import BackboneSpec, register_backbone

CC_BY_NC = "CC-BY-NC-4.0"
APACHE = "Apache-2.0"
MIT = "MIT"
TAPS_12 = (3, 5, 7, 11)
TAPS_24 = (7, 11, 15, 23)
TAPS_32 = (7, 15, 23, 31)

# The tiny ViT of the embedded preset: 32x32 inputs (Fashion-MNIST padded from 28), 4x4 patches -> an 8x8 grid.
TINY_ARCH = "vit_tiny_patch16_224"
TINY_KWARGS = {"patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3}
TINY_TAPS = (1, 2, 3, 5)
# Fashion-MNIST statistics (grey replicated to RGB), measured on its 60,000 training images.
FMNIST_MEAN = (0.2860, 0.2860, 0.2860)
FMNIST_STD = (0.3530, 0.3530, 0.3530)


# --- MAE (facebookresearch/mae, 1600-epoch pretraining, encoder only) ---


@register_backbone
def mae_vit_base_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="mae_vit_base_patch16", arch="vit_base_patch16_224", family="mae", checkpoint_format="mae",
        url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
        license=CC_BY_NC, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=1600, paper_name="ViT-B",
        description="MAE ViT-B/16, ImageNet-1K, 1600 epochs",
    )


@register_backbone
def mae_vit_large_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="mae_vit_large_patch16", arch="vit_large_patch16_224", family="mae", checkpoint_format="mae",
        url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large.pth",
        license=CC_BY_NC, layer_decay=0.75, dense_taps=TAPS_24, pretrain_epochs=1600, paper_name="ViT-L",
        description="MAE ViT-L/16, ImageNet-1K, 1600 epochs",
    )


@register_backbone
def mae_vit_huge_patch14() -> BackboneSpec:
    return BackboneSpec(
        name="mae_vit_huge_patch14", arch="vit_huge_patch14_224", family="mae", checkpoint_format="mae",
        url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_huge.pth", patch_size=14,
        license=CC_BY_NC, layer_decay=0.75, dense_taps=TAPS_32, pretrain_epochs=1600, paper_name="ViT-H",
        description="MAE ViT-H/14, ImageNet-1K, 1600 epochs",
    )


# --- Supervised ImageNet-1K (DeiT, DeiT III: timm VisionTransformer weights) ---


@register_backbone
def supervised_vit_base_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="supervised_vit_base_patch16", arch="vit_base_patch16_224", family="supervised", checkpoint_format="timm",
        url="https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth",
        license=APACHE, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=300, paper_name="ViT-B",
        description="DeiT-B/16 supervised on ImageNet-1K",
    )


@register_backbone
def supervised_vit_large_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="supervised_vit_large_patch16", arch="deit3_large_patch16_224", family="supervised",
        checkpoint_format="timm", url="https://dl.fbaipublicfiles.com/deit/deit_3_large_224_1k.pth",
        license=APACHE, layer_decay=0.75, dense_taps=TAPS_24, pretrain_epochs=800, paper_name="ViT-L",
        description="DeiT III ViT-L/16 supervised on ImageNet-1K",
    )


# --- MoCo v3 (facebookresearch/moco-v3, 300 epochs) ---


@register_backbone
def mocov3_vit_small_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="mocov3_vit_small_patch16", arch="vit_small_patch16_224", family="mocov3", checkpoint_format="mocov3",
        arch_kwargs={"num_heads": 12},  # MoCo v3's ViT-S has 12 heads (timm's has 6)
        url="https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
        license=CC_BY_NC, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=300, paper_name="ViT-S",
        description="MoCo v3 ViT-S/16, ImageNet-1K, 300 epochs",
    )


@register_backbone
def mocov3_vit_base_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="mocov3_vit_base_patch16", arch="vit_base_patch16_224", family="mocov3", checkpoint_format="mocov3",
        url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
        license=CC_BY_NC, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=300, paper_name="ViT-B",
        description="MoCo v3 ViT-B/16, ImageNet-1K, 300 epochs",
    )


# --- DINO (facebookresearch/dino, released backbones) ---


@register_backbone
def dino_vit_small_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="dino_vit_small_patch16", arch="vit_small_patch16_224", family="dino", checkpoint_format="dino",
        url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        license=APACHE, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=800, paper_name="ViT-S",
        description="DINO ViT-S/16, ImageNet-1K",
    )


@register_backbone
def dino_vit_base_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="dino_vit_base_patch16", arch="vit_base_patch16_224", family="dino", checkpoint_format="dino",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        license=APACHE, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=400, paper_name="ViT-B",
        description="DINO ViT-B/16, ImageNet-1K",
    )


# --- BEiT (microsoft/unilm, self-supervised checkpoints before any fine-tuning) ---


@register_backbone
def beit_base_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="beit_base_patch16", arch="beit_base_patch16_224", family="beit", checkpoint_format="beit",
        url="https://conversationhub.blob.core.windows.net/beit-share-public/beit/beit_base_patch16_224_pt22k.pth",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        license=MIT, layer_decay=0.65, dense_taps=TAPS_12, pretrain_epochs=800, paper_name="ViT-B",
        description="BEiT-B/16 self-supervised (DALL-E tokens)",
    )


@register_backbone
def beit_large_patch16() -> BackboneSpec:
    return BackboneSpec(
        name="beit_large_patch16", arch="beit_large_patch16_224", family="beit", checkpoint_format="beit",
        url="https://conversationhub.blob.core.windows.net/beit-share-public/beit/beit_large_patch16_224_pt22k.pth",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        license=MIT, layer_decay=0.75, dense_taps=TAPS_24, pretrain_epochs=800, paper_name="ViT-L",
        description="BEiT-L/16 self-supervised (DALL-E tokens)",
    )


# --- Tiny ViTs of the embedded preset: weights come from `harness pretrain` (the file is given at load time) ---


def _tiny(name: str, family: str, description: str) -> BackboneSpec:
    return BackboneSpec(
        name=name, arch=TINY_ARCH, family=family, checkpoint_format="harness", arch_kwargs=dict(TINY_KWARGS),
        img_size=32, patch_size=4, mean=FMNIST_MEAN, std=FMNIST_STD, license=APACHE, layer_decay=0.75,
        dense_taps=TINY_TAPS, description=description,
    )


@register_backbone
def mae_vit_tiny_patch4() -> BackboneSpec:
    return _tiny("mae_vit_tiny_patch4", "mae", "tiny ViT, MAE-pretrained by this project on Fashion-MNIST")


@register_backbone
def supervised_vit_tiny_patch4() -> BackboneSpec:
    return _tiny("supervised_vit_tiny_patch4", "supervised", "tiny ViT, supervised by this project on Fashion-MNIST")


@register_backbone
def mocov3_vit_tiny_patch4() -> BackboneSpec:
    return _tiny("mocov3_vit_tiny_patch4", "mocov3", "tiny ViT, MoCo v3 by this project on Fashion-MNIST")


@register_backbone
def scratch_vit_tiny_patch4() -> BackboneSpec:
    return _tiny("scratch_vit_tiny_patch4", "scratch", "tiny ViT, random initialisation (the floor)")


# --- Test entries: no weights, small enough for CPU unit tests of every path ---


@register_backbone
def test_vit() -> BackboneSpec:
    return BackboneSpec(
        name="test_vit", arch=TINY_ARCH, family="custom", checkpoint_format="timm",
        arch_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2},
        img_size=32, patch_size=8, license=APACHE, dense_taps=(0, 1, 2, 3), description="4-block ViT for tests",
    )


@register_backbone
def test_beit() -> BackboneSpec:
    return BackboneSpec(
        name="test_beit", arch="beit_base_patch16_224", family="beit", checkpoint_format="beit",
        arch_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        img_size=32, patch_size=8, license=APACHE, dense_taps=(0, 0, 1, 1), description="2-block BEiT for tests",
    )
