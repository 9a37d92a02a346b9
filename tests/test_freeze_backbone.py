"""Recipe key `model.freeze_backbone` (the floor of `harness run --controls`): through the real mmdet / mmseg
runners, the ViT encoder leaves training bit-identical and outside the optimizer, while the pyramid and heads move."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from embedded import ade20k, coco
from tasks import TaskContext
from tasks.recipes import load_recipe

pytestmark = [pytest.mark.mm, pytest.mark.slow]


def _coco_config(work: Path, root: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from tasks import detection

    ctx = TaskContext(backbone="test_vit", work_dir=work, data_root=root, overrides=overrides)
    recipe = detection._resolve(load_recipe("coco", "tiny", overrides), ctx.backbone)
    return detection.build_config(ctx, recipe, root, detection.check_coco_root(root))


def _ade_config(work: Path, root: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from tasks import segmentation as seg

    ctx = TaskContext(backbone="test_vit", work_dir=work, data_root=root, overrides=overrides)
    data_root, classes = seg.resolve_data(root)
    return seg.build_config(ctx, load_recipe("ade20k", "tiny", overrides), data_root, classes)


def _train(cfg: dict[str, Any], work: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
    """The model's weights before and after the runner's training, and the runner."""
    from tasks import mmcommon

    mmcommon.import_adapter()
    runner = mmcommon.build_runner(cfg, work)
    runner.model.init_weights()  # as train() does (again) first; the encoder's weights are those it was built with
    before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    return before, after, runner


def _check(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], runner: Any, head: str) -> None:
    encoder = [k for k in before if k.startswith("backbone.vit.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder), "a frozen encoder weight changed"
    moved = [k for k in before if k.startswith(head) and not torch.equal(before[k], after[k])]
    assert moved, f"no {head} weight moved"
    vit = {id(p) for p in runner.model.backbone.vit.parameters()}
    optimized = [p for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]]
    assert optimized and not any(id(p) in vit for p in optimized), "an encoder parameter is in the optimizer"
    assert not runner.model.backbone.vit.training  # no drop path in a frozen encoder


def test_coco_frozen_encoder_stays_bit_identical(tmp_path: Path) -> None:
    root = coco.write(tmp_path / "coco", seed=0, n_train=8, n_val=4)
    overrides = {"schedule.epochs": 1, "data.batch_size": 4, "data.val_batch_size": 4, "model.freeze_backbone": True}
    cfg = _coco_config(tmp_path / "work", root, overrides)
    assert cfg["model"]["backbone"]["frozen"] is True
    before, after, runner = _train(cfg, tmp_path / "work")
    _check(before, after, runner, "roi_head.")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("neck."))


def test_ade20k_frozen_encoder_stays_bit_identical(tmp_path: Path) -> None:
    root = ade20k.write(tmp_path / "ade", seed=0, n_train=8, n_val=4)
    overrides = {"data.batch_size": 2, "data.val_batch_size": 2, "schedule.max_iters": 2, "schedule.warmup_iters": 1,
                 "schedule.val_interval": 2, "schedule.checkpoint_interval": 2, "schedule.log_interval": 1,
                 "model.freeze_backbone": True}
    cfg = _ade_config(tmp_path / "work", root, overrides)
    before, after, runner = _train(cfg, tmp_path / "work")
    _check(before, after, runner, "decode_head.")


def test_default_is_not_frozen(tmp_path: Path) -> None:
    """Every dense recipe has the key, false: the encoder trains as before."""
    root = coco.write(tmp_path / "coco", seed=0, n_train=4, n_val=2)
    for name in ("tiny", "short", "paper"):
        assert load_recipe("coco", name)["model"]["freeze_backbone"] is False
        assert load_recipe("ade20k", name)["model"]["freeze_backbone"] is False
    assert _coco_config(tmp_path / "w", root, {})["model"]["backbone"]["frozen"] is False
