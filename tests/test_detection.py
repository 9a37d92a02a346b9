"""The COCO task: recipes resolve per ViT size, the config builds a Mask R-CNN whose neck and heads match the pyramid,
pretrained weights survive mmengine's init, bad data fails with the file named before anything is built, and a tiny ViT
trains, evaluates (real CocoMetric, bbox and segm) and resumes through mmdet's Runner on the embedded set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from embedded import coco
from tasks import TaskContext
from tasks.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return coco.write(tmp_path_factory.mktemp("coco") / "set", seed=0, n_train=8, n_val=4)


@pytest.mark.parametrize("name", ["paper", "short", "tiny"])
def test_recipes_load_with_version(name: str) -> None:
    from tasks.detection import _resolve

    recipe = _resolve(load_recipe("coco", name), "mae_vit_base_patch16")
    assert recipe["version"] >= 1 and recipe["name"] == name
    assert recipe["schedule"]["epochs"] >= max(recipe["schedule"]["milestones"], default=0)


@pytest.mark.parametrize(
    "backbone, decay, drop_path, global_blocks, epochs, milestones",
    [
        ("mae_vit_base_patch16", 0.7, 0.1, [2, 5, 8, 11], 100, [88, 96]),
        ("mae_vit_large_patch16", 0.8, 0.4, [5, 11, 17, 23], 100, [88, 96]),
        ("mae_vit_huge_patch14", 0.9, 0.5, [7, 15, 23, 31], 75, [66, 72]),  # mask_rcnn_vitdet_h_75ep
    ],
)
def test_paper_recipe_follows_vitdet_per_size(
    backbone: str, decay: float, drop_path: float, global_blocks: list[int], epochs: int, milestones: list[int]
) -> None:
    from tasks.detection import _resolve

    recipe = _resolve(load_recipe("coco", "paper"), backbone)
    assert recipe["optim"]["layer_decay"] == decay and recipe["optim"]["drop_path_rate"] == drop_path
    assert recipe["model"]["global_blocks"] == global_blocks
    assert recipe["schedule"]["epochs"] == epochs and recipe["schedule"]["milestones"] == milestones
    assert recipe["model"]["patch_size"] == 16 and recipe["backbone_shape"]["patch_size"] == 16  # ViT-H/14 too
    assert recipe["model"]["neck"] == "simple" and recipe["model"]["pyramid"] == "simple"
    assert recipe["data"]["image_size"] == [1024, 1024] and recipe["optim"]["lr"] == 1e-4
    short = _resolve(load_recipe("coco", "short"), backbone)
    assert short["schedule"]["epochs"] == 25 and short["schedule"]["milestones"] == [22, 24]


def test_vit_h_paper_config_has_integer_strides(tmp_path: Path, small_set: Path) -> None:
    """ViT-H/14 used to raise (strides 3.5, 7, ...); at ViTDet's patch 16 its pyramid is 4 to 64."""
    cfg = _config(tmp_path, small_set, "paper", backbone="mae_vit_huge_patch14")
    model = cfg["model"]
    assert model["backbone"]["patch_size"] == 16 and model["neck"]["type"] == "HarnessSimpleFPN"
    assert model["roi_head"]["bbox_roi_extractor"]["featmap_strides"] == [4, 8, 16, 32]
    assert model["neck"]["in_channels"] == [320, 640, 1280, 1280]
    assert cfg["train_cfg"]["max_epochs"] == 75


def _config(
    tmp_path: Path, small_set: Path, recipe_name: str, backbone: str = "test_vit", **ctx_kwargs: Any
) -> dict[str, Any]:
    from tasks import detection

    ctx = TaskContext(backbone=backbone, work_dir=tmp_path / "work", recipe=recipe_name, data_root=small_set,
                      **ctx_kwargs)
    recipe = detection._resolve(load_recipe("coco", recipe_name, ctx.overrides), ctx.backbone)
    return detection.build_config(ctx, recipe, small_set, detection.check_coco_root(small_set))


def _build_model(cfg: dict[str, Any]) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope

    from tasks import mmcommon

    mmcommon.import_adapter()
    init_default_scope("mmdet")
    model = MODELS.build(ConfigDict(cfg["model"]))  # as the Runner does: mmdet reads train_cfg.rpn
    model.init_weights()
    return model


@pytest.mark.mm
@pytest.mark.parametrize("pyramid, neck", [("simple", "simple"), ("taps", "fpn")])
def test_config_builds_a_consistent_mask_rcnn(tmp_path: Path, small_set: Path, pyramid: str, neck: str) -> None:
    from backbones import mm

    overrides = {"model.pyramid": pyramid, "model.neck": neck, "model.patch_size": None}  # test_vit's own patch 8
    cfg = _config(tmp_path, small_set, "paper", overrides=overrides)
    assert "backbones.mm" in cfg["custom_imports"]["imports"] and cfg["launcher"] == "none"
    assert cfg["optim_wrapper"]["type"] == "OptimWrapper"  # CPU: no AmpOptimWrapper
    assert cfg["optim_wrapper"]["paramwise_cfg"] == {"layer_decay_rate": 0.7, "decay_rule": "detectron2"}  # ViTDet-B
    model = _build_model(cfg)
    backbone = model.backbone
    assert backbone.pyramid == pyramid
    assert all(isinstance(b.attn, mm.RelPosAttention) and b.attn.mode == "decomposed" for b in backbone.vit.blocks)
    strides = mm.pyramid_strides("test_vit")  # patch 8: 2, 4, 8, 16
    assert backbone.out_channels == mm.pyramid_channels("test_vit", pyramid)
    if neck == "simple":  # ViTDet: no top-down path, one 1x1 + 3x3 branch per level
        assert type(model.neck).__name__ == "HarnessSimpleFPN" and not hasattr(model.neck, "fpn_convs")
        assert [level[0].in_channels for level in model.neck.levels] == backbone.out_channels
        assert backbone.vit.cls_token is None  # ViTDet's backbone has no class token
    else:
        assert [m.in_channels for m in model.neck.lateral_convs] == backbone.out_channels
    assert model.rpn_head.prior_generator.strides == [(s, s) for s in [*strides, 2 * strides[-1]]]
    assert model.roi_head.bbox_roi_extractor.featmap_strides == strides
    norms = [type(m).__name__ for m in [*model.neck.modules(), *model.roi_head.mask_head.modules()]]
    assert "LayerNorm2d" in norms and not any("BatchNorm" in n for n in norms)
    feats = model.extract_feat(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in [*strides, 2 * strides[-1]]]


@pytest.mark.mm
def test_checkpoint_weights_survive_mmengine_init(tmp_path: Path, small_set: Path) -> None:
    from backbones.checkpoint import build_model
    from backbones.registry import get_spec

    vit = build_model(get_spec("test_vit"))
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    cfg = _config(tmp_path, small_set, "tiny", checkpoint=str(tmp_path / "vit.pth"))
    backbone = _build_model(cfg).backbone
    assert backbone.load_report["pretrained"] and backbone.load_report["checkpoint"] == str(tmp_path / "vit.pth")
    want = {**vit.state_dict(), "pos_embed": vit.pos_embed.detach()[:, 1:]}  # ViTDet: no class token, nor its entry
    assert set(backbone.vit.state_dict()) == set(want) - {"cls_token", "norm.weight", "norm.bias"}  # norm: unused
    for name, tensor in backbone.vit.state_dict().items():
        torch.testing.assert_close(tensor, want[name], msg=name)
    assert {"cls_token", "pos_embed[:, 0] (the class token's entry)"} <= set(backbone.load_report["removed"])


def _break(root: Path, how: str) -> Path:
    """A copy of the layout under `root`, broken one way; returns the path the error must name."""
    ann = coco.ann_file(root, "train")
    if how == "no_root":
        return root / "nowhere"
    if how == "no_annotations":
        coco.ann_file(root, "val").unlink()
        return coco.ann_file(root, "val")
    if how == "invalid_json":
        ann.write_text('{"images": [')
        return ann
    if how == "missing_key":
        data = json.loads(ann.read_text())
        del data["annotations"]
        ann.write_text(json.dumps(data))
        return ann
    if how == "missing_image":
        first = json.loads(ann.read_text())["images"][0]["file_name"]
        (root / "train2017" / first).unlink()
        return root / "train2017" / first
    if how == "no_image_folder":
        import shutil

        shutil.rmtree(root / "val2017")
        return root / "val2017"
    raise ValueError(how)


@pytest.mark.parametrize(
    "how, error",
    [
        ("no_root", FileNotFoundError),
        ("no_annotations", FileNotFoundError),
        ("invalid_json", ValueError),
        ("missing_key", KeyError),
        ("missing_image", FileNotFoundError),
        ("no_image_folder", FileNotFoundError),
    ],
)
def test_bad_data_is_named_before_anything_is_built(tmp_path: Path, how: str, error: type) -> None:
    from tasks.detection import run

    root = coco.write(tmp_path / "set", seed=0, n_train=3, n_val=2)
    culprit = _break(root, how)
    target = culprit if how == "no_root" else root
    work = tmp_path / "work"
    with pytest.raises(error, match=re.escape(str(culprit))):
        run(TaskContext(backbone="test_vit", work_dir=work, data_root=target))
    assert not work.exists()  # failed before any runner was made


QUICK = {"schedule.epochs": 1, "data.batch_size": 4, "data.val_batch_size": 4}


@pytest.mark.slow
@pytest.mark.mm
def test_tiny_vit_trains_evaluates_and_resumes(tmp_path: Path, small_set: Path) -> None:
    from tasks.detection import METRIC_KEYS, run

    work = tmp_path / "work"
    first = run(TaskContext(backbone="test_vit", work_dir=work, data_root=small_set, overrides=QUICK))
    assert set(first.metrics) == set(METRIC_KEYS)
    assert all(0.0 <= v <= 100.0 or v == -1.0 for v in first.metrics.values()), first.metrics
    assert first.extra["pyramid"] == "simple" and first.extra["resumed_from"] is None
    assert first.extra["load_report"]["backbone"] == "test_vit" and not first.extra["load_report"]["pretrained"]
    assert first.recipe["name"] == "tiny" and first.recipe["version"] >= 1
    assert (work / "epoch_1.pth").is_file()

    longer = dict(QUICK, **{"schedule.epochs": 2})
    second = run(TaskContext(backbone="test_vit", work_dir=work, data_root=small_set, overrides=longer))
    assert Path(second.extra["resumed_from"]).name == "epoch_1.pth"
    assert (work / "epoch_2.pth").is_file()
    state = torch.load(work / "epoch_2.pth", map_location="cpu", weights_only=False)
    assert state["meta"]["epoch"] == 2

    done = run(TaskContext(backbone="test_vit", work_dir=work, data_root=small_set, overrides=longer))
    assert Path(done.extra["resumed_from"]).name == "epoch_2.pth"  # complete: evaluated again, not retrained
    assert done.metrics == second.metrics
