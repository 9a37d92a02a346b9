"""The report's figures and its compact reading: one loss line per setting whatever the number of seeds, trend lines
that never pool two settings, records read pruned give the same rows as records read whole."""

from __future__ import annotations

import ast
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import plots, results, store
from harness.report import flatten
from tests.test_report import rec

# (method, backbone, epochs) of three pretraining settings; their loss starts at `start`
SETTINGS = (("mae", "mae_t", 100, 1.0), ("mae", "mae_t", 200, 1.0), ("mocov3", "moco_t", 100, 5.0))


def _pretrains(tmp_path: Path, seeds: int) -> list[dict]:
    out = []
    for method, backbone, epochs, start in SETTINGS:
        for seed in range(seeds):
            log = tmp_path / f"{method}-{epochs}-{seed}" / "log.jsonl"
            log.parent.mkdir()
            lines = [json.dumps({"epoch": 0, "step": 10 * i, "loss": start / (i + 1) + 0.01 * seed, "lr": 0.1})
                     for i in range(20)]
            if seed == 1:
                lines = lines[:12] + ['{"step": 120, "lo']  # cut by a kill: fewer steps, the last line broken
            log.write_text("\n".join(lines) + "\n")
            out.append({"run_id": f"pre-{method}-{epochs}-{seed}", "kind": "pretrain", "status": "finished",
                        "method": method, "seed": seed, "recipe_name": f"{method}_tiny", "recipe": {"epochs": epochs},
                        "backbone": {"name": backbone}, "extra": {"log_jsonl": str(log)}})
    return out


@pytest.mark.parametrize("seeds", [1, 2, 9])
def test_loss_figure_has_one_line_per_setting_whatever_the_seeds(tmp_path: Path, seeds: int) -> None:
    curves = results.loss_curves(_pretrains(tmp_path, seeds))
    fig = plots.loss_figure(curves)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == len(SETTINGS)  # not one per run
    assert sorted(ax.get_title() for ax in fig.axes) == ["mae", "mocov3"]  # one panel per method, not per run
    first = curves[(curves["setting"] == "mae_t, mae_tiny, 100 ep") & (curves["step"] == 0)].iloc[0]
    assert first["n"] == seeds
    assert first["mean"] == pytest.approx(statistics.mean(1.0 + 0.01 * s for s in range(seeds)))
    last = curves[(curves["setting"] == "mae_t, mae_tiny, 100 ep") & (curves["step"] == 190)].iloc[0]
    assert last["n"] == (seeds - 1 if seeds > 1 else seeds)  # the run cut at step 110 has no value there
    if seeds == 1:
        assert curves["std"].isna().all()  # one seed: no band


def test_trend_lines_never_pool_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipe `tiny` (top-1 70) and `tiny [finetune.blr=1.0]` (30) are two lines, never one point at 50."""
    rows = []
    for recipe, level in (("tiny", 70.0), ("tiny [finetune.blr=1.0]", 30.0)):
        for epochs in (100, 400):
            for seed in range(3):
                rows.append({"recipe": recipe, "family": "mae", "column": "in1k_finetune", "size": "[]",
                             "pretrain_epochs": epochs, "value": level + epochs / 100 + seed})
    frame = pd.DataFrame(rows)
    lines = plots.trend_lines(frame, "pretrain_epochs")
    assert sorted(lines["mean"]) == [32.0, 35.0, 72.0, 75.0]
    drawn: list = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, stem, formats: drawn.append(fig) or real_save(fig, stem, formats))
    written = plots.trend_chart(frame, {"in1k_finetune": "IN1K fine-tune top-1"}, "pretrain_epochs",
                                tmp_path / "trend_vs_epochs")
    assert [p.name for p in written] == ["trend_vs_epochs.png"]  # SVG only on request
    (ax,) = drawn[0].axes
    means = sorted(list(c.lines[0].get_ydata()) for c in ax.containers)  # one errorbar per setting
    assert means == [[32.0, 35.0], [72.0, 75.0]]


def test_plots_import_nothing_of_the_harness() -> None:
    """The dependence is one way: the report imports the plots, which draw the frames they are given."""
    tree = ast.parse(Path(plots.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.split(".")[0] == "harness"}


def test_compact_reading_gives_the_same_rows(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    for seed, v in enumerate((80.0, 82.0)):
        run = rec("mae_t", "mae", "in1k", "finetune", seed, {"top1": v}, epochs=400,
                  extra={"history": [{"epoch": 1, "loss": 1.0}]})
        run["recipe"] = {"name": "tiny", "partial": {"blocks": 2}, "finetune": {"blr": 1.0}}  # the resolved recipe
        store.write_record(folder, run)
    run = rec("mae_t", "mae", "in1k", "partial", 0, {"top1": 60.0}, overrides={"a.b": 1})
    store.write_record(folder, {**run, "recipe": {"partial": {"blocks": 2}}})
    store.write_record(folder, rec("mae_t", "mae", "coco", None, 0, {}, status="failed", error="boom"))
    (folder / "broken.json").write_text("{")
    (folder / ".tmp-x.json").write_text("{")  # a record being written
    with pytest.warns(UserWarning, match="broken.json"):
        compact = results.read_compact(folder)
    with pytest.warns(UserWarning, match="broken.json"):
        whole = store.read_records(folder)
    assert len(compact) == len(whole) == 4
    assert all("history" not in (r.get("extra") or {}) and "finetune" not in r.get("recipe", {}) for r in compact)
    pd.testing.assert_frame_equal(flatten(compact), flatten(whole))


def test_bar_panel_baseline_first_intervals_published_and_floor(tmp_path: Path) -> None:
    """The bars follow the report's order (the baseline first), the error bars span the 95% interval, the paper's
    number is a marker on its bar; a fine-tuned from-scratch backbone is a bar, not the floor's dashed line."""
    from matplotlib.figure import Figure

    from harness.stats import summarize

    folder = tmp_path / "records"
    for name, family, values in (("mae_vit_base_patch16", "mae", [83.0, 84.0, 84.5]),
                                 ("sup_b", "supervised", [81.0, 82.0]), ("scratch_b", "scratch", [70.0])):
        spec = {"arch": "vit_base_patch16_224", "arch_kwargs": {}, "paper_name": "ViT-B"}
        for seed, v in enumerate(values):
            store.write_record(folder, rec(name, family, "in1k", "finetune", seed, {"top1": v}, recipe="paper",
                                           spec=spec))
    summary = summarize(flatten(store.read_records(folder)))
    ax = Figure().add_subplot()
    plots._bar_panel(ax, summary, ["in1k_finetune"], {"in1k_finetune": "IN1K fine-tune top-1"}, "t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sup_b", "mae_vit_base_patch16", "scratch_b"]
    from matplotlib.collections import LineCollection, PathCollection

    mae = summary.set_index("backbone").loc["mae_vit_base_patch16"]
    (err,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    lo, hi = err.get_segments()[1][:, 1]  # the interval of the second bar
    assert (lo, hi) == pytest.approx((mae["ci_lo"], mae["ci_hi"]))
    assert err.get_segments()[2][0, 1] == err.get_segments()[2][1, 1] == pytest.approx(70.0)  # n = 1: no interval
    (paper,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert paper.get_offsets()[1][1] == pytest.approx(83.6)  # MAE ViT-B fine-tuned, He et al. 2021
    floor = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert floor == []  # a fine-tuned from-scratch backbone is a row, not the floor (test_controls: the real floor)


def test_the_records_cache_is_used_kept_current_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "records"
    for seed, v in enumerate((80.0, 82.0)):
        store.write_record(folder, rec("mae_t", "mae", "in1k", "finetune", seed, {"top1": v}))
    first = results.read_compact(folder)
    assert (folder / results.CACHE).is_file() and len(store.read_records(folder)) == 2  # not read as a record
    parsed: list[str] = []
    real = results._read_pruned
    monkeypatch.setattr(results, "_read_pruned", lambda path, *a: parsed.append(path) or real(path, *a))
    assert results.read_compact(folder) == first and parsed == []  # nothing parsed again
    new = store.write_record(folder, rec("sup_t", "supervised", "in1k", "finetune", 0, {"top1": 79.0}))
    again = results.read_compact(folder)
    assert parsed == [str(new)] and len(again) == 3
    gone = Path(first[0]["_path"])
    gone.unlink()
    assert len(results.read_compact(folder)) == 2 and gone.name not in (folder / results.CACHE).read_text()
    (folder / results.CACHE).write_text("{not json")  # corrupt: rebuilt without a word
    parsed.clear()
    left = [r["run_id"] for r in again if r["_path"] != str(gone)]
    assert [r["run_id"] for r in results.read_compact(folder)] == left
    assert len(parsed) == 2 and json.loads((folder / results.CACHE).read_text())["version"] == results.CACHE_VERSION
    fewer = results.read_compact(folder, {"run_id": True, "status": True})  # other fields: not the cached records
    assert all(set(r) == {"run_id", "status", "_path"} for r in fewer)


def test_helpers_parse_the_same_records_in_the_same_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed in chunks by forked helpers and here: the same compact records as parsed here alone, `meanwhile` run
    here, an unreadable file's warning given here, and the helpers' entries cached as they sent them."""
    from harness import forkwork

    folder = tmp_path / "records"
    for seed in range(7):
        store.write_record(folder, rec("mae_t", "mae", "in1k", "finetune", seed, {"top1": 80.0 + seed}))
    (folder / "broken.json").write_text("{")
    with pytest.warns(UserWarning, match="broken.json"):
        alone = results.read_compact(folder, cache=False)
    monkeypatch.setattr(results, "PARALLEL_FROM", 2)
    monkeypatch.setattr(results, "CHUNK", 2)
    monkeypatch.setattr(forkwork, "helpers_for", lambda: 2)
    ran: list[int] = []
    with pytest.warns(UserWarning, match="broken.json"):
        shared = results.read_compact(folder, cache=False, meanwhile=lambda: ran.append(os.getpid()))
        cached = results.read_compact(folder)  # the helpers' entries kept as they sent them
    assert shared == alone == cached and len(shared) == 7 and ran == [os.getpid()]
    monkeypatch.setattr(results, "_read_pruned", lambda path, *a: pytest.fail(f"parsed again: {path}"))
    (folder / "broken.json").unlink()
    assert results.read_compact(folder) == alone  # every record from the cache


def test_forked_helpers_share_chunks_and_a_dead_one_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk's result comes back in order, some done by helpers; a helper that dies (here: a chunk whose work
    kills the process that does it, unless it is the parent) leaves its chunks to this process. With other threads
    running, nothing is forked."""
    from harness import forkwork

    monkeypatch.setattr(forkwork.threading, "active_count", lambda: 1)  # other tests may leave a thread behind

    parent = os.getpid()

    def work(c: list[int]) -> list[int]:
        if c == [6, 7] and os.getpid() != parent:
            os._exit(3)
        time.sleep(0.01)
        return [*c, os.getpid()]

    chunks = [[2 * i, 2 * i + 1] for i in range(8)]
    done = forkwork.run_chunks(work, chunks, helpers=2)
    assert [d[:2] for d in done] == chunks
    assert done[3][2] == parent and len({d[2] for d in done}) >= 2  # the dead helper's chunk, redone here
    assert forkwork.run_chunks(work, chunks, helpers=0) == [[*c, parent] for c in chunks]
    monkeypatch.setattr(forkwork.threading, "active_count", lambda: 2)
    assert forkwork.run_chunks(work, chunks, helpers=2) == [[*c, parent] for c in chunks]
    assert forkwork.helpers_for(1) == 0 and forkwork.helpers_for(2) == 1 and forkwork.helpers_for(64) == 3
