"""The MAE numerics (facebookresearch/mae `models_mae.py`): masking, its inverse, the masked-only loss, norm-pix
targets, patchify, and an encoder that sees only the visible patches."""

from __future__ import annotations

import pytest
import torch

from backbones.checkpoint import build_model
from backbones.pos_embed import get_2d_sincos_pos_embed
from backbones.registry import get_spec
from harness.pretrain.mae import (
    MaskedAutoencoderViT,
    masked_mse,
    norm_pix_target,
    num_visible,
    patchify,
    random_masking,
    unpatchify,
)


def tiny_mae(**kwargs) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(build_model(get_spec("test_vit")), decoder_embed_dim=16, decoder_depth=1,
                                decoder_num_heads=2, **kwargs)


@pytest.mark.parametrize("length,ratio", [(64, 0.75), (196, 0.75), (49, 0.6), (10, 0.7), (16, 0.0)])
def test_masking_keeps_round_count_and_restores_order(length: int, ratio: float) -> None:
    n, d = 5, 3
    x = torch.arange(n * length * d, dtype=torch.float32).reshape(n, length, d)
    visible, mask, ids_restore = random_masking(x, ratio, torch.Generator().manual_seed(1))
    keep = round((1 - ratio) * length)
    assert visible.shape == (n, keep, d)
    assert torch.all(mask.sum(dim=1) == length - keep)  # exactly that many masked in every sample
    for i in range(n):
        kept_positions = torch.nonzero(mask[i] == 0).squeeze(1)
        # the visible tokens are exactly the unmasked patches, in shuffled order
        assert sorted(visible[i, :, 0].tolist()) == sorted(x[i, kept_positions, 0].tolist())
        assert sorted(ids_restore[i].tolist()) == list(range(length))  # a permutation
    # ids_restore inverts the shuffle: shuffled tokens gathered by it come back in patch order
    shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(x, 1, shuffle[..., None].expand(-1, -1, d))
    restored = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, d))
    torch.testing.assert_close(restored, x)
    torch.testing.assert_close(shuffled[:, :keep], visible)


def test_masking_differs_per_sample() -> None:
    x = torch.zeros(8, 64, 4)
    _, mask, _ = random_masking(x, 0.75, torch.Generator().manual_seed(0))
    assert len({tuple(m.tolist()) for m in mask}) == 8


def test_num_visible_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(64, 1.0)
    assert num_visible(196, 0.9) == 20  # round, not int(19.6)


def test_patchify_layout_and_inverse() -> None:
    imgs = torch.randn(2, 3, 16, 24)
    p = 8
    x = patchify(imgs, p)
    assert x.shape == (2, 2 * 3, p * p * 3)
    # patch 4 is row 1, column 1; its pixels run (row, col, channel)
    block = imgs[1, :, 8:16, 8:16].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(x[1, 4], block)
    torch.testing.assert_close(unpatchify(x, p, (2, 3)), imgs)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.randn(1, 3, 10, 16), 8)


def test_loss_counts_masked_patches_only() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(3, 16, 12), torch.randn(3, 16, 12)
    mask = (torch.rand(3, 16) < 0.75).float()
    mask[:, 0], mask[:, 1] = 1.0, 0.0  # at least one of each
    base = masked_mse(pred, target, mask)
    changed = pred.clone()
    changed[mask == 0] += 100.0  # visible-patch predictions do not matter
    torch.testing.assert_close(masked_mse(changed, target, mask), base)
    changed = pred.clone()
    changed[mask == 1] += 1.0  # masked ones do
    assert masked_mse(changed, target, mask) > base + 0.5
    manual = sum(((pred[i, j] - target[i, j]) ** 2).mean() for i in range(3) for j in range(16) if mask[i, j])
    torch.testing.assert_close(base, manual / mask.sum())


def test_model_loss_ignores_visible_predictions() -> None:
    mae = tiny_mae(norm_pix_loss=False)
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = mae(imgs, generator=torch.Generator().manual_seed(0))
    tampered = pred.detach().clone()
    tampered[mask == 0] = 0.0
    torch.testing.assert_close(mae.forward_loss(imgs, tampered, mask), loss.detach())
    target = patchify(imgs, 8)
    torch.testing.assert_close(loss.detach(), masked_mse(pred.detach(), target, mask))


def test_norm_pix_target() -> None:
    target = torch.rand(2, 5, 48) * 3 + 2
    t = norm_pix_target(target)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 5), atol=1e-4, rtol=0)  # unbiased, as MAE
    manual = (target[1, 3] - target[1, 3].mean()) / (target[1, 3].var() + 1e-6) ** 0.5
    torch.testing.assert_close(t[1, 3], manual)
    # the model uses it when asked: a constant shift of a patch does not change its norm-pix target
    mae = tiny_mae(norm_pix_loss=True)
    imgs = torch.randn(1, 3, 32, 32)
    _, pred, mask = mae(imgs)
    shifted = mae.forward_loss(imgs + 5.0, pred, mask)
    torch.testing.assert_close(shifted, mae.forward_loss(imgs, pred, mask), atol=1e-4, rtol=1e-4)
    plain = tiny_mae(norm_pix_loss=False)
    assert plain.forward_loss(imgs + 5.0, pred, mask) > plain.forward_loss(imgs, pred, mask) + 1.0


def test_encoder_sees_visible_patches_only_and_pos_embeds_are_fixed() -> None:
    mae = tiny_mae(mask_ratio=0.75)
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    decoder_seen = []
    mae.decoder_blocks[0].register_forward_hook(lambda m, i, o: decoder_seen.append(i[0].shape))
    loss, pred, mask = mae(torch.randn(4, 3, 32, 32))
    assert seen == [(4, 1 + 4, 32)]  # 16 patches at 8x8 on 32 px, 4 visible, plus the class token
    assert decoder_seen == [(4, 1 + 16, 16)]
    assert pred.shape == (4, 16, 8 * 8 * 3) and mask.shape == (4, 16)
    torch.testing.assert_close(mae.encoder.pos_embed[0], get_2d_sincos_pos_embed(32, 4, cls_token=True))
    torch.testing.assert_close(mae.decoder_pos_embed[0], get_2d_sincos_pos_embed(16, 4, cls_token=True))
    loss.backward()
    assert mae.encoder.pos_embed.grad is None and mae.decoder_pos_embed.grad is None
    assert mae.mask_token.grad is not None and mae.mask_token.grad.abs().sum() > 0


def test_encoder_state_dict_has_timm_keys() -> None:
    mae = tiny_mae()
    fresh = build_model(get_spec("test_vit"))
    assert set(mae.encoder_state_dict()) == set(fresh.state_dict())
    assert "mask_token" in mae.state_dict() and "decoder_pred.weight" in mae.state_dict()


def test_encoder_without_position_embedding_is_blind_to_patch_order() -> None:
    """`encoder_pos_embed='none'`: the encoder's tokens do not depend on where a patch sits (the encoder is
    permutation-equivariant), while the decoder still places them; the exported embedding is zero."""
    mae = tiny_mae(encoder_pos_embed="none").eval()
    assert torch.count_nonzero(mae.encoder.pos_embed) == 0
    assert torch.count_nonzero(mae.encoder_state_dict()["pos_embed"]) == 0
    imgs = torch.randn(2, 3, 32, 32)
    # the 4x4 grid of 8 px patches, rolled by one patch both ways: the same patches at other positions
    rolled = imgs.roll(shifts=(8, 8), dims=(2, 3))
    with torch.no_grad():
        mae.mask_ratio = 0.0
        a, b = mae.encoder.forward_features(imgs), mae.encoder.forward_features(rolled)
        order = torch.arange(16).view(4, 4).roll(shifts=(-1, -1), dims=(0, 1)).flatten()  # a[k] sits at b[order[k]]
        torch.testing.assert_close(b[:, 1:][:, order], a[:, 1:])  # patch tokens move with their patches
        torch.testing.assert_close(b[:, 0], a[:, 0])  # the class token does not change
        sincos = tiny_mae().eval()
        c, d = sincos.encoder.forward_features(imgs), sincos.encoder.forward_features(rolled)
        assert not torch.allclose(d[:, 1:][:, order], c[:, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="model.encoder_pos_embed"):
        tiny_mae(encoder_pos_embed="learned")
