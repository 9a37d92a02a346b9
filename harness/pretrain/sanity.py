"""The sanity figure of a pretraining: one number per method, measured at its end on the 10,000 Fashion-MNIST test
images (padded as in training, no augmentation), that says whether the run learnt what its method teaches.

* supervised: top-1 of its own classifier head.
* MAE: its training loss (He et al. 2021: mean squared error of the normalised pixels of the masked patches, the
  recipe's mask ratio) with the masking drawn from a generator of fixed seed, so the figure is repeatable.
* MoCo v3: k-nearest-neighbour top-1 as DINO's `eval_knn.py` (Caron et al. 2021): L2-normalised features, cosine
  similarity, the k=20 nearest training images vote with weight exp(similarity / 0.07). The feature is the base
  encoder's pooled pre-logits (the class token after the final norm, what the linear probe reads); the bank is a fixed
  10,000 of the training images.

Only for Fashion-MNIST pretraining (a folder of images has no test split here): `measure` returns None otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.pretrain import data

BATCH = 500
KNN_K, KNN_T, KNN_BANK = 20, 0.07, 10_000
SEED = 0  # MAE's masking noise and the kNN bank's draw
LIMIT: int | None = None  # the first LIMIT images of each split (None: all; tests lower it to stay fast)


def measure(method: str, model: nn.Module, recipe: dict[str, Any], mean: tuple[float, ...],
            std: tuple[float, ...]) -> dict[str, Any] | None:
    """`{name, value, split, n}` for `model` (the method's module as trained), or None for folder data."""
    if recipe["data"].get("source", data.FASHION_MNIST) != data.FASHION_MNIST:
        return None
    cfg = recipe["data"]

    def images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.fashion_mnist_tensors(split, cfg["img_size"], cfg.get("resize", "pad"))
        x, y = x[:LIMIT], y[:LIMIT]
        m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
        return (x.float() / 255 - m) / s, y  # [N, 3, S, S]

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            name, value, n = _FIGURES[method](model, images, device)
    finally:
        model.train(was_training)
    return {"name": name, "value": round(float(value), 6), "split": "fashion-mnist test", "n": n}


Images = Callable[[str], tuple[torch.Tensor, torch.Tensor]]


def _batches(x: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    return [b.to(device) for b in x.split(BATCH)]


def supervised_top1(model: nn.Module, images: Images, device: torch.device) -> tuple[str, float, int]:
    x, y = images("test")
    pred = torch.cat([model(b).argmax(dim=1).cpu() for b in _batches(x, device)])  # [N]
    return "top1", 100.0 * (pred == y).float().mean().item(), len(x)


def mae_loss(model: nn.Module, images: Images, device: torch.device) -> tuple[str, float, int]:
    x, _ = images("test")
    g = torch.Generator().manual_seed(SEED)
    total = 0.0
    for b in _batches(x, device):
        noise = model.masking_noise(b.cpu(), generator=g).to(device)  # [n, L], drawn on the CPU: the same anywhere
        total += model(b, noise=noise)[0].item() * len(b)
    return "reconstruction_loss", total / len(x), len(x)


def pooled_features(encoder: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`[N, D]` L2-normalised pre-logits of a timm ViT (its head, here MoCo's projector, is skipped)."""
    feats = [encoder.forward_head(encoder.forward_features(b), pre_logits=True).float().cpu()
             for b in _batches(x, device)]
    return F.normalize(torch.cat(feats), dim=1)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
             k: int = KNN_K, temperature: float = KNN_T, classes: int = 10) -> float:
    """Weighted kNN top-1 (%) of L2-normalised features, as DINO's `knn_classifier` (test images in chunks)."""
    correct = 0
    for feats, labels in zip(test.split(BATCH), test_labels.split(BATCH), strict=True):
        top, idx = (feats @ bank.t()).topk(min(k, len(bank)), dim=1)  # [n, k] cosine similarities
        votes = torch.zeros(len(feats), classes).scatter_add_(1, bank_labels[idx], (top / temperature).exp())
        correct += int((votes.argmax(dim=1) == labels).sum())
    return 100.0 * correct / len(test)


def mocov3_knn(model: nn.Module, images: Images, device: torch.device) -> tuple[str, float, int]:
    encoder = model.base_encoder
    train_x, train_y = images("train")
    keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(SEED))[:KNN_BANK]
    test_x, test_y = images("test")
    bank = pooled_features(encoder, train_x[keep], device)
    test = pooled_features(encoder, test_x, device)
    return f"knn{KNN_K}_top1", knn_top1(bank, train_y[keep], test, test_y), len(test_x)


_FIGURES: dict[str, Callable[[nn.Module, Images, torch.device], tuple[str, float, int]]] = {
    "supervised": supervised_top1, "mae": mae_loss, "mocov3": mocov3_knn,
}
