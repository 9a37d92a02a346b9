"""Pretraining throughput of MAE's asymmetric encoder against the same model with mask tokens in the encoder
(He et al. 2021, Table 2: 2.8x-4.1x faster for ViT-L at 75% masking, decoder depth 8 / 1).

Both variants share everything (timm ViT encoder, the 512-wide decoder, loss, optimizer); they differ only in what the
encoder sees: the visible 25% of the patches (MAE), or all patches with a learned mask token in place of the masked
ones (BEiT/SimMIM style; the decoder then needs no tokens of its own). Each measurement is short: a few warmup steps,
then images per second over a few timed steps of forward + backward + AdamW step. `--compile` measures both with
`torch.compile` (static shapes) and, on CUDA, fused AdamW, as the pretraining engine runs them there by default.

    python benchmarks/mae_throughput.py                 # ViT-S/16 and ViT-B/16 at 224 on CPU (and CUDA if present)
    python benchmarks/mae_throughput.py --batch 8 --steps 5 --models vit_base_patch16_224 --devices cuda
    python benchmarks/mae_throughput.py --compile --devices cuda --batch 256 --models vit_large_patch16_224
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.pretrain.mae import MaskedAutoencoderViT, random_masking  # noqa: E402
from tasks.training import compile_model, enable_tf32, fused_optimizer  # noqa: E402


class MaskTokensInEncoder(MaskedAutoencoderViT):
    """The same MAE with every patch through the encoder, masked ones replaced by a learned token."""

    def __init__(self, encoder: nn.Module, **kwargs) -> None:
        super().__init__(encoder, **kwargs)
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.normal_(self.encoder_mask_token, std=0.02)

    def forward_encoder(self, imgs, mask_ratio, generator=None, noise=None):
        enc = self.encoder
        x = enc.patch_embed(imgs)  # [N, L, D]
        _, mask, ids_restore = random_masking(x, mask_ratio, generator, noise)  # the same masks, all tokens kept
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + self.encoder_mask_token.to(x.dtype) * w
        x = x + enc.pos_embed[:, 1:, :]
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = enc.blocks(enc.norm_pre(torch.cat([cls, x], dim=1)))  # [N, 1 + L, D]
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x) + self.decoder_pos_embed  # every position already present
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:, :]


def build(variant: str, arch: str, img_size: int, decoder_depth: int) -> MaskedAutoencoderViT:
    import timm

    encoder = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
    cls = MaskedAutoencoderViT if variant == "mae" else MaskTokensInEncoder
    return cls(encoder, decoder_embed_dim=512, decoder_depth=decoder_depth, decoder_num_heads=16, mask_ratio=0.75)


def throughput(model: nn.Module, device: torch.device, batch: int, img_size: int, warmup: int, steps: int,
               compile_: bool = False) -> float:
    """Images per second of forward + backward + optimizer step."""
    model.to(device).train()
    fused = compile_ and fused_optimizer(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            fused=fused or None)
    if compile_:
        enable_tf32(device)
        compile_model(model, True)
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)
    gpu = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            loss = model(imgs, noise=model.masking_noise(imgs))[0]  # noise drawn eagerly, as the engine
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224", help="timm ViT names")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when available)")
    p.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 128 on CUDA")
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 5 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="default: 3 on CPU, 20 on CUDA")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (and fused AdamW on CUDA)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        gpu = device.type == "cuda"
        batch = args.batch or (128 if gpu else 4)
        warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
        steps = args.steps or (20 if gpu else 3)
        where = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
        for arch in args.models.split(","):
            speeds = {}
            for variant in ("mask-tokens", "mae"):  # the slow one first, so that its warmup also warms the allocator
                torch.manual_seed(0)
                model = build(variant, arch, args.img_size, args.decoder_depth)
                speeds[variant] = throughput(model, device, batch, args.img_size, warmup, steps, args.compile)
                del model
                torch._dynamo.reset()
            slow, fast = speeds["mask-tokens"], speeds["mae"]
            rows.append((arch, where, batch, slow, fast, fast / slow))
            print(f"  {arch} on {where}: {slow:.3g} -> {fast:.3g} img/s", flush=True)
    header = ("model", "device", "batch", "encoder w/ [M] img/s", "MAE encoder img/s", "speedup")
    how = "torch.compile, fused AdamW on CUDA" if args.compile else "eager"
    print(f"\nmask ratio 0.75, decoder 512 x {args.decoder_depth}, {args.img_size} px, forward + backward + AdamW step"
          f" ({how})")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for arch, where, batch, slow, fast, ratio in rows:
        print(f"| {arch} | {where} | {batch} | {slow:.3g} | {fast:.3g} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
