"""The ADE20K task (`tasks.segmentation`): recipes as configs, data checks with clear errors, and real training and
evaluation through mmseg's Runner and IoUMetric on a few embedded canvases, with resume from the work_dir."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backbones import create_backbone
from embedded import ade20k
from tasks import TaskContext
from tasks import segmentation as seg
from tasks.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.mm


# A few steps on a few canvases: enough to go through every part of the real runner.
FAST = {
    "data.batch_size": 2,
    "data.val_batch_size": 2,
    "schedule.max_iters": 2,
    "schedule.warmup_iters": 1,
    "schedule.val_interval": 2,
    "schedule.checkpoint_interval": 1,
    "schedule.log_interval": 1,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ade20k.write(tmp_path_factory.mktemp("ade"), seed=0, n_train=8, n_val=4)


def _copy_set(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst / "ADEChallengeData2016")
    return dst / "ADEChallengeData2016"


# --- recipes as configs (no runner) ---


def test_paper_recipe_is_the_mae_beit_setup(tmp_path: Path) -> None:
    recipe = load_recipe("ade20k", "paper")
    assert recipe["version"] >= 1
    ctx = TaskContext(backbone="mae_vit_base_patch16", work_dir=tmp_path)
    cfg = seg.build_config(ctx, recipe, tmp_path, None)
    model = cfg["model"]
    assert model["backbone"]["type"] == "HarnessViT" and model["backbone"]["pyramid"] == "taps"
    assert model["backbone"]["img_size"] == (512, 512)
    assert model["backbone"]["rel_pos"] == "table"  # BEiT's relative position bias, as mmseg's MAE config
    assert model["decode_head"]["type"] == "UPerHead" and model["decode_head"]["in_channels"] == [768] * 4
    assert model["decode_head"]["num_classes"] == 150 and model["decode_head"]["channels"] == 768
    assert model["auxiliary_head"]["type"] == "FCNHead" and model["auxiliary_head"]["in_index"] == 2
    assert model["test_cfg"] == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    optim = cfg["optim_wrapper"]
    assert optim["type"] == "OptimWrapper"  # CPU; AmpOptimWrapper(bfloat16) on CUDA
    assert optim["optimizer"] == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert optim["constructor"] == "HarnessLayerDecayOptimizerConstructor"
    assert optim["paramwise_cfg"] == dict(layer_decay_rate=0.65, decay_rule="mmseg")  # mmseg's weight-decay rule
    # mmseg's MAE config: Feature2Pyramid's BatchNorm in the x4 branch (SyncBN under DDP), layer scale at 1.0
    assert model["backbone"]["pyramid_norm"] == "bn" and model["backbone"]["layer_scale"] == 1.0
    warmup, poly = cfg["param_scheduler"]
    assert (warmup["type"], warmup["end"], poly["type"], poly["end"]) == ("LinearLR", 1500, "PolyLR", 160000)
    assert cfg["train_dataloader"]["batch_size"] == 16 and cfg["train_cfg"]["max_iters"] == 160000
    assert cfg["train_dataloader"]["dataset"]["type"] == "ADE20KDataset"
    assert cfg["val_evaluator"]["type"] == "IoUMetric"
    assert cfg["custom_imports"] == dict(imports=["backbones.mm"], allow_failed_imports=False)
    assert cfg["resume"] is True and cfg["work_dir"] == str(tmp_path)


def test_short_and_tiny_recipes(tmp_path: Path) -> None:
    short = load_recipe("ade20k", "short")
    assert short["schedule"]["max_iters"] == 16000 and short["optim"]["lr"] == 1e-4
    tiny = load_recipe("ade20k", "tiny")
    # the whole canvas, one 8 x 8 token window per 32 px slot, the encoder kept at its 32 px pretraining grid
    assert tiny["data"]["crop"] == [ade20k.CANVAS] * 2 and tiny["schedule"]["max_iters"] <= 300
    assert tiny["data"]["ratio_range"] == [1.0, 1.0] and tiny["data"]["scale"][1] == ade20k.CANVAS
    ctx = TaskContext(backbone="mae_vit_tiny_patch4", work_dir=tmp_path)
    cfg = seg.build_config(ctx, tiny, tmp_path, ade20k.CLASSES)
    backbone = cfg["model"]["backbone"]
    assert backbone["window_size"] * 4 == ade20k.SLOT and backbone["window_pos"] == "tile"
    assert backbone["img_size"] == (32, 32) and cfg["model"]["test_cfg"] == dict(mode="whole")
    assert cfg["model"]["decode_head"]["num_classes"] == 10
    assert cfg["train_dataloader"]["dataset"]["metainfo"]["classes"] == ade20k.CLASSES


def test_simple_pyramid_selectable(tmp_path: Path) -> None:
    recipe = load_recipe("ade20k", "paper", {"model.pyramid": "simple"})
    cfg = seg.build_config(TaskContext(backbone="mae_vit_base_patch16", work_dir=tmp_path), recipe, tmp_path, None)
    assert cfg["model"]["backbone"]["pyramid"] == "simple"
    assert cfg["model"]["decode_head"]["in_channels"] == [192, 384, 768, 768]
    assert cfg["model"]["auxiliary_head"]["in_channels"] == 768


def test_pyramid_norm_is_sync_bn_under_ddp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    ctx = TaskContext(backbone="mae_vit_base_patch16", work_dir=tmp_path, launcher="pytorch")
    cfg = seg.build_config(ctx, load_recipe("ade20k", "paper"), tmp_path, None)
    assert cfg["model"]["backbone"]["pyramid_norm"] == "syncbn"
    assert cfg["model"]["decode_head"]["norm_cfg"]["type"] == "SyncBN"
    recipe = load_recipe("ade20k", "paper", {"model.pyramid": "simple"})
    assert seg.build_config(ctx, recipe, tmp_path, None)["model"]["backbone"]["pyramid_norm"] == "ln"  # ViTDet's
    with pytest.raises(ValueError, match="model.pyramid_norm"):
        seg.build_config(ctx, load_recipe("ade20k", "paper", {"model.pyramid_norm": "gn"}), tmp_path, None)


def test_unknown_recipe_key_and_launcher(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="pyramidd"):
        load_recipe("ade20k", "tiny", {"model.pyramidd": "simple"})
    ctx = TaskContext(backbone="test_vit", work_dir=tmp_path, launcher="mpi")
    with pytest.raises(ValueError, match="launcher must be one of"):
        seg.build_config(ctx, load_recipe("ade20k", "tiny"), tmp_path, ade20k.CLASSES)


# --- data checks ---


def test_missing_layout_is_named(tmp_path: Path) -> None:
    (tmp_path / "images" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"annotations/training is missing"):
        seg.check_data(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        seg.check_data(tmp_path / "nowhere")
    for d in ("annotations/training", "images/validation", "annotations/validation"):
        (tmp_path / d).mkdir(parents=True)
    ctx = TaskContext(backbone="test_vit", work_dir=tmp_path / "w", data_root=tmp_path, overrides=FAST)
    with pytest.raises(FileNotFoundError, match=r"images/training holds no \.jpg"):
        seg.run(ctx)  # checked before any runner is built
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("damage", ["missing_annotation", "truncated_png", "bad_jpeg", "truncated_jpeg", "bad_label"])
def test_broken_files_are_named(data_root: Path, tmp_path: Path, damage: str) -> None:
    root = _copy_set(data_root, tmp_path)
    ann = root / "annotations" / "validation" / "ADE_val_00000002.png"
    img = root / "images" / "validation" / "ADE_val_00000002.jpg"
    if damage == "missing_annotation":
        ann.unlink()
        victim, mode = ann, "header"
    elif damage == "truncated_png":
        ann.write_bytes(ann.read_bytes()[:40])
        victim, mode = ann, "decode"
    elif damage == "bad_jpeg":
        img.write_bytes(b"not an image at all")
        victim, mode = img, "header"
    elif damage == "truncated_jpeg":
        img.write_bytes(img.read_bytes()[:300])
        victim, mode = img, "decode"
    else:
        cv2.imwrite(str(ann), np.full((64, 64), 77, np.uint8))
        victim, mode = ann, "decode"
    with pytest.raises((FileNotFoundError, ValueError), match=str(victim)):
        seg.check_data(root, verify=mode, num_classes=10)


# --- real training and evaluation ---


def _check_metrics(metrics: dict[str, float]) -> None:
    assert set(metrics) == {"mIoU", "mAcc", "aAcc"}
    for k, v in metrics.items():
        assert math.isfinite(v) and 0.0 <= v <= 100.0, (k, v)


@pytest.mark.slow
def test_trains_evaluates_and_resumes(data_root: Path, tmp_path: Path) -> None:
    """mae_vit_tiny_patch4 from a checkpoint, UperNet on the taps pyramid, 2 steps, IoUMetric; then resume to 3."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"model": create_backbone("mae_vit_tiny_patch4", pretrained=False).state_dict()}, checkpoint)
    work_dir = tmp_path / "run"
    ctx = TaskContext(
        backbone="mae_vit_tiny_patch4", work_dir=work_dir, recipe="tiny", checkpoint=str(checkpoint),
        data_root=data_root.parent, overrides=FAST,
    )  # fmt: skip
    result = seg.run(ctx)
    _check_metrics(result.metrics)
    assert result.recipe["name"] == "tiny" and result.recipe["schedule"]["max_iters"] == 2
    assert result.extra["pyramid"] == "taps" and result.extra["iters"] == 2 and result.extra["resumed_from"] is None
    assert result.extra["cost"]["steps_train"] == 2 and result.extra["cost"]["steps_eval"] > 0
    assert result.extra["load_report"]["checkpoint"] == str(checkpoint) and result.extra["num_classes"] == 10
    assert (work_dir / "iter_2.pth").is_file()

    ctx.overrides = {**FAST, "schedule.max_iters": 3, "schedule.val_interval": 3}
    resumed = seg.run(ctx)  # the same work_dir: continues from iter_2.pth (written by mmengine, trusted)
    assert resumed.extra["resumed_from"] == str(work_dir / "iter_2.pth") and resumed.extra["iters"] == 3
    _check_metrics(resumed.metrics)
    assert (work_dir / "iter_3.pth").is_file()

    again = seg.run(ctx)  # nothing left to train: validated only, on the same weights
    assert again.extra["resumed_from"] == str(work_dir / "iter_3.pth") and again.extra["iters"] == 3
    assert again.metrics == resumed.metrics


@pytest.mark.slow
def test_simple_pyramid_trains(data_root: Path, tmp_path: Path) -> None:
    ctx = TaskContext(
        backbone="test_vit", work_dir=tmp_path / "run", recipe="tiny", data_root=data_root,
        overrides={**FAST, "model.pyramid": "simple", "schedule.max_iters": 1, "schedule.val_interval": 1},
    )  # fmt: skip
    result = seg.run(ctx)
    _check_metrics(result.metrics)
    assert result.extra["pyramid"] == "simple" and result.extra["load_report"]["pretrained"] is False


# --- evaluation memory ---


def test_evaluation_runs_without_cudnn_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's benchmark search over fp32 convolutions (evaluation is fp32, training bf16) allocates workspaces as
    large as the free GPU memory: validation runs with it off, training with the runner's setting."""
    import torch

    from tasks import mmcommon

    seen: dict[str, bool] = {}

    class FakeRunner:
        iter, train_loop = 4, type("Loop", (), {"val_interval": 4})

        def __init__(self) -> None:
            self.hooks: list = []

        def register_hook(self, hook: object) -> None:
            self.hooks.append(hook)

        def _each(self, name: str, *args: object) -> None:
            for h in self.hooks:
                getattr(h, name, lambda *a: None)(self, *args)

        def train(self) -> None:
            seen["train"] = torch.backends.cudnn.benchmark
            self._each("before_val")
            seen["val"] = torch.backends.cudnn.benchmark
            self._each("after_val_epoch", {"mIoU": 1.0})
            self._each("after_val")
            seen["after"] = torch.backends.cudnn.benchmark

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert mmcommon.train_and_validate(FakeRunner()) == {"mIoU": 1.0}
    assert seen == {"train": True, "val": False, "after": True}
