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
from harness.run import DID_NOT_START
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

    pre = subprocess.run([*cmd[:-8], "--backbones", "mae_vit_tiny_patch4", "--suite", "in1k", "--pretrain"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert pre.returncode == 2, pre.stdout + pre.stderr  # the pretraining failed, its fine-tuning blocked
    (rec,) = [r for r in latest(out).values() if r["kind"] == "pretrain"]
    assert rec["status"] == "failed" and rec["failure"]["loss"] in ("nan", "inf", "-inf"), rec["error"]
    assert "blocked" in pre.stdout  # the fine-tuning of a failed pretraining does not run


def test_nan_metric_is_a_failed_run(tmp_path, monkeypatch, capsys) -> None:
    """A task that returns NaN (its recipe says so; an override of NaN is refused while planning) failed."""
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    recipe = tmp_path / "dummy.yaml"
    recipe.write_text(recipe.read_text().replace("base: 50.0", "base: .nan"))
    assert harness(monkeypatch, *base_args(preset, out), "--backbones", "scratch_vit_tiny_patch4") == 1
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


# --- 3. another data set is another run ---


def _data(root: Path, images: dict[str, int], labels: str) -> Path:
    for split in ("train", "val"):
        for name, size in images.items():
            (root / "imagenet" / split / "c0").mkdir(parents=True, exist_ok=True)
            (root / "imagenet" / split / "c0" / name).write_bytes(b"x" * size)
    (root / "imagenet" / "labels.txt").write_text(labels)
    return root


def test_another_data_set_under_the_same_flags_is_another_run(tmp_path, monkeypatch, capsys) -> None:
    preset = write_suite(tmp_path, data="real", suite="[in1k]", protocols="[finetune]")
    args = [*base_args(preset, tmp_path / "out"), "--backbones", "scratch_vit_tiny_patch4", "--no-report"]
    one = _data(tmp_path / "one", {"a.png": 10, "b.png": 20}, "c0 shirt\n")
    assert harness(monkeypatch, *args, "--data-root", str(one)) == 0
    (first,) = latest(tmp_path / "out").values()
    assert first["data_fingerprint"] and first["data_root"].startswith(str(one))

    variants = {"a resized image": ({"a.png": 11, "b.png": 20}, "c0 shirt\n"),
                "an added image": ({"a.png": 10, "b.png": 20, "c.png": 5}, "c0 shirt\n"),
                "changed labels of the same size": ({"a.png": 10, "b.png": 20}, "c0 pants\n")}
    for i, (images, labels) in enumerate(variants.values()):
        other = _data(tmp_path / f"other{i}", images, labels)
        capsys.readouterr()
        assert harness(monkeypatch, *args, "--data-root", str(other)) == 0
        assert "skipped (done)" not in capsys.readouterr().out, list(variants)[i]
    assert len(latest(tmp_path / "out")) == 1 + len(variants)

    same = _data(tmp_path / "copy", {"a.png": 10, "b.png": 20}, "c0 shirt\n")  # the same content elsewhere
    capsys.readouterr()
    assert harness(monkeypatch, *args, "--data-root", str(same)) == 0
    assert "skipped (done)" in capsys.readouterr().out


# --- 4, 6. bad input: exit 126 before any work, naming the key, the value and what is allowed ---


def _backbone_file(tmp: Path, name: str, body: str) -> str:
    (tmp / "bb").mkdir(exist_ok=True)
    path = tmp / "bb" / name
    path.write_text("arch: vit_tiny_patch16_224\ncheckpoint_format: timm\n" + body)
    return str(path)


BAD_INPUT = [  # (flags, what the message must say)
    (["--set", "in1k.steps=[1,"], ["in1k.steps=[1,", "not valid YAML"]),
    (["--set", "in1k.steps=abc"], ["steps='abc'", "allowed: an integer >= 0"]),
    (["--set", "in1k.steps=0.2"], ["steps=0.2", "allowed: an integer >= 0"]),
    (["--set", "in1k.steps=-3"], ["steps=-3", "allowed: an integer >= 0"]),
    (["--set", "in1k.base=.nan"], ["base=nan", "allowed: a finite number"]),
    (["--set", "in1k.fail_on=[1]"], []),  # null in the recipe: any value (the dummy's own check is at run time)
    (["--launcher", "torchrun", "--gpus", "0"], ["--gpus 0", "at least 1"]),
    (["--report-format", "pdf"], ["--report-format 'pdf'", "md, csv, tex"]),
    (["--seeds", ","], ["--seeds ','", "integers >= 0"]),
    (["--seeds", "0,0"], ["--seeds '0,0'", "seed 0 given twice"]),
    (["--seeds", "1,x"], ["--seeds '1,x'"]),
]


@pytest.mark.parametrize("flags,says", BAD_INPUT, ids=[" ".join(f) for f, _ in BAD_INPUT])
def test_bad_values_stop_while_planning(tmp_path, monkeypatch, capsys, flags, says) -> None:
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    code = harness(monkeypatch, *base_args(preset, out), "--backbones", "scratch_vit_tiny_patch4", "--dry-run",
                   *flags)
    err = capsys.readouterr().err
    if not says:
        assert code == 0, err
        return
    assert code == DID_NOT_START and "Traceback" not in err, err
    for text in says:
        assert text in err, err
    assert not out.exists()


def test_bad_recipe_values_of_the_real_tasks_stop_while_planning(tmp_path, monkeypatch, capsys) -> None:
    args = ["run", "--preset", "tiny", "--backbones", "test_vit", "--out", str(tmp_path / "out"), "--dry-run"]
    for flag, says in (("coco.schedule.epochs=0.2", "schedule.epochs=0.2"),
                       ("in1k.linprobe.epochs=abc", "linprobe.epochs='abc'"),
                       ("ade20k.optim.lr=-1", "optim.lr=-1")):
        assert harness(monkeypatch, *args, "--set", flag) == DID_NOT_START
        err = capsys.readouterr().err
        assert says in err and "allowed:" in err, err


def test_out_must_be_a_writable_folder(tmp_path, monkeypatch, capsys) -> None:
    preset = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]")
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        assert harness(monkeypatch, *base_args(preset, out), "--backbones", "test_vit") == DID_NOT_START
        assert f"--out {out}: {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_bad_backbone_files_stop_while_planning(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    cases = {
        _backbone_file(tmp_path, "kinds.yaml", "name: mine\ndense_taps: 5\nimg_size: big\n"):
            ["dense_taps: 5 (allowed: a list of 0-based block indices", "img_size: 'big' (allowed: a positive integer"],
        _backbone_file(tmp_path, "escape.yaml", "name: mine2\ncheckpoint: ../../etc/passwd\n"):
            ["checkpoint '../../etc/passwd' resolves to", "outside the file's folder"],
        _backbone_file(tmp_path, "builtin.yaml", "name: test_vit\n"):
            ["name 'test_vit' is a backbone of backbones.zoo already"],
    }
    for path, says in cases.items():
        assert harness(monkeypatch, *base_args(preset, out), "--backbones", path) == DID_NOT_START
        err = capsys.readouterr().err
        assert path in err and all(s in err for s in says) and "Traceback" not in err, err


# --- 6. a backbone file goes by its name; the report says what it does not show; --version ---


def test_a_backbone_file_goes_by_its_name(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    path = _backbone_file(tmp_path, "mine.yaml", "name: my_tiny_vit\nimg_size: 32\npatch_size: 4\n")
    assert harness(monkeypatch, *base_args(preset, out), "--backbones", path) == 0
    text = capsys.readouterr().out
    assert "in1k/finetune my_tiny_vit seed 0" in text and path not in text
    (rec,) = latest(out).values()
    assert rec["backbone"]["name"] == "my_tiny_vit"
    assert "my_tiny_vit" in (out / "results" / "in1k.md").read_text()


def test_report_lists_finished_runs_it_has_no_table_for_and_errors_go_to_stderr(tmp_path, monkeypatch,
                                                                                  capsys) -> None:
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--backbones", "test_vit", "--suite",
                   f"mytask={DUMMY}:run", "--no-report") == 0
    capsys.readouterr()
    assert harness(monkeypatch, "report", "--runs", str(out), "--out", str(tmp_path / "rep"), "--no-plots") == 0
    text = capsys.readouterr().out
    assert "1 finished run(s) of mytask feed no table" in text
    assert harness(monkeypatch, "report", "--runs", str(tmp_path / "none")) != 0
    captured = capsys.readouterr()
    assert "no records folder" in captured.err and "no records folder" not in captured.out


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "harness", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("harness 0.") and "git " in done.stdout, done.stderr


def test_without_prctl_a_watchdog_kills_the_orphan(tmp_path) -> None:
    """Off Linux (no parent-death signal) the worker's watchdog thread does it: an orphan is gone within a second."""
    child = ("import os, sys, time\nimport harness.worker as w\nw.PRCTL = None\nw.die_with_parent(os.getppid())\n"
             "print('armed', flush=True)\ntime.sleep(60)\n")
    parent = ("import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
              "stdout=subprocess.PIPE, text=True, start_new_session=True)\np.stdout.readline()\nprint(p.pid)\n")
    done = subprocess.run([sys.executable, "-c", parent, child], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    orphan = int(done.stdout.split()[0])
    assert _gone_within(orphan, 5), "the orphan outlived its parent"
