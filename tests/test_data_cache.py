"""`embedded.cache.write_once`: a set is written once, an outdated one replaced, a concurrent writer's kept."""

from __future__ import annotations

from pathlib import Path

from embedded.cache import has_version, mark_version, write_once


def _writer(tag: str, calls: list[str]):
    def write(folder: Path) -> None:
        calls.append(tag)
        (folder / "data.txt").write_text(tag)
        mark_version(folder, 2)

    return write


def complete(root: Path) -> bool:
    return has_version(root, 2)


def test_written_once_then_reused(tmp_path) -> None:
    calls: list[str] = []
    root = tmp_path / "set"
    assert write_once(root, _writer("a", calls), complete) == root
    assert write_once(root, _writer("b", calls), complete) == root
    assert calls == ["a"] and (root / "data.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folders left


def test_outdated_set_is_replaced(tmp_path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    (root / "data.txt").write_text("old")
    mark_version(root, 1)
    write_once(root, _writer("new", []), complete)
    assert (root / "data.txt").read_text() == "new" and has_version(root, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_concurrent_writer_that_finished_first_is_kept(tmp_path) -> None:
    """Two runs write the same set at once: the later one must not delete the set the earlier one is reading."""
    root = tmp_path / "set"
    calls: list[str] = []

    def slow_writer(folder: Path) -> None:
        write_once(root, _writer("first", calls), complete)  # the other run finishes while this one writes
        first_inode = (root / "data.txt").stat().st_ino
        _writer("second", calls)(folder)
        slow_writer.first_inode = first_inode

    write_once(root, slow_writer, complete)
    assert calls == ["first", "second"]
    assert (root / "data.txt").read_text() == "first"
    assert (root / "data.txt").stat().st_ino == slow_writer.first_inode  # the very same files, never replaced
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
