"""Every checkpoint format, written in that format's exact key layout, loads into the right timm keys with every tensor
in its place; the errors for bad files name the file and say what to do."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from safetensors.torch import save_file

import backbones
from backbones.checkpoint import CheckpointError
from backbones.formats import FORMATS


@pytest.fixture(scope="module")
def source():
    """A randomly initialised test ViT whose weights every format must reproduce."""
    torch.manual_seed(0)
    return backbones.create_backbone("test_vit")


def assert_same_backbone(model, source, skip=("head", "fc_norm")):
    src = source.state_dict()
    loaded = model.state_dict()
    compared = 0
    for k, v in src.items():
        if k.split(".")[0] in skip or k not in loaded:
            continue
        assert torch.equal(loaded[k], v), f"{k} differs after loading"
        compared += 1
    assert compared == len(src), "every source tensor must be compared"


def load(tmp_path, name, ckpt, fmt, **kwargs):
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    return backbones.create_backbone(name, checkpoint=path, checkpoint_format=fmt, **kwargs)


def test_mae_official_layout(tmp_path, source):
    sd = dict(source.state_dict())
    sd["mask_token"] = torch.zeros(1, 1, 16)
    sd["decoder_embed.weight"] = torch.zeros(16, 32)
    sd["decoder_blocks.0.norm1.weight"] = torch.zeros(16)
    model = load(tmp_path, "test_vit", {"model": sd}, "mae")
    assert_same_backbone(model, source)
    assert model.load_report["skipped"] == []


def test_mae_into_a_global_pool_classifier_drops_norm_and_adds_head(tmp_path, source):
    # MAE's main_finetune.py: missing == {head.*, fc_norm.*}, the pretrained `norm` unused under global pooling.
    model = load(tmp_path, "test_vit", {"model": source.state_dict()}, "mae", num_classes=10, global_pool="avg")
    assert model.load_report["skipped"] == ["norm.bias", "norm.weight"]
    assert set(model.load_report["initialised_fresh"]) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert torch.equal(model.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)


def test_timm_deit_layout_with_head_and_distillation(tmp_path, source):
    sd = dict(source.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 32), torch.randn(1000)
    sd["dist_token"] = torch.zeros(1, 1, 32)
    sd["head_dist.weight"], sd["head_dist.bias"] = torch.randn(1000, 32), torch.randn(1000)
    model = load(tmp_path, "test_vit", {"model": sd}, "timm", num_classes=10)
    assert_same_backbone(model, source)
    assert "head.weight" in model.load_report["skipped"]  # a 1000-way head is not a 10-way head


def test_timm_deit3_layer_scale(tmp_path):
    src = backbones.create_backbone("test_vit", init_values=0.1)
    with torch.no_grad():
        for blk in src.blocks:
            blk.ls1.gamma.uniform_()
    sd = {re.sub(r"\.ls(\d)\.gamma$", r".gamma_\1", k): v for k, v in src.state_dict().items()}
    assert "blocks.0.gamma_1" in sd
    model = load(tmp_path, "test_vit", {"model": sd}, "timm", init_values=0.1)
    assert_same_backbone(model, src)


def test_mocov3_layout(tmp_path, source):
    sd = {f"module.base_encoder.{k}": v for k, v in source.state_dict().items()}
    sd.update({f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()})
    sd["module.base_encoder.head.0.weight"] = torch.zeros(64, 32)  # the projection MLP
    sd["module.base_encoder.head.1.running_mean"] = torch.zeros(64)
    sd["module.predictor.0.weight"] = torch.zeros(64, 64)
    ckpt = {"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    assert_same_backbone(load(tmp_path, "test_vit", ckpt, "mocov3"), source)


def test_dino_bare_backbone(tmp_path, source):
    assert_same_backbone(load(tmp_path, "test_vit", dict(source.state_dict()), "dino"), source)


def test_dino_training_checkpoint_uses_the_teacher(tmp_path, source):
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.zeros(8, 32)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()}
    ckpt = {"teacher": teacher, "student": student, "epoch": 100}
    assert_same_backbone(load(tmp_path, "test_vit", ckpt, "dino"), source)


def test_dino_checkpoint_with_pickled_args_needs_trust(tmp_path, source):
    # DINO's training checkpoints store argparse.Namespace: loading them runs code, so only behind the flag.
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()}, "args": argparse.Namespace(a=1)}
    path = tmp_path / "dino_full.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as info:
        backbones.create_backbone("test_vit", checkpoint=path, checkpoint_format="dino")
    assert str(path) in str(info.value)
    model = backbones.create_backbone("test_vit", checkpoint=path, checkpoint_format="dino", allow_pickle=True)
    assert_same_backbone(model, source)


def test_beit_layout_with_shared_relative_position_bias(tmp_path):
    torch.manual_seed(1)
    src = backbones.create_backbone("test_beit")
    sd = dict(src.state_dict())
    assert "blocks.0.attn.q_bias" in sd and "blocks.0.gamma_1" in sd
    table = sd["blocks.0.attn.relative_position_bias_table"].clone().uniform_()
    for k in [k for k in sd if k.endswith("relative_position_bias_table")]:
        del sd[k]
    sd["rel_pos_bias.relative_position_bias_table"] = table
    sd["rel_pos_bias.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    sd["blocks.0.attn.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    sd["lm_head.weight"], sd["mask_token"] = torch.zeros(8192, 32), torch.zeros(1, 1, 32)
    model = load(tmp_path, "test_beit", {"model": sd}, "beit")
    for blk in model.blocks:
        assert torch.equal(blk.attn.relative_position_bias_table, table)
    assert torch.equal(model.blocks[1].attn.q_bias, src.blocks[1].attn.q_bias)
    assert torch.equal(model.blocks[1].gamma_2, src.blocks[1].gamma_2)


def _to_mmpretrain(key: str) -> str:
    rules = [
        (r"^patch_embed\.proj\.", "patch_embed.projection."),
        (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
        (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
        (r"^blocks\.(\d+)\.attn\.", r"layers.\1.attn."),
        (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
        (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
        (r"^norm\.", "ln1."),
    ]
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            return key
    return key


def test_mmpretrain_layout(tmp_path, source):
    sd = {f"backbone.{_to_mmpretrain(k)}": v for k, v in source.state_dict().items()}
    assert "backbone.layers.0.ffn.layers.0.0.weight" in sd and "backbone.ln1.weight" in sd
    sd["neck.decoder_embed.weight"] = torch.zeros(4, 4)
    sd["head.loss.weight"] = torch.zeros(1)
    ckpt = {"meta": {"mmpretrain_version": "1.2.0"}, "state_dict": sd}
    assert_same_backbone(load(tmp_path, "test_vit", ckpt, "mmpretrain"), source)


def test_harness_layout_and_safetensors(tmp_path, source):
    ckpt = {"model": source.state_dict(), "meta": {"epochs": 1}}
    assert_same_backbone(load(tmp_path, "test_vit", ckpt, "harness"), source)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert_same_backbone(backbones.create_backbone("test_vit", checkpoint=path), source)


def test_every_format_is_tested():
    tested = {"mae", "harness", "timm", "mocov3", "dino", "beit", "mmpretrain"}
    assert set(FORMATS) == tested


def test_position_embedding_resampled_keeping_class_token(tmp_path, source):
    path = tmp_path / "w.pth"
    torch.save({"model": source.state_dict()}, path)
    model = backbones.create_backbone("test_vit", checkpoint=path, img_size=64)
    assert model.pos_embed.shape == (1, 1 + 64, 32)
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])
    grid = model.pos_embed[0, 1:].reshape(8, 8, 32)
    # Bilinear-ish resampling of a 4x4 grid to 8x8 keeps the mean of each channel close.
    assert torch.allclose(grid.mean((0, 1)), source.pos_embed[0, 1:].mean(0), atol=0.05)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 32)


# --- errors ---


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nope.pth'} does not exist"):
        backbones.create_backbone("test_vit", checkpoint=tmp_path / "nope.pth")


def test_truncated_file(tmp_path, source):
    path = tmp_path / "cut.pth"
    torch.save({"model": source.state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth is truncated or corrupt"):
        backbones.create_backbone("test_vit", checkpoint=path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pth is not a PyTorch checkpoint, or is corrupt"):
        backbones.create_backbone("test_vit", checkpoint=path)


def test_other_architecture(tmp_path):
    wide = backbones.create_backbone("test_vit", embed_dim=64)
    path = tmp_path / "wide.pth"
    torch.save({"model": wide.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"wide\.pth .*is for another architecture: .* has shape \(.*64"):
        backbones.create_backbone("test_vit", checkpoint=path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, source):
    sd = dict(source.state_dict())
    del sd["blocks.2.mlp.fc2.weight"]
    sd["blocks.9.mlp.fc2.weight"] = torch.zeros(1)
    path = tmp_path / "drift.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as info:
        backbones.create_backbone("test_vit", checkpoint=path)
    msg = str(info.value)
    assert "1 missing key(s) [blocks.2.mlp.fc2.weight]" in msg
    assert "1 unexpected key(s) [blocks.9.mlp.fc2.weight]" in msg
    assert "drift.pth" in msg and "'mae'" not in msg  # test_vit's own format is timm


def test_wrong_format_fails_instead_of_loading_nothing(tmp_path, source):
    sd = {f"module.base_encoder.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "moco.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="missing key"):
        backbones.create_backbone("test_vit", checkpoint=path)  # test_vit expects the timm layout


def test_offline_download_names_url_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    url = "http://127.0.0.1:9/weights/mae_pretrain_vit_base.pth"
    with pytest.raises(CheckpointError, match=re.escape(url) + ".*--checkpoint PATH.*mae_pretrain_vit_base.pth"):
        backbones.create_backbone("test_vit", checkpoint=url)
    assert not list(tmp_path.rglob("*.part*")), "a failed download leaves no partial file"


def test_cached_download_is_used(tmp_path, monkeypatch, source):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    url = "http://127.0.0.1:9/weights/cached.pth"
    (tmp_path / "weights").mkdir()
    torch.save({"model": source.state_dict()}, tmp_path / "weights" / "cached.pth")
    assert_same_backbone(backbones.create_backbone("test_vit", checkpoint=url), source)
