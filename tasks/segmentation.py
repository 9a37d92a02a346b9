"""ADE20K semantic segmentation (Zhou et al. 2017) with UperNet (Xiao et al. 2018) on a plain ViT, as the MAE paper
(He et al. 2021, Table 5 and Sec. A.4) runs it through BEiT's mmseg code.

The model is mmseg's `EncoderDecoder` with the harness backbone `HarnessViT` (`backbones.mm`; four taps of the ViT
resampled to four strides, or ViTDet's simple pyramid), `UPerHead` and an `FCNHead` auxiliary head on the stride-16
level, as mmseg's `configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py`. Training, sliding-window testing and
the metrics (mmseg's `IoUMetric`: mIoU, mAcc, aAcc in percent) are mmengine's Runner and mmseg's; the recipe
(`tasks/recipes/ade20k/*.yaml`) is data. Data: the `ADEChallengeData2016` layout at `ctx.data_root`, or the embedded
Fashion-MNIST set (`embedded.ade20k`) when it is None (read by mmseg's `BaseSegDataset` with ADE20KDataset's
settings, since ADE20KDataset accepts only its own class names as `metainfo`). The layout and every image/annotation
pair are checked before the runner is built, so a broken file is named instead of failing deep inside a data loader.
Scalars go to mmengine's local files, and to TensorBoard or W&B with `harness run --log-backend` (`vis_backends()`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tasks import TaskContext, TaskResult, mmcommon
from tasks.recipes import load_recipe
from tasks.training import vis_backends

TASK = "ade20k"
SPLITS = ("training", "validation")
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
ADE_NUM_CLASSES = 150
EMBEDDED_META = "embedded.json"  # embedded.ade20k.META_FILE, read without importing the writer


def run(ctx: TaskContext) -> TaskResult:
    recipe = load_recipe(TASK, ctx.recipe, ctx.overrides)
    data_root, classes = resolve_data(ctx.data_root)
    check_data(data_root, verify=recipe["data"]["verify"], num_classes=len(classes) if classes else ADE_NUM_CLASSES)
    cfg = build_config(ctx, recipe, data_root, classes)
    resumed_from = mmcommon.latest_checkpoint(ctx.work_dir)
    runner = mmcommon.build_runner(cfg, ctx.work_dir)
    meter = mmcommon.attach_cost_meter(runner, ctx.device)
    start = time.perf_counter()
    metrics = mmcommon.train_and_validate(runner)
    backbone = getattr(runner.model, "module", runner.model).backbone
    return TaskResult(
        metrics={k: metrics[k] for k in ("mIoU", "mAcc", "aAcc")},
        recipe=recipe,
        extra=dict(
            pyramid=backbone.pyramid,
            taps=list(backbone.taps),
            load_report=backbone.load_report,
            resumed_from=resumed_from,
            iters=int(runner.iter),
            data_root=str(data_root),
            num_classes=len(classes) if classes else ADE_NUM_CLASSES,
            train_and_val_s=round(time.perf_counter() - start, 2),
            cost=meter.summary(),
        ),
    )


def resolve_data(data_root: Path | str | None) -> tuple[Path, tuple[str, ...] | None]:
    """The `ADEChallengeData2016` folder and its classes (None: ADE20K's own 150). `data_root` may name that folder
    or its parent; None writes (once) and uses the embedded set."""
    if data_root is None:
        from embedded import ade20k

        return ade20k.ensure(), tuple(ade20k.CLASSES)
    root = Path(data_root).expanduser()
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    meta = root / EMBEDDED_META
    if meta.is_file():
        return root, tuple(json.loads(meta.read_text())["classes"])
    return root, None


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"ADE20K data root {root}: folder {d} is missing; expected the ADEChallengeData2016 layout "
                f"images/{{training,validation}}/*.jpg and annotations/{{training,validation}}/*.png"
            )
    images = sorted(img_dir.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"ADE20K data root {root}: {img_dir} holds no .jpg images")
    pairs = [(img, ann_dir / f"{img.stem}.png") for img in images]
    missing = [ann for _, ann in pairs if not ann.is_file()]
    if missing:
        more = f" ({len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"annotation {missing[0]} is missing for image {img_dir / missing[0].stem}.jpg{more}")
    return pairs


def _check_header(path: Path, magic: bytes) -> None:
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if not head:
        raise ValueError(f"{path} is empty")
    if head != magic:
        raise ValueError(f"{path} is not a {'JPEG' if magic == JPEG_MAGIC else 'PNG'} file")


def _check_decoded(image: Path, ann: Path, num_classes: int) -> None:
    import cv2
    import numpy as np

    if not image.read_bytes().rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError(f"image {image} is truncated (no JPEG end marker)")
    img = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"image {image} cannot be decoded")
    seg = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
    if seg is None:
        raise ValueError(f"annotation {ann} cannot be decoded (truncated or not a PNG)")
    if seg.ndim != 2 or seg.dtype != np.uint8:
        raise ValueError(f"annotation {ann} must be a single-channel uint8 PNG, found shape {seg.shape} {seg.dtype}")
    if seg.shape != img.shape[:2]:
        raise ValueError(f"annotation {ann} is {seg.shape[1]}x{seg.shape[0]}, its image {img.shape[1]}x{img.shape[0]}")
    if int(seg.max()) > num_classes:
        raise ValueError(f"annotation {ann} has label {int(seg.max())}; labels are 0 (other) and 1..{num_classes}")


def check_data(root: Path, verify: str = "header", num_classes: int = ADE_NUM_CLASSES) -> None:
    """Raises, naming the folder or file, unless `root` has the ADE20K layout with an annotation for every image.

    `verify='header'` checks each file's signature (fast on the real 25k-image set); 'decode' decodes every pair and
    checks the label range (the embedded set, and any set small enough).
    """
    if verify not in ("header", "decode"):
        raise ValueError(f"recipe data.verify must be 'header' or 'decode', not {verify!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"ADE20K data root {root} does not exist")
    for split in SPLITS:
        for image, ann in _pairs(root, split):
            _check_header(image, JPEG_MAGIC)
            _check_header(ann, PNG_MAGIC)
            if verify == "decode":
                _check_decoded(image, ann, num_classes)


def _pyramid_norm(norm: str | None, pyramid: str, launcher: str) -> str:
    """The x4 branch's norm (null: the pyramid's published one), BatchNorm synchronised over the processes under DDP
    (mmseg's MAE/BEiT configs: SyncBN; a single process has plain BatchNorm, as mmseg's BN)."""
    from backbones import mm

    if norm not in (None, "bn", "ln"):
        raise ValueError(f"recipe model.pyramid_norm must be bn, ln or null, not {norm!r}")
    norm = norm or mm.PUBLISHED_NORM.get(pyramid, "ln")
    return "syncbn" if norm == "bn" and mmcommon.world_size(launcher) > 1 else norm


def _model_cfg(ctx: TaskContext, recipe: dict[str, Any], num_classes: int) -> dict[str, Any]:
    from backbones import mm
    from backbones.registry import get_spec

    m, d, t = recipe["model"], recipe["data"], recipe["test"]
    scale_factors = tuple(float(s) for s in m.get("scale_factors") or mm.SCALE_FACTORS)
    if 1.0 not in scale_factors:
        raise ValueError(f"recipe model.scale_factors={list(scale_factors)} needs 1.0 (the auxiliary head's level)")
    channels = mm.pyramid_channels(ctx.backbone, m["pyramid"], scale_factors)
    aux = scale_factors.index(1.0)
    norm = dict(type="SyncBN" if mmcommon.world_size(ctx.launcher) > 1 else "BN", requires_grad=True)
    crop = tuple(int(s) for s in d["crop"])
    test_cfg = dict(mode="whole")
    if t["mode"] == "slide":
        test_cfg = dict(mode="slide", crop_size=tuple(t["crop"]), stride=tuple(t["stride"]))
    window_pos = m.get("window_pos") or "interpolate"
    # 'tile' repeats the pretrained grid in every window: the encoder keeps that grid as loaded (built at its
    # pretraining size, not resampled to the crop's and back)
    built = crop if window_pos != "tile" else (get_spec(ctx.backbone).img_size,) * 2
    backbone = mmcommon.backbone_cfg(
        ctx, built, m["pyramid"], m["drop_path_rate"], m["window_size"], m["global_blocks"], m["taps"], scale_factors,
        rel_pos=m.get("rel_pos"), window_pos=window_pos, frozen=m.get("freeze_backbone", False),
    )
    backbone.update(pyramid_norm=_pyramid_norm(m["pyramid_norm"], m["pyramid"], ctx.launcher),
                    layer_scale=m["layer_scale"])
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor", **mmcommon.data_preprocessor_stats(ctx.backbone), bgr_to_rgb=True,
            pad_val=0, seg_pad_val=255, size=crop,
        ),
        backbone=backbone,
        decode_head=dict(
            type="UPerHead", in_channels=channels, in_index=list(range(len(channels))),
            pool_scales=tuple(m["pool_scales"]), channels=m["head_channels"] or mm.arch_shape(ctx.backbone)[0],
            dropout_ratio=m["dropout"], num_classes=num_classes, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        auxiliary_head=dict(
            type="FCNHead", in_channels=channels[aux], in_index=aux, channels=m["aux_channels"], num_convs=1,
            concat_input=False, dropout_ratio=m["dropout"], num_classes=num_classes, norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=m["aux_weight"]),
        ),
        train_cfg=dict(),
        test_cfg=test_cfg,
    )  # fmt: skip


def _dataloaders(ctx: TaskContext, recipe: dict[str, Any], root: Path, classes: tuple[str, ...] | None) -> dict:
    d = recipe["data"]
    crop = tuple(int(s) for s in d["crop"])
    scale = tuple(int(s) for s in d["scale"])
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),  # reduce_zero_label: the dataset's (mmseg deprecates it here)
        dict(type="RandomResize", scale=scale, ratio_range=tuple(d["ratio_range"]), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=d["cat_max_ratio"]),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=scale, keep_ratio=True),
        dict(type="LoadAnnotations"),  # after Resize: metrics on the original labels
        dict(type="PackSegInputs"),
    ]
    dataset = dict(type="ADE20KDataset", data_root=str(root), reduce_zero_label=True)
    if classes is not None:
        from embedded import ade20k

        # ADE20KDataset accepts only a subset of its own 150 class names as `metainfo` classes (it builds a label
        # map); another label set is read by its base class with ADE20KDataset's settings (.jpg / .png, zero = other).
        dataset.update(type="BaseSegDataset", img_suffix=".jpg", seg_map_suffix=".png")
        dataset["metainfo"] = dict(classes=classes, palette=[list(c) for c in ade20k.PALETTE[: len(classes)]])
    workers = int(d["num_workers"])

    def loader(split: str, batch: int, pipeline: list[dict], train: bool) -> dict:
        prefix = dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}")
        return dict(
            batch_size=batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            sampler=dict(type="InfiniteSampler" if train else "DefaultSampler", shuffle=train),
            dataset=dict(dataset, data_prefix=prefix, pipeline=pipeline),
        )

    val = loader("validation", int(d["val_batch_size"]), test_pipeline, train=False)
    return dict(
        train_dataloader=loader("training", mmcommon.per_gpu_batch(int(d["batch_size"]), ctx.launcher), train_pipeline,
                                train=True),
        val_dataloader=val,
        test_dataloader=val,
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        test_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
    )  # fmt: skip


def build_config(
    ctx: TaskContext, recipe: dict[str, Any], data_root: Path, classes: tuple[str, ...] | None
) -> dict[str, Any]:
    """The mmseg config of the run, as a dict of registered type names."""
    from backbones.registry import get_spec

    mmcommon.import_adapter()
    o, s = recipe["optim"], recipe["schedule"]
    layer_decay = o["layer_decay"] if o["layer_decay"] is not None else get_spec(ctx.backbone).layer_decay
    optimizer = dict(type="AdamW", lr=float(o["lr"]), betas=tuple(o["betas"]), weight_decay=float(o["weight_decay"]))
    max_iters = int(s["max_iters"])
    return dict(
        model=_model_cfg(ctx, recipe, len(classes) if classes else ADE_NUM_CLASSES),
        **_dataloaders(ctx, recipe, data_root, classes),
        optim_wrapper=mmcommon.optim_wrapper_cfg(optimizer, layer_decay, ctx.device, decay_rule="mmseg"),
        param_scheduler=mmcommon.poly_schedule(int(s["warmup_iters"]), max_iters, power=float(s["power"])),
        **mmcommon.runtime_cfg(
            ctx, "mmseg", max_iters, int(s["val_interval"]), int(s["checkpoint_interval"]), int(s["log_interval"])
        ),
        # as mmseg's default_runtime.py; the Runner names it after the experiment and saves under its log dir
        visualizer=dict(type="SegLocalVisualizer", vis_backends=vis_backends()),
    )
