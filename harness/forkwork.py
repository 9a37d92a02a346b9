"""Chunks of work shared between this process and a few forked helpers that start at once, before the report's heavy
imports: the helpers parse records while this process imports pandas and matplotlib (`meanwhile`), then it joins in.

Each process claims the next chunk under a lock, so that a slow or late one takes fewer; a helper sends what it did
as JSON through a pipe when it has finished. A helper that dies leaves its chunks to this process. No helper is
forked where `os.fork` is missing or where this process runs other threads (a fork copies one thread only, and could
copy a lock another holds); then everything is done here.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def helpers_for(cpus: int | None = None, most: int = 3) -> int:
    """Helpers beside this process: one fewer than the CPUs it may use, at most `most`."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(most, cpus - 1))


def run_chunks(work: Callable[[T], Any], chunks: Sequence[T], helpers: int,
               meanwhile: Callable[[], Any] | None = None) -> list[Any]:
    """`[work(c) for c in chunks]`, done here and in `helpers` forked processes; `meanwhile()` is run here first,
    while the helpers work. What a helper's `work` returns comes back through JSON (so: str, numbers, lists, dicts)."""
    if helpers < 1 or len(chunks) < 2 or not hasattr(os, "fork") or threading.active_count() > 1:
        if meanwhile is not None:
            meanwhile()
        return [work(c) for c in chunks]
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    lock, counter = ctx.Lock(), ctx.RawValue("i", 0)

    def claim() -> int | None:
        with lock:
            i = counter.value
            if i >= len(chunks):
                return None
            counter.value = i + 1
            return i

    started = [_fork(work, chunks, claim) for _ in range(min(helpers, len(chunks) - 1))]
    if meanwhile is not None:
        meanwhile()
    out: dict[int, Any] = {}
    while (i := claim()) is not None:
        out[i] = work(chunks[i])
    for pid, fd in started:
        out.update(_collect(pid, fd))
    return [out[i] if i in out else work(chunks[i]) for i in range(len(chunks))]  # a dead helper's chunks, here


def _fork(work: Callable[[T], Any], chunks: Sequence[T], claim: Callable[[], int | None]) -> tuple[int, int]:
    """A helper that does the chunks it claims and writes `[[index, result], ...]` as JSON to its pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: whatever happens, it never returns into the caller's code
        code = 1
        try:
            os.close(read_fd)
            done = []
            while (i := claim()) is not None:
                done.append([i, work(chunks[i])])
            with os.fdopen(write_fd, "wb") as f:
                f.write(json.dumps(done).encode())
            code = 0
        except BaseException:  # noqa: BLE001  reported by what it did not send: its chunks are done again
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, fd: int) -> dict[int, Any]:
    """What the helper `pid` sent through `fd` (read to its end before waiting for it); nothing if it failed."""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {}
    try:
        return {int(i): result for i, result in json.loads(data)}
    except (ValueError, TypeError):
        return {}
