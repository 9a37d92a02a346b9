"""The mmengine adapter (`backbones.mm`): registration in both scopes, pyramids, window attention, weights kept through
`init_weights` inside real mmseg / mmdet models, and layer-wise lr decay."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from backbones import create_backbone, mm

pytestmark = pytest.mark.mm

DIM, DEPTH, PATCH = 32, 4, 8  # test_vit


@pytest.fixture(autouse=True)
def fresh_mm_logger(request: pytest.FixtureRequest) -> None:
    """A Runner that finished earlier in this process leaves mmengine's current logger with closed file handlers, which
    `init_weights` then writes to; each test gets its own logger, as each task run gets its own process."""
    from mmengine.logging import MMLogger

    MMLogger.get_instance(f"test-{request.node.name}", log_level="WARNING")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = create_backbone("test_vit", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "test_vit.pth"
    torch.save({"model": sd}, path)
    return path, sd


def _assert_vit_equals(vit: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Every tensor of the ViT is the checkpoint's; the position embedding resampled to the ViT's grid (without the
    class token's entry in ViTDet's form)."""
    from timm.layers import resample_abs_pos_embed

    own = vit.state_dict()
    assert own, "no parameters"
    for k, v in own.items():
        want = sd[k]
        if k == "pos_embed" and vit.cls_token is None:
            want = want[:, 1:]
        if k == "pos_embed" and want.shape != v.shape:
            prefix = 0 if vit.cls_token is None else 1
            want = resample_abs_pos_embed(want, new_size=list(vit.patch_embed.grid_size), num_prefix_tokens=prefix)
        assert torch.equal(v, want), f"{k} changed"


def test_registered_in_mmseg_and_mmdet_scopes() -> None:
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as SEG_CONSTRUCTORS

    for registry in (DET_MODELS, SEG_MODELS):
        model = registry.build(dict(type="HarnessViT", backbone="test_vit"))
        assert isinstance(model, mm.HarnessViT)
    assert SEG_CONSTRUCTORS.get("HarnessLayerDecayOptimizerConstructor") is mm.HarnessLayerDecayOptimizerConstructor
    assert OPTIM_WRAPPER_CONSTRUCTORS.get("HarnessLayerDecayOptimizerConstructor") is not None


@pytest.mark.parametrize("pyramid", ["simple", "taps"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_pyramid_strides_and_channels(pyramid: str, size: tuple[int, int]) -> None:
    channels = mm.pyramid_channels("test_vit", pyramid)
    strides = mm.pyramid_strides("test_vit")
    assert strides == [PATCH // 4, PATCH // 2, PATCH, PATCH * 2]
    want = [DIM // 4, DIM // 2, DIM, DIM] if pyramid == "simple" else [DIM] * 4
    assert channels == want
    model = mm.HarnessViT("test_vit", img_size=(64, 64), pyramid=pyramid).eval()
    assert model.pyramid == pyramid and model.out_channels == channels
    outs = model(torch.randn(2, 3, *size))  # 48x80: another size than img_size, pos-embed resampled on the fly
    shapes = [(2, c, size[0] // s, size[1] // s) for c, s in zip(want, strides, strict=True)]
    assert [tuple(o.shape) for o in outs] == shapes


def test_strides_of_paper_backbones() -> None:
    assert mm.pyramid_strides("mae_vit_base_patch16") == [4, 8, 16, 32]
    assert mm.pyramid_channels("mae_vit_base_patch16", "simple") == [192, 384, 768, 768]
    assert mm.pyramid_strides("mae_vit_tiny_patch4") == [1, 2, 4, 8]


def test_taps_default_to_spec_and_feed_levels() -> None:
    model = mm.HarnessViT("test_vit", pyramid="taps", taps=(0, 0, 1, 1)).eval()
    assert model.taps == (0, 0, 1, 1)
    assert len(model.vit.blocks) == 2 and "blocks.2" in model.load_report["removed"]  # unused blocks dropped (DDP)
    # level 2 (scale 1) is block 1's map as is
    maps = model.vit.forward_intermediates(torch.zeros(1, 3, 32, 32), indices=[1], intermediates_only=True)
    assert torch.allclose(model(torch.zeros(1, 3, 32, 32))[2], maps[0])
    assert mm.HarnessViT("test_vit").taps == (0, 1, 2, 3)  # the spec's dense_taps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pyramid="fpn"), "pyramid must be one of"),
        (dict(taps=(0, 1, 9, 3)), "needs 4 block indices"),
        (dict(scale_factors=(8.0, 2.0, 1.0, 0.5)), "scale_factors"),
        (dict(window_size=4, window_pos="tiled"), "window_pos must be one of"),
        (dict(window_pos="tile"), "window_pos='tile' needs window_size > 0"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mm.HarnessViT("test_vit", **kwargs)


def test_window_attention() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)  # an 8x8 grid of patches
    plain = mm.HarnessViT("test_vit", img_size=64, drop_path_rate=0.0).eval()
    whole, local = copy.deepcopy(plain), copy.deepcopy(plain)
    whole.window_size, local.window_size = 8, 4
    with torch.no_grad():
        # one window over the whole grid: every patch attends to every patch, the class token only to itself
        v = plain.vit
        tokens = v.norm_pre(v._pos_embed(v.patch_embed(x)))[:, v.num_prefix_tokens :]  # [1, 64, D]
        for blk in v.blocks[:3]:
            tokens = blk(tokens)
        expected = tokens.transpose(1, 2).reshape(1, DIM, 8, 8)
        assert torch.allclose(whole(x)[2], expected, atol=1e-5)  # level 2 (scale 1) is block 2's map as is
        assert not torch.allclose(plain(x)[2], expected, atol=1e-4)  # global attention also sees the class token
        # locality: every block windowed, so a change in the top-left window leaves the bottom-right one unchanged
        y = x.clone()
        y[..., :32, :32] += 1.0
        a, b = local(x)[2], local(y)[2]  # [1, D, 8, 8]
        assert torch.allclose(a[..., 4:, 4:], b[..., 4:, 4:], atol=1e-6)
        assert not torch.allclose(a[..., :4, :4], b[..., :4, :4], atol=1e-3)
        local.global_blocks = (1,)  # one global block mixes the windows
        a, b = local(x)[2], local(y)[2]
        assert not torch.allclose(a[..., 4:, 4:], b[..., 4:, 4:], atol=1e-4)


def test_tiled_window_position_embedding() -> None:
    """`window_pos='tile'`: every window gets the pretrained grid's embedding (resampled to the window), so the same
    content in two windows gives the same tokens; 'interpolate' (ViTDet) gives each window a slice of a larger grid."""
    torch.manual_seed(0)
    tiled = mm.HarnessViT("test_vit", img_size=32, window_size=4, window_pos="tile", drop_path_rate=0.0).eval()
    interpolated = copy.deepcopy(tiled)
    interpolated.window_pos = "interpolate"
    patch = torch.randn(1, 3, 32, 32)  # one 4x4-patch window, the pretraining grid
    x = patch.repeat(1, 1, 2, 3)  # 2 x 3 windows of the same content
    with torch.no_grad():
        assert torch.allclose(tiled(patch)[2], interpolated(patch)[2], atol=1e-6)  # one window: the two agree
        level = tiled(x)[2]  # [1, D, 8, 12]
        for i in range(2):
            for j in range(3):
                assert torch.allclose(level[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4], level[..., :4, :4], atol=1e-5)
        level = interpolated(x)[2]
        assert not torch.allclose(level[..., 4:, 8:], level[..., :4, :4], atol=1e-3)
        # a grid that is not a whole number of windows: the last (cut) window starts as the others do
        part = tiled(torch.randn(1, 3, 32, 32).repeat(1, 1, 1, 2)[..., :48])[2]  # [1, D, 4, 6]
        assert part.shape[-2:] == (4, 6)


def _bias_by_hand(attn: torch.nn.Module, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The attention's output with its relative position bias written out token by token (class token first)."""
    from timm.models.beit import gen_relative_position_index

    n, heads, head_dim = 1 + h * w, attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(tokens).reshape(len(tokens), n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    bias = torch.zeros(len(tokens), heads, n, n)
    if attn.mode == "decomposed":  # q . R_h[dy] + q . R_w[dx] between grid tokens, nothing for the class token
        th, tw = mm.rel_pos_table(attn.rel_pos_h, h, h), mm.rel_pos_table(attn.rel_pos_w, w, w)
        for i in range(h * w):
            for j in range(h * w):
                bias[:, :, 1 + i, 1 + j] = q[:, :, 1 + i] @ (th[i // w, j // w] + tw[i % w, j % w])
    else:  # one scalar per head and offset, class-token pairs included, indexed as timm's BEiT does
        assert (h, w) == attn.size
        index = gen_relative_position_index((h, w))
        for i in range(n):
            for j in range(n):
                bias[:, :, i, j] = attn.relative_position_bias_table[index[i, j]]
    logits = q @ k.transpose(-2, -1) * attn.scale + bias
    return attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(len(tokens), n, heads * head_dim))


@pytest.mark.parametrize("mode, names", [("decomposed", ("rel_pos_h", "rel_pos_w")),
                                         ("table", ("relative_position_bias_table",))])  # fmt: skip
def test_rel_pos_starts_as_the_plain_model_then_biases_by_offset(mode: str, names: tuple[str, ...]) -> None:
    """Zero tables leave the loaded model's features as they were; trained ones add the bias of each mode (ViTDet's
    decomposed one, BEiT's table) to the logits, and learn."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 48, 72)  # a 6 x 9 grid, not the 8 x 8 of img_size 64
    plain = mm.HarnessViT("test_vit", img_size=64, drop_path_rate=0.0, window_size=4, global_blocks=(1, 3)).eval()
    rel = mm.HarnessViT("test_vit", img_size=64, drop_path_rate=0.0, window_size=4, global_blocks=(1, 3),
                        rel_pos=mode).eval()  # fmt: skip
    result = rel.load_state_dict(plain.state_dict(), strict=False)
    tables = [f"vit.blocks.{i}.attn.{n}" for i in range(DEPTH) for n in names]
    assert sorted(result.missing_keys) == sorted(tables) and not result.unexpected_keys
    assert rel.load_report["initialised_fresh"] == [t[len("vit.") :] for t in tables]
    windowed, full = rel.vit.blocks[0].attn, rel.vit.blocks[1].attn
    assert windowed.size == (4, 4) and full.size == (8, 8)  # the window; the img_size grid
    assert getattr(full, names[0]).shape[0] == (2 * 8 - 1 if mode == "decomposed" else 15 * 15 + 3)
    with torch.no_grad():
        for a, b in zip(plain(x), rel(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        for name, p in rel.named_parameters():
            if name.rsplit(".", 1)[-1] in names:
                p.normal_(std=0.5)
        assert not torch.allclose(plain(x)[2], rel(x)[2], atol=1e-3)
        grids = ((full, (8, 8)), (windowed, (4, 4))) + (((full, (6, 9)),) if mode == "decomposed" else ())
        for attn, (h, w) in grids:  # its own grid; decomposed tables also resampled to another
            attn.grid = (1, h, w)
            tokens = torch.randn(2, 1 + h * w, DIM)
            torch.testing.assert_close(attn(tokens), _bias_by_hand(attn, tokens, h, w), rtol=1e-4, atol=1e-5)
        assert full(tokens[:, :1]).shape == (2, 1, DIM)  # the class token alone (windowed blocks): no grid, no bias
        if mode == "table":  # resampled to another grid: a table constant per head stays so, class entries kept
            full.relative_position_bias_table.copy_(torch.tensor([[1.0, -2.0]]).repeat(15 * 15 + 3, 1))
            full.relative_position_bias_table[-3:] = torch.tensor([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
            bias = full._table(torch.zeros(1, 2, 1 + 6 * 9, DIM // 2), 1, 6, 9)  # [1, heads, N, N]
            torch.testing.assert_close(bias[0, :, 1:, 1:], torch.tensor([1.0, -2.0])[:, None, None].expand(2, 54, 54))
            assert bias[0, :, 0, 1:].unique().tolist() == [5.0, 6.0] and bias[0, 1, 1:, 0].unique().tolist() == [8.0]
            assert bias[0, :, 0, 0].tolist() == [9.0, 10.0]
    rel.train()
    rel(x)[2].square().mean().backward()
    assert all(getattr(rel.vit.blocks[i].attn, names[0]).grad.abs().sum() > 0 for i in range(3))  # 3 feeds level 3


def test_rel_pos_table_offsets_and_resampling() -> None:
    from timm.models.beit import gen_relative_position_index

    table = torch.arange(7.0)[:, None]  # offsets -3..3 of a 4-token axis
    got = mm.rel_pos_table(table, 4, 4)[..., 0]
    assert torch.equal(got, torch.arange(4.0)[:, None] - torch.arange(4.0)[None, :] + 3)  # row i, col j: i - j + 3
    bigger = mm.rel_pos_table(table, 6, 6)[..., 0]  # resampled to 11 rows for a 6-token axis
    assert bigger.shape == (6, 6) and torch.equal(bigger.diagonal(), torch.full((6,), 3.0))  # offset 0: the middle
    assert bool((bigger[:, :-1] > bigger[:, 1:]).all())  # still ordered by offset
    for h, w in ((3, 3), (2, 5), (4, 3)):  # BEiT's table rows, class-token entries included
        assert torch.equal(mm.rel_pos_index(h, w, prefix=1), gen_relative_position_index((h, w)))


def test_rel_pos_values_and_beit() -> None:
    with pytest.raises(ValueError, match="rel_pos must be one of decomposed, table"):
        mm.HarnessViT("test_vit", rel_pos="swin")
    beit = mm.HarnessViT("test_beit", img_size=(32, 32), rel_pos="table")  # keeps its own relative position bias
    assert not any(isinstance(m, mm.RelPosAttention) for m in beit.modules())
    assert not any("rel" in n for n in beit.load_report["initialised_fresh"])
    assert beit(torch.randn(1, 3, 32, 32))[2].shape == (1, DIM, 4, 4)


def test_window_partition_roundtrip() -> None:
    x = torch.randn(2, 7, 10, 5)  # not multiples of the window: padded, then cropped back
    windows, padded = mm.window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5) and padded == (8, 12)
    assert torch.equal(mm.window_unpartition(windows, 4, padded, (7, 10)), x)


def test_load_report_and_init_weights_keep_checkpoint(checkpoint: tuple[Path, dict]) -> None:
    path, sd = checkpoint
    model = mm.HarnessViT("test_vit", checkpoint=str(path))
    assert model.load_report["checkpoint"] == str(path) and model.load_report["pretrained"]
    assert model.load_report["removed"] == ["norm.weight", "norm.bias"]
    model.init_weights()
    _assert_vit_equals(model.vit, sd)


def _seg_cfg(path: Path, pyramid: str) -> dict:
    channels = mm.pyramid_channels("test_vit", pyramid)
    norm = dict(type="BN", requires_grad=True)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[0.0] * 3, std=[255.0] * 3, size=(32, 32)),
        backbone=dict(type="HarnessViT", backbone="test_vit", checkpoint=str(path), img_size=(32, 32), pyramid=pyramid),
        decode_head=dict(
            type="UPerHead", in_channels=channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2), channels=16,
            num_classes=3, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        auxiliary_head=dict(
            type="FCNHead", in_channels=channels[2], in_index=2, channels=8, num_convs=1, concat_input=False,
            num_classes=3, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )  # fmt: skip


@pytest.mark.parametrize("pyramid", ["simple", "taps"])
def test_mmseg_segmentor_keeps_pretrained_weights_and_trains(checkpoint: tuple[Path, dict], pyramid: str) -> None:
    from mmengine.registry import DefaultScope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    path, sd = checkpoint
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(_seg_cfg(path, pyramid))
    model.init_weights()
    _assert_vit_equals(model.backbone.vit, sd)
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, 32, 32))))
    sample.set_metainfo(dict(img_shape=(32, 32), ori_shape=(32, 32), pad_shape=(32, 32)))
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)] * 2,
                                        data_samples=[sample, copy.deepcopy(sample)]), training=True)  # fmt: skip
    losses = model.loss(data["inputs"], data["data_samples"])
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is not None for p in model.backbone.parameters()), "a backbone parameter got no gradient"


def test_mmdet_mask_rcnn_keeps_pretrained_weights_and_trains(checkpoint: tuple[Path, dict]) -> None:
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmengine.structures import InstanceData

    register_all_modules(init_default_scope=False)
    path, sd = checkpoint
    strides = mm.pyramid_strides("test_vit")
    train_cfg = dict(
        rpn=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3),
            sampler=dict(type="RandomSampler", num=32, pos_fraction=0.5),
            allowed_border=-1, pos_weight=-1, debug=False,
        ),
        rpn_proposal=dict(nms_pre=200, max_per_img=100, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5),
            sampler=dict(type="RandomSampler", num=32, pos_fraction=0.25, add_gt_as_proposals=True),
            mask_size=14, pos_weight=-1, debug=False,
        ),
    )  # fmt: skip
    roi = dict(type="SingleRoIExtractor", out_channels=16, featmap_strides=strides)
    cfg = dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[0.0] * 3, std=[255.0] * 3, pad_mask=True,
                               pad_size_divisor=16),
        backbone=dict(type="HarnessViT", backbone="test_vit", checkpoint=str(path), img_size=(64, 64),
                      pyramid="simple"),
        neck=dict(type="FPN", in_channels=mm.pyramid_channels("test_vit", "simple"), out_channels=16, num_outs=5),
        rpn_head=dict(
            type="RPNHead", in_channels=16, feat_channels=16,
            anchor_generator=dict(type="AnchorGenerator", scales=[4], ratios=[1.0],
                                  strides=[*strides, strides[-1] * 2]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder"),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True), loss_bbox=dict(type="L1Loss"),
        ),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor={**roi, "roi_layer": dict(type="RoIAlign", output_size=7, sampling_ratio=0)},
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=16, fc_out_channels=32, roi_feat_size=7, num_classes=2,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_stds=[0.1, 0.1, 0.2, 0.2]),
                           loss_cls=dict(type="CrossEntropyLoss"), loss_bbox=dict(type="L1Loss")),
            mask_roi_extractor={**roi, "roi_layer": dict(type="RoIAlign", output_size=7, sampling_ratio=0)},
            mask_head=dict(type="FCNMaskHead", num_convs=1, in_channels=16, conv_out_channels=16, num_classes=2,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True)),
        ),
        train_cfg=train_cfg,
        test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
                      rcnn=dict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=10,
                                mask_thr_binary=0.5)),
    )  # fmt: skip
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(ConfigDict(cfg))  # mmdet reads train_cfg.rpn by attribute
    model.init_weights()
    _assert_vit_equals(model.backbone.vit, sd)

    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[:, 10:40, 20:50] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[20.0, 10.0, 50.0, 40.0]]), labels=torch.tensor([1]),
        masks=BitmapMasks(mask.numpy(), 64, 64),
    )  # fmt: skip
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)],
                                        data_samples=[sample]), training=True)  # fmt: skip
    losses = model.loss(data["inputs"], data["data_samples"])
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.vit.blocks[-1].mlp.fc2.weight.grad is not None
    model.eval()
    with torch.no_grad():
        (pred,) = model.predict(data["inputs"], data["data_samples"])
    assert pred.pred_instances.masks.shape[-2:] == (64, 64)


def _groups(model: torch.nn.Module, rule: str, decay: float = 0.5, lr: float = 1e-3, wd: float = 0.05) -> tuple:
    """{name: lr} and {name: weight decay} of the optimizer the constructor builds for `model` under `rule`."""
    from mmengine.optim import build_optim_wrapper

    cfg = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=lr, weight_decay=wd),
        constructor="HarnessLayerDecayOptimizerConstructor",
        paramwise_cfg=dict(layer_decay_rate=decay, decay_rule=rule),
    )
    groups = build_optim_wrapper(model, cfg).optimizer.param_groups
    lrs = {n: g["lr"] for g in groups for n in g["param_names"]}
    wds = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
    return lrs, wds


def test_layer_decay_constructor() -> None:
    model = torch.nn.ModuleDict(dict(backbone=mm.HarnessViT("test_vit"), head=torch.nn.Conv2d(DIM, 3, 1)))
    lr, wd = _groups(model, "mmseg")
    top = DEPTH + 1
    assert lr["backbone.vit.pos_embed"] == pytest.approx(1e-3 * 0.5**top)
    assert lr["backbone.vit.patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5**top)
    for i in range(DEPTH):
        assert lr[f"backbone.vit.blocks.{i}.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5 ** (top - i - 1))
    assert lr["head.weight"] == pytest.approx(1e-3) and lr["backbone.scales.0.0.weight"] == pytest.approx(1e-3)
    for name in ("backbone.vit.blocks.0.norm1.weight", "backbone.vit.blocks.0.attn.qkv.bias", "head.bias"):
        assert wd[name] == 0.0, name
    for name in ("backbone.vit.cls_token", "backbone.vit.pos_embed", "backbone.vit.blocks.0.attn.qkv.weight"):
        assert wd[name] == 0.05, name  # mmseg's exemption list never matches its full names
    with pytest.raises(ValueError, match="decay_rule must be one of mmseg, detectron2"):
        _groups(model, "mmsegg")


def test_layer_decay_places_rel_pos_tables_in_their_block() -> None:
    model = torch.nn.ModuleDict(dict(backbone=mm.HarnessViT("test_vit", rel_pos="decomposed")))
    lr, wd = _groups(model, "detectron2", wd=0.1)
    for i in range(DEPTH):
        name = f"backbone.vit.blocks.{i}.attn.rel_pos_h"
        assert lr[name] == pytest.approx(1e-3 * 0.5 ** (DEPTH - i)), name
        assert wd[name] == 0.1  # decayed, as ViTDet does (only norms and pos_embed are exempt there)
    model = torch.nn.ModuleDict(dict(backbone=mm.HarnessViT("test_vit", rel_pos="table")))
    lr, wd = _groups(model, "mmseg", wd=0.1)
    assert wd["backbone.vit.blocks.0.attn.relative_position_bias_table"] == 0.1  # 2-D: decayed, as mmseg / BEiT
    assert lr["backbone.vit.blocks.0.attn.relative_position_bias_table"] == pytest.approx(1e-3 * 0.5**DEPTH)


# --- ViT-B-sized, built on the meta device from a published MAE checkpoint's layout (no memory, no weights) ---

VIT_B_DEPTH = 12


@pytest.fixture(scope="module")
def mae_vit_b_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A checkpoint with the keys and shapes of `mae_pretrain_vit_base.pth` (`{'model': encoder}`, timm names, with
    the final norm and no head), its tensors on the meta device."""
    with torch.device("meta"):
        sd = create_backbone("mae_vit_base_patch16", pretrained=False).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.11.mlp.fc2.bias"} <= set(sd) and len(sd) == 150
    path = tmp_path_factory.mktemp("vitb") / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd}, path)
    return path, set(sd)


def _ade20k_vit_b(path: Path, **kwargs: object) -> mm.HarnessViT:
    settings = dict(img_size=(512, 512), rel_pos="table", layer_scale=1.0) | kwargs
    with torch.device("meta"):
        return mm.HarnessViT("mae_vit_base_patch16", checkpoint=str(path), **settings)


def test_mae_vit_b_layout_loads_into_the_ade20k_backbone(mae_vit_b_layout: tuple[Path, set[str]]) -> None:
    path, keys = mae_vit_b_layout
    model = _ade20k_vit_b(path)
    report = model.load_report
    fresh = {f"blocks.{i}.{n}" for i in range(VIT_B_DEPTH) for n in ("attn.relative_position_bias_table", "ls1.gamma",
                                                                      "ls2.gamma")}  # fmt: skip
    assert set(report["initialised_fresh"]) == fresh and report["skipped"] == []
    assert report["removed"] == ["norm.weight", "norm.bias"]
    kept = {k for k in model.vit.state_dict()}
    assert keys == (kept - fresh) | set(report["removed"])  # every checkpoint key loaded or named as removed


def test_mae_vit_b_layout_loads_into_the_coco_backbone(mae_vit_b_layout: tuple[Path, set[str]]) -> None:
    path, keys = mae_vit_b_layout
    with torch.device("meta"):
        model = mm.HarnessViT("mae_vit_base_patch16", checkpoint=str(path), img_size=(1024, 1024), pyramid="simple",
                              window_size=14, global_blocks=(2, 5, 8, 11), rel_pos="decomposed")  # fmt: skip
    fresh = {f"blocks.{i}.attn.rel_pos_{a}" for i in range(VIT_B_DEPTH) for a in "hw"}
    assert set(model.load_report["initialised_fresh"]) == fresh and model.load_report["skipped"] == []
    kept = set(model.vit.state_dict())
    removed = set(model.load_report["removed"])
    parts = {r for r in removed if r not in keys}  # ViTDet's form drops part of a tensor: named, not a key
    assert parts == {"pos_embed[:, 0] (the class token's entry)"}
    assert keys == (kept - fresh) | (removed - parts)


def _vit_b_expected(name: str, rule: str) -> tuple[int, bool]:
    """(layer id, no weight decay) of a ViT-B segmentor's parameter, written out from each reference's code."""
    local = name.removeprefix("backbone.vit.") if name.startswith("backbone.vit.") else None
    if local is None:
        layer = VIT_B_DEPTH + 1
    elif local.startswith(("patch_embed.", "pos_embed")) or (rule == "mmseg" and local == "cls_token"):
        layer = 0
    elif local.startswith("blocks."):
        layer = int(local.split(".")[1]) + 1
    else:
        layer = VIT_B_DEPTH + 1
    if rule == "mmseg":  # ndim == 1 or '.bias': biases, layer scales, the weights of every norm
        one_d = ("backbone.scales.0.1.weight", "decode_head.1.weight", "neck_bn.weight")
        return layer, name.endswith((".bias", ".gamma", *one_d)) or ".norm" in name
    no_decay = local == "pos_embed" or (local is not None and ".norm" in local)  # the ViT's torch LayerNorms
    return layer, no_decay or name.startswith(("neck_bn.", "backbone.scales.0.1."))  # torch BatchNorms


@pytest.mark.parametrize("rule", ["mmseg", "detectron2"])
def test_vit_b_param_groups_follow_the_reference(mae_vit_b_layout: tuple[Path, set[str]], rule: str) -> None:
    """Every parameter of a ViT-B UperNet-like model (taps pyramid with BN, layer scale, BEiT's tables; a head with a
    LayerNorm and a BatchNorm) gets the reference's lr scale 0.65 ** (13 - layer) and weight decay."""
    from timm.layers import LayerNorm2d

    path, _ = mae_vit_b_layout
    with torch.device("meta"):
        head = torch.nn.Sequential(torch.nn.Conv2d(768, 768, 3), LayerNorm2d(768), torch.nn.Conv2d(768, 150, 1))
        model = torch.nn.ModuleDict(dict(backbone=_ade20k_vit_b(path), decode_head=head,
                                         neck_bn=torch.nn.BatchNorm2d(8)))  # fmt: skip
    lr, wd = _groups(model, rule, decay=0.65, lr=1e-4)
    assert len(lr) == 4 + 12 * 15 + 8 + 8  # tokens, patch embed; 15 per block; x4 and x2 branches; head and BN
    for name in lr:
        layer, no_decay = _vit_b_expected(name, rule)
        assert lr[name] == pytest.approx(1e-4 * 0.65 ** (VIT_B_DEPTH + 1 - layer)), name
        assert wd[name] == (0.0 if no_decay else 0.05), name
    # the decisive differences between the two references
    assert wd["backbone.vit.pos_embed"] == (0.05 if rule == "mmseg" else 0.0)
    assert wd["backbone.vit.blocks.0.attn.qkv.bias"] == (0.0 if rule == "mmseg" else 0.05)
    assert wd["decode_head.1.weight"] == (0.0 if rule == "mmseg" else 0.05)  # a LayerNorm outside the ViT
    assert lr["backbone.vit.cls_token"] == pytest.approx(1e-4 * 0.65 ** (13 if rule == "mmseg" else 0))


def test_taps_pyramid_norm_and_layer_scale(checkpoint: tuple[Path, dict]) -> None:
    """The taps pyramid's x4 branch is mmseg's Feature2Pyramid (deconv with bias, BN, GELU, deconv); layer scale is
    new at 1.0, so the loaded model computes the same features."""
    from timm.layers import LayerNorm2d, LayerScale

    path, _ = checkpoint
    plain = mm.HarnessViT("test_vit", checkpoint=str(path)).eval()
    scaled = mm.HarnessViT("test_vit", checkpoint=str(path), layer_scale=1.0).eval()
    x4 = scaled.scales[0]
    assert [type(m) for m in x4] == [torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d, torch.nn.GELU,
                                     torch.nn.ConvTranspose2d]  # fmt: skip
    assert x4[0].bias is not None and x4[3].bias is not None
    assert isinstance(mm.HarnessViT("test_vit", pyramid="simple").scales[0][1], LayerNorm2d)
    assert isinstance(mm.HarnessViT("test_vit", pyramid_norm="ln").scales[0][1], LayerNorm2d)
    assert isinstance(mm.HarnessViT("test_vit", pyramid_norm="syncbn").scales[0][1], torch.nn.SyncBatchNorm)
    for blk in scaled.vit.blocks:
        assert isinstance(blk.ls1, LayerScale) and torch.equal(blk.ls1.gamma, torch.ones(DIM))
        assert torch.equal(blk.ls2.gamma, torch.ones(DIM))
    assert sum("gamma" in k for k in scaled.load_report["initialised_fresh"]) == 2 * DEPTH
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(plain._block_maps(x), scaled._block_maps(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pyramid_norm"):
        mm.HarnessViT("test_vit", pyramid_norm="gn")


def test_layer_scale_keeps_beit_gammas() -> None:
    model = mm.HarnessViT("test_beit", img_size=(32, 32), layer_scale=1.0)
    assert not any("gamma" in k for k in model.load_report["initialised_fresh"])
    assert all(blk.gamma_1 is not None for blk in model.vit.blocks)


def test_layer_decay_needs_the_adapter() -> None:
    from mmengine.optim import build_optim_wrapper

    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3), constructor="HarnessLayerDecayOptimizerConstructor",
               paramwise_cfg=dict(layer_decay_rate=0.5, decay_rule="mmseg"))  # fmt: skip
    with pytest.raises(ValueError, match="exactly one HarnessViT"):
        build_optim_wrapper(torch.nn.Linear(2, 2), cfg)


def test_beit_backbone_at_its_size() -> None:
    """BEiT (relative position bias, no dynamic size in timm): works at img_size, says so at another size."""
    model = mm.HarnessViT("test_beit", img_size=(32, 32), pyramid="taps").eval()
    assert model.taps == (0, 0, 1, 1)  # the spec's dense taps, repeated blocks computed once
    outs = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, DIM, 16, 16), (1, DIM, 8, 8), (1, DIM, 4, 4), (1, DIM, 2, 2)]
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="window_size > 0 needs a timm VisionTransformer"):
        mm.HarnessViT("test_beit", window_size=2)


def test_fewer_levels_take_the_deepest_taps() -> None:
    model = mm.HarnessViT("test_vit", scale_factors=(2.0, 1.0, 0.5), global_blocks=None)
    assert model.taps == (1, 2, 3) and model.strides == [4, 8, 16]
    assert mm.pyramid_channels("test_vit", "taps", (2.0, 1.0, 0.5)) == [DIM] * 3
