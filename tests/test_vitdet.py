"""ViTDet's COCO backbone and pyramid (Li et al. 2022; detectron2 `modeling/backbone/vit.py`, `utils.py`), on
ViT-B-sized modules where CPU allows: the simple feature pyramid's structure (no top-down path), windowed blocks that
normalise before zero-padding and drop paths per image, no class token, the position embedding kept at the pretrained
grid and resampled in the forward pass, ViT-H/14's patch embedding interpolated to 16, and detectron2's parameter
names mapped onto ours with every key accounted for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from backbones import create_backbone, mm

pytestmark = pytest.mark.mm

B_DIM, B_HEADS = 768, 12  # ViT-B
B_CHANNELS = [192, 384, 768, 768]  # ViT-B's simple pyramid for scales 4, 2, 1, 0.5


@pytest.fixture(autouse=True)
def fresh_mm_logger(request: pytest.FixtureRequest) -> None:
    from mmengine.logging import MMLogger

    MMLogger.get_instance(f"test-{request.node.name}", log_level="WARNING")


def test_simple_fpn_levels_are_independent_and_match_vitdet_layout() -> None:
    """Item 1: each output level depends on its own input only (an FPN's top-down path would carry level 3 into
    levels 0-2); convs without bias, each followed by a LayerNorm; the extra level is a stride-2 subsample of the
    last."""
    torch.manual_seed(0)
    neck = mm.HarnessSimpleFPN(B_CHANNELS, 256, num_outs=5).eval()
    assert [type(m).__name__ for m in neck.levels[0]] == ["Conv2d", "LayerNorm2d", "Conv2d", "LayerNorm2d"]
    assert all(m.bias is None for m in neck.modules() if isinstance(m, torch.nn.Conv2d))
    assert [(lv[0].kernel_size, lv[2].kernel_size) for lv in neck.levels] == [((1, 1), (3, 3))] * 4
    sizes = [32, 16, 8, 4]  # a 128 px input's grid of 8 at scales 4, 2, 1, 0.5
    inputs = [torch.randn(1, c, s, s) for c, s in zip(B_CHANNELS, sizes, strict=True)]
    with torch.no_grad():
        outs = neck(inputs)
        assert [tuple(o.shape) for o in outs] == [(1, 256, s, s) for s in [*sizes, 2]]
        assert torch.equal(outs[4], outs[3][..., ::2, ::2])  # detectron2 LastLevelMaxPool: kernel 1, stride 2
        changed = neck([*inputs[:3], inputs[3] + 1.0])
    assert all(torch.equal(a, b) for a, b in zip(outs[:3], changed[:3], strict=True))
    assert not torch.allclose(outs[3], changed[3])


def test_simple_fpn_init_is_c2_xavier_fill() -> None:
    torch.manual_seed(0)
    neck = mm.HarnessSimpleFPN([768], 256, num_outs=1)
    w = neck.levels[0][0].weight  # kaiming-uniform with a=1: bound sqrt(3 / fan_in)
    assert w.abs().max() <= (3 / 768) ** 0.5 and w.abs().max() > 0.9 * (3 / 768) ** 0.5
    norm = neck.levels[0][1]
    assert torch.equal(norm.weight, torch.ones(256)) and torch.equal(norm.bias, torch.zeros(256))


class _Recorder(torch.nn.Module):
    """Stands in for attention: records its input, returns it unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x


def test_windowed_block_pads_with_zeros_after_the_norm() -> None:
    """Item 2: the padded tokens that windowed attention sees are zeros, not the norm of zeros (its bias)."""
    torch.manual_seed(0)
    blk = Block(B_DIM, B_HEADS, qkv_bias=True).eval()
    torch.nn.init.normal_(blk.norm1.bias)  # LN(0) would be this bias
    blk.attn = _Recorder()
    x = torch.randn(1, 5, 6, B_DIM)  # a 5x6 grid in windows of 4: padded to 8x8, 4 windows
    with torch.no_grad():
        mm.windowed_block(blk, x, window=4)
    seen = blk.attn.seen.reshape(1, 2, 2, 4, 4, B_DIM).permute(0, 1, 3, 2, 4, 5).reshape(1, 8, 8, B_DIM)
    torch.testing.assert_close(seen[:, :5, :6], blk.norm1(x))
    assert not seen[:, 5:].any() and not seen[:, :, 6:].any()


class _Ones(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


def test_windowed_block_drops_paths_per_image() -> None:
    """Item 2: stochastic depth drops a block's branch for a whole image, never for one window of it."""
    torch.manual_seed(0)
    blk = Block(B_DIM, B_HEADS, drop_path=0.5).train()
    blk.attn, blk.mlp = _Ones(), torch.nn.Identity()
    blk.norm2 = _Zeros()
    x = torch.zeros(16, 8, 8, B_DIM)  # 4 windows of 4x4 per image
    delta = mm.windowed_block(blk, x, window=4)  # the attention branch only: 0 (dropped) or 1 / 0.5 (kept)
    per_image = delta.reshape(16, -1)
    assert torch.equal(per_image, per_image[:, :1].expand_as(per_image))  # constant over each image
    assert set(per_image[:, 0].tolist()) == {0.0, 2.0}


class _Zeros(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_detection_backbone_has_no_class_token_and_keeps_the_pretrained_grid(tmp_path: Path) -> None:
    """Item 2: pyramid 'simple' drops the class token and its position entry (reported as removed); the embedding stays
    at the pretrained 4x4 grid (test_vit: 32 px, patch 8) whatever img_size, and is resampled in the forward pass as
    ViTDet's `get_abs_pos` (bicubic, align_corners=False, no antialias). 'taps' (ADE20K) keeps the class token."""
    torch.manual_seed(0)
    source = create_backbone("test_vit", pretrained=False)
    torch.save({"model": source.state_dict()}, tmp_path / "vit.pth")
    model = mm.HarnessViT("test_vit", checkpoint=str(tmp_path / "vit.pth"), img_size=64, pyramid="simple",
                          window_size=3, global_blocks=(3,), drop_path_rate=0.0).eval()
    vit = model.vit
    assert vit.cls_token is None and vit.num_prefix_tokens == 0 and "cls_token" not in vit.state_dict()
    assert {"cls_token", "pos_embed[:, 0] (the class token's entry)"} <= set(model.load_report["removed"])
    assert torch.equal(vit.pos_embed, source.pos_embed[:, 1:])  # [1, 16, D]: the pretrained 4x4 grid, unresampled
    x = torch.randn(2, 3, 48, 40)  # a 6x5 grid: windows of 3 pad it to 6x6
    with torch.no_grad():
        pos = F.interpolate(source.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(6, 5),
                            mode="bicubic", align_corners=False).permute(0, 2, 3, 1)  # ViTDet's exact call
        tokens = vit.patch_embed(x) + pos  # [2, 6, 5, D]
        for i, blk in enumerate(vit.blocks):
            glob = blk(tokens.reshape(2, 30, -1)).reshape(2, 6, 5, -1) if i == 3 else None
            tokens = glob if glob is not None else mm.windowed_block(blk, tokens, 3)
        torch.testing.assert_close(model(x)[2], tokens.permute(0, 3, 1, 2))  # level 2 (scale 1): the last block's map
        timm_pos = F.interpolate(source.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(6, 5),
                                 mode="bicubic", align_corners=False, antialias=True).permute(0, 2, 3, 1)
    assert not torch.allclose(pos, timm_pos, atol=1e-4)  # why timm's resample_abs_pos_embed is not used here
    taps = mm.HarnessViT("test_vit", checkpoint=str(tmp_path / "vit.pth"), pyramid="taps")
    assert taps.vit.cls_token is not None and "cls_token" not in taps.load_report["removed"]


def _vitdet_keys(depth: int) -> list[str]:
    """The state-dict keys of detectron2's ViT-B ViTDet backbone (`SimpleFeaturePyramid` on `ViT`, use_rel_pos)."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "attn.rel_pos_h", "attn.rel_pos_w", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = ["net.pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"]
    keys += [f"net.blocks.{i}.{k}" for i in range(depth) for k in block]
    convs = lambda stage, first: [f"simfp_{stage}.{j}.{k}" for j in (first, first + 1)  # noqa: E731
                                  for k in ("weight", "norm.weight", "norm.bias")]
    keys += [f"simfp_2.{j}.{k}" for j in (0, 1, 3) for k in ("weight", "bias")] + convs(2, 4)
    keys += ["simfp_3.0.weight", "simfp_3.0.bias"] + convs(3, 1) + convs(4, 0) + convs(5, 1)
    return keys


def test_vitdet_names_map_onto_ours_with_every_key_accounted() -> None:
    model = mm.HarnessViT("test_vit", pyramid="simple", window_size=2, rel_pos="decomposed")
    neck = mm.HarnessSimpleFPN(model.out_channels, 256)
    own = model.state_dict()
    sd = {k: torch.zeros(1) for k in _vitdet_keys(len(model.vit.blocks))}
    sd["net.pos_embed"] = torch.zeros(1, 1 + 16, 32)  # detectron2 keeps the class entry in the parameter
    backbone, neck_sd = mm.vitdet_to_harness(sd)
    assert set(backbone) == set(own) and set(neck_sd) == set(neck.state_dict())
    assert backbone["vit.pos_embed"].shape == own["vit.pos_embed"].shape
    with pytest.raises(KeyError, match="simfp_9"):
        mm.vitdet_to_harness({"simfp_9.0.weight": torch.zeros(1)})


def test_patch_14_checkpoint_runs_at_patch_16_as_vitdet(tmp_path: Path) -> None:
    """Item 6: a patch-8 checkpoint (as MAE ViT-H/14) at patch_size=16: the kernel interpolated bicubically (ViTDet's
    conversion), the position embedding's grid kept, strides from the new patch."""
    torch.manual_seed(0)
    source = create_backbone("test_vit", pretrained=False)
    torch.save({"model": source.state_dict()}, tmp_path / "vit.pth")
    model = mm.HarnessViT("test_vit", checkpoint=str(tmp_path / "vit.pth"), pyramid="simple", patch_size=16)
    kernel = F.interpolate(source.patch_embed.proj.weight, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.equal(model.vit.patch_embed.proj.weight, kernel)
    assert torch.equal(model.vit.pos_embed, source.pos_embed[:, 1:])
    assert model.strides == [4, 8, 16, 32] == mm.pyramid_strides("test_vit", patch_size=16)
    assert [tuple(o.shape[-2:]) for o in model(torch.randn(1, 3, 64, 64))] == [(16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.slow
def test_mae_vit_b_layout_loads_into_coco_and_ade20k_backbones(tmp_path: Path) -> None:
    """The published MAE ViT-B checkpoint's layout (encoder, class token, final norm) into both tasks' backbones: every
    key is loaded, or reported removed."""
    from backbones.checkpoint import build_model
    from backbones.registry import get_spec

    sd = build_model(get_spec("mae_vit_base_patch16")).state_dict()
    torch.save({"model": sd}, tmp_path / "mae_pretrain_vit_base.pth")
    path = str(tmp_path / "mae_pretrain_vit_base.pth")
    coco = mm.HarnessViT("mae_vit_base_patch16", checkpoint=path, img_size=1024, pyramid="simple", window_size=14,
                         global_blocks=(2, 5, 8, 11), rel_pos="decomposed")
    ade = mm.HarnessViT("mae_vit_base_patch16", checkpoint=path, img_size=512, pyramid="taps", rel_pos="table")
    for model in (coco, ade):
        loaded = set(model.vit.state_dict()) - set(model.load_report["initialised_fresh"])
        removed = {k for k in model.load_report["removed"] if k in sd}
        assert loaded | removed | {"pos_embed"} >= set(sd) - {"cls_token"} and not loaded - set(sd)
    assert coco.vit.pos_embed.shape == (1, 196, B_DIM) and coco.out_channels == B_CHANNELS
    assert {"cls_token", "norm.weight", "norm.bias"} <= set(coco.load_report["removed"])
    assert ade.vit.cls_token is not None and ade.vit.pos_embed.shape == (1, 1 + 32 * 32, B_DIM)
