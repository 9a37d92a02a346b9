"""The embedded ADE20K-layout set (`embedded.ade20k`): layout, determinism, labels, caching, and reading it with
mmseg's datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from embedded import ade20k
from embedded import fashion_mnist as fm


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ade20k.write(tmp_path_factory.mktemp("ade"), seed=0, n_train=6, n_val=3)


def test_layout_and_annotations(small: Path) -> None:
    assert small.name == "ADEChallengeData2016"
    for split, prefix, n in (("training", "ADE_train", 6), ("validation", "ADE_val", 3)):
        images = sorted((small / "images" / split).glob("*.jpg"))
        anns = sorted((small / "annotations" / split).glob("*.png"))
        assert len(images) == n and [p.stem for p in images] == [p.stem for p in anns]
        assert images[0].name == f"{prefix}_00000001.jpg"
        for image, ann in zip(images, anns, strict=True):
            img = cv2.imread(str(image), cv2.IMREAD_COLOR)
            seg = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
            assert seg.dtype == np.uint8 and seg.ndim == 2 and seg.shape == img.shape[:2] == (64, 64)
            labels = set(np.unique(seg).tolist())
            assert 0 in labels and len(labels) >= 2 and max(labels) <= len(ade20k.CLASSES)
            # labelled pixels are the bright garment silhouettes, background is dark noise
            grey = img[..., 0].astype(int)
            assert grey[seg > 0].mean() > grey[seg == 0].mean() + 40
    meta = json.loads((small / ade20k.META_FILE).read_text())
    assert meta["classes"] == list(fm.CLASSES) and meta["seed"] == 0


def test_garments_sit_in_the_pretraining_frame_of_their_slot(small: Path) -> None:
    """Version 2's geometry: each labelled garment inside the 28 px frame 2 px into its own 32 px slot (the tiny
    encoders' pretraining input), one to three slots filled, nothing labelled or bright outside those frames."""
    margin = (ade20k.SLOT - ade20k.GARMENT) // 2
    filled = []
    for ann in sorted(small.glob("annotations/*/*.png")):
        seg = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
        img = cv2.imread(str(ann).replace("annotations", "images").replace(".png", ".jpg"), cv2.IMREAD_GRAYSCALE)
        frames = np.zeros(seg.shape, dtype=bool)
        n = 0
        for sy in range(0, ade20k.CANVAS, ade20k.SLOT):
            for sx in range(0, ade20k.CANVAS, ade20k.SLOT):
                slot = seg[sy : sy + ade20k.SLOT, sx : sx + ade20k.SLOT]
                inner = slot[margin : margin + ade20k.GARMENT, margin : margin + ade20k.GARMENT]
                assert inner.sum() == slot.sum()  # nothing labelled in the slot's 2 px margin
                labels = set(np.unique(inner).tolist()) - {0}
                assert len(labels) <= 1  # one garment per slot
                if labels:
                    n += 1
                    frames[sy + margin : sy + margin + ade20k.GARMENT, sx + margin : sx + margin + ade20k.GARMENT] = 1
        assert ade20k.GARMENTS[0] <= n <= ade20k.GARMENTS[1]
        assert img[~frames].max() < 60  # only dim noise outside the garments' frames (JPEG ringing included)
        filled.append(n)
    assert len(set(filled)) > 1  # the number of garments varies


def test_canvas_must_be_whole_slots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        ade20k.write(tmp_path, n_train=1, n_val=1, size=48)


def test_deterministic_from_seed(small: Path, tmp_path: Path) -> None:
    again = ade20k.write(tmp_path / "a", seed=0, n_train=6, n_val=3)
    other = ade20k.write(tmp_path / "b", seed=1, n_train=6, n_val=3)
    assert _digest(again) == _digest(small)
    assert _digest(other) != _digest(small)


def test_ensure_writes_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    root = ade20k.ensure()
    assert root.is_relative_to(tmp_path / "data" / "embedded") and root.name == "ADEChallengeData2016"
    assert len(list((root / "images" / "training").glob("*.jpg"))) == 200
    assert len(list((root / "images" / "validation").glob("*.jpg"))) == 200
    stamp = (root / "images" / "training" / "ADE_train_00000001.jpg").stat().st_mtime_ns
    assert ade20k.ensure() == root
    assert (root / "images" / "training" / "ADE_train_00000001.jpg").stat().st_mtime_ns == stamp  # reused
    leftovers = [p.name for p in root.parent.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary folder was renamed into place


@pytest.mark.mm
@pytest.mark.slow  # importing mmseg's datasets takes most of it
def test_reads_with_mmseg_datasets(small: Path) -> None:
    """ADE20KDataset reads the layout as it is (ADE's label convention); with the garment classes as `metainfo`, its
    base class with ADE20KDataset's settings does (ADE20KDataset takes only a subset of its own names)."""
    from mmengine.registry import DefaultScope
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]  # the dataset's reduce_zero_label
    prefix = dict(img_path="images/training", seg_map_path="annotations/training")
    raw = cv2.imread(str(small / "annotations" / "training" / "ADE_train_00000001.png"), cv2.IMREAD_UNCHANGED)
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)  # reduce_zero_label: 0 -> ignore, k -> k - 1

    with DefaultScope.overwrite_default_scope("mmseg"):
        _check_datasets(small, prefix, pipeline, expected, ADE20KDataset, BaseSegDataset)


def _check_datasets(
    small: Path, prefix: dict, pipeline: list, expected: np.ndarray, ade_cls: type, base_cls: type
) -> None:
    ade = ade_cls(data_root=str(small), data_prefix=prefix, pipeline=pipeline)
    assert len(ade) == 6
    assert np.array_equal(ade[0]["gt_seg_map"], expected)
    with pytest.raises(ValueError, match="not a subset"):
        ade_cls(data_root=str(small), data_prefix=prefix, pipeline=pipeline,
                      metainfo=dict(classes=ade20k.CLASSES))  # fmt: skip

    ours = base_cls(
        data_root=str(small), data_prefix=prefix, pipeline=pipeline, img_suffix=".jpg", seg_map_suffix=".png",
        reduce_zero_label=True, metainfo=dict(classes=ade20k.CLASSES, palette=[list(c) for c in ade20k.PALETTE]),
    )  # fmt: skip
    assert ours.metainfo["classes"] == ade20k.CLASSES and len(ours) == 6
    assert np.array_equal(ours[0]["gt_seg_map"], expected)
