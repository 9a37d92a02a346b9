"""The frozen part's features shared across runs (`tasks.classification.features`): computed once per encoder and
split, read by the other seeds with the same metrics as computing them, never shared by different weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from backbones.checkpoint import build_model
from backbones.registry import get_spec
from embedded import imagenet
from tasks import TaskContext
from tasks import classification as cls
from tasks.classification import data as cls_data
from tasks.classification import features

QUICK = {"data.micro_batch_size": 16, "linprobe.epochs": 2, "linprobe.warmup_epochs": 1, "linprobe.batch_size": 16,
         "partial.blocks": 1, "partial.epochs": 1, "partial.warmup_epochs": 0, "partial.batch_size": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagenet.write(tmp_path_factory.mktemp("in1k") / "data", n_train_per_class=4, n_val_per_class=2)


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many splits were encoded (not read from the cache)."""
    calls: list[int] = []
    encode = cls_data.encode_all

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(cls_data, "encode_all", counted)
    return calls


def _run(work: Path, data: Path, protocol: str, seed: int, checkpoint: Path | None) -> Any:
    return cls.run(TaskContext(backbone="test_vit", work_dir=work, recipe="tiny", data_root=data, protocol=protocol,
                               overrides=QUICK, seed=seed, checkpoint=str(checkpoint) if checkpoint else None))


def _same(a: Any, b: Any) -> None:
    assert a.metrics == b.metrics
    for x, y in zip(a.extra["history"], b.extra["history"], strict=True):
        assert (x["loss"], x["top1"], x["top5"]) == (y["loss"], y["top1"], y["top5"])


@pytest.mark.parametrize("protocol", ["linprobe", "partial"])
def test_seeds_of_one_encoder_share_features_with_identical_results(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encodes: list[int], protocol: str
) -> None:
    ckpt = tmp_path / "pretrained.pth"
    torch.save(build_model(get_spec("test_vit"), global_pool="token").state_dict(), ckpt)
    alone = _run(tmp_path / "alone", data, protocol, 1, ckpt)  # no cache folder: its own features
    assert len(encodes) == 2
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "features"))
    _run(tmp_path / "s0", data, protocol, 0, ckpt)
    assert len(encodes) == 4 and len(list((tmp_path / "features").glob("*.pt"))) == 2  # train and val
    shared = _run(tmp_path / "s1", data, protocol, 1, ckpt)
    assert len(encodes) == 4  # read, not computed
    _same(shared, alone)


def test_random_backbones_do_not_share(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       encodes: list[int]) -> None:
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "features"))
    _run(tmp_path / "s0", data, "linprobe", 0, None)
    _run(tmp_path / "s1", data, "linprobe", 1, None)  # another seed, other random weights
    assert len(encodes) == 4


def test_an_unreadable_entry_is_computed_again(tmp_path: Path) -> None:
    made = torch.utils.data.TensorDataset(torch.arange(6.0).view(3, 2), torch.arange(3))
    (tmp_path / "k.pt").write_bytes(b"cut short")
    got = features.cached_features("k", lambda: made, tmp_path)
    assert got is made
    again = features.cached_features("k", lambda: pytest.fail("computed again"), tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(again.tensors, made.tensors, strict=True))


def test_the_key_follows_what_the_features_depend_on(data: Path, tmp_path: Path) -> None:
    from tasks.classification.data import build_transform
    from tasks.classification.recipe import resolve_section
    from tasks.recipes import load_recipe

    def key(pool: str = "token", split: str = "train", size: int = 32, batch: int = 16) -> str:
        torch.manual_seed(0)
        cfg = {**resolve_section(load_recipe("in1k", "tiny"), "linprobe", "base"), "global_pool": pool}
        model, _ = cls.build_classifier(TaskContext(backbone="test_vit", work_dir=tmp_path), cfg, "linprobe", 10, 32,
                                        0)
        tf = build_transform(False, {}, size, 1.0, (0.5,) * 3, (0.5,) * 3)
        return features.feature_key(model, data / split, tf, batch, torch.device("cpu"), "fp32")

    base = key()
    assert key() == base  # the same weights (same seed), data, transform and batch
    assert len({base, key(pool="avg"), key(split="val"), key(size=28), key(batch=8)}) == 5
