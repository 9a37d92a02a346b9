"""The backbone registry: registration idiom, lookups, the whole zoo on the meta device, and the three ways users add
backbones (a module of theirs, an entry point, a YAML file)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import backbones
from backbones import registry
from backbones.checkpoint import build_model


@pytest.fixture
def clean_registry():
    before = dict(registry._FACTORIES)
    yield
    registry._FACTORIES.clear()
    registry._FACTORIES.update(before)


def test_zoo_has_the_paper_backbones():
    names = set(backbones.list_backbones())
    for name in [
        "mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14",
        "supervised_vit_base_patch16", "supervised_vit_large_patch16",
        "mocov3_vit_small_patch16", "mocov3_vit_base_patch16",
        "dino_vit_small_patch16", "dino_vit_base_patch16",
        "beit_base_patch16", "beit_large_patch16", "test_vit", "test_beit",
    ]:  # fmt: skip
        assert name in names


@pytest.mark.parametrize("name", backbones.list_backbones())
def test_every_entry_builds_and_is_consistent(name):
    spec = backbones.get_spec(name)
    assert spec.name == name
    with torch.device("meta"):
        model = build_model(spec)
    depth = len(model.blocks)
    assert spec.params == sum(p.numel() for p in model.parameters()), "the zoo's params column must match the model"
    assert spec.dense_taps and all(0 <= i < depth for i in spec.dense_taps), "taps must be blocks of the model"
    assert model.patch_embed.patch_size[0] == spec.patch_size
    assert 0 < spec.layer_decay <= 1
    assert spec.checkpoint_format in backbones.formats.FORMATS
    assert len(spec.mean) == len(spec.std) == 3


def test_paper_sizes():
    with torch.device("meta"):
        n = {k: sum(p.numel() for p in build_model(backbones.get_spec(k)).parameters()) for k in
             ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14")}  # fmt: skip
    assert 85e6 < n["mae_vit_base_patch16"] < 87e6
    assert 300e6 < n["mae_vit_large_patch16"] < 306e6
    assert 625e6 < n["mae_vit_huge_patch14"] < 635e6


def test_duplicate_registration_raises(clean_registry):
    def test_vit():
        return backbones.get_spec("test_vit")

    with pytest.raises(ValueError, match="already registered"):
        backbones.register_backbone(test_vit)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(KeyError, match="did you mean.*mae_vit_base_patch16"):
        backbones.get_spec("mae_vit_bse_patch16")


def test_create_backbone_exposes_timm_features():
    model = backbones.create_backbone("test_vit")
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 1 + 16, 32)
    final, inter = model.forward_intermediates(x, indices=[1, 3])
    assert [t.shape for t in inter] == [(2, 32, 4, 4)] * 2
    assert model.backbone_spec.name == "test_vit" and model.checkpoint_path is None


def test_user_module_registers(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "my_backbones.py").write_text(textwrap.dedent("""
        from backbones import BackboneSpec, register_backbone

        @register_backbone
        def my_vit():
            return BackboneSpec(name="my_vit", arch="vit_tiny_patch16_224", family="custom", img_size=32,
                                arch_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
                                patch_size=8, dense_taps=(0, 0, 1, 1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    backbones.load_backbone_module("my_backbones")
    assert backbones.create_backbone("my_vit").embed_dim == 16
    with pytest.raises(ModuleNotFoundError, match="--backbone-module 'no_such_module'"):
        backbones.load_backbone_module("no_such_module")


def test_entry_point_registers(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "ep_backbones.py").write_text(textwrap.dedent("""
        from backbones import BackboneSpec, register_backbone

        @register_backbone
        def ep_vit():
            return BackboneSpec(name="ep_vit", arch="vit_tiny_patch16_224", family="custom", img_size=32,
                                arch_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
                                patch_size=8, dense_taps=(0, 0, 1, 1))
    """))
    dist = tmp_path / "ep_backbones-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-backbones\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.backbones]\nmine = ep_backbones\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "ep_vit" in backbones.list_backbones()
    assert backbones.get_spec("ep_vit").arch_kwargs["embed_dim"] == 16


def test_yaml_backbone(tmp_path, clean_registry):
    ckpt = tmp_path / "weights.pth"
    source = backbones.create_backbone("test_vit")
    torch.save({"model": source.state_dict()}, ckpt)
    yml = tmp_path / "mine.yaml"
    yml.write_text(textwrap.dedent("""
        name: yaml_vit
        arch: vit_tiny_patch16_224
        arch_kwargs: {patch_size: 8, embed_dim: 32, depth: 4, num_heads: 2}
        img_size: 32
        patch_size: 8
        checkpoint: weights.pth
        checkpoint_format: mae
        dense_taps: [0, 1, 2, 3]
    """))
    model = backbones.create_backbone(str(yml))
    assert model.backbone_spec.family == "custom"
    assert torch.equal(model.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    assert backbones.create_backbone("yaml_vit").checkpoint_path == str(ckpt)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: x\narch: vit_tiny_patch16_224\n", "lacks the key.*checkpoint_format"),
        ("name: x\narch: a\ncheckpoint_format: mae\nlayerdecay: 0.7\n", "unknown key.*layerdecay"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_yaml_errors_name_the_file_and_key(tmp_path, body, message, clean_registry):
    yml = tmp_path / "bad.yaml"
    yml.write_text(body)
    with pytest.raises(ValueError, match=message) as info:
        backbones.load_backbone_yaml(yml)
    assert str(yml) in str(info.value)


def test_cli_help_is_fast_and_lists_backbones():
    out = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, check=True)
    assert "backbones" in out.stdout and "run" in out.stdout
    out = subprocess.run(
        [sys.executable, "-c", "import sys, harness.cli; assert not {'torch', 'mmdet'} & set(sys.modules)"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "harness", "backbones", "mae_*"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "arch", "params"]
    assert any(line.startswith("mae_vit_base_patch16") and "85.8M" in line and "CC-BY-NC" in line for line in lines)
    assert not any(line.startswith("dino_") for line in lines)
    assert any("harness download NAME" in line for line in lines), "the footer says how to get missing weights"


def test_listing_imports_neither_torch_nor_timm():
    code = ("import sys; from harness.commands.backbones import rows; table = rows(); "
            "assert all(r['params'] != '?' for r in table); "
            "heavy = [m for m in ('torch', 'timm') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_random_name_is_the_architecture_without_weights():
    """`random:<name>` (the floor of `harness run --controls`): the same model and preprocessing, no weights at all."""
    from backbones.checkpoint import create_backbone

    spec, rand = registry.get_spec("mae_vit_base_patch16"), registry.get_spec("random:mae_vit_base_patch16")
    assert rand.name == "random:mae_vit_base_patch16" and rand.family == "scratch"
    assert (rand.arch, rand.arch_kwargs, rand.img_size, rand.mean) == (spec.arch, spec.arch_kwargs, spec.img_size,
                                                                       spec.mean)
    assert spec.url and rand.url is None and rand.checkpoint is None and rand.sha256 is None
    model = create_backbone("random:test_vit")  # nothing to download or load
    assert model.checkpoint_path is None and model.backbone_spec.family == "scratch"
    with pytest.raises(KeyError, match="unknown backbone 'nope'"):
        registry.get_spec("random:nope")
