"""The weights cache: where a backbone's published file lives on disk, and fetching it once with its hash checked.

Hashes follow torch.hub's `check_hash` convention: the pinned value is the full sha256 hex digest or its leading
digits (at least 8), as a `name-<hash>.pth` file name publishes them. A file whose publisher gives no hash is verified
only against a hash the user supplies or accepts; the accepted digest is kept next to the file (`<file>.sha256`) so
that later checks compare against it. Nothing here imports torch, so listing the registry stays fast.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
MIN_PREFIX = 8
_HEX = re.compile(r"^[0-9a-f]+$")


class WeightsError(RuntimeError):
    """A download or hash check that failed; the message names the url or the file."""


def cache_dir() -> Path:
    """`$HARNESS_CACHE/weights`, else `$XDG_CACHE_HOME/harness/weights`, else `~/.cache/harness/weights`."""
    root = os.environ.get("HARNESS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "harness")
    return Path(root).expanduser() / "weights"


def cached_path(url: str) -> Path:
    return cache_dir() / Path(url.split("?")[0]).name


def recorded_hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: str | Path, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_pinned(sha256: str, what: str) -> str:
    """A pinned hash, lower-cased; it must be hex digits, at least `MIN_PREFIX` and at most 64 of them."""
    pin = sha256.strip().lower()
    if not _HEX.match(pin) or not MIN_PREFIX <= len(pin) <= 64:
        raise WeightsError(f"{what}: {sha256!r} is not a sha256 hex digest (or its first {MIN_PREFIX}+ digits)")
    return pin


def hash_matches(digest: str, pin: str) -> bool:
    return digest.startswith(pin)


def expected_hash(path: Path, pinned: str | None) -> str | None:
    """The hash a cached file must have: the pinned one, else the one recorded when the user accepted the file."""
    if pinned:
        return pinned
    record = recorded_hash_path(path)
    return record.read_text().strip() if record.is_file() else None


def _content_length(response: object) -> int | None:
    size = getattr(response, "headers", {}).get("Content-Length")
    return int(size) if size and size.isdigit() else None


def fetch(url: str, dest: Path, pinned: str | None, progress: bool = True, timeout: float = 60) -> str:
    """Streams `url` into `dest` through a temporary file beside it and returns the file's sha256.

    The file appears under its name only complete and, when `pinned` is given, with a matching hash; a failure, a
    mismatch or an interruption (Ctrl-C included) removes the temporary file and leaves `dest` as it was.
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part{os.getpid()}")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f, tqdm(
            desc=dest.name, total=_content_length(r), unit="B", unit_scale=True, unit_divisor=1024,
            disable=not progress, leave=False,
        ) as bar:  # fmt: skip
            while block := r.read(CHUNK):
                f.write(block)
                h.update(block)
                bar.update(len(block))
        digest = h.hexdigest()
        if pinned and not hash_matches(digest, pinned):
            raise WeightsError(f"{url}: downloaded file has sha256 {digest}, expected {pinned}...; nothing was kept")
        os.replace(tmp, dest)
        return digest
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(f"cannot download {url}: {e}; nothing was kept") from None
    finally:
        tmp.unlink(missing_ok=True)


def _pin_for(name: str, spec_pin: str | None, given: str | None) -> str | None:
    """The hash to check: the user's (`--sha256`) when given, which must agree with a pinned one, else the pinned."""
    if given is None:
        return spec_pin
    pin = check_pinned(given, f"--sha256 for {name}")
    if spec_pin and not (pin.startswith(spec_pin) or spec_pin.startswith(pin)):
        raise WeightsError(f"--sha256 {given} for {name} contradicts the pinned sha256 {spec_pin}...")
    return pin


def download_weights(
    name: str, url: str, pinned: str | None, given: str | None = None, accept: bool = False, progress: bool = True
) -> tuple[Path, str]:
    """Puts a backbone's published weights in the cache, verified, and returns the file and what was done.

    `given` is a hash the user supplies for a file whose publisher pins none; `accept` takes the file as downloaded
    and records its digest. Without either, an unpinned file is not downloaded (and a present one not called verified).
    """
    pin = _pin_for(name, pinned, given)
    dest = cached_path(url)
    unpinned = (
        f"{name}: its publisher gives no sha256; pass --sha256 HEX if you have one from a source you trust, "
        f"or --accept-sha256 to take the file as served and record its sha256"
    )
    if dest.is_file():
        expected = pin or expected_hash(dest, None)
        if expected is None and not accept:
            raise WeightsError(f"{dest} is present but unverified: {unpinned}")
        digest = file_sha256(dest)
        if expected is not None and not hash_matches(digest, expected):
            raise WeightsError(f"{dest} has sha256 {digest}, expected {expected}...; delete it and download again")
        if pinned is None:
            recorded_hash_path(dest).write_text(digest + "\n")
        how = "verified" if expected else "recorded (accepted)"
        return dest, f"{name}: already in {dest}, sha256 {digest} {how}"
    if pin is None and not accept:
        raise WeightsError(unpinned)
    digest = fetch(url, dest, pin, progress=progress)
    if pinned is None:
        recorded_hash_path(dest).write_text(digest + "\n")
    how = "verified" if pin else "recorded (accepted)"
    return dest, f"{name}: downloaded to {dest}, sha256 {digest} {how}"
