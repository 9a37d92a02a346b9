"""The embedded ImageNet-layout set: real Fashion-MNIST images in class folders, deterministic, written once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedded import fashion_mnist, imagenet


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagenet.write(tmp_path_factory.mktemp("in") / "set", seed=0, n_train_per_class=6, n_val_per_class=3)


def test_imagefolder_reads_it(small: Path) -> None:
    from torchvision.datasets import ImageFolder

    train, val = ImageFolder(str(small / "train")), ImageFolder(str(small / "val"))
    assert train.classes == val.classes == sorted(fashion_mnist.CLASS_SLUGS)
    assert len(train) == 60 and len(val) == 30
    assert np.bincount(train.targets).tolist() == [6] * 10
    image, _ = train[0]
    assert image.size == (32, 32) and image.mode == "RGB"
    assert imagenet.check_layout(small) == train.classes


@pytest.mark.parametrize("split", ["train", "val"])
def test_images_are_the_source_images_of_their_class(small: Path, split: str) -> None:
    images, labels = fashion_mnist.load(imagenet.SPLITS[split])
    files = sorted((small / split).rglob("*.png"))
    for path in files[:: max(1, len(files) // 12)]:
        index = int(path.stem[-5:])  # the Fashion-MNIST index names the file
        pixels = np.asarray(Image.open(path))  # [32, 32]
        assert pixels.shape == (32, 32)
        np.testing.assert_array_equal(pixels[2:30, 2:30], images[index])  # 28x28, zero-padded by 2
        assert pixels[:2].sum() == 0 and pixels[:, :2].sum() == 0
        assert path.parent.name == fashion_mnist.CLASS_SLUGS[labels[index]]


def test_deterministic_and_seeded(small: Path, tmp_path: Path) -> None:
    again = imagenet.write(tmp_path / "again", seed=0, n_train_per_class=6, n_val_per_class=3)
    other = imagenet.write(tmp_path / "other", seed=1, n_train_per_class=6, n_val_per_class=3)
    assert _digest(again) == _digest(small)
    assert _digest(other) != _digest(small)


def test_train_and_val_come_from_different_splits(small: Path) -> None:
    assert all("_train" in p.stem for p in (small / "train").rglob("*.png"))
    assert all("_test" in p.stem for p in (small / "val").rglob("*.png"))


def test_ensure_writes_once_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    write = imagenet.write

    def small_write(root: Path, seed: int = 0) -> Path:
        calls.append(root)
        return write(root, seed=seed, n_train_per_class=2, n_val_per_class=1)

    monkeypatch.setattr(imagenet, "write", small_write)
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    root = imagenet.ensure()
    assert root == tmp_path / "embedded" / "imagenet"
    assert imagenet.ensure() == root and len(calls) == 1
    assert calls[0] != root  # written elsewhere, then renamed into place
    assert sorted(p.name for p in root.parent.iterdir()) == ["imagenet"]  # no temporary folder left behind
    assert len(list((root / "train").rglob("*.png"))) == 20


def test_ensure_replaces_an_incomplete_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write = imagenet.write
    monkeypatch.setattr(imagenet, "write", lambda root, seed=0: write(root, seed, 1, 1))
    root = tmp_path / "set"
    (root / "train" / "tshirt").mkdir(parents=True)  # a writer killed before the rename would not leave this,
    (root / "train" / "tshirt" / "junk.png").write_bytes(b"")  # but an older or hand-made folder might
    imagenet.ensure(root)
    assert not (root / "train" / "tshirt" / "junk.png").exists()
    assert imagenet.check_layout(root) == sorted(fashion_mnist.CLASS_SLUGS)


def test_too_many_per_class_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_per_class=7000"):
        imagenet.write(tmp_path, n_train_per_class=7000, n_val_per_class=1)
