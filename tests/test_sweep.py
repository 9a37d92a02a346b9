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
    plain = build_plan(run_options(preset=str(preset), out=str(tmp_path / "out"), device="cpu"))
    assert len([r for r in plain.runs if r.kind == "pretrain"]) == 2


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


def test_dry_run_shows_the_settings(tmp_path, monkeypatch, capsys) -> None:
    preset, out = sweep_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run", "--sweep", SWEEP) == 0
    plan = capsys.readouterr().out
    for value in ("0.5", "0.75", "0.9"):
        assert f"model.mask_ratio={value}" in plan
    assert not (out / "records").exists()


def test_records_carry_the_setting(tmp_path, monkeypatch) -> None:
    preset, out = sweep_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--sweep", "pretrain.model.mask_ratio=0.5,0.9") == 0
    recs = latest(out).values()
    pre = {r["run_id"]: r for r in recs if r["kind"] == "pretrain"}
    tasks = [r for r in recs if r["kind"] == "task" and r["backbone"]["name"] == "mae_vit_tiny_patch4"]
    assert len(tasks) == 4 and len({r["backbone"]["sha256"] for r in tasks}) == 2
    for task in tasks:
        setting = task["backbone"]["pretrain"]["sweep"]
        assert setting["key"] == "model.mask_ratio"
        assert pre[task["backbone"]["pretrain"]["run_id"]]["overrides"]["model.mask_ratio"] == setting["value"]
