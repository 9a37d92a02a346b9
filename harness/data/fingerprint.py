"""A cheap fingerprint of a data set's content, part of every run id: another data set under the same flags (or the
same folder after its files changed) is another run, never a "skipped (done)" with the old one's numbers.

Cheap on purpose, as `rsync`'s quick check: every file's relative path and size, plus the full sha256 of the small
text files that hold the labels (COCO's annotation JSON, split lists); images are not read. A relabelled image of the
same size therefore goes unseen, a changed annotation file or an added, removed or resized image does not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from backbones.weights import file_sha256

ANNOTATION_SUFFIXES = (".json", ".txt", ".csv", ".yaml", ".yml", ".xml")


def fingerprint(root: str | Path) -> str:
    """sha256 (16 hex digits) of the sorted (path, size) list of every file under `root` and of its annotation files'
    contents. Symbolic links are followed, as the tasks follow them."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(_files(root)):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{path.stat().st_size}\n".encode())
        if path.suffix.lower() in ANNOTATION_SUFFIXES:
            h.update(file_sha256(path).encode())
    return h.hexdigest()[:16]


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(folder) / n for n in names if not n.startswith(".")]
    return out
