"""`harness.api` on the dummy task: `run_suite` runs what `harness run` runs and returns the records, `report` the
tables; `harness.cli.main(argv)` leaves `sys.argv` alone; `harness run` ends with the report's tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import api
from harness.run import PlanError
from tests.dummy_task import score
from tests.test_runner import TINY, write_suite


def test_run_suite_and_report_on_the_dummy_task(tmp_path: Path, capsys) -> None:
    preset = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]")
    out = tmp_path / "out"
    frame = api.run_suite(preset=str(preset), out=out, device="cpu", seeds=[0, 1], backbones=TINY[:2],
                          report_format="md")
    assert frame.attrs["exit_status"] == 0
    assert len(frame) == 4 and set(frame["status"]) == {"finished"} and set(frame["seed"]) == {0, 1}
    row = frame[(frame["backbone"] == TINY[0]) & (frame["seed"] == 1)].iloc[0]
    assert row["metrics.top1"] == pytest.approx(score(TINY[0], "finetune", 1, 50.0))
    printed = capsys.readouterr().out
    assert "### Fashion-MNIST in the ImageNet layout: top-1 (%), last epoch" in printed  # embedded data, named so
    assert "| supervised_vit_tiny_patch4 |" in printed
    got = api.report(out, tmp_path / "res", formats=["csv"], plots=False)
    table = next(iter(got["tables"].values()))
    assert list(table["backbone"]) == [TINY[1], TINY[0]]  # the supervised baseline first
    cell = got["summary"].set_index("backbone").loc[TINY[0]]
    assert cell["n"] == 2 and cell["delta_n"] == 2 and got["results"].is_file()
    diffs = [score(TINY[0], "finetune", s, 50.0) - score(TINY[1], "finetune", s, 50.0) for s in (0, 1)]
    assert cell["delta"] == pytest.approx(sum(diffs) / 2)


def test_run_suite_rejects_bad_options_before_running(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown option.*prest"):
        api.run_suite(prest="tiny")
    with pytest.raises(PlanError):
        api.run_suite(preset=str(tmp_path / "missing.yaml"), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert api.run_options(controls=["floor", "pixels"]).controls == "floor,pixels"  # as --controls floor,pixels
    with pytest.raises(PlanError, match="--controls 'noise'"):
        api.run_suite(controls=["noise"], out=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no records folder"):
        api.report(tmp_path / "nothing", tmp_path / "res")


def test_cli_main_leaves_sys_argv_alone(tmp_path: Path, monkeypatch) -> None:
    from harness.cli import main

    monkeypatch.setattr(sys, "argv", ["harness", "backbones"])
    assert main(["report", "--runs", str(tmp_path / "nothing")]) == 1  # the argv given, not sys.argv's command
    assert sys.argv == ["harness", "backbones"]


def test_no_report_prints_no_tables(tmp_path: Path, capsys) -> None:
    preset = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]")
    api.run_suite(preset=str(preset), out=tmp_path / "out", device="cpu", backbones=TINY[0], no_report=True)
    assert "###" not in capsys.readouterr().out and not (tmp_path / "out" / "results").exists()
