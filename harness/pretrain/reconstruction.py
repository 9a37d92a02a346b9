"""The MAE paper's reconstruction figure (He et al. 2021, Figs. 2-4): for a few held-out images, rows of the original,
the masked input and the reconstruction with the visible patches pasted back (as the official demo notebook,
`demo/mae_visualize.ipynb`).

With `norm_pix_loss` the decoder predicts each patch normalised by its own mean and variance; those predictions are
shown in pixel space using the statistics of the true patch (so the figure shows structure, not brightness, where the
model had no way to know it). The figure's title says so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.pretrain.mae import MaskedAutoencoderViT, patchify, unpatchify


@torch.no_grad()
def reconstruct(
    model: MaskedAutoencoderViT, images: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(mask, reconstruction, pasted)`, each `[N, 3, H, W]`: the mask is 1 on masked pixels; the reconstruction and
    the reconstruction with the visible patches pasted back are in the input's normalised space."""
    model.eval()
    p = model.patch_size
    g = torch.Generator(device=images.device).manual_seed(seed)
    _, pred, mask = model(images, noise=model.masking_noise(images, g))  # pred [N, L, p*p*3], mask [N, L]
    pred = pred.float()
    if model.norm_pix_loss:
        target = patchify(images, p)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        pred = pred * std + mean
    recon = unpatchify(pred, p, model.grid)
    m = unpatchify(mask[..., None].expand(-1, -1, p * p * 3), p, model.grid)  # [N, 3, H, W], 1 = masked
    pasted = images * (1 - m) + recon * m
    return m, recon, pasted


def save_figure(
    model: MaskedAutoencoderViT,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    path: Path,
    seed: int = 0,
) -> Path:
    """Writes the figure (columns: images; rows: original / masked / reconstruction + visible) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = next(model.parameters()).device
    images = images.to(device)
    hidden, _, pasted = reconstruct(model, images, seed)
    m = torch.tensor(mean, device=device)[None, :, None, None]
    s = torch.tensor(std, device=device)[None, :, None, None]
    rows = {"original": images, f"masked ({model.mask_ratio:.0%})": images, "reconstruction + visible": pasted}
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.3 * len(rows) + 0.5), squeeze=False)
    for r, (label, x) in enumerate(rows.items()):
        pixels = (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, 3]
        if label.startswith("masked"):
            pixels[hidden[:, 0].bool().cpu().numpy()] = 0.5  # masked patches in grey
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(pixels[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    title = "MAE reconstructions of held-out images"
    if model.norm_pix_loss:
        title += " (norm-pix predictions shown with each true patch's mean/std)"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
