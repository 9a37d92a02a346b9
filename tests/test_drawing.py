"""`harness.drawing.Drawer`: figure jobs drawn in workers or here, their files in the order given, and a job whose
inputs and files are unchanged not run again; a changed frame, a changed argument or a touched file is drawn again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import drawing


def note_and_write(frame: pd.DataFrame, stem: Path, log: Path) -> list[Path]:
    """A stand-in figure job: writes `stem.png` from the frame and notes that it ran (from any process)."""
    with log.open("a") as f:
        f.write(f"{stem.name}\n")
    stem.parent.mkdir(parents=True, exist_ok=True)
    path = stem.with_suffix(".png")
    path.write_text(frame.to_csv())
    return [path]


def _run(folder: Path, jobs: list[tuple], workers: int) -> list[Path]:
    drawer = drawing.Drawer(folder, workers=workers)
    drawer.submit(jobs)
    return drawer.results()


def test_unchanged_jobs_are_not_run_again(tmp_path: Path) -> None:
    folder, log = tmp_path / "plots", tmp_path / "log"
    a, b = pd.DataFrame({"x": [1.0, 2.0], "k": ["u", "v"]}), pd.DataFrame({"x": [3.0]})
    jobs = [(note_and_write, (a, folder / "a", log)), (note_and_write, (b, folder / "b", log))]
    for workers in (2, 1):  # forked workers, then this process: the same files, in the order given
        log.unlink(missing_ok=True)
        (folder / drawing.MANIFEST).unlink(missing_ok=True)
        assert _run(folder, jobs, workers) == [folder / "a.png", folder / "b.png"]
        assert sorted(log.read_text().split()) == ["a", "b"]
    log.unlink()
    assert _run(folder, jobs, 1) == [folder / "a.png", folder / "b.png"] and not log.exists()  # nothing redrawn
    changed = pd.DataFrame({"x": [1.0, 2.5], "k": ["u", "v"]})  # one value of one frame
    assert _run(folder, [(note_and_write, (changed, folder / "a", log)), jobs[1]], 1)[0].read_text() == changed.to_csv()
    assert log.read_text().split() == ["a"]
    log.unlink()
    renamed = pd.DataFrame({"x": [3.0]}, index=[1])  # the same values, another index
    _run(folder, [(note_and_write, (changed, folder / "a", log)), (note_and_write, (renamed, folder / "b", log))], 1)
    assert log.read_text().split() == ["b"]
    log.unlink()
    (folder / "b.png").write_text("edited by hand")  # a file that is not as written: drawn again
    _run(folder, [(note_and_write, (changed, folder / "a", log)), (note_and_write, (renamed, folder / "b", log))], 1)
    assert log.read_text().split() == ["b"]


def test_the_order_of_a_lookup_does_not_matter_its_content_does() -> None:
    frame = pd.DataFrame({"x": [1.0]})
    one = drawing.digest(note_and_write, (frame, {"a": "A", "b": "B"}))
    assert one == drawing.digest(note_and_write, (frame, {"b": "B", "a": "A"}))
    assert one != drawing.digest(note_and_write, (frame, {"a": "A", "b": "C"}))
    assert one != drawing.digest(note_and_write, (frame.astype("float32"), {"a": "A", "b": "B"}))


def test_the_loss_figure_is_drawn_again_when_a_log_grows(tmp_path: Path) -> None:
    """The loss job's inputs are its logs' names, sizes and mtimes: a pretraining that logged more is drawn again."""
    import json

    from harness import report_figures, results

    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": i, "loss": 1.0 / (i + 1)}) for i in range(5)) + "\n")
    pretrain = {"method": "mae", "recipe": {"epochs": 10}, "recipe_name": "tiny", "backbone": {"name": "mae_t"},
                "extra": {"log_jsonl": str(log)}}

    def draw() -> bool:
        drawer = drawing.Drawer(tmp_path / "plots", workers=1)
        drawer.submit([(report_figures.loss_figure, (results.loss_logs([pretrain]), tmp_path / "plots", ("png",)))])
        drawn = not isinstance(drawer.pending[0][1], list)
        assert drawer.results() == [tmp_path / "plots" / "pretrain_loss.png"]
        return drawn

    assert draw() and not draw()
    with log.open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 0.1}) + "\n")
    assert draw()
