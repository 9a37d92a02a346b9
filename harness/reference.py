"""The published numbers of the MAE paper (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"), as data.

ImageNet-1K top-1 of the 1600-epoch encoders (fine-tuning at 224 pixels, and ViT-H at 448, Table 3; linear probing),
COCO Mask R-CNN APbox / APmask with an FPN on the ViT (Table 4), ADE20K UperNet mIoU (Table 5). Partial fine-tuning
(Figure 9) is read off a plot in the paper and is left out rather than approximated.

Each entry is keyed by (family, model, column) where `family` is `BackboneSpec.family`, `model` its `paper_name`
(ViT-B, ViT-L, ViT-H, or ViT-H@448 for the 448-pixel fine-tuning) and `column` a column of `harness.report.COLUMNS`.
"""

from __future__ import annotations

PAPER = "He et al. 2021, Masked Autoencoders Are Scalable Vision Learners"

# (family, model) -> {column: value}
PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
    ("mae", "ViT-B"): {"in1k_finetune": 83.6, "in1k_linprobe": 68.0, "coco_box": 50.3, "coco_mask": 44.9,
                       "ade20k_miou": 48.1},
    ("mae", "ViT-L"): {"in1k_finetune": 85.9, "in1k_linprobe": 75.8, "coco_box": 53.3, "coco_mask": 47.2,
                       "ade20k_miou": 53.6},
    ("mae", "ViT-H"): {"in1k_finetune": 86.9, "in1k_linprobe": 76.6},
    ("mae", "ViT-H@448"): {"in1k_finetune": 87.8},
    ("supervised", "ViT-B"): {"coco_box": 47.9, "coco_mask": 42.9, "ade20k_miou": 47.4},
    ("supervised", "ViT-L"): {"coco_box": 49.3, "coco_mask": 43.9, "ade20k_miou": 49.9},
    ("mocov3", "ViT-B"): {"coco_box": 47.9, "coco_mask": 42.7, "ade20k_miou": 47.3},
    ("mocov3", "ViT-L"): {"coco_box": 49.3, "coco_mask": 44.0, "ade20k_miou": 49.1},
    ("beit", "ViT-B"): {"coco_box": 49.8, "coco_mask": 44.4, "ade20k_miou": 47.1},
    ("beit", "ViT-L"): {"coco_box": 53.3, "coco_mask": 47.1, "ade20k_miou": 53.3},
}

# The row labels the paper uses for each family.
FAMILY_LABELS = {"mae": "MAE", "supervised": "supervised", "mocov3": "MoCo v3", "beit": "BEiT", "dino": "DINO",
                 "scratch": "scratch"}


def published(family: str | None, model: str | None, column: str) -> float | None:
    """The paper's number for a setting, or None when the paper has none."""
    if family is None or model is None:
        return None
    return PUBLISHED.get((family, model), {}).get(column)


def rows() -> list[dict[str, object]]:
    """The reference table, one row per (family, model), in the paper's order."""
    return [{"family": FAMILY_LABELS.get(f, f), "model": m, **values} for (f, m), values in PUBLISHED.items()]
