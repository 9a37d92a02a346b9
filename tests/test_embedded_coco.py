"""The embedded COCO-layout set: deterministic, read unchanged by pycocotools and by mmdet's CocoDataset, annotations
consistent with the pixels (masks inside boxes, areas equal to the masks, labels of the garments drawn), and cached
once by `ensure` without half-written sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedded import coco, fashion_mnist


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return coco.write(tmp_path_factory.mktemp("coco") / "set", seed=0, n_train=24, n_val=8)


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def test_layout_and_determinism(small_set: Path, tmp_path: Path) -> None:
    again = coco.write(tmp_path / "again", seed=0, n_train=24, n_val=8)
    other = coco.write(tmp_path / "other", seed=1, n_train=24, n_val=8)
    for split in ("train", "val"):
        ann = coco.ann_file(small_set, split)
        assert ann.read_bytes() == coco.ann_file(again, split).read_bytes()
        assert ann.read_bytes() != coco.ann_file(other, split).read_bytes()
        data = json.loads(ann.read_text())
        assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
        for img in data["images"]:
            path = small_set / f"{split}2017" / img["file_name"]
            assert path.read_bytes() == (again / f"{split}2017" / img["file_name"]).read_bytes()
            assert _read_image(path).shape == (img["height"], img["width"], 3)


@pytest.mark.parametrize("split", ["train", "val"])
def test_pycocotools_reads_consistent_annotations(small_set: Path, split: str) -> None:
    from pycocotools.coco import COCO

    api = COCO(str(coco.ann_file(small_set, split)))
    assert [api.cats[i]["name"] for i in sorted(api.cats)] == list(fashion_mnist.CLASSES)
    assert sorted(api.cats) == list(range(1, 11))
    assert len(api.imgs) == (24 if split == "train" else 8) and len(api.anns) >= len(api.imgs)
    for ann in api.anns.values():
        img = api.imgs[ann["image_id"]]
        mask = api.annToMask(ann)  # [H, W] from the polygons
        assert mask.shape == (img["height"], img["width"])
        assert ann["iscrowd"] == 0 and ann["area"] > 0 and ann["area"] == mask.sum()
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        ys, xs = np.nonzero(mask)
        assert xs.min() >= np.floor(x) and xs.max() < np.ceil(x + w)  # mask inside its box, box tight on it
        assert ys.min() >= np.floor(y) and ys.max() < np.ceil(y + h)
        assert w > 0.5 * (xs.max() - xs.min() + 1) and h > 0.5 * (ys.max() - ys.min() + 1)
    # garments never overlap: every pixel belongs to at most one instance
    for image_id in api.imgs:
        masks = [api.annToMask(a) for a in api.loadAnns(api.getAnnIds(imgIds=image_id))]
        assert np.sum(masks, axis=0).max() <= 1


def test_masks_cover_the_drawn_garments(small_set: Path) -> None:
    """Pixels of a mask are bright garment pixels; away from every mask there is only the dim background noise."""
    import cv2
    from pycocotools.coco import COCO

    api = COCO(str(coco.ann_file(small_set, "train")))
    for image_id, info in api.imgs.items():
        grey = _read_image(small_set / "train2017" / info["file_name"])[:, :, 0].astype(float)
        anns = api.loadAnns(api.getAnnIds(imgIds=image_id))
        union = np.zeros_like(grey, dtype=bool)
        for ann in anns:
            mask = api.annToMask(ann).astype(bool)
            union |= mask
            # the silhouette (holes filled) is the garment's pixels above the threshold, a few dark inner ones aside
            assert (grey[mask] > coco.SILHOUETTE_THRESHOLD).mean() > 0.8, (image_id, ann["id"])
        near = cv2.dilate(union.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # polygon edges: +-2 px
        assert grey[~near].max() < 60  # nothing bright outside the instances: no unannotated garment


def test_garments_sit_in_the_pretraining_frame_of_their_slot(small_set: Path) -> None:
    """Version 3's geometry: canvases of whole 32 px slots; each garment inside the 28 px frame 2 px into its own slot
    (the tiny encoders' pretraining input), at most one garment per slot."""
    from pycocotools.coco import COCO

    api = COCO(str(coco.ann_file(small_set, "train")))
    sides = set()
    for image_id, info in api.imgs.items():
        assert info["height"] in coco.CANVAS_SIDES and info["width"] in coco.CANVAS_SIDES
        sides.add(info["height"])
        slots = []
        for ann in api.loadAnns(api.getAnnIds(imgIds=image_id)):
            x, y, w, h = ann["bbox"]
            sy, sx = int(y // coco.SLOT), int(x // coco.SLOT)
            margin = (coco.SLOT - coco.GARMENT) // 2
            assert sy * coco.SLOT + margin <= y and y + h <= sy * coco.SLOT + margin + coco.GARMENT, ann
            assert sx * coco.SLOT + margin <= x and x + w <= sx * coco.SLOT + margin + coco.GARMENT, ann
            slots.append((sy, sx))
        assert len(set(slots)) == len(slots)
    assert sides == set(coco.CANVAS_SIDES)


def test_categories_are_the_garments_drawn(small_set: Path) -> None:
    """Each instance's crop, matched to the Fashion-MNIST test class means, mostly agrees with its category (chance is
    10%)."""
    import cv2
    from pycocotools.coco import COCO

    images, labels = fashion_mnist.load("test")
    means = np.stack([images[labels == c].mean(0) for c in range(10)])  # [10, 28, 28]
    api = COCO(str(coco.ann_file(small_set, "val")))
    hits = []
    for ann in api.anns.values():
        info = api.imgs[ann["image_id"]]
        grey = _read_image(small_set / "val2017" / info["file_name"])[:, :, 0]
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        side = max(w, h)  # the garment was drawn in a square: centre the crop in one
        square = np.zeros((side, side), np.uint8)
        oy, ox = (side - h) // 2, (side - w) // 2
        square[oy : oy + h, ox : ox + w] = grey[y : y + h, x : x + w]
        crop = cv2.resize(square, (28, 28), interpolation=cv2.INTER_AREA).astype(float)
        hits.append(int(np.argmin(((means - crop) ** 2).sum((1, 2)))) + 1 == ann["category_id"])
    assert len(hits) >= 10 and np.mean(hits) > 0.4, np.mean(hits)


@pytest.mark.slow  # importing mmdet alone takes seconds
@pytest.mark.mm
def test_mmdet_coco_dataset_reads_it(small_set: Path) -> None:
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    ds = CocoDataset(
        data_root=str(small_set), ann_file="annotations/instances_train2017.json", data_prefix=dict(img="train2017/"),
        metainfo=dict(classes=coco.CLASSES), filter_cfg=None,
        pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True)],
    )
    raw = json.loads(coco.ann_file(small_set, "train").read_text())
    assert len(ds) == len(raw["images"]) and ds.metainfo["classes"] == coco.CLASSES
    sample = ds[0]
    first = raw["images"][0]
    wanted = [a for a in raw["annotations"] if a["image_id"] == first["id"]]
    assert sample["img"].shape == (first["height"], first["width"], 3)
    assert sorted(sample["gt_bboxes_labels"].tolist()) == sorted(a["category_id"] - 1 for a in wanted)
    assert len(sample["gt_masks"]) == len(wanted)
    areas = sorted(int(m.sum()) for m in sample["gt_masks"].to_ndarray())
    assert areas == sorted(int(a["area"]) for a in wanted)


def test_ensure_writes_once_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    root = coco.ensure()
    assert root == tmp_path / "embedded" / "coco"
    assert coco.ann_file(root, "train").is_file() and coco.ann_file(root, "val").is_file()
    assert len(json.loads(coco.ann_file(root, "train").read_text())["images"]) == coco.N_TRAIN
    stamp = coco.ann_file(root, "train").stat().st_mtime_ns

    def no_second_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure() rewrote a complete set")

    monkeypatch.setattr(coco, "write", no_second_write)
    assert coco.ensure() == root and coco.ann_file(root, "train").stat().st_mtime_ns == stamp
    assert [p.name for p in root.parent.iterdir()] == ["coco"]  # no temporary folder left behind


def test_ensure_replaces_a_half_written_set(tmp_path: Path) -> None:
    root = tmp_path / "half"
    (root / "train2017").mkdir(parents=True)
    (root / "train2017" / "000000000001.png").write_bytes(b"partial")  # a killed writer, no VERSION
    coco.ensure(root)
    assert (root / "VERSION").is_file()
    assert _read_image(root / "train2017" / "000000000001.png").ndim == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half"]
