"""Result records: one JSON file per attempt of a run, written atomically, never rewritten.

A record file is `RECORDS/<run_id>.<UTC stamp>.<attempt>.json`; the attempt id is unique per process that writes, so
any number of writers (jobs of one suite, several suites on one folder, ranks) never touch the same file. A file
appears complete or not at all: it is written to a temporary name in the same folder, flushed with fsync and linked
to its name with `os.link` (atomic on POSIX, and it fails rather than replace an existing file), then the folder is
synced. A re-run writes a new record; readers take
the newest record of each run id (`latest`), so earlier results stay on disk as history. A record's keys are those of
`harness.records.Record`; readers here keep the dicts as written (with `_path`), which `Record.from_dict` types.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.records import Record

SUFFIX = ".json"
_TMP_PREFIX = ".tmp-"
REQUIRED = ("run_id", "status", "attempt")
STATUSES = ("finished", "failed")
SPECS = "specs"  # beside RECORDS/: the spec files of users' tasks (`harness run --suite my_task.yaml`)


def new_attempt() -> str:
    return uuid.uuid4().hex[:12]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every file system lets a folder be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def record_name(record: dict[str, Any]) -> str:
    stamp = re.sub(r"[^0-9T]", "", str(record.get("finished_at") or ""))[:21] or "0"
    return f"{record['run_id']}.{stamp}.{record['attempt']}{SUFFIX}"


def write_record(folder: str | Path, record: dict[str, Any] | Record) -> Path:
    """Writes `record` as a new file in `folder` and returns its path. An existing file is never replaced."""
    if isinstance(record, Record):
        record = record.to_dict()
    for key in REQUIRED:
        if key not in record:
            raise ValueError(f"a result record needs {key!r} (has {', '.join(sorted(record))})")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status {record['status']!r} is not one of {', '.join(STATUSES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / record_name(record)
    text = json.dumps(record, indent=1, sort_keys=True, default=str)
    tmp = folder / f"{_TMP_PREFIX}{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dest)  # atomic, and fails if dest exists: a record is never replaced, not even in a race
        except FileExistsError:
            raise FileExistsError(f"record {dest} exists already; every attempt needs its own attempt id") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(folder)
    return dest


def read_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every record in `folder` (all attempts), each with `_path`. Unreadable files are reported and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        if path.name.startswith(_TMP_PREFIX):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            warnings.warn(f"skipping unreadable record {path}: {e}", stacklevel=2)
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
            warnings.warn(f"skipping {path}: not a result record (needs {', '.join(REQUIRED)})", stacklevel=2)
            continue
        rec["_path"] = str(path)
        out.append(rec)
    return out


def _order(rec: dict[str, Any]) -> tuple[str, str]:
    return (str(rec.get("finished_at") or ""), Path(rec.get("_path", "")).name)


def latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest record of each run id (by `finished_at`, then file name)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        cur = out.get(rec["run_id"])
        if cur is None or _order(rec) > _order(cur):
            out[rec["run_id"]] = rec
    return out


def has_attempt(folder: str | Path, run_id: str, attempt: str) -> bool:
    """Whether the attempt `attempt` of `run_id` wrote its record."""
    return any(Path(folder).glob(f"{run_id}.*.{attempt}{SUFFIX}"))
