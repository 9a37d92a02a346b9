"""The OpenMMLab stack works here (issue 2): one training iteration and one evaluation of a real mmdet Mask R-CNN and of
a real mmseg UperNet through mmengine's Runner on CPU, scored by the real CocoMetric (pycocotools) and IoUMetric.

The backbone is the registry's `test_vit` (4 blocks, width 32, patch 8) through the harness's `HarnessViT`
(backbones.mm) with the ViTDet simple pyramid, so this also proves the adapter inside both libraries' real models.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.mm

IMG = 64  # side of every test image
ADAPTER = dict(imports=["backbones.mm"], allow_failed_imports=False)


def _backbone() -> tuple[dict[str, Any], list[int], list[int]]:
    """(backbone config, output channels, output strides)."""
    from backbones import mm

    cfg = dict(type="HarnessViT", backbone="test_vit", checkpoint=None, img_size=(IMG, IMG), pyramid="simple")
    return cfg, mm.pyramid_channels("test_vit", "simple"), mm.pyramid_strides("test_vit")


def _runner_cfg(tmp: Path, scope: str, model: dict[str, Any], train_ds: dict[str, Any], val_ds: dict[str, Any],
                evaluator: dict[str, Any]) -> dict[str, Any]:
    loader = dict(batch_size=2, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False))
    return dict(
        default_scope=scope,
        model=model,
        work_dir=str(tmp / scope),
        experiment_name=f"stack_{scope}_{uuid.uuid4().hex[:8]}",  # one scope per runner (default: a timestamp)
        train_dataloader=dict(loader, dataset=train_ds),
        val_dataloader=dict(loader, dataset=val_ds),
        val_evaluator=evaluator,
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=1, val_interval=1000),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1000), logger=dict(type="LoggerHook")),
        log_level="WARNING",
        custom_imports=ADAPTER,
    )


def _run(cfg: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """(loss of the one training iteration, metrics of one evaluation)."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    import backbones.mm  # noqa: F401  (Runner.from_cfg on a dict ignores custom_imports)

    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    loss = runner.message_hub.get_scalar("train/loss").current()
    return loss, runner.val()


def _mask_rcnn(channels: list[int], strides: list[int], backbone: dict[str, Any]) -> dict[str, Any]:
    from mmengine.config import Config

    base = Config.fromfile(_mmdet_config("_base_/models/mask-rcnn_r50_fpn.py"))
    model = base.model.to_dict()
    model["backbone"] = backbone
    model["data_preprocessor"]["pad_size_divisor"] = max(strides)
    model["neck"].update(in_channels=channels, out_channels=32)
    model["rpn_head"].update(in_channels=32, feat_channels=32)
    model["rpn_head"]["anchor_generator"]["strides"] = [*strides, strides[-1] * 2]
    roi = model["roi_head"]
    for key in ("bbox_roi_extractor", "mask_roi_extractor"):
        roi[key].update(out_channels=32, featmap_strides=strides)
    roi["bbox_head"].update(in_channels=32, fc_out_channels=64, num_classes=10)
    roi["mask_head"].update(in_channels=32, conv_out_channels=32, num_classes=10)
    model["train_cfg"]["rcnn"]["sampler"]["num"] = 64
    return model


def _mmdet_config(rel: str) -> str:
    import mmdet

    return str(Path(mmdet.__file__).parent / ".mim" / "configs" / rel)


@pytest.mark.slow
def test_mask_rcnn_trains_and_evaluates(tmp_path: Path) -> None:
    from embedded import coco

    root = coco.write(tmp_path / "coco", seed=0, n_train=4, n_val=2)
    backbone, channels, strides = _backbone()

    def dataset(split: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(type="CocoDataset", data_root=str(root), ann_file=f"annotations/instances_{split}2017.json",
                    data_prefix=dict(img=f"{split}2017/"), metainfo=dict(classes=coco.CLASSES), pipeline=pipeline,
                    test_mode=split == "val")

    resize = dict(type="Resize", scale=(IMG, IMG), keep_ratio=False)
    annotations = dict(type="LoadAnnotations", with_bbox=True, with_mask=True)
    train = dataset("train", [dict(type="LoadImageFromFile"), annotations, resize, dict(type="PackDetInputs")])
    val = dataset("val", [dict(type="LoadImageFromFile"), resize, annotations, dict(
        type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))])
    evaluator = dict(type="CocoMetric", ann_file=str(coco.ann_file(root, "val")), metric=["bbox", "segm"])
    cfg = _runner_cfg(tmp_path, "mmdet", _mask_rcnn(channels, strides, backbone), train, val, evaluator)

    loss, metrics = _run(cfg)
    assert math.isfinite(loss) and loss > 0
    for key in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50"):
        value = metrics[f"coco/{key}"]
        assert 0.0 <= value <= 1.0 or value == -1.0, (key, value)  # -1: pycocotools' "no such objects"


def _write_seg_set(root: Path, n: int, rng: np.random.Generator) -> None:
    """`n` images with one bright square each; label 1 inside the square, 0 elsewhere."""
    import cv2

    for split in ("train", "val"):
        (root / "img" / split).mkdir(parents=True)
        (root / "ann" / split).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 40, size=(IMG, IMG, 3), dtype=np.uint8)
            label = np.zeros((IMG, IMG), np.uint8)
            y, x, s = *rng.integers(0, IMG // 2, size=2), int(rng.integers(12, IMG // 2))
            img[y : y + s, x : x + s] = 220
            label[y : y + s, x : x + s] = 1
            cv2.imwrite(str(root / "img" / split / f"{i}.png"), img)
            cv2.imwrite(str(root / "ann" / split / f"{i}.png"), label)


def _upernet(channels: list[int], backbone: dict[str, Any]) -> dict[str, Any]:
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(IMG, IMG)),
        backbone=backbone,
        decode_head=dict(type="UPerHead", in_channels=channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=32, dropout_ratio=0.1, num_classes=2, norm_cfg=dict(type="BN", requires_grad=True),
                         align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


@pytest.mark.slow
def test_upernet_trains_and_evaluates(tmp_path: Path) -> None:
    root = tmp_path / "seg"
    _write_seg_set(root, n=4, rng=np.random.default_rng(0))
    backbone, channels, _ = _backbone()

    def dataset(split: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(type="BaseSegDataset", data_root=str(root), data_prefix=dict(img_path=f"img/{split}",
                    seg_map_path=f"ann/{split}"), img_suffix=".png", seg_map_suffix=".png",
                    metainfo=dict(classes=("background", "square"), palette=[[0, 0, 0], [255, 255, 255]]),
                    pipeline=pipeline)

    load = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    train = dataset("train", [*load, dict(type="RandomFlip", prob=0.5), dict(type="PackSegInputs")])
    val = dataset("val", [*load, dict(type="PackSegInputs")])
    evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
    cfg = _runner_cfg(tmp_path, "mmseg", _upernet(channels, backbone), train, val, evaluator)

    loss, metrics = _run(cfg)
    assert math.isfinite(loss) and loss > 0
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0
