"""`harness report` on known records: every cell of the tables (mean, std, n, delta), the published column, files."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import reference, store
from harness.report import fmt_cell, summarize, tables, write_report

TINY_SPEC = {"arch": "vit_tiny_patch16_224", "arch_kwargs": {"embed_dim": 96}, "paper_name": None}
BASE_SPEC = {"arch": "vit_base_patch16_224", "arch_kwargs": {}, "paper_name": "ViT-B"}
_t = iter(range(10**6))


def rec(backbone: str, family: str, task: str, protocol: str | None, seed: int, metrics: dict, *,
        recipe: str = "tiny", status: str = "finished", spec: dict | None = None, run_id: str | None = None,
        epochs: int | None = None, **kw) -> dict:
    spec = {**(spec or TINY_SPEC), "family": family, "name": backbone}
    return {
        "run_id": run_id or f"{backbone}-{task}-{protocol}-{seed}-{recipe}", "attempt": store.new_attempt(),
        "status": status, "kind": "task", "task": task, "protocol": protocol, "seed": seed, "metrics": metrics,
        "recipe_name": recipe, "backbone": {"name": backbone, "spec": spec,
                                            "pretrain": {"epochs": epochs} if epochs else None},
        "finished_at": f"2026-01-01T00:00:00.{next(_t):06d}+00:00", **kw,
    }


MAE_FT = [80.0, 82.0, 84.0]
SUP_FT = [79.0, 81.0]


@pytest.fixture
def records(tmp_path: Path) -> Path:
    folder = tmp_path / "records"
    recs = [rec("mae_t", "mae", "in1k", "finetune", s, {"top1": v}) for s, v in enumerate(MAE_FT)]
    recs += [rec("sup_t", "supervised", "in1k", "finetune", s, {"top1": v}) for s, v in enumerate(SUP_FT)]
    recs += [rec("scratch_t", "scratch", "in1k", "finetune", 0, {"top1": 50.0})]
    recs += [rec("mae_t", "mae", "in1k", "linprobe", 0, {"top1": 40.0}),
             rec("sup_t", "supervised", "in1k", "linprobe", 0, {"top1": 45.5})]
    # mmdet's raw fractions, scaled to percent; mmseg's mIoU is in percent already
    recs += [rec("mae_t", "mae", "coco", None, 0, {"coco/bbox_mAP": 0.503, "coco/segm_mAP": 0.449}),
             rec("sup_t", "supervised", "coco", None, 0, {"bbox_mAP": 47.9, "segm_mAP": 42.9}),
             rec("mae_t", "mae", "ade20k", None, 0, {"mIoU": 30.0, "aAcc": 70.0})]
    # a failed run is listed, not averaged; an older record of a run is superseded by its newest
    recs += [rec("scratch_t", "scratch", "coco", None, 0, {}, status="failed", error="boom", log="/x.log")]
    recs += [rec("scratch_t", "scratch", "in1k", "linprobe", 0, {"top1": 99.0}, run_id="scr-lp"),
             rec("scratch_t", "scratch", "in1k", "linprobe", 0, {"top1": 10.0}, run_id="scr-lp")]
    # the paper's setting: recipe 'paper', ViT-B
    recs += [rec("mae_vit_base_patch16", "mae", "in1k", "finetune", s, {"top1": v}, recipe="paper", spec=BASE_SPEC)
             for s, v in enumerate([83.0, 83.4])]
    for r in recs:
        store.write_record(folder, r)
    return folder


def _frame(folder: Path) -> pd.DataFrame:
    from harness.report import flatten

    return flatten(store.read_records(folder))


def test_cells_mean_std_n_delta(records: Path) -> None:
    out = tables(summarize(_frame(records)))
    assert set(out) == {"in1k_tiny", "coco_tiny", "ade20k_tiny", "in1k_paper"}
    in1k = out["in1k_tiny"].set_index("backbone")
    ft, lp = "IN1K fine-tune top-1", "IN1K linear top-1"
    m, s = statistics.mean(MAE_FT), statistics.stdev(MAE_FT)
    assert in1k.loc["mae_t", ft] == fmt_cell(m, s, 3) == "82.0 ± 2.0 [77.0, 87.0] (n=3)"
    assert in1k.loc["sup_t", ft] == "80.0 ± 1.4 [67.3, 92.7] (n=2)"
    assert in1k.loc["scratch_t", ft] == "50.0 (n=1)"
    # paired by seed: mae_t 80, 82 (, 84) against sup_t 79, 81 on seeds 0, 1: differences 1, 1
    assert in1k.loc["mae_t", f"Δ {ft}"] == "+1.0 [+1.0, +1.0]* (2 pairs)"
    assert in1k.loc["scratch_t", f"Δ {ft}"] == "-30.0"  # one seed in common: the plain difference
    assert in1k.loc["sup_t", f"Δ {ft}"] == ""  # the baseline itself
    assert in1k.loc["mae_t", lp] == "40.0 (n=1)" and in1k.loc["mae_t", f"Δ {lp}"] == "-5.5"
    assert in1k.loc["scratch_t", lp] == "10.0 (n=1)"  # the newest record of run scr-lp
    assert "IN1K partial top-1" not in in1k.columns  # no runs, no column
    coco = out["coco_tiny"].set_index("backbone")
    assert coco.loc["mae_t", "COCO APbox"] == "50.3 (n=1)" and coco.loc["mae_t", "COCO APmask"] == "44.9 (n=1)"
    assert coco.loc["mae_t", "Δ COCO APbox"] == "+2.4" and coco.loc["mae_t", "Δ COCO APmask"] == "+2.0"
    assert "scratch_t" not in coco.index  # failed only
    ade = out["ade20k_tiny"].set_index("backbone")
    assert ade.loc["mae_t", "ADE20K mIoU"] == "30.0 (n=1)" and ade.loc["mae_t", "Δ ADE20K mIoU"] == ""


def test_summary_numbers(records: Path) -> None:
    summary = summarize(_frame(records)).set_index(["recipe", "backbone", "column"])
    row = summary.loc[("tiny", "mae_t", "in1k_finetune")]
    assert row["mean"] == pytest.approx(82.0) and row["std"] == pytest.approx(2.0) and row["n"] == 3
    assert row["delta"] == pytest.approx(1.0) and row["baseline"] == "sup_t" and row["delta_n"] == 2
    assert summary.loc[("tiny", "sup_t", "in1k_finetune")]["std"] == pytest.approx(statistics.stdev(SUP_FT))


def test_published_numbers_beside_the_paper_setting(records: Path) -> None:
    paper = tables(summarize(_frame(records)))["in1k_paper"].set_index("backbone")
    assert paper.loc["mae_vit_base_patch16", "IN1K fine-tune top-1"] == "83.2 ± 0.3 [80.7, 85.7] (n=2)"
    assert paper.loc["mae_vit_base_patch16", "IN1K fine-tune top-1 (paper)"] == "83.6"
    tiny = tables(summarize(_frame(records)))["in1k_tiny"]
    assert not any("(paper)" in c for c in tiny.columns)  # only recipe 'paper' is compared with the paper
    assert reference.published("mae", "ViT-L", "coco_mask") == 47.2
    assert reference.published("supervised", "ViT-B", "ade20k_miou") == 47.4
    assert reference.published("mocov3", "ViT-L", "coco_box") == 49.3
    assert reference.published("mae", "ViT-H@448", "in1k_finetune") == 87.8
    assert reference.published("mae", "ViT-B", "in1k_partial") is None  # not given rather than guessed


def test_fmt_cell() -> None:
    assert fmt_cell(71.234, 0.456, 3) == "71.2 ± 0.5 [70.1, 72.4] (n=3)"
    assert fmt_cell(71.25, float("nan"), 1) == "71.2 (n=1)"


def test_write_report_files(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    written = write_report(records, out, plot_format="png,svg")
    names = {p.relative_to(out).as_posix() for p in written}
    for table in ("in1k_tiny", "coco_tiny", "ade20k_tiny", "in1k_paper", "reference"):
        assert {f"{table}.md", f"{table}.csv", f"{table}.tex"} <= names
    for plot in ("in1k", "coco", "ade20k"):  # one figure per task, a panel per setting
        png, svg = out / "plots" / f"{plot}.png", out / "plots" / f"{plot}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:1000]
    md = (out / "in1k_tiny.md").read_text()
    assert "| mae_t | mae | 82.0 ± 2.0 [77.0, 87.0] (n=3) | +1.0 [+1.0, +1.0]* (2 pairs) |" in md
    csv = pd.read_csv(out / "in1k_tiny.csv")
    # the baseline first, the controls last (scratch_t's linear probe is also the in1k floor, `harness.controls`)
    assert list(csv["backbone"]) == ["sup_t", "mae_t", "scratch_t", "random frozen (floor)"]
    tex = (out / "in1k_tiny.tex").read_text()
    assert r"82.0 $\pm$ 2.0 [77.0, 87.0] (n=3)" in tex and r"$\Delta$ IN1K fine-tune top-1" in tex and "±" not in tex
    ref = pd.read_csv(out / "reference.csv")
    assert len(ref) == len(reference.PUBLISHED) and 83.6 in set(ref["IN1K fine-tune top-1"])
    readme = (out / "README.md").read_text()
    assert "Failed runs" in readme and "boom" in readme
    summary = pd.read_csv(out / "summary.csv")
    assert {"mean", "std", "n", "delta", "published"} <= set(summary.columns)


def test_trend_plots_loss_curves_and_reconstruction(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    for epochs, vals in ((100, [60.0, 61.0]), (400, [70.0, 72.0])):
        for seed, v in enumerate(vals):
            store.write_record(folder, rec(f"mae_{epochs}", "mae", "in1k", "finetune", seed, {"top1": v},
                                           epochs=epochs))
    log = tmp_path / "pre" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("\n".join(json.dumps({"epoch": 0, "step": i, "loss": 1.0 / (i + 1), "lr": 0.1})
                             for i in range(10)) + "\n{\"step\": 10, \"lo")  # the last line cut by a kill
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "pre" / "reconstruction.png", [[0.0, 1.0], [1.0, 0.0]])
    pre = {"run_id": "pre1", "attempt": "a", "status": "finished", "kind": "pretrain", "task": "pretrain",
           "method": "mae", "backbone": {"name": "mae_t", "spec": TINY_SPEC}, "finished_at": "2026-01-01",
           "extra": {"log_jsonl": str(log), "reconstruction": str(tmp_path / "pre" / "reconstruction.png")}}
    store.write_record(folder, pre)
    out = tmp_path / "results"
    write_report(folder, out, formats=["csv"])
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"trend_vs_epochs.png", "pretrain_loss.png", "reconstruction_mae_t.png"} <= plots
    assert not any(p.endswith(".svg") for p in plots)  # SVG only on request
    assert "trend_vs_size.png" not in plots  # one size only: no size plot
    assert not list(out.glob("*.md")) or (out / "README.md").exists()
    assert (out / "plots" / "reconstruction_mae_t.png").read_bytes() == (log.parent / "reconstruction.png").read_bytes()


def test_report_command(records: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from harness.cli import main

    monkeypatch.setattr(sys, "argv", ["harness"])
    out = tmp_path / "res"
    assert main(["report", "--runs", str(records.parent), "--out", str(out), "--format", "md", "--no-plots"]) == 0
    assert (out / "in1k_tiny.md").is_file() and not (out / "plots").exists()
    assert "82.0 ± 2.0 [77.0, 87.0] (n=3)" in capsys.readouterr().out
    assert main(["report", "--runs", str(records.parent), "--out", str(out), "--format", "html"]) == 2
    assert main(["report", "--runs", str(records.parent), "--out", str(out), "--plot-format", "pdf"]) == 2
    assert "--plot-format: unknown pdf" in capsys.readouterr().err
    assert main(["report", "--runs", str(tmp_path / "nothing"), "--out", str(out)]) == 1


@pytest.mark.parametrize(("key", "value", "said"), [
    ("backbone", "abc", "backbone is 'abc'"), ("metrics", [1], "metrics is [1]"), ("seed", {"a": 1}, "seed is"),
    ("overrides", [1, 2], "overrides is [1, 2]"), ("finished_at", 5, "finished_at is 5"), ("extra", "s", "extra is"),
    ("backbone", {"name": "x", "spec": 3}, "backbone.spec is 3, not a mapping"),
    ("backbone", {"name": "x", "pretrain": {"sweep": []}}, "backbone.pretrain.sweep is [], not a mapping"),
])
def test_a_record_of_another_shape_is_skipped_naming_its_file_and_key(tmp_path: Path, monkeypatch, capsys,
                                                                     key: str, value, said: str) -> None:
    """A hand-edited or foreign record whose fields are not of the record's types costs its row, with one line
    naming the file and the key, never a traceback; the other records are reported as before."""
    from harness.cli import main

    folder = tmp_path / "records"
    store.write_record(folder, rec("mae_t", "mae", "in1k", "finetune", 0, {"top1": 80.0}))
    bad = store.write_record(folder, {**rec("sup_t", "supervised", "in1k", "finetune", 0, {"top1": 70.0}), key: value})
    monkeypatch.setattr(sys, "argv", ["harness"])
    assert main(["report", "--runs", str(tmp_path), "--out", str(tmp_path / "res"), "--format", "md"]) == 0
    out, err = capsys.readouterr()
    assert f"harness report: skipping {bad}: {said}" in err and "Traceback" not in err
    assert "1 runs in" in out and "80.0" in out and "70.0" not in out


def test_partial_fine_tuning_is_split_by_k(tmp_path: Path) -> None:
    """Partial fine-tuning with K=1 and K=2 are two settings, never averaged together as if they were seeds."""
    folder = tmp_path / "records"
    for k, v in ((1, 70.0), (2, 74.0)):
        store.write_record(folder, rec("mae_t", "mae", "in1k", "partial", 0, {"top1": v}, run_id=f"p{k}",
                                       extra={"blocks": k}))
    table = tables(summarize(_frame(folder)))["in1k"]
    row = table.set_index("backbone").loc["mae_t"]
    assert row["IN1K partial K=1 top-1"] == fmt_cell(70.0, float("nan"), 1)
    assert row["IN1K partial K=2 top-1"] == fmt_cell(74.0, float("nan"), 1)
    assert "IN1K partial top-1" not in table.columns


def test_overrides_and_pretraining_lengths_are_settings_not_seeds(tmp_path: Path) -> None:
    """A run under `--set` belongs to a setting of its own, and one encoder pretrained for 100 and for 400 epochs gives
    two rows; only true repeats (seeds) share a cell."""
    folder = tmp_path / "records"
    for seed, v in enumerate((10.0, 12.0)):
        store.write_record(folder, rec("mae_t", "mae", "coco", None, seed, {"bbox_mAP": v, "segm_mAP": v}))
    store.write_record(folder, rec("mae_t", "mae", "coco", None, 0, {"bbox_mAP": 30.0, "segm_mAP": 31.0},
                                   run_id="taps", overrides={"model.pyramid": "taps"}))
    for epochs, v in ((100, 60.0), (400, 70.0)):
        store.write_record(folder, rec("mae_t", "mae", "in1k", "finetune", 0, {"top1": v}, epochs=epochs,
                                       run_id=f"ft{epochs}"))
    store.write_record(folder, rec("sup_t", "supervised", "in1k", "finetune", 0, {"top1": 65.0}))
    out = tables(summarize(_frame(folder)))
    assert set(out) == {"coco_tiny", 'coco_tiny_model_pyramid=_taps', "in1k_tiny"}
    assert out["coco_tiny"].set_index("backbone").loc["mae_t", "COCO APbox"] == "11.0 ± 1.4 [-1.7, 23.7] (n=2)"
    taps = out['coco_tiny_model_pyramid=_taps'].set_index("backbone")
    assert taps.loc["mae_t", "COCO APbox"] == "30.0 (n=1)"
    in1k = out["in1k_tiny"].set_index("backbone")
    assert in1k.loc["mae_t (100 ep)", "IN1K fine-tune top-1"] == "60.0 (n=1)"
    assert in1k.loc["mae_t (400 ep)", "IN1K fine-tune top-1"] == "70.0 (n=1)"
    assert in1k.loc["mae_t (400 ep)", "Δ IN1K fine-tune top-1"] == "+5.0"
    written = {p.name for p in write_report(folder, tmp_path / "res", formats=["md"])}
    assert {"coco_tiny.md", "coco_tiny_model_pyramid=_taps.md", "coco.png"} <= written
    assert "recipe tiny [model.pyramid=\"taps\"]" in (tmp_path / "res" / "README.md").read_text()


def test_in1k_tables_show_the_last_epoch_unless_asked_for_the_best(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    for seed, (last, best) in enumerate([(80.0, 81.0), (82.0, 82.0)]):
        store.write_record(folder, rec("mae_t", "mae", "in1k", "finetune", seed,
                                       {"top1": last, "top1_best": best, "top1_best_epoch": 3}))  # fmt: skip
    store.write_record(folder, rec("sup_t", "supervised", "in1k", "finetune", 0, {"top1": 79.0}))  # no best recorded
    write_report(folder, tmp_path / "last", formats=["md"], plots=False)
    md = (tmp_path / "last" / "in1k.md").read_text()
    assert "Fashion-MNIST in the ImageNet layout: top-1 (%), last epoch" in md  # records without a data root
    assert "81.0 ± 1.4 [68.3, 93.7] (n=2)" in md and "79.0 (n=1)" in md
    write_report(folder, tmp_path / "best", formats=["md"], plots=False, top1="best")
    md = (tmp_path / "best" / "in1k.md").read_text()
    assert "Fashion-MNIST in the ImageNet layout: top-1 (%), best epoch" in md and "81.5 ± 0.7 [75.1, 87.9] (n=2)" in md
    assert "79.0" not in md  # a run without a best epoch's top-1 shows none rather than its last
    with pytest.raises(ValueError, match="--in1k-top1"):
        write_report(folder, tmp_path / "bad", formats=["md"], plots=False, top1="max")


def test_results_json(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    write_report(records, out, formats=["md"], plots=False)
    doc = json.loads((out / "results.json").read_text())
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert len(runs) == 15 and runs["scr-lp"]["metrics"] == {"top1": 10.0}  # the newest record of a run
    failed = runs["scratch_t-coco-None-0-tiny"]
    assert failed["status"] == "failed" and failed["recipe"] == "tiny" and failed["error"] == "boom"
    cell = next(c for c in doc["cells"] if c["backbone"] == "mae_t" and c["column"] == "in1k_finetune")
    assert cell["mean"] == pytest.approx(82.0) and cell["n"] == 3 and cell["ci_lo"] == pytest.approx(77.03, abs=0.01)
    assert cell["delta"] == pytest.approx(1.0) and cell["delta_n"] == 2 and cell["delta_sig"] is True
    base = next(c for c in doc["cells"] if c["backbone"] == "sup_t" and c["column"] == "in1k_finetune")
    assert base["delta"] is None  # NaN is written as null
    table = next(t for t in doc["tables"] if t["name"] == "in1k_tiny")
    assert [r["backbone"] for r in table["rows"]] == ["sup_t", "mae_t", "scratch_t", "random frozen (floor)"]
    assert table["markdown"] == (out / "in1k_tiny.md").read_text().split("\n\n", 1)[1]
