"""ImageNet classification task: layer decay, the three protocols' freezing, resume, accumulation, recipes, errors.

Runs the real task on `test_vit` (4 blocks, width 32) and a few dozen embedded Fashion-MNIST images.
"""

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
from tasks.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]

FAST = {"data.micro_batch_size": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagenet.write(tmp_path_factory.mktemp("in1k") / "data", n_train_per_class=8, n_val_per_class=4)


def _ctx(work: Path, data: Path, protocol: str, overrides: dict[str, Any], **kw: Any) -> TaskContext:
    return TaskContext(backbone="test_vit", work_dir=work, recipe="tiny", data_root=data, protocol=protocol,
                       overrides={**FAST, **overrides}, **kw)


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / cls.CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _cfg(protocol: str, recipe: str = "tiny", **overrides: Any) -> dict[str, Any]:
    return {**cls.resolve_section(load_recipe("in1k", recipe), protocol, "base"), **overrides}


def _classifier(protocol: str, blocks: int = 0, **cfg: Any) -> cls.Classifier:
    ctx = TaskContext(backbone="test_vit", work_dir=Path("."))
    model, _ = cls.build_classifier(ctx, _cfg(protocol, **cfg), protocol, 10, 32, blocks)
    return model


# --- layer decay ---------------------------------------------------------------------------------------------------


def test_layer_decay_groups() -> None:
    model = _classifier("finetune", recipe="paper")
    depth, decay = len(model.vit.blocks), 0.65
    optimizer = cls.build_optimizer(model, _cfg("finetune", recipe="paper"), lr=1e-3)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.vit.named_parameters())
    assert {id(p) for p in names.values()} == set(group_of)  # every parameter is optimised, once
    for name, p in names.items():
        g = group_of[id(p)]
        if name.startswith("blocks."):
            i = int(name.split(".")[1]) + 1  # 1-based block index
            assert g["lr_scale"] == pytest.approx(decay ** (depth + 1 - i)), name
        elif name.startswith(("cls_token", "pos_embed", "patch_embed")):
            assert g["lr_scale"] == pytest.approx(decay ** (depth + 1)), name
        else:  # fc_norm, head
            assert name.startswith(("fc_norm", "head")) and g["lr_scale"] == 1.0, name
        no_decay = p.ndim <= 1 or name in ("cls_token", "pos_embed") or "norm" in name or name.endswith(".bias")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    scheduler = cls.build_scheduler(optimizer, _cfg("finetune", recipe="paper", epochs=10, warmup_epochs=1), 10)
    scheduler.step_update(10)  # the end of warmup: the peak lr, scaled per layer
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in optimizer.param_groups)


# --- freezing ------------------------------------------------------------------------------------------------------


def _step(model: cls.Classifier, cfg: dict[str, Any]) -> None:
    optimizer = cls.build_optimizer(model, cfg, lr=1e-2)
    model.train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(model.encode(x)), y).backward()
    optimizer.step()


@pytest.mark.parametrize("blocks", [1, 2])
def test_partial_freezes_exactly_the_first_blocks(blocks: int) -> None:
    model = _classifier("partial", blocks)
    depth = len(model.vit.blocks)
    tuned = {f"blocks.{i}." for i in range(depth - blocks, depth)} | {"fc_norm.", "head."}
    for name, p in model.vit.named_parameters():
        assert p.requires_grad == any(name.startswith(t) for t in tuned), name
    model.train()
    assert [b.training for b in model.vit.blocks] == [False] * (depth - blocks) + [True] * blocks
    assert not model.vit.patch_embed.training
    before = {k: v.clone() for k, v in model.vit.named_parameters()}
    _step(model, _cfg("partial"))
    for name, p in model.vit.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name  # changed exactly when tuned


@pytest.mark.parametrize("protocol,blocks", [("partial", 2), ("linprobe", 0)])
def test_encode_then_forward_is_the_whole_network(protocol: str, blocks: int) -> None:
    model = _classifier(protocol, blocks, drop_path=0.0).eval()
    x = torch.randn(4, 3, 32, 32)
    assert model.cacheable
    torch.testing.assert_close(model(model.encode(x)), model.vit(x))


def test_linear_probe_trains_only_the_head(data: Path, tmp_path: Path) -> None:
    pretrained = build_model(get_spec("test_vit"), global_pool="token").state_dict()
    torch.save(pretrained, tmp_path / "pretrained.pth")
    for cache, aug in ((True, {}), (False, {"linprobe.aug.scale": [0.5, 1.0], "linprobe.aug.hflip": 0.5})):
        work = tmp_path / f"cache{cache}"
        overrides = {"linprobe.epochs": 2, "linprobe.warmup_epochs": 1, "linprobe.batch_size": 16,
                     "linprobe.cache_features": cache, **aug}
        result = cls.run(_ctx(work, data, "linprobe", overrides, checkpoint=str(tmp_path / "pretrained.pth")))
        assert result.extra["cached_features"] is cache
        weights = _weights(work)
        for k, v in pretrained.items():  # the backbone, norm included, bitwise as loaded
            assert torch.equal(weights[f"vit.{k}"], v), k
        assert set(weights) - {f"vit.{k}" for k in pretrained} == {
            "vit.head.0.running_mean", "vit.head.0.running_var", "vit.head.0.num_batches_tracked",
            "vit.head.1.weight", "vit.head.1.bias",
        }  # BatchNorm1d without affine before the linear head
        assert weights["vit.head.0.num_batches_tracked"] == 2 * 80 // 16
        assert result.extra["trainable_params"] == 32 * 10 + 10
        cost = result.extra["cost"]
        assert cost["steps_train"] > 0 and cost["steps_eval"] > 0
        assert cost["images_per_s_train"] > 0 and 0.0 <= cost["data_wait_share_train"] <= 1.0
        for line in result.extra["history"]:  # each epoch's throughput: 80 images, 16 a micro batch
            assert line["images_per_s"] > 0 and 0.0 <= line["data_wait_share"] <= 1.0 and line["eta_s"] >= 0
            assert line["images_per_s"] * line["step_time_s"] == pytest.approx(16, rel=0.02)
        assert result.extra["history"][-1]["eta_s"] == 0 and result.extra["history"][0]["eta_s"] > 0
        assert result.extra["load_report"]["checkpoint"] == str(tmp_path / "pretrained.pth")


def test_partial_zero_blocks_is_the_linear_probe(data: Path, tmp_path: Path) -> None:
    result = cls.run(_ctx(tmp_path, data, "partial", {"partial.blocks": 0, "linprobe.epochs": 1,
                                                      "linprobe.batch_size": 16}))
    assert result.extra["section"] == "linprobe" and result.extra["blocks"] == 0
    assert result.recipe["protocol"] == "partial" and "linprobe" in result.recipe


def test_pixel_reference_is_the_linear_probe_on_pixels(data: Path, tmp_path: Path) -> None:
    """protocol `pixels` (the control of `harness run --controls pixels`): the linear probe's section and head on the
    flattened normalised image; no backbone is built or loaded."""
    overrides = {"linprobe.epochs": 2, "linprobe.warmup_epochs": 1, "linprobe.batch_size": 16}
    result = cls.run(_ctx(tmp_path, data, "pixels", overrides))
    assert result.extra["section"] == "linprobe" and result.recipe["protocol"] == "pixels"
    assert result.extra["cached_features"] is True and result.extra["load_report"]["pixels"] is True
    assert result.extra["trainable_params"] == 3 * 32 * 32 * 10 + 10
    weights = _weights(tmp_path)
    assert set(weights) == {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked",
                            "head.1.weight", "head.1.bias"}
    assert weights["head.1.bias"].abs().sum() > 0  # trained from its zero start
    assert 0.0 <= result.metrics["top1"] <= 100.0
    model, _ = cls.pixel_classifier(_cfg("linprobe"), 10, 32)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.encode(x), x.reshape(2, -1))


# --- training ------------------------------------------------------------------------------------------------------


RANDOM_FINETUNE = {  # every source of randomness on: crops, flips, RandAugment, erasing, mixup/cutmix, drop path
    "finetune.epochs": 2, "finetune.batch_size": 40, "finetune.warmup_epochs": 1, "finetune.drop_path": 0.1,
    "finetune.aug.scale": [0.5, 1.0],
    "finetune.aug.rand_augment": "rand-m9-mstd0.5-inc1", "finetune.aug.reprob": 0.25, "finetune.aug.mixup": 0.8,
    "finetune.aug.cutmix": 1.0,
}


def test_resume_gives_the_uninterrupted_weights(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = cls.run(_ctx(tmp_path / "whole", data, "finetune", RANDOM_FINETUNE))

    save = cls.save_checkpoint

    def save_then_die(path: Path, state: dict[str, Any]) -> None:
        save(path, state)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(cls, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cls.run(_ctx(tmp_path / "cut", data, "finetune", RANDOM_FINETUNE))
    monkeypatch.setattr(cls, "save_checkpoint", save)
    resumed = cls.run(_ctx(tmp_path / "cut", data, "finetune", RANDOM_FINETUNE))

    assert resumed.extra["resumed_from_epoch"] == 1 and whole.extra["resumed_from_epoch"] == 0
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == whole.metrics
    finished = cls.run(_ctx(tmp_path / "cut", data, "finetune", RANDOM_FINETUNE))  # nothing left: evaluates only
    assert finished.extra["resumed_from_epoch"] == 2 and finished.metrics == whole.metrics
    tops = [h["top1"] for h in whole.extra["history"]]  # evaluated every epoch, as MAE; kept through the resume
    assert len(tops) == 2 and [h["top1"] for h in resumed.extra["history"]] == tops
    assert whole.metrics["top1"] == tops[-1] and whole.metrics["top1_best"] == max(tops)
    assert tops[int(whole.metrics["top1_best_epoch"]) - 1] == max(tops)


def test_best_epoch_is_reported_beside_the_last() -> None:
    history = [{"epoch": 1, "top1": 40.0}, {"epoch": 2, "top1": 55.5}, {"epoch": 3, "top1": 55.5},
               {"epoch": 4, "top1": 51.0}]  # fmt: skip
    assert cls.best_epoch(history, 51.0, 4) == {"top1_best": 55.5, "top1_best_epoch": 2}  # the first of a tie
    assert cls.best_epoch([{"epoch": 1, "loss": 2.0}], 12.0, 1) == {"top1_best": 12.0, "top1_best_epoch": 1}


def test_resume_under_another_recipe_is_an_error(data: Path, tmp_path: Path) -> None:
    quick = {"finetune.epochs": 1, "finetune.batch_size": 16}
    cls.run(_ctx(tmp_path, data, "finetune", quick))
    with pytest.raises(RuntimeError, match="another recipe"):
        cls.run(_ctx(tmp_path, data, "finetune", {**quick, "finetune.blr": 1e-4}))


def test_accumulation_holds_the_effective_batch(data: Path, tmp_path: Path) -> None:
    plain = {"finetune.epochs": 1, "finetune.batch_size": 40, "finetune.warmup_epochs": 0, "finetune.aug.scale": None,
             "finetune.aug.hflip": 0.0, "data.micro_batch_size": 40}
    one = cls.run(_ctx(tmp_path / "one", data, "finetune", plain))
    four = cls.run(_ctx(tmp_path / "four", data, "finetune", {**plain, "data.micro_batch_size": 10}))
    assert one.recipe["derived"]["accum_steps"] == 1 and four.recipe["derived"]["accum_steps"] == 4
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "four")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_tiny_finetune_beats_chance(tmp_path: Path) -> None:  # the tiny recipe, with lr 3e-3: test_vit is narrow
    root = imagenet.write(tmp_path / "data", n_train_per_class=40, n_val_per_class=10)
    result = cls.run(_ctx(tmp_path / "work", root, "finetune", {"finetune.epochs": 8, "finetune.warmup_epochs": 0.5,
                                                                "finetune.batch_size": 16, "finetune.blr": 0.048,
                                                                "finetune.aug.scale": None}))
    assert result.metrics["top1"] > 30.0, result.metrics  # chance: 10
    assert result.metrics["top5"] >= result.metrics["top1"]
    losses = [h["loss"] for h in result.extra["history"]]
    assert losses[-1] < losses[0]


# --- recipes and errors --------------------------------------------------------------------------------------------


def test_paper_recipe_picks_values_by_model_size() -> None:
    recipe = load_recipe("in1k", "paper")
    base, large, huge = (cls.resolve_section(recipe, "finetune", s) for s in cls.SIZES)
    assert (base["epochs"], base["blr"], base["layer_decay"], base["drop_path"]) == (100, 5e-4, 0.65, 0.1)
    assert (large["epochs"], large["blr"], large["layer_decay"], large["drop_path"]) == (50, 1e-3, 0.75, 0.2)
    assert huge["drop_path"] == 0.3 and huge["batch_size"] == 1024
    probe = cls.resolve_section(recipe, "linprobe", "large")
    assert (probe["opt"], probe["blr"], probe["batch_size"], probe["epochs"]) == ("lars", 0.1, 16384, 90)
    assert [cls.model_size(cls.embed_dim(get_spec(n))) for n in
            ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14")] == list(cls.SIZES)
    assert load_recipe("in1k", "tiny", {"partial.blocks": 2})["partial"]["blocks"] == 2


def test_accumulation_split() -> None:
    assert cls._accumulation(1024, 1, 128) == (128, 8)
    assert cls._accumulation(16384, 8, 512) == (512, 4)
    assert cls._accumulation(96, 1, 64) == (48, 2)
    with pytest.raises(ValueError, match="world size 3"):
        cls._accumulation(1024, 3, 128)


def test_unknown_protocol_and_cache_with_augmentation(data: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown in1k protocol 'linprob'.*linprobe"):
        cls.run(_ctx(tmp_path, data, "linprob", {}))
    with pytest.raises(ValueError, match="partial.cache_features"):
        cls.run(_ctx(tmp_path, data, "partial", {"partial.aug.hflip": 0.5}))


@pytest.mark.parametrize("damage,problem", [
    ("missing", "does not exist"),
    ("no_val", "has no val/ folder"),
    ("flat_val", "its images lie directly in it"),
    ("empty_class", "hold no images"),
    ("other_classes", "hold different class folders"),
])
def test_malformed_data_folder(data: Path, tmp_path: Path, damage: str, problem: str) -> None:
    import shutil

    root = tmp_path / "imagenet"
    if damage != "missing":
        shutil.copytree(data, root)
    if damage == "no_val":
        shutil.rmtree(root / "val")
    elif damage == "flat_val":
        for p in list((root / "val").rglob("*.png")):
            p.rename(root / "val" / p.name)
        for d in (root / "val").iterdir():
            if d.is_dir():
                d.rmdir()
    elif damage == "empty_class":
        for p in (root / "train" / "bag").iterdir():
            p.unlink()
    elif damage == "other_classes":
        (root / "val" / "coat").rename(root / "val" / "jacket")
    with pytest.raises(imagenet.LayoutError, match=problem) as err:
        cls.run(_ctx(tmp_path / "work", root, "finetune", {}))
    assert str(root) in str(err.value) and "train/<class>/<image>" in str(err.value)


def test_rand_augment_survives_zero_posterize_bits() -> None:
    from PIL import Image, ImageOps
    from timm.data import auto_augment

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    with pytest.raises(ValueError):  # the breakage the patch is for; drop the patch once this stops raising
        ImageOps.posterize(img, 0)
    cls.patch_timm_posterize()
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # 'inc1' at the top magnitude
    assert op(img).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert cls._posterize(img, 4).getpixel((0, 0)) == (192, 96, 48)
