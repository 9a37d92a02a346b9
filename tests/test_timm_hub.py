"""`timm:<model>.<tag>` backbones: the spec from timm's pretrained config, weights through timm's own loading (run here
on a local file through `pretrained_cfg_overlay`, the path timm takes for a hub download once the file is local)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch

import backbones
from tests.test_runner import DID_NOT_START, base_args, harness, write_suite

TINY = "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def test_spec_comes_from_timm_pretrained_cfg():
    spec = backbones.get_spec("timm:vit_base_patch16_224.mae")
    assert spec.arch == "vit_base_patch16_224.mae" and spec.timm_pretrained and spec.url is None
    assert spec.img_size == 224 and spec.patch_size == 16 and spec.license == "cc-by-nc-4.0"
    assert spec.dense_taps == backbones.get_spec("mae_vit_base_patch16").dense_taps
    assert spec.params == backbones.get_spec("mae_vit_base_patch16").params
    tiny = backbones.get_spec(TINY)
    assert tiny.mean == (0.5, 0.5, 0.5) and tiny.std == (0.5, 0.5, 0.5)  # augreg weights' own normalisation
    default = backbones.get_spec("timm:vit_tiny_patch16_224")  # no tag: timm's default one
    assert default.arch.startswith("vit_tiny_patch16_224.")


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("timm:vit_bsae_patch16_224.mae", KeyError, "did you mean vit_base_patch16_224"),
        ("timm:vit_base_patch16_224.maee", KeyError, "no pretrained tag 'maee'.*its tags: .*mae"),
        ("timm:resnet50.a1_in1k", ValueError, "not a plain ViT"),
    ],
)
def test_bad_timm_names_say_what_exists(name, error, message):
    with pytest.raises(error, match=message):
        backbones.get_spec(name)


def _saved(tmp_path, **kwargs) -> tuple[torch.nn.Module, str]:
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **kwargs)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)
    return source, str(path)


def test_weights_load_through_timm(tmp_path):
    source, path = _saved(tmp_path)
    model = backbones.create_backbone(TINY, img_size=112, pretrained_cfg_overlay=dict(file=path))
    assert model.checkpoint_path == path and model.load_report == {"loaded_by": ["timm"]}
    assert model.pos_embed.shape == (1, 1 + 7 * 7, 192)  # timm resampled the 14x14 grid for 112 px
    for k, v in model.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(v, source.state_dict()[k]), k


def test_checkpoint_replaces_timm_weights(tmp_path):
    source, path = _saved(tmp_path)
    model = backbones.create_backbone(TINY, checkpoint=path)  # our strict loader, timm's layout
    assert model.checkpoint_path == path and "head.weight" in model.load_report["skipped"]
    assert torch.equal(model.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)


@pytest.mark.slow
def test_offline_timm_weights_name_the_way_out(tmp_path):
    code = f"import backbones; backbones.create_backbone({TINY!r})"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    env |= {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"harness download {TINY}" in proc.stderr and f"--checkpoint {TINY}=PATH" in proc.stderr


def test_run_flags_accept_timm_names(tmp_path, monkeypatch, capsys):
    preset, out = write_suite(tmp_path), tmp_path / "out"
    args = [*base_args(preset, out), "--backbones", TINY, "--dry-run"]
    assert harness(monkeypatch, *args) == 0
    assert TINY in capsys.readouterr().out
    _, path = _saved(tmp_path)
    assert harness(monkeypatch, *args, "--checkpoint", f"{TINY}={path}") == 0
    bad = "timm:vit_tiny_patch16_224.nope"
    assert harness(monkeypatch, *base_args(preset, out), "--backbones", bad, "--dry-run") == DID_NOT_START
    err = capsys.readouterr().err
    assert "--backbones" in err and "'nope'" in err and "augreg_in21k" in err
