"""The frozen part's features of a split, shared by the runs that would compute the same ones: the seeds of a linear
probe or of a partial fine-tune of one pretrained encoder (their heads differ, their frozen parts do not).

The runner names a folder (`HARNESS_FEATURE_CACHE`, `OUT/work/features`); without it every run computes its own, as
before. An entry is keyed by everything the features depend on: every weight of the model but the new head (so a
randomly initialised backbone, which differs per seed, never shares), the model's architecture and settings
(pooling, fused attention), the protocol and its cut, the split's files (names, sizes, times), the transform, the
batch size, precision, device type, thread count and torch version. The first run computes the entry under a file
lock and writes it atomically; a concurrent run with the same key waits for it and reads it. Reading is exact
(float32 tensors), so a run's metrics do not depend on whether it computed or read its features.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from tasks.training import atomic_save

CACHE_ENV = "HARNESS_FEATURE_CACHE"  # set by `harness run` for its workers


def cache_dir() -> Path | None:
    folder = os.environ.get(CACHE_ENV, "").strip()
    return Path(folder) if folder else None


def _hash_files(h: Any, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())


def _settings(model: torch.nn.Module) -> list[tuple[str, str, Any]]:
    """Every module's plain attributes (timm's `global_pool`, `num_prefix_tokens`, `fused_attn`, ...), train mode
    aside."""
    plain = (bool, int, float, str, tuple, type(None))
    return [(name, key, value) for name, m in model.named_modules() for key, value in sorted(vars(m).items())
            if key != "training" and not key.startswith("_") and isinstance(value, plain)]


def feature_key(model: torch.nn.Module, split_root: Path, transform: Any, batch: int, device: torch.device,
                precision: str) -> str:
    """The entry's name: a hash of everything the features of `split_root` through `model.encode` depend on."""
    h = hashlib.sha256()
    h.update(repr(model).encode())  # architecture, protocol-dependent head, norms
    h.update(repr(_settings(model)).encode())  # pooling, prefix tokens, fused attention: what repr leaves out
    h.update(f"{model.protocol}|{model.n_frozen}|{batch}|{device.type}|{precision}|{torch.get_num_threads()}|"
             f"{torch.__version__}|{transform!r}\n".encode())
    for name, tensor in model.state_dict().items():
        if name.startswith("vit.head."):  # the new head: seeded per run, not part of the frozen computation
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)  # 0-d tensors too: bytes of a 1-d view
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    _hash_files(h, Path(split_root))
    return h.hexdigest()[:24]


def cached_features(key: str, compute: Callable[[], TensorDataset], folder: Path | None = None) -> TensorDataset:
    """The features of `key`, read from the cache folder, else computed (once across concurrent runs) and stored.
    Without a cache folder: `compute()`."""
    folder = folder if folder is not None else cache_dir()
    if folder is None:
        return compute()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.pt"
    with open(folder / f"{key}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released on close; a killed holder releases it too
        if path.is_file():
            try:
                feats, labels = torch.load(path, map_location="cpu", weights_only=True)
                return TensorDataset(feats, labels)
            except Exception:  # unreadable: computed again and replaced
                pass
        data = compute()
        atomic_save(tuple(data.tensors), path)
        return data
