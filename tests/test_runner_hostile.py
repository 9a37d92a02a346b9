"""`harness run` as a hostile user drives it: NaN training, a killed runner, a changed data set, bad values, two
runners on one folder. Every case goes through the command line and checks what the user sees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import store
from tests.test_runner import DUMMY, ROOT, _start_one_run, base_args, harness, latest, write_suite


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped by its dead parent's heir yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _gone_within(pid: int, seconds: float) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


# --- 1. a non-finite loss or metric is a failure, never a number ---


NAN_PRESET = """description: every loop at a huge learning rate
data: embedded
suite: [in1k, coco, ade20k]
backbones: [test_vit, mae_vit_tiny_patch4]
recipe: tiny
protocols: {in1k: [finetune]}
seeds: [0]
jobs: 1
pretrain:
  target: harness.pretrain:pretrain
  recipe: '{method}_tiny'
  epochs: 1
  overrides: {optim.base_lr: 1.0e+30, optim.warmup_epochs: 0, data.subset: 1024}
  backbones: {mae_vit_tiny_patch4: mae}
"""


@pytest.mark.slow
def test_nan_loss_fails_every_task_and_pretraining_and_reaches_no_table(tmp_path) -> None:
    """COCO, ADE20K, IN1K and MAE pretraining, each a few steps at lr 1e12 / 1e30: each stops at the first non-finite
    loss and is recorded as failed with the step and the loss; the report's tables hold none of them."""
    (tmp_path / "nan.yaml").write_text(NAN_PRESET)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness", "run", "--preset", str(tmp_path / "nan.yaml"), "--out", str(out),
           "--device", "cpu", "--report-format", "md", "--backbones", "test_vit", "--set", "ade20k.optim.lr=1e12",
           "--set", "coco.optim.lr=1e12", "--set", "in1k.finetune.blr=1e12"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stdout + done.stderr
    recs = latest(out)
    assert {r["task"] for r in recs.values()} == {"in1k", "coco", "ade20k"}
    for rec in recs.values():
        assert rec["status"] == "failed" and rec["error"].startswith("NonFiniteLoss"), rec["error"]
        assert rec["failure"]["step"] >= 0 and rec["failure"]["loss"] in ("nan", "inf", "-inf") and not rec["metrics"]
    tables = [p.read_text() for p in (out / "results").glob("*.md") if p.name not in ("README.md", "reference.md")]
    assert not any("test_vit" in t for t in tables)

    pre = subprocess.run([*cmd[:-8], "--backbones", "mae_vit_tiny_patch4", "--suite", "in1k"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert pre.returncode == 2, pre.stdout + pre.stderr  # the pretraining failed, its fine-tuning blocked
    (rec,) = [r for r in latest(out).values() if r["kind"] == "pretrain"]
    assert rec["status"] == "failed" and rec["failure"]["loss"] in ("nan", "inf", "-inf"), rec["error"]
    assert "blocked" in pre.stdout  # the fine-tuning of a failed pretraining does not run


def test_nan_metric_is_a_failed_run(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    args = [*base_args(preset, out), "--backbones", "scratch_vit_tiny_patch4", "--set", "in1k.base=.nan"]
    assert harness(monkeypatch, *args) == 1
    (rec,) = latest(out).values()
    assert rec["status"] == "failed" and "top1=nan" in rec["error"] and not rec["metrics"]
    assert "failed" in capsys.readouterr().out


# --- 2. workers die with their runner; a live lock is said and is not success ---


@pytest.mark.slow
def test_kill_9_of_the_runner_takes_its_worker_along_and_a_rerun_resumes(tmp_path) -> None:
    proc, cmd, out, work = _start_one_run(tmp_path, steps=40, after=2)
    worker = int((work / "worker.pid").read_text())
    proc.kill()
    proc.wait(10)
    assert _gone_within(worker, 5), "the worker outlived its runner"
    rerun = subprocess.run([*cmd[:-1], "--set", "in1k.sleep=0"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0 and "running elsewhere" not in rerun.stdout, rerun.stdout + rerun.stderr


@pytest.mark.slow
def test_a_rerun_that_finds_a_live_runner_says_so_and_fails(tmp_path) -> None:
    proc, cmd, out, work = _start_one_run(tmp_path, steps=40, after=1)
    try:
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        proc.kill()
        proc.wait(10)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "running elsewhere" in second.stdout and "held by another live process" in second.stderr


# --- 5. two runners on one --out never run a run twice ---


@pytest.mark.slow
def test_two_runners_on_one_out_never_run_a_finished_run_again(tmp_path) -> None:
    """Runner B plans run X (seed 0) as to do, works on seeds 1 and 2 while runner A finishes X, then must find X
    done once it holds X's lock."""
    preset, out = write_suite(tmp_path, steps=4, sleep=0.5, suite="[in1k]", protocols="[finetune]"), tmp_path / "o"
    cmd = [sys.executable, "-m", "harness", *base_args(preset, out), "--backbones", "mae_vit_tiny_patch4",
           "--checkpoint", f"mae_vit_tiny_patch4={DUMMY}", "--no-report"]
    a = subprocess.Popen([*cmd, "--seeds", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b = subprocess.Popen([*cmd, "--seeds", "1,2,0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    out_a, out_b = a.communicate(timeout=120)[0], b.communicate(timeout=120)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    finished = [r for r in store.read_records(out / "records") if r["status"] == "finished"]
    assert len(finished) == len({r["run_id"] for r in finished}) == 3, out_a + out_b
