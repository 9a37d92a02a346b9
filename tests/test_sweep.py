"""`harness run --sweep pretrain.KEY=V1,V2,...`: one pretraining per value for the methods whose recipe has the key,
the transfers once per setting, bad keys and values refused before any work, and the records carrying the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.api import run_options
from harness.run import DID_NOT_START
from harness.run.inputs import PlanError
from harness.run.plan import build_plan
from tests.test_runner import DUMMY, base_args, harness, latest, write_suite

SWEEP = "pretrain.model.mask_ratio=0.5,0.75,0.9"


def sweep_suite(tmp: Path) -> Path:
    """The dummy suite with a pretraining recipe per method: MAE's has `model.mask_ratio`, the supervised one not."""
    (tmp / "mae_pre.yaml").write_text("version: 1\nepochs: 2\nsleep: 0.0\n"
                                      "model: {mask_ratio: 0.75, decoder_depth: 8}\n")
    (tmp / "supervised_pre.yaml").write_text("version: 1\nepochs: 2\nsleep: 0.0\n")
    preset = write_suite(tmp, pretrain=True, suite="[in1k]", protocols="[finetune, linprobe]")
    text = preset.read_text().replace(f"  target: {DUMMY}:pretrain\n",
                                      f"  target: {DUMMY}:pretrain\n  recipe: '{tmp}/{{method}}_pre.yaml'\n")
    preset.write_text(text)
    return preset


def test_the_plan_has_one_pretraining_per_value_and_transfers_per_setting(tmp_path) -> None:
    preset = sweep_suite(tmp_path)
    plan = build_plan(run_options(preset=str(preset), out=str(tmp_path / "out"), device="cpu", sweep=SWEEP))
    pre = [r for r in plan.runs if r.kind == "pretrain"]
    mae = [r for r in pre if r.method == "mae"]
    assert [r.overrides["model.mask_ratio"] for r in mae] == [0.5, 0.75, 0.9]
    assert len({r.run_id for r in pre}) == len(pre) == 4  # 3 MAE settings + the supervised one, unswept
    assert [r.sweep for r in pre if r.method == "supervised"] == [None]
    tasks = [r for r in plan.runs if r.kind == "task"]
    mae_tasks = [r for r in tasks if r.backbone == "mae_vit_tiny_patch4"]
    assert len(mae_tasks) == 2 * 3 and {id(r.after) for r in mae_tasks} == {id(r) for r in mae}
    assert len(tasks) == 2 * (3 + 1 + 1)  # two protocols x (MAE per setting, supervised, scratch)
    plain = build_plan(run_options(preset=str(preset), out=str(tmp_path / "out"), device="cpu", pretrain=True))
    assert len([r for r in plain.runs if r.kind == "pretrain"]) == 2
    shipped = build_plan(run_options(preset=str(preset), out=str(tmp_path / "out"), device="cpu"))
    assert not [r for r in shipped.runs if r.kind == "pretrain"]  # no sweep, no --pretrain: the shipped encoders


def test_an_epochs_sweep_sets_the_pretraining_length(tmp_path) -> None:
    preset = sweep_suite(tmp_path)
    plan = build_plan(run_options(preset=str(preset), out=str(tmp_path / "out"), device="cpu",
                                  sweep="pretrain.epochs=1,3"))
    assert sorted(r.epochs for r in plan.runs if r.kind == "pretrain") == [1, 1, 3, 3]  # both recipes have epochs
    with pytest.raises(PlanError, match="--pretrain-epochs"):
        build_plan(run_options(preset=str(preset), out=str(tmp_path / "out"), device="cpu",
                               sweep="pretrain.epochs=1,3", pretrain_epochs=2))


@pytest.mark.parametrize(("flag", "named"), [
    ("pretrain.model.mask_ratoi=0.5,0.9", "mask_ratoi"),  # no recipe has the key
    ("pretrain.model.mask_ratio=0.5,high", "allowed: a finite number"),  # a bad kind of value
    ("pretrain.model.decoder_depth=2,1.5", "allowed: an integer"),
    ("pretrain.model.mask_ratio=0.5,0.5", "given twice"),
    ("model.mask_ratio=0.5", "pretrain.KEY=V1,V2"),  # not a pretraining key
    ("pretrain.model.mask_ratio=", "no values"),
])
def test_bad_sweeps_stop_before_any_work(tmp_path, monkeypatch, capsys, flag, named) -> None:
    preset, out = sweep_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--sweep", flag) == DID_NOT_START
    err = capsys.readouterr().err
    assert "--sweep" in err and named in err
    assert not out.exists()


def test_one_sweep_key_at_a_time(tmp_path, monkeypatch, capsys) -> None:
    preset, out = sweep_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--sweep", SWEEP, "--sweep",
                   "pretrain.model.decoder_depth=1,2") == DID_NOT_START
    assert "one key at a time" in capsys.readouterr().err and not out.exists()


def test_dry_run_shows_the_settings(tmp_path, monkeypatch, capsys) -> None:
    preset, out = sweep_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run", "--sweep", SWEEP) == 0
    plan = capsys.readouterr().out
    for value in ("0.5", "0.75", "0.9"):
        assert f"model.mask_ratio={value}" in plan
    assert not (out / "records").exists()


def test_records_carry_the_setting(tmp_path, monkeypatch) -> None:
    from harness import api

    preset, out = sweep_suite(tmp_path), tmp_path / "out"
    frame = api.run_suite(preset=str(preset), out=str(out), device="cpu", report_format="md",
                          sweep={"pretrain.model.mask_ratio": [0.5, 0.9]})
    assert frame.attrs["exit_status"] == 0
    swept = frame[frame["backbone"] == "mae_vit_tiny_patch4"]["sweep"].dropna()
    assert sorted(s["value"] for s in swept) == [0.5, 0.5, 0.9, 0.9]  # two protocols per setting
    page = (out / "results" / "index.html").read_text()
    assert "top-1 against the swept pretraining setting model_mask_ratio" in page  # the curve, inlined
    recs = latest(out).values()
    pre = {r["run_id"]: r for r in recs if r["kind"] == "pretrain"}
    tasks = [r for r in recs if r["kind"] == "task" and r["backbone"]["name"] == "mae_vit_tiny_patch4"]
    assert len(tasks) == 4 and len({r["backbone"]["sha256"] for r in tasks}) == 2
    for task in tasks:
        setting = task["backbone"]["pretrain"]["sweep"]
        assert setting["key"] == "model.mask_ratio"
        assert pre[task["backbone"]["pretrain"]["run_id"]]["overrides"]["model.mask_ratio"] == setting["value"]


# --- the report's sweep curves, on dummy records ---

FT = {0.5: [80.0, 82.0], 0.75: [84.0, 85.0], 0.9: [81.0, 83.0]}  # two seeds per mask ratio
LIN = {0.5: [60.0, 62.0], 0.75: [64.0, 66.0], 0.9: [70.0, 71.0]}
PARTIAL = {1: 70.0, 2: 74.0, 4: 78.0}  # top-1 against K


def sweep_records(folder: Path) -> None:
    from harness import store
    from tests.test_report import rec

    for value in FT:
        pre = {"run_id": f"pre-{value}", "method": "mae", "epochs": None,
               "sweep": {"key": "model.mask_ratio", "value": value}}
        for protocol, table in (("finetune", FT), ("linprobe", LIN)):
            for seed, top1 in enumerate(table[value]):
                r = rec("mae_t", "mae", "in1k", protocol, seed, {"top1": top1}, run_id=f"{protocol}-{value}-{seed}")
                r["backbone"]["pretrain"] = pre
                store.write_record(folder, r)
    for seed, top1 in enumerate([79.0, 80.0]):  # the baseline, not swept
        store.write_record(folder, rec("sup_t", "supervised", "in1k", "finetune", seed, {"top1": top1}))
    for k, top1 in PARTIAL.items():
        store.write_record(folder, rec("mae_t", "mae", "in1k", "partial", 0, {"top1": top1}, extra={"blocks": k},
                                       run_id=f"partial-{k}"))


def _summary(folder: Path):
    from harness import store
    from harness.report import flatten
    from harness.stats import summarize

    return summarize(flatten(store.read_records(folder)))


def test_the_sweep_curve_has_one_point_per_value_with_its_mean(tmp_path) -> None:
    from harness.sweeps import curve_figure, split_ks, sweep_points
    from tasks.spec import builtin_specs

    sweep_records(tmp_path / "records")
    summary = _summary(tmp_path / "records")
    k_of = split_ks(set(summary["column"]), builtin_specs())
    points = sweep_points(summary, "model.mask_ratio", k_of)
    assert set(points["column"]) == {"in1k_finetune", "in1k_linprobe"}  # the K columns have a curve of their own
    for column, table in (("in1k_finetune", FT), ("in1k_linprobe", LIN)):
        line = points[points["column"] == column]
        assert list(line["x"]) == [0.5, 0.75, 0.9]
        assert list(line["mean"]) == pytest.approx([sum(v) / 2 for v in table.values()])
        assert list(line["n"]) == [2, 2, 2]
    fig = curve_figure(points, {"in1k_finetune": "FT", "in1k_linprobe": "LIN"}, "mask ratio")
    assert [ax.get_title() for ax in fig.axes] == ["FT", "LIN"]  # a panel per protocol, as the paper's Figure 5
    drawn = [{c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata())) for c in ax.containers}
             for ax in fig.axes]  # one errorbar per line: its data line, caps and interval bars
    assert drawn[0]["mae_t"] == ([0.5, 0.75, 0.9], pytest.approx([81.0, 84.5, 82.0]))
    assert drawn[1]["mae_t"][1] == pytest.approx([61.0, 65.0, 70.5])
    bars = [c.lines[2][0].get_segments() for ax in fig.axes for c in ax.containers]  # the 95% intervals (n = 2)
    assert len(bars) == 2 and all(len(b) == 3 for b in bars)
    ft = points[points["column"] == "in1k_finetune"].iloc[0]
    seg = bars[0][0]  # fine-tune at 0.5: 81 ± t(0.975, 1) · 1.414 / √2 = 81 ± 12.71
    assert (seg[0][1], seg[1][1]) == pytest.approx((ft["ci_lo"], ft["ci_hi"]))
    assert (ft["ci_lo"], ft["ci_hi"]) == pytest.approx((68.29, 93.71), abs=0.01)


def test_the_k_curve_and_the_report(tmp_path) -> None:
    from harness.report import tables, write_report
    from harness.sweeps import curve_figure, k_points, split_ks
    from tasks.spec import builtin_specs

    sweep_records(tmp_path / "records")
    summary = _summary(tmp_path / "records")
    points = k_points(summary, split_ks(set(summary["column"]), builtin_specs()))
    assert list(points["x"]) == [1.0, 2.0, 4.0] and list(points["mean"]) == list(PARTIAL.values())
    (panel,) = curve_figure(points, {}, "K").axes
    (line,) = panel.containers
    assert line.get_label() == "mae_t" and list(line.lines[0].get_ydata()) == list(PARTIAL.values())
    rows = list(tables(summary)["in1k"]["backbone"])  # settings are rows of their own, never pooled
    assert {"mae_t (mask_ratio=0.5)", "mae_t (mask_ratio=0.75)", "mae_t (mask_ratio=0.9)"} <= set(rows)
    files = write_report(tmp_path / "records", tmp_path / "results", formats=["md"])
    names = {p.name for p in files}
    assert {"sweep_model_mask_ratio.png", "partial_k.png", "sweep_model_mask_ratio.md"} <= names
    table = (tmp_path / "results" / "sweep_model_mask_ratio.md").read_text()
    assert "84.5 ± 0.7" in table and table.count("| 0.") == 3
