"""Result records: atomic, never rewritten, newest wins, and no record lost under many concurrent writers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from harness import provenance, store


def _rec(run_id: str, status: str = "finished", t: str = "2026-01-01T00:00:00.000000+00:00", **kw) -> dict:
    return {"run_id": run_id, "attempt": store.new_attempt(), "status": status, "finished_at": t, **kw}


def test_write_read_roundtrip_and_no_temp_left(tmp_path: Path) -> None:
    rec = _rec("abc", metrics={"top1": 71.5}, seed=2)
    path = store.write_record(tmp_path, rec)
    assert path.parent == tmp_path and path.name.startswith("abc.")
    (back,) = store.read_records(tmp_path)
    assert back["metrics"] == {"top1": 71.5} and back["seed"] == 2 and back["_path"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file was moved, not left behind


def test_never_rewritten(tmp_path: Path) -> None:
    rec = _rec("abc")
    store.write_record(tmp_path, rec)
    with pytest.raises(FileExistsError):
        store.write_record(tmp_path, rec)  # same attempt, same stamp: refuses rather than replaces


def test_never_rewritten_even_when_the_name_appears_while_writing(tmp_path: Path, monkeypatch) -> None:
    """Another writer's file appearing between the temporary file and its move (the race of exists-then-rename) is
    kept, and this writer is refused."""
    rec = _rec("abc")
    dest = tmp_path / store.record_name(rec)
    real_fsync = store.os.fsync

    def fsync_then_race(fd: int) -> None:
        real_fsync(fd)
        if not dest.exists():
            dest.write_text('{"theirs": 1}')

    monkeypatch.setattr(store.os, "fsync", fsync_then_race)
    with pytest.raises(FileExistsError):
        store.write_record(tmp_path, rec)
    assert json.loads(dest.read_text()) == {"theirs": 1}
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]  # no temporary file left


@pytest.mark.parametrize("bad", [{"status": "done"}, {"run_id": None}])
def test_bad_records_refused(tmp_path: Path, bad: dict) -> None:
    rec = {**_rec("abc"), **bad}
    if bad.get("run_id", "x") is None:
        del rec["run_id"]
    with pytest.raises(ValueError, match="status|run_id"):
        store.write_record(tmp_path, rec)
    assert not list(tmp_path.glob("*.json"))


def test_failed_write_leaves_existing_records(tmp_path: Path) -> None:
    first = store.write_record(tmp_path, _rec("abc", metrics={"top1": 1.0}))
    before = first.read_bytes()
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        store.write_record(tmp_path, _rec("abc", extra=circular))
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    assert first.read_bytes() == before


def test_latest_wins_and_unreadable_skipped(tmp_path: Path) -> None:
    store.write_record(tmp_path, _rec("r1", "finished", "2026-01-01T00:00:00.000000+00:00", metrics={"v": 1}))
    store.write_record(tmp_path, _rec("r1", "failed", "2026-01-02T00:00:00.000000+00:00"))
    store.write_record(tmp_path, _rec("r2", "failed", "2026-01-01T00:00:00.000000+00:00"))
    store.write_record(tmp_path, _rec("r2", "finished", "2026-01-03T00:00:00.000000+00:00", metrics={"v": 2}))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.warns(UserWarning, match="junk.json"):
        recs = store.read_records(tmp_path)
    latest = store.latest(recs)
    assert latest["r1"]["status"] == "failed"
    assert latest["r2"]["status"] == "finished" and latest["r2"]["metrics"] == {"v": 2}
    assert len(recs) == 4


def test_has_attempt(tmp_path: Path) -> None:
    rec = _rec("r1")
    assert not store.has_attempt(tmp_path, "r1", rec["attempt"])
    store.write_record(tmp_path, rec)
    assert store.has_attempt(tmp_path, "r1", rec["attempt"])
    assert not store.has_attempt(tmp_path, "r1", "other")


def _writer(folder: str, worker: int, n: int) -> None:
    for i in range(n):
        # the same run ids from every process, as several jobs of one suite re-running the same runs
        store.write_record(folder, _rec(f"run{i % 5}", metrics={"worker": worker, "i": i},
                                        t=provenance.now()))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    procs, n = 8, 25
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(tmp_path), w, n)) for w in range(procs)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    recs = store.read_records(tmp_path)
    assert len(recs) == procs * n
    assert {(r["metrics"]["worker"], r["metrics"]["i"]) for r in recs} == {(w, i) for w in range(procs)
                                                                           for i in range(n)}
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".json")]
    assert set(store.latest(recs)) == {f"run{i}" for i in range(5)}


def test_provenance(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    cache = tmp_path / "cache.json"
    assert provenance.cached_sha256(f, cache) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert len(json.loads(cache.read_text())) == 1
    f.write_bytes(b"other weights")  # new size and mtime: hashed again, not served from the cache
    assert provenance.cached_sha256(f, cache) == hashlib.sha256(b"other weights").hexdigest()
    assert provenance.stable_hash({"a": 1, "b": [1, 2]}) == provenance.stable_hash({"b": [1, 2], "a": 1})
    assert provenance.stable_hash({"a": 1}) != provenance.stable_hash({"a": 2})
    env = provenance.collect()
    assert env["versions"]["timm"] and env["versions"]["mmseg"] and "numpy" in env["versions"]
    assert env["hardware"]["cpu_count"] >= 1 and env["hardware"]["cpu"]
    assert set(env["git"]) == {"commit", "dirty"}
