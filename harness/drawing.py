"""The report's figures drawn beside its other work, and not drawn again when their data has not changed.

A figure is drawn in Python by matplotlib, one CPU each; at 10,000 records the report's six figures cost about as much
as everything else it does. `Drawer` starts its worker processes (forked, with pandas and matplotlib loaded) when the
report first needs them: while helpers parse a first reading's many records (`harness.results.read_compact` runs
`executor` meanwhile), or to draw; they draw while the report writes its tables and the page, and the report draws
any job none of them has started when it is done with the rest. Where there is one CPU, or no `fork`, the jobs run in
the report's process when their results are asked for.

Each figure job is named by a digest of its inputs (the function, its arguments, frames hashed by content, and the
code of `harness.plots`); `plots/.figures.json` keeps the digest with the files the job wrote (size and mtime), and a
job whose digest and files are unchanged is not run again: a repeated report on the same records redraws nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Executor

MANIFEST = ".figures.json"  # in the plots folder: digest -> the files its job wrote
MAX_WORKERS = 4
Job = tuple[Callable[..., list[Path]], tuple[Any, ...]]


def _warm() -> None:
    """matplotlib, its Agg backend and the font loaded, before the workers fork: once, not in each."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.text(0.5, 0.5, "0", fontsize=7)
    fig.savefig(io.BytesIO(), format="png")


def _frame_hash(value: Any) -> bytes:
    """A frame's or series' content: values, index, columns, dtypes."""
    import pandas as pd

    h = hashlib.sha256(type(value).__name__.encode())
    h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    cols = list(value.columns) if isinstance(value, pd.DataFrame) else [value.name]
    dtypes = list(value.dtypes) if isinstance(value, pd.DataFrame) else [value.dtype]
    h.update(repr((cols, [str(d) for d in dtypes], len(value))).encode())
    return h.digest()


def _feed(h: Any, value: Any, hashed: dict[int, tuple[Any, bytes]]) -> None:
    """Adds `value` to the hash `h`: frames by their content (`hashed` keeps those done, by id), containers item by
    item (mappings in the order of their keys), anything else by its type and repr."""
    import pandas as pd

    if isinstance(value, pd.DataFrame | pd.Series):
        if id(value) not in hashed:
            hashed[id(value)] = (value, _frame_hash(value))  # the frame kept alive: its id is not reused
        h.update(hashed[id(value)][1])
    elif isinstance(value, dict):  # a lookup (column labels): its order, often a set's, changes nothing drawn
        h.update(b"{%d" % len(value))
        for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])):
            _feed(h, k, hashed)
            _feed(h, v, hashed)
    elif isinstance(value, list | tuple):
        h.update(b"[%d" % len(value))
        for v in value:
            _feed(h, v, hashed)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


@lru_cache(maxsize=8)
def _code(module: str) -> bytes:
    """What draws a job's figure: matplotlib's version and the source of `harness.plots`, of `harness.results` (the
    loss curves) and of the job's own `module` (without importing matplotlib)."""
    import sys
    from importlib.metadata import version

    from harness import plots, results

    files = dict.fromkeys(str(m.__file__) for m in (plots, results, sys.modules[module]))
    return f"matplotlib {version('matplotlib')}\n".encode() + b"".join(Path(f).read_bytes() for f in files)


def digest(fn: Callable[..., Any], args: tuple[Any, ...], hashed: dict[int, tuple[Any, bytes]] | None = None) -> str:
    """What names a figure job: its function, its arguments and the code that draws it."""
    h = hashlib.sha256(f"{fn.__module__}.{fn.__qualname__}".encode())
    h.update(_code(fn.__module__))
    _feed(h, args, {} if hashed is None else hashed)
    return h.hexdigest()[:32]


def _stamp(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


class Drawer:
    """Figure jobs (function, arguments; each returns the files it wrote into one folder), drawn in worker processes
    (`executor`), or in this process when there are none; jobs whose inputs and files are unchanged since the last
    report into `folder` are not run. `results()` waits for them and returns their files in the order given."""

    def __init__(self, folder: Path, workers: int | None = None) -> None:
        self.folder, self.pool, self.closed = Path(folder), None, False
        # (digest, a future, a job to run here, or the files kept; the job as submitted)
        self.pending: list[tuple[str, Any, Job]] = []
        self.hashed: dict[int, tuple[Any, bytes]] = {}  # id -> (frame, its content hash): a frame given twice
        try:
            doc = json.loads((self.folder / MANIFEST).read_bytes())
            self.known: dict[str, list[list[Any]]] = doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            self.known = {}
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.workers = min(MAX_WORKERS, cpus) if workers is None else workers

    def executor(self) -> Executor | None:
        """The worker processes, started at the first call (a report with nothing to parse or draw starts none);
        None where there is one CPU or no `fork`. They find pandas and matplotlib loaded here, once, before the
        fork."""
        import multiprocessing
        import threading

        # a fork copies one thread only: from a process with others (a live display, a logger) it could copy a held
        # lock; then the jobs run here
        if self.pool is None and not self.closed and self.workers >= 2 and threading.active_count() == 1 \
                and "fork" in multiprocessing.get_all_start_methods():
            from concurrent.futures import ProcessPoolExecutor

            import pandas  # noqa: F401  the report needs it anyway: imported once, before the fork, not in each worker

            _warm()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
            self.pool.submit(int)  # starts the workers now, not at the first job
        return self.pool

    def _kept(self, key: str) -> list[Path] | None:
        """The files of the job named `key` from the last report, if each is still there as it was written."""
        entry = self.known.get(key)
        if not isinstance(entry, list):
            return None
        try:
            paths = [self.folder / str(name) for name, *_ in entry]
            return paths if all(_stamp(p) == list(e) for p, e in zip(paths, entry, strict=True)) else None
        except (OSError, TypeError, ValueError):
            return None

    def submit(self, jobs: list[Job]) -> None:
        """Jobs to run: the workers take them in order, `results` the last ones no worker has started."""
        for fn, args in jobs:
            key = digest(fn, args, self.hashed)
            kept = self._kept(key)
            if kept is not None:
                self.pending.append((key, kept, (fn, args)))
            elif self.executor() is not None:
                self.pending.append((key, self.executor().submit(fn, *args), (fn, args)))
            else:
                self.pending.append((key, (fn, args), (fn, args)))

    def _steal(self) -> dict[int, list[Path]]:
        """The jobs no worker has started, run here (the last first, while the workers take the first): the report's
        process, done with its own work, draws rather than waits. By index in `pending`."""
        done = {}
        for i in range(len(self.pending) - 1, -1, -1):
            _, job, (fn, args) = self.pending[i]
            if not isinstance(job, list | tuple) and job.cancel():  # only a job still waiting can be cancelled
                done[i] = fn(*args)
        return done

    def results(self) -> list[Path]:
        """Every job's files, in the order submitted; the manifest rewritten with these jobs only."""
        out, manifest = [], {}
        try:
            stolen = self._steal()
            for i, (key, job, (fn, args)) in enumerate(self.pending):
                if i in stolen:
                    files = stolen[i]
                elif isinstance(job, list):
                    files = job
                elif isinstance(job, tuple):
                    files = fn(*args)
                else:
                    files = job.result()
                out += files
                if all(Path(p).parent == self.folder for p in files):
                    manifest[key] = [_stamp(Path(p)) for p in files]
        finally:
            self.close()
        if manifest != self.known:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{MANIFEST}.{os.getpid()}.tmp"
            try:
                tmp.write_text(json.dumps(manifest))
                os.replace(tmp, self.folder / MANIFEST)
            except OSError:
                tmp.unlink(missing_ok=True)
        return out

    def close(self) -> None:
        self.closed = True
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None
