"""Pretraining end to end on tiny runs: the loss falls, exports load through the registry with every key accounted,
an interrupted run resumes to the same weights, recipes resolve, augmentations and the MoCo v3 parts behave."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from backbones import create_backbone
from harness.pretrain import data, engine, pretrain, resolve_recipe, sanity
from harness.pretrain.moco import contrastive_loss, momentum_at

# A few hundred real Fashion-MNIST images, small batches, a narrow decoder: seconds on CPU.
FAST = {"data.subset": 256, "data.batch_size": 32, "optim.warmup_epochs": 0}
FAST_MAE = {**FAST, "model.decoder_embed_dim": 32, "model.decoder_depth": 1, "optim.base_lr": 2e-3}
FAST_MOCO = {**FAST, "model.dim": 32, "model.mlp_dim": 64}


@pytest.fixture(autouse=True)
def _small_sanity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sanity, "LIMIT", 200)  # the end-of-run figure on 200 test images, not 10,000


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / engine.LOG).read_text().splitlines()]


def _assert_loads(arch: str, path: Path) -> torch.nn.Module:
    model = create_backbone(arch, checkpoint=path)
    assert model.load_report == {"initialised_fresh": [], "skipped": []}  # every key of the export used
    exported = torch.load(path, weights_only=True)["model"]
    assert set(exported) == set(model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, exported[k])
    return model


@pytest.mark.slow
def test_mae_lowers_loss_exports_and_draws(tmp_path: Path) -> None:
    out = tmp_path / "mae"
    path = pretrain("mae", "mae_vit_tiny_patch4", out, epochs=3, overrides=FAST_MAE, progress=False)
    assert path == out / "encoder.pth"
    log = _log(out)
    assert len(log) == 3 * 8 and [r["step"] for r in log] == list(range(24))
    first = sum(r["loss"] for r in log[:4]) / 4
    last = sum(r["loss"] for r in log[-4:]) / 4
    assert last < first - 0.05, (first, last)
    assert log[0]["lr"] > 0 and math.isclose(log[0]["lr"], 2e-3 * 32 / 256, rel_tol=1e-6)  # linear scaling rule
    model = _assert_loads("mae_vit_tiny_patch4", path)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 96)
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta["method"] == "mae" and meta["epochs"] == 3 and meta["recipe"] == "mae_tiny" and meta["seed"] == 0
    assert (out / "reconstruction.png").stat().st_size > 1000
    # the same settings again: returns at once, nothing rewritten
    mtime = path.stat().st_mtime_ns
    assert pretrain("mae", "mae_vit_tiny_patch4", out, epochs=3, overrides=FAST_MAE, progress=False) == path
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = dict(epochs=3, overrides=FAST_MAE, progress=False)
    straight = pretrain("mae", "mae_vit_tiny_patch4", tmp_path / "a", **kwargs)

    original = data.TensorLoader.batches

    def interrupted(self, epoch):  # dies in the middle of the second epoch, after the first checkpoint
        for i, batch in enumerate(original(self, epoch)):
            if epoch == 1 and i == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(data.TensorLoader, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain("mae", "mae_vit_tiny_patch4", tmp_path / "b", **kwargs)
    assert not (tmp_path / "b" / "encoder.pth").exists()
    assert torch.load(tmp_path / "b" / engine.CHECKPOINT, weights_only=True)["epoch"] == 0
    monkeypatch.setattr(data.TensorLoader, "batches", original)
    resumed = pretrain("mae", "mae_vit_tiny_patch4", tmp_path / "b", **kwargs)

    a = torch.load(straight, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    full = torch.load(tmp_path / "a" / engine.CHECKPOINT, weights_only=True)
    again = torch.load(tmp_path / "b" / engine.CHECKPOINT, weights_only=True)
    torch.testing.assert_close(again["model"]["mask_token"], full["model"]["mask_token"], atol=1e-6, rtol=0)
    assert [r["step"] for r in _log(tmp_path / "b")] == list(range(24))  # no step logged twice
    assert [r["loss"] for r in _log(tmp_path / "b")] == pytest.approx([r["loss"] for r in _log(tmp_path / "a")])


def test_same_pretraining_same_bytes(tmp_path: Path) -> None:
    """The runs built on an encoder are identified by its sha256: pretraining again with the same settings must give
    the very same file, not one that differs in a timestamp."""
    kwargs = dict(epochs=1, overrides=FAST_MAE, progress=False)
    a = pretrain("mae", "mae_vit_tiny_patch4", tmp_path / "a", **kwargs)
    b = pretrain("mae", "mae_vit_tiny_patch4", tmp_path / "b", **kwargs)
    assert a.read_bytes() == b.read_bytes()


def test_checkpoint_of_other_settings_is_refused(tmp_path: Path) -> None:
    pretrain("mae", "mae_vit_tiny_patch4", tmp_path, epochs=1, overrides=FAST_MAE, progress=False)
    (tmp_path / "encoder.pth").unlink()
    with pytest.raises(ValueError, match="other settings.*seed"):
        pretrain("mae", "mae_vit_tiny_patch4", tmp_path, epochs=1, seed=1, overrides=FAST_MAE, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method,arch,epochs,overrides", [
    ("supervised", "supervised_vit_tiny_patch4", 2, FAST),
    ("mocov3", "mocov3_vit_tiny_patch4", 1, FAST_MOCO),  # 8 encoder passes per image: one short epoch
])
def test_baselines_export_through_the_registry(
    tmp_path: Path, method: str, arch: str, epochs: int, overrides: dict
) -> None:
    path = pretrain(method, arch, tmp_path, epochs=epochs, overrides=overrides, progress=False)
    log = _log(tmp_path)
    assert all(math.isfinite(r["loss"]) for r in log) and len(log) == 8 * epochs
    _assert_loads(arch, path)
    assert torch.load(path, weights_only=True)["meta"]["method"] == method
    if method == "supervised":
        assert log[-1]["loss"] < log[0]["loss"]


def test_recipes_resolve() -> None:
    for method in ("mae", "supervised", "mocov3"):
        cfg = resolve_recipe(method)
        assert cfg["name"] == f"{method}_tiny" and cfg["version"] >= 1 and cfg["method"] == method
        assert cfg["optim"]["betas"] == [0.9, 0.95] and cfg["data"]["img_size"] == 32
    paper = resolve_recipe("mae", "mae_paper")
    assert paper["epochs"] == 800 and paper["optim"]["warmup_epochs"] == 40
    assert paper["data"]["batch_size"] * paper["optim"]["accum_iter"] == 4096
    assert paper["model"]["decoder_embed_dim"] == 512 and paper["model"]["decoder_depth"] == 8
    assert resolve_recipe("mae", "mae_paper", {"epochs": 1600})["epochs"] == 1600
    assert resolve_recipe("mae", overrides={"optim.base_lr": "4e-3"})["optim"]["base_lr"] == 4e-3  # YAML 1.1's 4e-3
    with pytest.raises(ValueError, match="for method 'mae'"):
        resolve_recipe("supervised", "mae_tiny")
    with pytest.raises(KeyError, match="unknown pretraining method"):
        resolve_recipe("simclr")
    with pytest.raises(KeyError, match="no key 'mask_ration'"):
        resolve_recipe("mae", overrides={"model.mask_ration": 0.5})
    with pytest.raises(ValueError, match="ImageNet-layout folder"):
        pretrain("mae", "mae_vit_base_patch16", Path("unused"), recipe="mae_paper")


def test_schedule_warmup_then_cosine() -> None:
    s = engine.Schedule(lr=1.0, epochs=10, warmup_epochs=2, min_lr=0.1)
    assert s(0) == 0 and s(1) == pytest.approx(0.5) and s(2) == pytest.approx(1.0)
    assert s(6) == pytest.approx(0.55) and s(10) == pytest.approx(0.1)


def test_batched_crop_and_flip() -> None:
    imgs = torch.rand(3, 3, 8, 8)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(3, 1)
    no = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(data.crop_and_flip(imgs, full, no, 8), imgs, atol=1e-5, rtol=0)
    torch.testing.assert_close(data.crop_and_flip(imgs, full, ~no, 8), imgs.flip(-1), atol=1e-5, rtol=0)
    left_half = torch.tensor([[0.25, 0.5, 0.5, 1.0]]).repeat(3, 1)  # the left half, stretched to full width
    out = data.crop_and_flip(imgs, left_half, no, 8)
    torch.testing.assert_close(out[..., ::2].mean(), imgs[..., :4].mean(), atol=0.05, rtol=0)
    boxes = data.random_resized_crop_boxes(1000, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    cx, cy, w, h = boxes.T
    assert torch.all(cx - w / 2 >= -1e-6) and torch.all(cx + w / 2 <= 1 + 1e-6)
    assert torch.all(cy - h / 2 >= -1e-6) and torch.all(cy + h / 2 <= 1 + 1e-6)
    area = w * h
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1.0 + 1e-6 and area.std() > 0.1


def test_fashion_mnist_tensors_pad_and_resize() -> None:
    x, y = data.fashion_mnist_tensors("test", 32, "pad", subset=10)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (10,)
    assert torch.all(x[:, :, :2] == 0) and torch.all(x[:, 0] == x[:, 2])  # zero border, grey in three channels
    r, _ = data.fashion_mnist_tensors("test", 32, "resize", subset=10)
    assert r.shape == (10, 3, 32, 32) and r[:, :, :2].float().mean() > 0  # no border: resized
    with pytest.raises(ValueError, match="pad.*resize"):
        data.fashion_mnist_tensors("test", 32, "stretch", subset=10)


def test_moco_pieces() -> None:
    assert momentum_at(0, 10, 0.99) == pytest.approx(0.99) and momentum_at(10, 10, 0.99) == pytest.approx(1.0)
    assert momentum_at(5, 10, 0.99) == pytest.approx(0.995)
    q = torch.randn(16, 8)
    aligned = contrastive_loss(q, q + 0.01 * torch.randn(16, 8), 0.2)
    shuffled = contrastive_loss(q, q[torch.randperm(16)], 0.2)
    assert aligned < shuffled
    # the scale: uniform logits give (2T) * log N
    const = contrastive_loss(torch.ones(4, 3), torch.ones(4, 3), 0.2)
    assert const.item() == pytest.approx(0.4 * math.log(4), rel=1e-5)


def test_cli_help() -> None:
    import subprocess
    import sys

    for argv in (["pretrain", "--help"], ["data", "embedded", "--help"]):
        res = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "--out" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("method,arch,overrides", [("mae", "mae_vit_tiny_patch4", FAST_MAE),
                                                   ("mocov3", "mocov3_vit_tiny_patch4", FAST_MOCO)])
def test_imagenet_layout_folder(tmp_path: Path, method: str, arch: str, overrides: dict) -> None:
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("n01", "n02"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (40, 48, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / cls / f"{i}.png")
    folder = {**overrides, "data.batch_size": 4, "data.num_workers": 0, "data.subset": None}
    path = pretrain(method, arch, tmp_path / "out", epochs=1, data_root=tmp_path / "data", overrides=folder,
                    progress=False)
    assert len(_log(tmp_path / "out")) == 2  # 8 images, batches of 4
    _assert_loads(arch, path)
    assert torch.load(path, weights_only=True)["meta"]["data"] == str(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="no train/ subfolder"):
        pretrain(method, arch, tmp_path / "out2", epochs=1, data_root=tmp_path / "out", overrides=folder)


@pytest.mark.parametrize("method", ["mae", "supervised", "mocov3"])
def test_weight_decay_follows_each_method_reference(method: str) -> None:
    """MAE decays cls_token and mask_token (only 1-D parameters and biases are exempt; position embeddings are frozen);
    DeiT also exempts cls_token and pos_embed; MoCo v3 decays every trainable parameter."""
    from backbones.registry import get_spec
    from harness.pretrain import build_method, build_optimizer

    cfg = resolve_recipe(method)
    model = build_method(method, get_spec(f"{method}_vit_tiny_patch4"), cfg)
    optimizer, _ = build_optimizer(model, cfg, eff_batch=256)
    wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(wd) == {id(p) for p in names.values()}  # every trainable parameter, once
    decay = cfg["optim"]["weight_decay"]
    for name, p in names.items():
        if method == "mocov3":
            exempt = False
        else:
            exempt = p.ndim <= 1 or name.endswith(".bias")
            exempt |= method == "supervised" and name.endswith(("cls_token", "pos_embed"))
        assert wd[id(p)] == (0.0 if exempt else decay), name
    if method == "mae":
        assert wd[id(names["encoder.cls_token"])] == decay and wd[id(names["mask_token"])] == decay
        assert "encoder.pos_embed" not in names and "decoder_pos_embed" not in names  # frozen sin-cos


def test_log_and_cost_carry_throughput(tmp_path: Path) -> None:
    """Every log line says how fast the run goes and how much of it waited for data; cost.json sums the call up."""
    pretrain("mae", "mae_vit_tiny_patch4", tmp_path, epochs=1, overrides=FAST_MAE, progress=False)
    log = _log(tmp_path)
    for r in log:
        assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"]) and r["step_time_s"] > 0
        assert 0.0 <= r["data_wait_share"] <= 1.0
        assert math.isclose(r["images_per_s"] * r["step_time_s"], 32, rel_tol=0.01)  # one batch of 32 per step
    assert all(r["eta_s"] >= 0 for r in log) and log[-1]["eta_s"] == 0 and log[0]["eta_s"] > 0
    cost = json.loads((tmp_path / engine.COST).read_text())
    assert cost["steps_train"] == len(log) == 8 and cost["images_per_s_train"] > 0
    assert 0.0 <= cost["data_wait_share_train"] <= 1.0
