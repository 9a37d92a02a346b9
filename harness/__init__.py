"""The MAE transfer harness: pretrain or load a ViT, fine-tune it on IN1K, COCO and ADE20K, print the paper's tables.

The top floor: the command line (`harness.cli`), the runner (`harness.run`), its worker, the result records and the
report. Importing `harness` is cheap; backbones live in `backbones`, tasks in `tasks`.
"""

__version__ = "0.1.0"
