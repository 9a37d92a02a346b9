"""Where the embedded data sets live, and writing one exactly once, even with a killed or a concurrent writer; the
versioned sets (`imagenet`, `coco`) share `ensure_versioned`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """`$HARNESS_DATA/embedded`, by default `~/.cache/harness/data/embedded`."""
    return Path(os.environ.get("HARNESS_DATA") or "~/.cache/harness/data").expanduser() / "embedded"


def mark_version(root: Path, version: int) -> None:
    """Written last by a set's `write`: its presence with the right value means the set is complete and current."""
    (Path(root) / "VERSION").write_text(f"{version}\n")


def has_version(root: Path, version: int) -> bool:
    marker = Path(root) / "VERSION"
    return marker.is_file() and marker.read_text().strip() == str(version)


def write_once(root: Path, write: Callable[[Path], object], is_complete: Callable[[Path], bool]) -> Path:
    """`root`, written by `write(folder)` unless it is already complete.

    The set is written into a temporary sibling and renamed into place, so a killed writer never leaves a half set, and
    an outdated or half-removed one is replaced. Of two concurrent writers (two runs of one suite), the one that
    finishes second keeps the first one's set, which the other run may be reading already.
    """
    root = Path(root)
    if is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write(tmp)
        if is_complete(root):  # a concurrent writer finished first
            return root
        if root.exists():  # outdated or half-removed: moved aside in one step, then deleted
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale.", dir=root.parent))
            try:
                os.rename(root, stale / root.name)
            except FileNotFoundError:  # another writer moved it first
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root):  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_root(name: str, seed: int = 0) -> Path:
    """`cache_root() / name` for seed 0, `name_seed{seed}` for another seed."""
    return cache_root() / (name if seed == 0 else f"{name}_seed{seed}")


def ensure_versioned(
    name: str, write: Callable[..., object], version: int, root: Path | None = None, seed: int = 0
) -> Path:
    """The set `name` at `root` (default: `default_root(name, seed)`), written once by `write(folder, seed=seed)` (which
    ends with `mark_version(folder, version)`) and reused while its marker says `version`; a set of another version is
    rewritten, and a killed writer never leaves a half set (see `write_once`)."""
    root = Path(root) if root is not None else default_root(name, seed)
    return write_once(root, lambda tmp: write(tmp, seed=seed), lambda folder: has_version(folder, version))
