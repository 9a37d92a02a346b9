"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"), after facebookresearch/mae
`models_mae.py`.

The encoder is the registry's timm ViT itself (`backbones.checkpoint.build_model`), so its state dict is already in
timm names and exports without renaming. It sees only the visible patches (plus the class token); a light decoder of
timm Blocks, with its own width and depth, gets the encoded visible tokens back in place among one shared learned mask
token, adds fixed 2D sin-cos position embeddings and predicts the pixels of every patch. The loss is the MSE on masked
patches only, against per-patch normalised pixels when `norm_pix_loss` (the paper's default, Table 1d).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from backbones.checkpoint import build_model
from backbones.pos_embed import get_2d_sincos_pos_embed
from backbones.registry import BackboneSpec


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """`[N, C, H, W]` -> `[N, L, p * p * C]`, patches row-major, pixels in (row, col, channel) order as MAE."""
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """`[N, L, p * p * C]` -> `[N, C, H, W]`, the inverse of `patchify`."""
    n = x.shape[0]
    gh, gw = grid
    x = x.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per sample: round((1 - ratio) * L), at least one (MAE truncates, which turns 19.9999 into 19)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, round((1.0 - mask_ratio) * num_patches))


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting uniform noise (MAE's shuffle). `noise` `[N, L]`, when given, is that
    noise drawn by the caller: outside a compiled forward, so that compiled and eager runs draw the same masks from
    the same generator, and the compiled graph holds no random op (dynamo could not trace `torch.rand` of a symbolic
    batch).

    Returns the visible tokens `[N, len_keep, D]`, the binary mask `[N, L]` (0 keep, 1 remove) in the original order,
    and `ids_restore` `[N, L]`, the inverse permutation that puts a shuffled sequence back in order.
    """
    n, length, d = x.shape
    len_keep = num_visible(length, mask_ratio)
    if noise is None:
        noise = torch.rand(n, length, device=x.device, generator=generator)  # [N, L] in [0, 1)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # [N, len_keep, D]
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # [N, L], back in patch order
    return x_visible, mask, ids_restore


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches of the per-patch MSE. pred, target `[N, L, P]`, mask `[N, L]` (1 = masked)."""
    loss = ((pred - target) ** 2).mean(dim=-1)  # [N, L]
    return (loss * mask).sum() / mask.sum()


def norm_pix_target(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch normalised by its own mean and variance (MAE's `norm_pix_loss`). `[N, L, P]`."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE
    return (target - mean) / (var + eps) ** 0.5


ENCODER_POS_EMBED = ("sincos", "none")


class MaskedAutoencoderViT(nn.Module):
    """MAE around a timm ViT encoder. `forward(imgs)` returns `(loss, pred [N, L, p*p*3], mask [N, L])`."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        encoder_pos_embed: str = "sincos",
    ) -> None:
        super().__init__()
        if encoder_pos_embed not in ENCODER_POS_EMBED:
            raise ValueError(
                f"model.encoder_pos_embed must be one of {', '.join(ENCODER_POS_EMBED)}, got {encoder_pos_embed!r}"
            )
        self.encoder_pos_embed = encoder_pos_embed
        if getattr(encoder, "cls_token", None) is None or getattr(encoder, "no_embed_class", False):
            raise ValueError("the MAE encoder must be a timm ViT with a class token inside its position embedding")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        num_patches = self.grid[0] * self.grid[1]
        embed_dim = encoder.embed_dim
        # The encoder's position embedding becomes MAE's fixed sin-cos one (not learned).
        encoder.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.Sequential(
            *[
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=_layer_norm)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = _layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * 3)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's initialisation: fixed sin-cos embeddings, xavier-uniform linears and patch projection, N(0, .02)
        tokens."""
        enc = self.encoder
        if self.encoder_pos_embed == "sincos":
            enc.pos_embed.data.copy_(get_2d_sincos_pos_embed(enc.pos_embed.shape[-1], self.grid, cls_token=True)[None])
        else:  # "none": the encoder sees its visible patches without their positions; only the decoder places them
            enc.pos_embed.data.zero_()
        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid, cls_token=True)[None]
        )
        w = enc.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer, not a conv
        nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def no_weight_decay(self) -> set[str]:
        return set()  # as main_pretrain.py: cls_token and mask_token decayed; the position embeddings are frozen

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        x = enc.patch_embed(imgs)  # [N, L, D]
        x = x + enc.pos_embed[:, 1:, :]
        x, mask, ids_restore = random_masking(x, mask_ratio, generator, noise)  # [N, L_vis, D]
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # [N, 1 + L_vis, D]
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)  # [N, 1 + L_vis, Dd]
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [N, L, Dd], shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed  # [N, 1 + L, Dd]
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:, :]  # [N, L, p*p*3], class token dropped

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            target = norm_pix_target(target)
        return masked_mse(pred.float(), target.float(), mask)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def masking_noise(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`[N, L]` uniform noise for `random_masking`, the same draw it would make itself."""
        return torch.rand(imgs.shape[0], self.grid[0] * self.grid[1], device=imgs.device, generator=generator)

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch_frac: float) -> torch.Tensor:
        imgs = batch[0]
        return self(imgs, noise=self.masking_noise(imgs))[0]  # noise drawn eagerly: see random_masking

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}


def _layer_norm(dim: int, **kwargs: Any) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)  # MAE's partial(nn.LayerNorm, eps=1e-6)


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # MAE follows official JAX ViT
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build(spec: BackboneSpec, recipe: dict[str, Any]) -> MaskedAutoencoderViT:
    """The MAE of a backbone spec; `recipe['model']` holds the decoder and masking settings."""
    cfg = recipe.get("model", {})
    encoder = build_model(spec)
    return MaskedAutoencoderViT(
        encoder,
        decoder_embed_dim=cfg.get("decoder_embed_dim", 512),
        decoder_depth=cfg.get("decoder_depth", 8),
        decoder_num_heads=cfg.get("decoder_num_heads", 16),
        mask_ratio=cfg.get("mask_ratio", 0.75),
        norm_pix_loss=cfg.get("norm_pix_loss", True),
        encoder_pos_embed=cfg.get("encoder_pos_embed", "sincos"),
    )
