"""COCO object detection and instance segmentation: Mask R-CNN on a plain ViT, as in the MAE paper's Table 4 (He et al.
2021), in the ViTDet form (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object Detection";
mmdet's `projects/ViTDet` configs), trained and scored by mmdet 3.3's own Runner, heads and CocoMetric (pycocotools).

The model is mmdet's `MaskRCNN` with the harness backbone `HarnessViT` (`backbones.mm`) in ViTDet's form
(`pyramid='simple'`: no class token, the pretrained grid's position embedding resampled to each input, windowed blocks
as ViTDet's) and ViTDet's simple feature pyramid: every level rescaled from the last block's map, then 1x1 and 3x3
convs with LayerNorm per level (`neck: simple`, `HarnessSimpleFPN`; no top-down fusion) and a max-pooled extra level.
`pyramid='taps'` with `neck: fpn` is the MAE paper's own first variant (four tapped blocks into mmdet's FPN). Then an
RPN and conv + fc box and mask heads (ViTDet: 2-conv RPN, 4-conv + 1-fc box head, 4-conv mask head), with LayerNorm
on channels (`HarnessLN2d`, timm's `LayerNorm2d`) in the conv heads where ViTDet puts it. Anchor and RoI strides are
the backbone's (patch / scale factor); `model.patch_size` runs a backbone at another patch size (ViTDet's ViT-H/14 at
16, its patch-embedding kernel interpolated bicubically). Recipes (`tasks/recipes/coco/*.yaml`) hold every number;
layer-wise lr decay goes through `HarnessLayerDecayOptimizerConstructor`, bf16 autocast on CUDA (`tasks.mmcommon`).

Data: the COCO 2017 layout (`annotations/instances_{train,val}2017.json`, `train2017/`, `val2017/`) under
`ctx.data_root`, or the embedded Fashion-MNIST set (`embedded.coco`) when `ctx.data_root` is None. Class names
come from the train annotation file's categories (id order), so COCO itself gets mmdet's 80 classes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import TaskContext, TaskResult, mmcommon
from tasks.recipes import load_recipe
from tasks.training import vis_backends

SPLITS = ("train", "val")
NECKS = ("simple", "fpn")
METRIC_KEYS = tuple(f"{kind}_mAP{tail}" for kind in ("bbox", "segm") for tail in ("", "_50", "_75", "_s", "_m", "_l"))
LAYER_NORM_2D = "HarnessLN2d"  # a name neither mmdet nor mmseg has (mmdet 3.3 ships no 2D LayerNorm outside projects/)


def _register_layer_norm_2d() -> None:
    """timm's channels-first LayerNorm as an mmcv norm layer (`norm_cfg=dict(type='HarnessLN2d')`)."""
    from mmengine.registry import MODELS
    from timm.layers import LayerNorm2d

    if MODELS.get(LAYER_NORM_2D) is None:
        MODELS.register_module(LAYER_NORM_2D, module=LayerNorm2d)


_register_layer_norm_2d()  # importing this module (custom_imports) registers it


# --- data ---------------------------------------------------------------------------------------------------------


def ann_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2017.json"


def _read_annotations(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {path} does not exist; a COCO data root holds annotations/instances_train2017.json, "
            f"annotations/instances_val2017.json, train2017/ and val2017/"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotation file {path} must hold a JSON object, not {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise KeyError(f"COCO annotation file {path} lacks the key(s) {', '.join(missing)}")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise KeyError(f"COCO annotation file {path}: images[{i}] lacks 'id' or 'file_name'")
    if not data["categories"]:
        raise ValueError(f"COCO annotation file {path} has no categories")
    return data


@dataclass(frozen=True)
class CocoLayout:
    classes: tuple[str, ...]  # category names in id order (train2017's categories)
    train_images: int  # train images with at least one annotation: those mmdet trains on (filter_empty_gt)


def check_coco_root(root: Path) -> CocoLayout:
    """Checks the COCO 2017 layout under `root` (files, JSON, keys, every listed image) before any model or runner is
    built; errors name the file at fault."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COCO data root {root} does not exist")
    found = {}
    for split in SPLITS:
        data = _read_annotations(ann_file(root, split))
        img_dir = root / f"{split}2017"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {img_dir} does not exist (listed by {ann_file(root, split)})")
        present = set(os.listdir(img_dir))
        absent = [img["file_name"] for img in data["images"] if img["file_name"] not in present]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) listed in {ann_file(root, split)} are missing from {img_dir}, "
                f"e.g. {img_dir / absent[0]}"
            )
        found[split] = data
    train = found["train"]
    annotated = {a.get("image_id") for a in train["annotations"]}
    if not annotated:
        raise ValueError(f"COCO annotation file {ann_file(root, 'train')} has no annotations to train on")
    classes = tuple(c["name"] for c in sorted(train["categories"], key=lambda c: c["id"]))
    return CocoLayout(classes=classes, train_images=sum(img["id"] in annotated for img in train["images"]))


def data_root(ctx: TaskContext) -> Path:
    if ctx.data_root is not None:
        return Path(ctx.data_root)
    from embedded import coco

    return coco.ensure(seed=0)  # the set is fixed data; ctx.seed varies the training only


# --- config -------------------------------------------------------------------------------------------------------


def _by_depth(recipe: dict[str, Any], depth: int, key: str) -> Any:
    """A per-size value of the recipe (`by_depth`, keyed by block count: 12 B, 24 L, 32 H); the nearest depth wins."""
    table = recipe.get("by_depth") or {}
    if not table:
        raise KeyError(f"coco recipe {recipe.get('name')!r}: {key} is null and there is no by_depth table")
    nearest = min(table, key=lambda d: abs(int(d) - depth))
    return table[nearest][key]


def _resolve(recipe: dict[str, Any], backbone: str) -> dict[str, Any]:
    """Fills the recipe's nulls that depend on the backbone (layer decay, drop path, epochs and milestones, global
    blocks, patch size)."""
    from backbones.mm import arch_shape  # (embed_dim, depth, patch) from the architecture on the meta device

    dim, depth, patch = arch_shape(backbone)
    out = json.loads(json.dumps(recipe))  # a deep copy of plain data
    for section, keys in (("optim", ("layer_decay", "drop_path_rate")), ("schedule", ("epochs", "milestones"))):
        for key in keys:
            if out[section][key] is None:
                out[section][key] = _by_depth(out, depth, key)
    model = out["model"]
    if model["window_size"] and model["global_blocks"] is None:  # ViTDet: 4 global blocks at the quarter points
        model["global_blocks"] = [depth // 4 * (i + 1) - 1 for i in range(4)]
    if model.get("patch_size") is None:
        model["patch_size"] = patch
    if model.get("neck", "simple") not in NECKS:
        raise ValueError(f"coco recipe key model.neck must be one of {', '.join(NECKS)}, not {model['neck']!r}")
    out["backbone_shape"] = dict(embed_dim=dim, depth=depth, patch_size=int(model["patch_size"]))
    return out


def _heads(
    m: dict[str, Any], recipe: dict[str, Any], width: int, strides: list[int], num_classes: int
) -> dict[str, Any]:
    """RPN and RoI heads of mmdet's Mask R-CNN in ViTDet's form: LayerNorm in the conv heads, the backbone's strides."""
    norm = dict(type=LAYER_NORM_2D, requires_grad=True)
    roi = dict(type="SingleRoIExtractor", featmap_strides=strides, out_channels=width)
    # torchvision's RoIAlign (the same aligned bilinear pooling): mmcv 2.1's CUDA kernel has no bf16, torchvision's
    # autocasts to fp32 under bf16 autocast
    align = dict(type="RoIAlign", sampling_ratio=0, aligned=True, use_torchvision=True)
    rpn_head = dict(
        type="RPNHead", in_channels=width, feat_channels=width, num_convs=m["rpn_convs"],
        anchor_generator=dict(type="AnchorGenerator", scales=m["anchor_scales"], ratios=[0.5, 1.0, 2.0],
                              strides=[*strides, 2 * strides[-1]]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    )
    roi_head = dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(roi, roi_layer=dict(align, output_size=7)),
        bbox_head=dict(
            type="ConvFCBBoxHead", num_shared_convs=m["box_convs"], num_shared_fcs=1, in_channels=width,
            conv_out_channels=width, norm_cfg=norm, fc_out_channels=m["fc_channels"], roi_feat_size=7,
            num_classes=num_classes, reg_class_agnostic=False,
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        mask_roi_extractor=dict(roi, roi_layer=dict(align, output_size=14)),
        mask_head=dict(
            type="FCNMaskHead", num_convs=m["mask_convs"], in_channels=width, conv_out_channels=width, norm_cfg=norm,
            num_classes=num_classes, loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0),
        ),
    )
    return dict(rpn_head=rpn_head, roi_head=roi_head, **_train_test_cfg(recipe["rpn"], recipe["rcnn"]))


def _train_test_cfg(rpn: dict[str, Any], rcnn: dict[str, Any]) -> dict[str, Any]:
    """Assigners, samplers and NMS of mmdet's `mask-rcnn_r50_fpn.py`, with the recipe's sample and proposal counts."""
    def assigner(pos: float, neg: float, min_pos: float) -> dict[str, Any]:
        return dict(type="MaxIoUAssigner", pos_iou_thr=pos, neg_iou_thr=neg, min_pos_iou=min_pos,
                    match_low_quality=True, ignore_iof_thr=-1)

    def proposals(pre: int, post: int) -> dict[str, Any]:
        return dict(nms_pre=pre, max_per_img=post, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0)

    return dict(
        train_cfg=dict(
            rpn=dict(assigner=assigner(0.7, 0.3, 0.3), allowed_border=-1, pos_weight=-1, debug=False,
                     sampler=dict(type="RandomSampler", num=rpn["batch_per_image"], pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False)),
            rpn_proposal=proposals(rpn["train_pre_nms"], rpn["train_post_nms"]),
            rcnn=dict(assigner=assigner(0.5, 0.5, 0.5), mask_size=28, pos_weight=-1, debug=False,
                      sampler=dict(type="RandomSampler", num=rcnn["batch_per_image"], pos_fraction=0.25,
                                   neg_pos_ub=-1, add_gt_as_proposals=True)),
        ),
        test_cfg=dict(
            rpn=proposals(rpn["test_pre_nms"], rpn["test_post_nms"]),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=rcnn["detections"],
                      mask_thr_binary=0.5),
        ),
    )


def model_cfg(ctx: TaskContext, recipe: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """mmdet's `MaskRCNN` on `HarnessViT`, its FPN taking the pyramid's channels and strides."""
    from backbones import mm
    from backbones.registry import get_spec

    m, data = recipe["model"], recipe["data"]
    scales = [float(s) for s in m["scale_factors"]]
    channels = mm.pyramid_channels(ctx.backbone, m["pyramid"], scales)
    strides = mm.pyramid_strides(ctx.backbone, scales, patch_size=m.get("patch_size"))
    if not all(float(s).is_integer() for s in strides):
        raise ValueError(
            f"backbone {ctx.backbone!r}: pyramid strides {strides} must be integers for mmdet's anchors "
            f"(set the recipe's model.patch_size, e.g. 16)"
        )
    strides = [int(s) for s in strides]
    image = data["image_size"] or [get_spec(ctx.backbone).img_size] * 2
    preprocessor = dict(type="DetDataPreprocessor", **mmcommon.data_preprocessor_stats(ctx.backbone), bgr_to_rgb=True,
                        pad_mask=True, pad_size_divisor=2 * strides[-1])
    if data["lsj"]:  # every batch padded to the fixed LSJ square (ViTDet)
        preprocessor["batch_augments"] = [dict(type="BatchFixedSizePad", size=tuple(image), pad_mask=True)]
    backbone = mmcommon.backbone_cfg(
        ctx, img_size=image, pyramid=m["pyramid"], drop_path_rate=recipe["optim"]["drop_path_rate"],
        window_size=m["window_size"], global_blocks=m["global_blocks"] or (), taps=m["taps"], scale_factors=scales,
        rel_pos=m.get("rel_pos"), window_pos=m.get("window_pos") or "interpolate",
        frozen=m.get("freeze_backbone", False),
    )
    if m.get("patch_size") is not None:
        backbone["patch_size"] = int(m["patch_size"])
    neck = _neck(m, channels, len(strides) + 1)  # the extra level: max-pool of the last
    heads = _heads(m, recipe, m["neck_channels"], strides, num_classes)
    return dict(type="MaskRCNN", data_preprocessor=preprocessor, backbone=backbone, neck=neck, **heads)


def _neck(m: dict[str, Any], channels: list[int], num_outs: int) -> dict[str, Any]:
    """ViTDet's simple feature pyramid convs (`HarnessSimpleFPN`), or mmdet's FPN (top-down fusion) for `neck: fpn`."""
    neck = m.get("neck", "simple")
    if neck == "simple":
        if m["pyramid"] != "simple":
            raise ValueError("coco recipe: model.neck 'simple' needs model.pyramid 'simple' (ViTDet); use neck 'fpn'")
        return dict(type="HarnessSimpleFPN", in_channels=channels, out_channels=m["neck_channels"], num_outs=num_outs)
    return dict(type="FPN", in_channels=channels, out_channels=m["neck_channels"], num_outs=num_outs,
                norm_cfg=dict(type=LAYER_NORM_2D, requires_grad=True))


def _pipelines(recipe: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test) pipelines: LSJ (ViTDet) when `data.lsj`, else scale jitter around the image's own size."""
    data = recipe["data"]
    load = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True)]
    if data["lsj"]:
        lo, hi = data["scale_range"]
        size = tuple(data["image_size"])
        jitter = [
            dict(type="RandomResize", scale=size, ratio_range=(lo, hi), keep_ratio=True),
            dict(type="RandomCrop", crop_type="absolute_range", crop_size=size, recompute_bbox=True,
                 allow_negative_crop=True),
            dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
        ]
        # long side to 1024, then the square the ViT was trained on (mmdet's projects/ViTDet test pipeline)
        test_resize = [dict(type="Resize", scale=size, keep_ratio=True),
                       dict(type="Pad", size=size, pad_val=dict(img=(114, 114, 114)))]
    else:  # images kept near their own size (the embedded set's garments are at the tiny ViT's pretraining scale)
        scales = [float(s) for s in data["native_scales"]]
        choices = [[dict(type="Resize", scale_factor=s, keep_ratio=True)] if s != 1.0 else [] for s in scales]
        jitter = [dict(type="RandomChoice", transforms=choices)] if len(choices) > 1 else list(choices[0])
        test_resize = [dict(type="Resize", scale_factor=1.0, keep_ratio=True)]  # sets the scale_factor meta (1, 1)
    train = [*load, dict(type="RandomFlip", prob=0.5), *jitter, dict(type="PackDetInputs")]
    meta = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")
    test = [dict(type="LoadImageFromFile"), *test_resize, load[1], dict(type="PackDetInputs", meta_keys=meta)]
    return train, test


def _dataloader(root: Path, split: str, classes: tuple[str, ...], pipeline: list[dict[str, Any]], batch_size: int,
                workers: int) -> dict[str, Any]:
    train = split == "train"
    return dict(
        batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=train),
        dataset=dict(
            type="CocoDataset", data_root=str(root), ann_file=f"annotations/instances_{split}2017.json",
            data_prefix=dict(img=f"{split}2017/"), metainfo=dict(classes=classes), pipeline=pipeline,
            filter_cfg=dict(filter_empty_gt=True, min_size=4) if train else None, test_mode=not train,
        ),
    )


def build_config(ctx: TaskContext, recipe: dict[str, Any], root: Path, layout: CocoLayout) -> dict[str, Any]:
    """The complete mmengine config (a plain dict of registered type names) of one run."""
    data, sched, opt = recipe["data"], recipe["schedule"], recipe["optim"]
    batch = mmcommon.per_gpu_batch(data["batch_size"], ctx.launcher)
    iters_per_epoch = math.ceil(layout.train_images / data["batch_size"])
    epochs = sched["epochs"]
    train_pipeline, test_pipeline = _pipelines(recipe)
    cfg = mmcommon.runtime_cfg(ctx, "mmdet", max_iters=epochs * iters_per_epoch, val_interval=1,
                               checkpoint_interval=1, log_interval=sched["log_interval"])
    # Epochs rather than mmengine's iteration loop: resuming an iteration loop replays every batch already trained.
    cfg["custom_imports"] = dict(cfg["custom_imports"], imports=[*cfg["custom_imports"]["imports"], "tasks.detection"])
    cfg["experiment_name"] = f"coco-{cfg['experiment_name']}"
    val_every = sched["eval_interval"] or epochs  # the last epoch is always evaluated
    cfg["train_cfg"] = dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=val_every)
    cfg["default_hooks"]["checkpoint"].update(by_epoch=True, interval=sched["checkpoint_interval"],
                                              max_keep_ckpts=sched["max_keep_ckpts"])
    cfg["default_hooks"]["logger"]["log_metric_by_epoch"] = True
    cfg["log_processor"] = dict(by_epoch=True)
    optimizer = dict(type="AdamW", lr=opt["lr"], betas=tuple(opt["betas"]), weight_decay=opt["weight_decay"])
    clip = dict(max_norm=opt["grad_clip"]) if opt["grad_clip"] else None
    milestones = [int(e * iters_per_epoch) for e in sched["milestones"]]
    cfg.update(
        model=model_cfg(ctx, recipe, num_classes=len(layout.classes)),
        train_dataloader=_dataloader(root, "train", layout.classes, train_pipeline, batch, data["num_workers"]),
        val_dataloader=_dataloader(root, "val", layout.classes, test_pipeline, data["val_batch_size"],
                                   data["num_workers"]),
        val_evaluator=dict(type="CocoMetric", ann_file=str(ann_file(root, "val")), metric=["bbox", "segm"]),
        optim_wrapper=mmcommon.optim_wrapper_cfg(optimizer, opt["layer_decay"], ctx.device, clip_grad=clip,
                                                 decay_rule="detectron2"),
        param_scheduler=[
            dict(type="LinearLR", start_factor=sched["warmup_factor"], by_epoch=False, begin=0,
                 end=sched["warmup_iters"]),
            dict(type="MultiStepLR", by_epoch=False, begin=0, end=epochs * iters_per_epoch, milestones=milestones,
                 gamma=0.1),
        ],
        visualizer=dict(type="DetLocalVisualizer", vis_backends=vis_backends(),
                        name=cfg["experiment_name"]),
    )
    cfg.pop("test_cfg", None)  # no test loop: val2017 is the evaluation, as in the paper
    return cfg


# --- run ----------------------------------------------------------------------------------------------------------


def to_percent(metrics: dict[str, float]) -> dict[str, float]:
    """CocoMetric's `coco/bbox_mAP` in [0, 1] -> `bbox_mAP` in percent. pycocotools' -1 (no val object of that size)
    stays -1; a model that detects nothing at all (CocoMetric then returns nothing) scores 0."""
    out = {key: 0.0 for key in METRIC_KEYS}
    for key, value in metrics.items():
        short = key.split("/", 1)[-1]
        if short in out:
            out[short] = round(100.0 * float(value), 2) if value >= 0 else -1.0
    return out


def run(ctx: TaskContext) -> TaskResult:
    """Fine-tunes Mask R-CNN with `ctx.backbone` on train2017 and evaluates on val2017 (bbox and segm AP, percent)."""
    recipe = load_recipe("coco", ctx.recipe, ctx.overrides)
    root = data_root(ctx)
    layout = check_coco_root(root)  # bad data fails here, before any model is built
    mmcommon.import_adapter()
    recipe = _resolve(recipe, ctx.backbone)
    cfg = build_config(ctx, recipe, root, layout)
    resumed_from = mmcommon.latest_checkpoint(ctx.work_dir)
    runner = mmcommon.build_runner(cfg, ctx.work_dir)
    meter = mmcommon.attach_cost_meter(runner, ctx.device)
    raw = mmcommon.train_and_validate(runner)
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    backbone = model.backbone
    extra = dict(
        pyramid=backbone.pyramid,
        strides=[int(s) for s in backbone.strides],
        load_report=backbone.load_report,
        detected=bool(raw),  # False: nothing scored above the threshold on val2017
        resumed_from=resumed_from,
        data_root=str(root),
        embedded_data=ctx.data_root is None,
        classes=list(layout.classes),
        experiment_name=cfg["experiment_name"],
        cost=meter.summary(),
    )
    return TaskResult(metrics=to_percent(raw), recipe=recipe, extra=extra)
