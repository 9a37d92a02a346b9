"""The MAE transfer harness: pretrain or load a ViT, fine-tune it on IN1K, COCO and ADE20K, print the paper's tables.

Importing `harness` is cheap; torch and timm load on first use of `create_backbone`.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("create_backbone", "get_spec", "list_backbones", "register_backbone"):
        import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
