"""Are the tiny encoders' features worth more than the pixels they are computed from?

A diagnostic for the embedded suite (issue: on COCO the random, frozen encoder, whose heads learn from what is nearly
the patch projection, ties the self-supervised ones). It scores each encoder's pooled features with the MoCo v3 sanity
figure's protocol (`harness.pretrain.sanity.knn_top1`: DINO's weighted kNN, k=20, temperature 0.07, cosine similarity,
a fixed bank of 10,000 Fashion-MNIST training images, the 10,000 test images), and the raw pixels the same way (the
normalised 32 x 32 input, flattened). Features: the pre-logits a linear probe reads (the class token after the final
norm) and the mean of the last block's patch tokens after that norm (what a dense head pools).

Usage: `python benchmarks/encoder_knn.py` (the shipped tiny encoders and a seeded random one; `--encoder
NAME=BACKBONE[:CHECKPOINT]` replaces the list). CPU: about 40 s of one core per encoder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.pretrain import data, sanity  # noqa: E402

SHIPPED = (
    "supervised=supervised_vit_tiny_patch4",
    "mae=mae_vit_tiny_patch4",
    "mocov3=mocov3_vit_tiny_patch4",
    "random=random:scratch_vit_tiny_patch4",
)


def images(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded 32 x 32 images in [0, 1] (each encoder normalises them with its own mean and std, `normalise`)."""
    x, y = data.fashion_mnist_tensors(split, 32, "pad")
    return x[:limit].float() / 255, y[:limit]


def normalise(x: torch.Tensor, backbone: str) -> torch.Tensor:
    """`x` as `backbone` was trained to see it: its registry entry's mean and std."""
    from backbones import get_spec

    spec = get_spec(backbone)
    return (x - torch.tensor(spec.mean)[None, :, None, None]) / torch.tensor(spec.std)[None, :, None, None]


@torch.inference_mode()
def features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised `[N, D]` pre-logits and mean patch token of a timm ViT."""
    cls, mean = [], []
    for b in x.split(sanity.BATCH):
        tokens = model.forward_features(b)  # after the final norm
        cls.append(model.forward_head(tokens, pre_logits=True).float())
        mean.append(tokens[:, model.num_prefix_tokens:].mean(dim=1).float())
    return F.normalize(torch.cat(cls), dim=1), F.normalize(torch.cat(mean), dim=1)


def parse(entry: str) -> tuple[str, str, str | None]:
    """`NAME=BACKBONE[:CHECKPOINT]` -> (name, backbone, checkpoint); a `random:` backbone takes no checkpoint. Checks
    the name against the registry and that the checkpoint exists (ValueError), before any work."""
    from backbones import get_spec
    from backbones.spec import RANDOM_PREFIX

    name, _, spec = entry.partition("=")
    random = spec.startswith(RANDOM_PREFIX)
    backbone, _, checkpoint = (spec, "", "") if random else spec.partition(":")
    if not name or not backbone:
        raise ValueError("expected NAME=BACKBONE[:CHECKPOINT]")
    try:
        get_spec(backbone)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if checkpoint and not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint {checkpoint} does not exist")
    return name, backbone, checkpoint or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", action="append", help="NAME=BACKBONE[:CHECKPOINT] (random:BACKBONE: seeded init)")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each split (a quick look)")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be at least 1, got {args.limit}")
    encoders = []
    for entry in args.encoder or SHIPPED:
        try:
            encoders.append(parse(entry))
        except ValueError as e:
            ap.error(f"--encoder {entry!r}: {e}")
    from backbones import create_backbone

    torch.set_num_threads(1)
    train_x, train_y = images("train", args.limit)
    keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(sanity.SEED))[: sanity.KNN_BANK]
    bank_x, bank_y = train_x[keep], train_y[keep]
    test_x, test_y = images("test", args.limit)
    print(f"kNN-20 top-1 (%) on {len(test_x)} Fashion-MNIST test images, bank of {len(bank_x)} training images")
    print(f"{'encoder':<12} {'pre-logits':>10} {'mean token':>10} {'s':>6}")
    pixel_view = SHIPPED[0].partition("=")[2]  # the pixels as the tiny encoders see them
    pixels = sanity.knn_top1(F.normalize(normalise(bank_x, pixel_view).flatten(1), dim=1), bank_y,
                             F.normalize(normalise(test_x, pixel_view).flatten(1), dim=1), test_y)
    print(f"{'pixels':<12} {pixels:>10.1f} {'':>10} {'':>6}")
    for name, backbone, checkpoint in encoders:
        start = time.process_time()
        torch.manual_seed(0)  # a random: entry's initialisation
        model = create_backbone(backbone, checkpoint=checkpoint).eval()
        bank, test = normalise(bank_x, backbone), normalise(test_x, backbone)
        (bank_cls, bank_mean), (test_cls, test_mean) = features(model, bank), features(model, test)
        cls = sanity.knn_top1(bank_cls, bank_y, test_cls, test_y)
        mean = sanity.knn_top1(bank_mean, bank_y, test_mean, test_y)
        print(f"{name:<12} {cls:>10.1f} {mean:>10.1f} {time.process_time() - start:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
