"""`harness download` and the weights cache, without network: `file://` urls to files made here."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import pytest

from backbones import registry
from backbones.weights import WeightsError, cached_path, download_weights, recorded_hash_path
from harness.cli import main

PAYLOAD = b"weights " * 5000


@pytest.fixture
def served(tmp_path, monkeypatch) -> tuple[str, str]:
    """A file behind a file:// url, and its sha256; the cache is a fresh folder."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "served" / "vit-b.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src.as_uri(), hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def clean_registry():
    registry.list_backbones()  # the built-ins are in the snapshot
    before = dict(registry._FACTORIES)
    yield
    registry._FACTORIES.clear()
    registry._FACTORIES.update(before)


def _leftovers(url: str) -> list[Path]:
    folder = cached_path(url).parent
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("digits", [64, 8])
def test_pinned_download_is_verified_then_reused(served, digits):
    url, digest = served
    path, message = download_weights("vit", url, digest[:digits], progress=False)
    assert path == cached_path(url) and path.read_bytes() == PAYLOAD
    assert "downloaded" in message and "verified" in message
    assert _leftovers(url) == [path], "a pinned file needs no record and leaves no temporary file"
    _, again = download_weights("vit", url, digest[:digits], progress=False)
    assert "already" in again and "verified" in again


def test_mismatch_is_an_error_and_keeps_nothing(served):
    url, digest = served
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(WeightsError, match=f"sha256 {digest}, expected {wrong}.*nothing was kept"):
        download_weights("vit", url, wrong, progress=False)
    assert _leftovers(url) == []


class _Broken(io.BytesIO):
    """A response that delivers one block and then fails, as a dropped connection or a Ctrl-C does."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(PAYLOAD)
        self.error, self.reads, self.headers = error, 0, {"Content-Length": str(len(PAYLOAD) * 4)}

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise self.error
        return super().read(n)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ConnectionResetError("reset by peer")])
def test_interruption_leaves_no_partial_file(served, monkeypatch, error):
    url, digest = served
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Broken(error))
    with pytest.raises((KeyboardInterrupt, WeightsError)) as info:
        download_weights("vit", url, digest, progress=False)
    assert isinstance(info.value, type(error)) or "reset by peer" in str(info.value)
    assert cached_path(url).parent.is_dir(), "the download had started"
    assert _leftovers(url) == []


def test_unpinned_needs_a_hash_or_an_explicit_acceptance(served):
    url, digest = served
    with pytest.raises(WeightsError, match="no sha256.*--sha256 HEX.*--accept-sha256"):
        download_weights("vit", url, None, progress=False)
    assert _leftovers(url) == [], "nothing is downloaded before the user decides"
    path, message = download_weights("vit", url, None, accept=True, progress=False)
    assert "recorded" in message
    assert recorded_hash_path(path).read_text().strip() == digest
    _, again = download_weights("vit", url, None, progress=False)
    assert "already" in again and "verified" in again, "the recorded hash verifies later checks"
    path.write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(WeightsError, match=f"expected {digest}.*delete it"):
        download_weights("vit", url, None, progress=False)


def test_a_given_hash_must_agree_with_the_pinned_one(served):
    url, digest = served
    with pytest.raises(WeightsError, match="contradicts the pinned sha256"):
        download_weights("vit", url, digest[:8], given="ab" * 32, progress=False)
    with pytest.raises(WeightsError, match="not a sha256 hex digest"):
        download_weights("vit", url, None, given="xyz", progress=False)
    path, _ = download_weights("vit", url, None, given=digest[:12], progress=False)
    assert recorded_hash_path(path).read_text().strip() == digest


def _yaml_entry(tmp_path: Path, url: str, sha256: str | None) -> Path:
    body = f"name: served_vit\narch: vit_tiny_patch16_224\ncheckpoint_format: timm\nurl: {url}\n"
    path = tmp_path / "served_vit.yaml"
    path.write_text(body + (f"sha256: '{sha256}'\n" if sha256 else ""))
    return path


def test_cli_downloads_and_reports(served, tmp_path, capsys, clean_registry):
    url, digest = served
    entry = _yaml_entry(tmp_path, url, digest)
    assert main(["download", "--no-progress", "--backbone-file", str(entry), "served_vit"]) == 0
    assert "served_vit: downloaded" in capsys.readouterr().out
    assert main(["download", "--no-progress", "--backbone-file", str(entry), "served_vit"]) == 0
    assert "already in" in capsys.readouterr().out
    assert main(["backbones", "served_vit"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[0] == "served_vit" and row[1:3] == ["vit_tiny_patch16_224", "?"], "a YAML entry states no size"
    assert row[-2:] == ["on", "disk"] and "pinned" in row


def test_listing_says_which_weights_are_on_disk(served, tmp_path, capsys, clean_registry):
    url, _ = served
    entry = _yaml_entry(tmp_path, url, None)
    assert main(["backbones", "--backbone-file", str(entry), "--params", "served_vit"]) == 0
    out = capsys.readouterr().out
    assert "5.5M" in out and "not downloaded" in out and "harness download NAME" in out
    download_weights("served_vit", url, None, accept=True, progress=False)
    cached_path(url).with_name(cached_path(url).name + ".sha256").unlink()
    assert main(["backbones", "served_vit"]) == 0
    assert "on disk, sha256 unchecked" in capsys.readouterr().out


def test_cli_names_are_checked_before_any_download(served, tmp_path, capsys, clean_registry):
    url, digest = served
    entry = _yaml_entry(tmp_path, url, digest)
    assert main(["download", "--backbone-file", str(entry), "served_vit", "mae_vit_bse_patch16"]) == 2
    assert "did you mean mae_vit_base_patch16" in capsys.readouterr().err
    assert _leftovers(url) == []
    assert main(["download", "test_vit"]) == 1
    assert "test_vit: it has no published weights" in capsys.readouterr().err
