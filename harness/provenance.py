"""What every result record says about where it came from: package versions, git commit, hardware, checksums.

As lm-evaluation-harness records `git_hash`, versions and the config beside each result. Nothing here imports torch:
versions come from the installed distributions' metadata, and the GPU is read from torch only when the calling
process has already imported it (the worker has), else from `nvidia-smi` when present.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mmcv_tvops
from backbones.weights import file_sha256  # also this module's name for it: `provenance.file_sha256`

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# distribution name -> the short name records use
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "mmengine": "mmengine", "mmcv": "mmcv",
            "mmdet": "mmdet", "mmsegmentation": "mmseg", "numpy": "numpy", "pycocotools": "pycocotools"}


def now() -> str:
    """UTC time with microseconds, ISO 8601: sortable as text."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def package_versions() -> dict[str, str | None]:
    """Versions of PACKAGES, and `mmcv_ops`: whose kernels mmcv's ops run on ('compiled', 'torchvision', None)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, short in PACKAGES.items():
        out[short] = _version_or_none(dist)
    if out["mmcv"] is None:  # mmcv-lite: the same mmcv, without compiled ops
        out["mmcv"] = _version_or_none("mmcv-lite")
    out["mmcv_ops"] = mmcv_tvops.backend()
    return out


def _version_or_none(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_info(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The commit of the project's checkout and whether the tree differs from it; None outside a checkout."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain")  # modified, staged or untracked-but-not-ignored files: not the commit
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return []
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=10)
            return [n.strip() for n in r.stdout.splitlines() if n.strip()] if r.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            return []
    return []


def hardware() -> dict[str, Any]:
    gpus = _gpus()
    return {"host": platform.node(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus), "platform": platform.platform()}


def collect() -> dict[str, Any]:
    """Versions, git and hardware in one mapping (the parts of a record that describe the environment)."""
    return {"versions": package_versions(), "git": git_info(), "hardware": hardware()}


def cached_sha256(path: str | Path, cache_file: Path | None = None) -> str:
    """sha256 of a file, remembered in `cache_file` by (path, size, mtime) so that a 2.5 GB ViT-H is read once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}  # a damaged cache is only a cache
    if key in cache:
        return cache[key]
    digest = file_sha256(path)
    if cache_file is not None:
        cache[key] = digest
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=0))
        os.replace(tmp, cache_file)
    return digest


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-able object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
