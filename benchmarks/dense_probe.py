"""Do a tiny encoder's garment features survive the move from 32 px single garments to the embedded COCO canvases?

A diagnostic for the embedded dense tasks (issue: a randomly initialised tiny ViT ties or beats the pretrained ones on
COCO). For each encoder it builds the detection backbone (`HarnessViT`, ViTDet's form: no class token, the pretrained
8 x 8 position grid resampled to each input), takes the last block's map as the detector's simple pyramid does, and
measures, on the same Fashion-MNIST garments (train canvases from the train split, val canvases from the test split):

- top-1 of one linear classifier (standardised features, full-batch Adam) on features pooled over each garment
  (RoIAlign over its placed square, 4 x 4 bins, averaged), in several settings:
  `iso32`       the linear-probe setting: the 28 px garment in a 32 px black frame, the pretraining grid;
  `iso32+noise` the same frame with the canvases' background noise;
  `coco`        the garment inside an embedded-COCO canvas (`embedded.coco` geometry), the grid stretched (what the
                COCO model sees); `coco/tile` the same canvas with the 8 x 8 pretraining grid repeated, not stretched;
  `coco/1x`     every garment at 28 px, its frame on the patch grid; `coco/1x/tile`;
  `coco/1x/32grid/tile` garments' 32 px frames on a 32 px grid, the pretraining grid tiled: every garment at the
                position embedding of pretraining, only the attention reaches the whole canvas;
  `coco-v3/window` `embedded.coco` version 3 as its recipe (version 6) reads it: garments in 32 px slots of 64 or
                96 px canvases, attention within 8 x 8 token windows (one slot each), the pretraining grid in each;
  `crop32`      a 32 px crop of the `coco/1x` canvas around each garment (pretraining grid, the canvas's context);
- per-setting feature statistics: mean token norm and the largest channel's mean |activation| over the median one;
- token by token, the cosine similarity of a garment's 8 x 8 tokens alone (`iso32`) and inside a `coco/1x` canvas
  (its frame on the patch grid), with the grid stretched and tiled.

Usage: `python benchmarks/dense_probe.py --encoder mae=mae_vit_tiny_patch4:PATH --encoder
random=scratch_vit_tiny_patch4` (NAME=BACKBONE[:CHECKPOINT]; no checkpoint: the backbone's random initialisation,
seeded). CPU: about 40 s of one core per encoder.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedded import coco, fashion_mnist  # noqa: E402

FRAME, GARMENT = 32, 28  # the pretraining input and the garment inside it
NOISE = 24  # embedded.coco's background: uniform 0..23 grey levels
# embedded.coco's geometry up to its version 2 (the one under diagnosis): 64-96 px canvases, garments 21-42 px anywhere
V2_SIDES, V2_SCALE = (64, 80, 96), (0.75, 1.5)


@dataclass
class Canvas:
    image: np.ndarray  # [H, W] uint8
    boxes: list[tuple[int, int, int]] = field(default_factory=list)  # (y, x, side) of each garment's placed square
    labels: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # Fashion-MNIST index of each garment
    target: np.ndarray | None = None  # [H, W] int64: garment class on its silhouette, 10 elsewhere (background)


def make_canvases(
    images: np.ndarray, labels: np.ndarray, n: int, seed: int, *, scale: bool = True, noise: bool = True,
    grid: int = 1, sides: tuple[int, ...] = V2_SIDES,
) -> list[Canvas]:
    """Canvases in `embedded.coco`'s version-2 geometry (sides, scales, 1..MAX_OBJECTS non-overlapping garments),
    drawing the same garments whatever the options (`scale=False`: every garment at 28 px; `grid`: corners on
    multiples of it, less the frame's margin, so that a 28 px garment's 32 px frame sits on the patch grid)."""
    import cv2

    pick, place = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    out = []
    for _ in range(n):
        h, w = (int(pick.choice(sides)) for _ in range(2))
        specs = [(int(pick.integers(len(images))), pick.uniform(*V2_SCALE))
                 for _ in range(int(pick.integers(1, coco.MAX_OBJECTS + 1)))]
        image = place.integers(0, NOISE, size=(h, w), dtype=np.uint8) if noise else np.zeros((h, w), np.uint8)
        c = Canvas(image, target=np.full((h, w), 10, np.int64))
        for idx, s in specs:
            side = int(round(GARMENT * s)) if scale else GARMENT
            margin = (FRAME - GARMENT) // 2 if grid > 1 else 0
            for _ in range(20):
                y = int(place.integers(0, (h - side - 2 * margin) // grid + 1)) * grid + margin
                x = int(place.integers(0, (w - side - 2 * margin) // grid + 1)) * grid + margin
                if all(y + side <= by or by + bs <= y or x + side <= bx or bx + bs <= x for by, bx, bs in c.boxes):
                    break
            else:
                continue
            g = cv2.resize(images[idx], (side, side), interpolation=cv2.INTER_LINEAR)
            c.image[y : y + side, x : x + side] = np.maximum(c.image[y : y + side, x : x + side], g)
            c.target[y : y + side, x : x + side][g > coco.SILHOUETTE_THRESHOLD] = int(labels[idx])
            c.boxes.append((y, x, side))
            c.labels.append(int(labels[idx]))
            c.indices.append(idx)
        out.append(c)
    return out


def isolated(canvases: list[Canvas], images: np.ndarray, noise: bool) -> list[Canvas]:
    """Each garment of the canvases alone, at 28 px in a 32 px frame (the linear-probe input)."""
    rng = np.random.default_rng(7)
    out = []
    m = (FRAME - GARMENT) // 2
    for c in canvases:
        for idx, label in zip(c.indices, c.labels, strict=True):
            img = np.zeros((FRAME, FRAME), np.uint8)
            if noise:
                img = rng.integers(0, NOISE, (FRAME, FRAME), dtype=np.uint8)
            img[m : m + GARMENT, m : m + GARMENT] = np.maximum(img[m : m + GARMENT, m : m + GARMENT], images[idx])
            target = np.full((FRAME, FRAME), 10, np.int64)
            target[m : m + GARMENT, m : m + GARMENT][images[idx] > coco.SILHOUETTE_THRESHOLD] = label
            out.append(Canvas(img, [(m, m, GARMENT)], [label], [idx], target))
    return out


def crops(canvases: list[Canvas]) -> list[Canvas]:
    """A 32 px crop around each garment's 32 px frame (28 px garments on the patch grid), neighbours included."""
    out = []
    m = (FRAME - GARMENT) // 2
    for c in canvases:
        H, W = c.image.shape
        for (y, x, side), label, idx in zip(c.boxes, c.labels, c.indices, strict=True):
            y0, x0 = min(max(y - m, 0), H - FRAME), min(max(x - m, 0), W - FRAME)
            window = np.s_[y0 : y0 + FRAME, x0 : x0 + FRAME]
            out.append(Canvas(c.image[window].copy(), [(y - y0, x - x0, side)], [label], [idx], c.target[window]))
    return out


class Encoder:
    """A registered tiny ViT as the COCO model builds it (`HarnessViT`, simple pyramid), run up to its last block."""

    def __init__(self, backbone: str, checkpoint: str | None) -> None:
        from backbones.mm.vit import HarnessViT
        from backbones.registry import get_spec

        torch.manual_seed(0)
        # window attention is used by pos='window' only (the version-3 recipe); the other forwards are written below
        self.model = HarnessViT(
            backbone, checkpoint=checkpoint, pyramid="simple", drop_path_rate=0.0, window_size=8, global_blocks=(),
            window_pos="tile",
        ).eval()
        spec = get_spec(backbone)
        self.mean, self.std, self.patch = spec.mean[0], spec.std[0], spec.patch_size

    @torch.no_grad()
    def tokens(self, image: np.ndarray, pos: str) -> torch.Tensor:
        """[H, W] uint8 -> last block's map [D, H / patch, W / patch]; `pos`: 'stretch' (ViTDet: the pretrained grid
        resampled to the image's) or 'tile' (the pretrained grid repeated), global attention; 'window': the COCO recipe
        of version 6 (the grid tiled, attention within 8 x 8 token windows)."""
        from backbones.mm.vit import abs_pos_on_grid

        vit = self.model.vit
        x = (torch.from_numpy(image).float() / 255 - self.mean) / self.std
        x = x[None, None].expand(1, 3, -1, -1)
        if pos == "window":
            return self.model._block_maps(x)[0][0]
        t = vit.patch_embed(x)  # [1, h, w, D]
        _, h, w, D = t.shape
        g = tuple(vit.patch_embed.grid_size)
        if pos == "stretch":
            p = abs_pos_on_grid(vit.pos_embed, g, (h, w)).reshape(1, h, w, D)
        else:
            p = vit.pos_embed.reshape(1, *g, D).repeat(1, -(-h // g[0]), -(-w // g[1]), 1)[:, :h, :w]
        t = vit.norm_pre((t + p).reshape(1, h * w, D))
        for blk in vit.blocks:
            t = blk(t)
        return t[0].T.reshape(D, h, w)


def token_labels(target: np.ndarray, patch: int) -> torch.Tensor:
    """[H, W] class map -> one label per patch [h * w]: the garment class covering at least half of it, 10 (background)
    for a patch with no garment pixel, -1 (ignored) otherwise."""
    t = torch.from_numpy(target)
    h, w = t.shape[0] // patch, t.shape[1] // patch
    onehot = F.one_hot(t[: h * patch, : w * patch], 11).permute(2, 0, 1).float()[None]  # [1, 11, H, W]
    frac = F.avg_pool2d(onehot, patch)[0].flatten(1)  # [11, h * w]
    best, cls = frac[:10].max(0)
    return torch.where(best >= 0.5, cls, torch.where(frac[10] == 1, 10, -1))


def pooled(
    enc: Encoder, canvases: list[Canvas], pos: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per garment: RoIAlign-pooled features [N, D] and labels [N]; every token [T, D] and its label [T]."""
    from torchvision.ops import roi_align

    feats, labels, toks, tok_labels = [], [], [], []
    for c in canvases:
        m = enc.tokens(c.image, pos)
        boxes = torch.tensor([[0, x, y, x + s, y + s] for y, x, s in c.boxes], dtype=torch.float32)
        r = roi_align(m[None], boxes, output_size=4, spatial_scale=1 / enc.patch, sampling_ratio=2, aligned=True)
        feats.append(r.mean((2, 3)))
        labels += c.labels
        toks.append(m.flatten(1).T)
        tok_labels.append(token_labels(c.target, enc.patch))
    return torch.cat(feats), torch.tensor(labels), torch.cat(toks), torch.cat(tok_labels)


def linear_probe(xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """Predictions on `xva` of a linear classifier on standardised features (train statistics), 300 full-batch Adam
    steps."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return lin(xva).argmax(1)


def token_probe(xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor) -> tuple[float, float]:
    """Per-token probe (10 classes + background): foreground/background accuracy (balanced: mean of the two recalls)
    and class accuracy on garment tokens, both in %."""
    keep_tr, keep_va = ytr >= 0, yva >= 0
    keep_tr &= torch.rand(len(ytr), generator=torch.Generator().manual_seed(0)) < MAX_TOKENS / len(ytr)
    pred, y = linear_probe(xtr[keep_tr], ytr[keep_tr], xva[keep_va], classes=11), yva[keep_va]
    fg = y < 10
    recall_fg, recall_bg = (pred[fg] < 10).float().mean(), (pred[~fg] == 10).float().mean()
    return 50.0 * (recall_fg + recall_bg).item(), 100.0 * (pred[fg] == y[fg]).float().mean().item()


def stats(tokens: torch.Tensor) -> tuple[float, float]:
    """Mean token norm; largest channel mean |activation| over the median channel's (outlier channels)."""
    a = tokens.abs().mean(0)
    return tokens.norm(dim=1).mean().item(), (a.max() / a.median()).item()


@torch.no_grad()
def token_cosine(enc: Encoder, aligned: list[Canvas], images: np.ndarray, pos: str) -> float:
    """Mean cosine of a garment's 8 x 8 tokens alone (iso32) and the same tokens inside its canvas."""
    m, p = (FRAME - GARMENT) // 2, enc.patch
    sims = []
    for c in aligned:
        full = enc.tokens(c.image, pos)
        for (y, x, _), idx in zip(c.boxes, c.indices, strict=True):
            alone = np.zeros((FRAME, FRAME), np.uint8)
            alone[m : m + GARMENT, m : m + GARMENT] = images[idx]
            a = enc.tokens(alone, "stretch")  # [D, 8, 8] at the pretraining grid
            ty, tx = (y - m) // p, (x - m) // p
            b = full[:, ty : ty + FRAME // p, tx : tx + FRAME // p]
            sims.append(F.cosine_similarity(a.flatten(1), b.flatten(1), dim=0).mean().item())
    return float(np.mean(sims))


SETTINGS = (
    "iso32", "iso32+noise", "crop32", "coco", "coco/tile", "coco/1x", "coco/1x/tile", "coco/1x/32grid/tile",
    "coco-v3/window",
)
MAX_TOKENS = 8000  # train tokens of the per-token probe (CPU time)
TOKEN_SETTINGS = ("iso32", "coco", "coco/1x/32grid/tile", "coco-v3/window")


def build_sets(n_canvas: int, seed: int) -> tuple[dict[str, tuple[list[Canvas], list[Canvas], str]], np.ndarray]:
    sets: dict[str, tuple[list[Canvas], list[Canvas], str]] = {}
    split_images = {}
    for split, fm in (("train", "train"), ("val", "test")):
        images, labels = fashion_mnist.load(fm)
        split_images[split] = images
        s = seed + (0 if split == "train" else 1000)
        base = make_canvases(images, labels, n_canvas, s)
        one = make_canvases(images, labels, n_canvas, s, scale=False, grid=4)
        tiled = make_canvases(images, labels, n_canvas, s, scale=False, grid=FRAME)
        v3 = make_canvases(images, labels, n_canvas, s, scale=False, grid=FRAME, sides=coco.CANVAS_SIDES)
        variants = {
            "iso32": (isolated(base, images, noise=False), "stretch"),
            "iso32+noise": (isolated(base, images, noise=True), "stretch"),
            "crop32": (crops(one), "stretch"),
            "coco": (base, "stretch"),
            "coco/tile": (base, "tile"),
            "coco/1x": (one, "stretch"),
            "coco/1x/tile": (one, "tile"),
            "coco/1x/32grid/tile": (tiled, "tile"),
            "coco-v3/window": (v3, "window"),
        }
        for k, (cs, pos) in variants.items():
            tr = sets.get(k, ([], [], pos))
            sets[k] = (cs, tr[1], pos) if split == "train" else (tr[0], cs, pos)
    return sets, split_images["val"]


def pair(v: tuple[float, float]) -> str:
    return f"{v[0]:14.1f}/{v[1]:<5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", action="append", required=True, metavar="NAME=BACKBONE[:CHECKPOINT]")
    ap.add_argument("--canvases", type=int, default=100, help="canvases per split (about 2 garments each)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    encoders = []
    for e in args.encoder:
        name, _, rest = e.partition("=")
        backbone, _, ckpt = rest.partition(":")
        if not name or not backbone:
            ap.error(f"--encoder {e!r}: expected NAME=BACKBONE[:CHECKPOINT]")
        if ckpt and not Path(ckpt).is_file():
            ap.error(f"--encoder {e!r}: checkpoint {ckpt} does not exist")
        encoders.append((name, backbone, ckpt or None))
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sets, val_images = build_sets(args.canvases, args.seed)
    n_tr, n_va = (sum(len(c.labels) for c in cs) for cs in sets["coco"][:2])
    print(f"garments: {n_tr} train, {n_va} val (coco geometry); {args.canvases} canvases per split\n")
    rows = []
    for name, backbone, ckpt in encoders:
        enc = Encoder(backbone, ckpt)
        row = {"encoder": name}
        for k in SETTINGS:
            tr, va, pos = sets[k]
            xtr, ytr, ttr, ltr = pooled(enc, tr, pos)
            xva, yva, tva, lva = pooled(enc, va, pos)
            row[k] = 100.0 * (linear_probe(xtr, ytr, xva) == yva).float().mean().item()
            row[k + ":stats"] = stats(ttr)
            if k in TOKEN_SETTINGS:
                row[k + ":tok"] = token_probe(ttr, ltr, tva, lva)
        aligned = sets["coco/1x"][1][:20]
        row["cos/stretch"] = token_cosine(enc, aligned, val_images, "stretch")
        row["cos/tile"] = token_cosine(enc, aligned, val_images, "tile")
        rows.append(row)
    print("linear top-1 (%) on frozen last-block features pooled over each garment (train canvases -> val canvases)")
    print(f"{'encoder':10s}" + "".join(f"{k:>20s}" for k in SETTINGS))
    for r in rows:
        print(f"{r['encoder']:10s}" + "".join(f"{r[k]:20.1f}" for k in SETTINGS))
    print("\nmean token norm / max-over-median channel |activation| (train images, all tokens)")
    print(f"{'encoder':10s}" + "".join(f"{k:>20s}" for k in SETTINGS))
    for r in rows:
        print(f"{r['encoder']:10s}" + "".join(pair(r[k + ":stats"]) for k in SETTINGS))
    print("\nper-token linear probe on canvases (11 classes with background): fg/bg balanced accuracy / class accuracy"
          " on garment tokens (%)")
    print(f"{'encoder':10s}" + "".join(f"{k:>20s}" for k in TOKEN_SETTINGS))
    for r in rows:
        print(f"{r['encoder']:10s}" + "".join(pair(r[k + ":tok"]) for k in TOKEN_SETTINGS))
    print("\ntoken cosine, garment alone (32 px) vs the same garment in a coco/1x canvas (val, 8 x 8 tokens)")
    print(f"{'encoder':10s}{'stretched':>13s}{'tiled':>13s}")
    for r in rows:
        print(f"{r['encoder']:10s}{r['cos/stretch']:13.3f}{r['cos/tile']:13.3f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
