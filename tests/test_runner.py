"""`harness run` end to end with the dummy task: plan, skip, resume after SIGKILL, failures, pretraining, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import store
from harness.run import DID_NOT_START
from harness.run.plan import Run
from harness.run.view import log_progress

ROOT = Path(__file__).resolve().parents[1]

DUMMY = str(Path(__file__).with_name("dummy_task.py"))
TINY = ["mae_vit_tiny_patch4", "supervised_vit_tiny_patch4", "scratch_vit_tiny_patch4"]


def write_suite(tmp: Path, *, steps: int = 2, sleep: float = 0.0, pretrain: bool = False, data: str = "embedded",
                suite: str = "[in1k, coco]", protocols: str = "[finetune, linprobe]", pretrain_sleep: float = 0.0,
                extra: str = "") -> Path:
    """A preset YAML pointing in1k and coco at the dummy task, with its own versioned recipe."""
    (tmp / "dummy.yaml").write_text(f"version: 1\nsteps: {steps}\nsleep: {sleep}\nfail_on: null\nmetric: top1\n"
                                    "base: 50.0\n")
    pre = (f"pretrain:\n  target: {DUMMY}:pretrain\n  epochs: 2\n  overrides: {{sleep: {pretrain_sleep}}}\n"
           "  backbones: {mae_vit_tiny_patch4: mae, supervised_vit_tiny_patch4: supervised}\n") if pretrain else ""
    path = tmp / "preset.yaml"
    path.write_text(
        f"description: dummy suite\ndata: {data}\nsuite: {suite}\n"
        f"tasks: {{in1k: '{DUMMY}:run', coco: '{DUMMY}:run'}}\n"
        f"backbones: [{', '.join(TINY)}]\nrecipe: {tmp / 'dummy.yaml'}\nprotocols: {{in1k: {protocols}}}\n"
        f"seeds: [0]\n{pre}{extra}"
    )
    return path


def harness(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    from harness.cli import main

    monkeypatch.setattr(sys, "argv", ["harness"])
    return main([*argv])


def base_args(preset: Path, out: Path) -> list[str]:
    return ["run", "--preset", str(preset), "--out", str(out), "--device", "cpu", "--report-format", "md"]


def latest(out: Path) -> dict[str, dict]:
    return store.latest(store.read_records(out / "records"))


def test_dry_run_prints_every_run_and_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run", "--seeds", "0,1") == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if re.fullmatch(r"[0-9a-f]{12}", (line.split() or [""])[0])]
    # 3 backbones x (in1k finetune, in1k linprobe, coco) x 2 seeds
    assert len(rows) == 18 and all(line.rstrip().endswith("todo") for line in rows)
    assert len({line.split()[0] for line in rows}) == 18  # every run its own id
    for b in TINY:
        assert b in text
    assert "finetune" in text and "linprobe" in text
    assert not out.exists()


def test_runs_then_skips_finished_and_force_reruns(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out)) == 0
    first = latest(out)
    assert len(first) == 3 and all(r["status"] == "finished" for r in first.values())
    rec = next(iter(first.values()))
    assert rec["task"] == "in1k" and rec["protocol"] == "finetune" and rec["recipe_version"] == 1
    assert rec["recipe"]["steps"] == 2 and rec["versions"]["torch"] and rec["git"]["commit"] is not None
    assert rec["backbone"]["spec"]["arch"] == "vit_tiny_patch16_224" and rec["wall_time_s"] > 0
    assert Path(rec["log"]).is_file() and "step 2/2" in Path(rec["log"]).read_text()
    assert Path(rec["work_dir"]) == (out / "work" / rec["run_id"]).resolve()
    n_files = len(list((out / "records").glob("*.json")))
    capsys.readouterr()

    assert harness(monkeypatch, *base_args(preset, out)) == 0
    assert "skipped (done)" in capsys.readouterr().out
    assert len(list((out / "records").glob("*.json"))) == n_files  # nothing ran, nothing written
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run") == 0
    assert "0 to run" in capsys.readouterr().out

    assert harness(monkeypatch, *base_args(preset, out), "--force") == 0
    assert len(list((out / "records").glob("*.json"))) == 2 * n_files
    again = latest(out)
    assert set(again) == set(first)
    assert all(again[k]["attempt"] != first[k]["attempt"] for k in first)  # the newest record wins
    assert all(again[k]["metrics"]["resumed_from"] == 0 for k in again)  # --force starts from scratch
    assert (out / "results" / "in1k.md").is_file()


def test_a_run_held_by_another_process_is_left_alone(tmp_path, monkeypatch, capsys) -> None:
    import fcntl

    preset, out = write_suite(tmp_path, suite="[coco]"), tmp_path / "out"
    args = [*base_args(preset, out), "--backbones", "scratch_vit_tiny_patch4", "--no-report"]
    assert harness(monkeypatch, *args) == 0
    (rec,) = latest(out).values()
    with open(out / "work" / rec["run_id"] / ".lock", "w") as held:  # as a second `harness run` working on it
        fcntl.flock(held, fcntl.LOCK_EX)
        capsys.readouterr()
        assert harness(monkeypatch, *args, "--force") == 1  # a run left alone is not a success
        assert "running elsewhere" in capsys.readouterr().out
        assert len(list((out / "records").glob("*.json"))) == 1
        assert (out / "work" / rec["run_id"] / "state.json").is_file()  # --force did not empty a folder in use


def test_run_id_follows_what_determines_the_result(tmp_path) -> None:
    spec = {"name": "a", "arch": "vit", "family": "mae", "arch_kwargs": {"depth": 2}, "description": "x"}

    def rid(**kw) -> str:
        run = Run(**{"kind": "task", "task": "in1k", "target": "t:run", "backbone": "a", "spec": spec,
                     "recipe": "tiny", "recipe_version": 1, "protocol": "finetune", "sha256": "00", **kw})
        run.assign_id()
        return str(run.run_id)

    ref = rid()
    assert ref == rid() and len(ref) == 12
    for change in ({"seed": 1}, {"protocol": "linprobe"}, {"recipe_version": 2}, {"recipe": "paper"},
                   {"overrides": {"optim.lr": 0.1}}, {"sha256": "01"}, {"task": "coco"},
                   {"spec": {**spec, "arch_kwargs": {"depth": 3}}}):
        assert rid(**change) != ref, change
    # what does not change the numbers does not change the id
    assert rid(spec={**spec, "description": "other words", "checkpoint": "/elsewhere.pth"}) == ref
    assert rid(data_root="/moved/imagenet") == ref


def test_failing_task_is_recorded_and_the_suite_goes_on(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path), tmp_path / "out"
    args = [*base_args(preset, out), "--set", "in1k.fail_on=scratch_vit_tiny_patch4",
            "--set", "coco.metric=bbox_mAP"]
    assert harness(monkeypatch, *args) == 2  # the exit status counts the failed runs
    recs = list(latest(out).values())
    failed = [r for r in recs if r["status"] == "failed"]
    assert len(recs) == 9 and len(failed) == 2
    assert all(r["backbone"]["name"] == "scratch_vit_tiny_patch4" and r["task"] == "in1k" for r in failed)
    assert all("dummy failure" in r["error"] for r in failed)
    assert all("Traceback" in Path(r["log"]).read_text() for r in failed)
    text = capsys.readouterr().out
    assert "failed" in text and failed[0]["log"] in text
    coco = [r for r in recs if r["task"] == "coco"]
    assert all(r["status"] == "finished" and "bbox_mAP" in r["metrics"] for r in coco)
    readme = (out / "results" / "README.md").read_text()
    assert "Failed runs" in readme


def _wait_for(predicate, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def _start_one_run(tmp: Path, steps: int, after: int) -> tuple[subprocess.Popen, list[str], Path, Path]:
    """`harness run` of one dummy run of `steps` steps in a subprocess, returned once `after` steps are done:
    (process, command, out folder, the run's work folder)."""
    preset, out = write_suite(tmp, steps=steps, sleep=0.25, suite="[in1k]", protocols="[finetune]"), tmp / "o"
    cmd = [sys.executable, "-m", "harness", *base_args(preset, out), "--backbones", "mae_vit_tiny_patch4",
           "--checkpoint", f"mae_vit_tiny_patch4={DUMMY}", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    states = lambda: list((out / "work").glob("*/state.json"))  # noqa: E731
    _wait_for(lambda: states() and json.loads(states()[0].read_text())["step"] >= after)
    return proc, cmd, out, states()[0].parent


@pytest.mark.slow
def test_worker_killed_midway_resumes(tmp_path) -> None:
    proc, cmd, out, work = _start_one_run(tmp_path, steps=12, after=3)
    os.kill(int((work / "worker.pid").read_text()), signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, stdout
    (rec,) = latest(out).values()
    assert rec["status"] == "failed" and "SIGKILL" in rec["error"] and rec["log"] in rec["error"]
    done_before = json.loads((work / "state.json").read_text())["step"]
    assert 3 <= done_before < 12

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (rec2,) = latest(out).values()
    assert rec2["run_id"] == rec["run_id"] and rec2["status"] == "finished"
    assert rec2["metrics"]["resumed_from"] == done_before  # continued from its work folder, not from zero
    log = Path(rec2["log"]).read_text()
    assert log.count("===== ") == 2 and f"resuming from step {done_before}" in log


@pytest.mark.slow
def test_sigterm_to_the_runner_stops_and_records_its_worker(tmp_path) -> None:
    """A scheduler stops with SIGTERM: the worker (in a session of its own) must not run on unattended."""
    proc, _, out, work = _start_one_run(tmp_path, steps=200, after=2)
    worker = int((work / "worker.pid").read_text())
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stdout
    assert "interrupted (SIGTERM)" in stdout
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # gone, not orphaned
    (rec,) = latest(out).values()
    assert rec["status"] == "failed" and rec["log"] in rec["error"]
    assert json.loads((work / "state.json").read_text())["step"] < 200


def test_pretraining_is_a_recorded_skippable_step(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, pretrain=True, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run", "--pretrain") == 0
    plan = capsys.readouterr().out
    kinds = [line.split()[1] for line in plan.splitlines()[3:] if not line.startswith("weights of")]
    assert kinds.count("pretrain") == 2 and plan.count("pending") == 2  # ids wait for the encoders' sha256
    assert harness(monkeypatch, *base_args(preset, out), "--pretrain", "--report-format", "md,csv") == 0
    recs = latest(out)
    pre = {r["backbone"]["name"]: r for r in recs.values() if r["kind"] == "pretrain"}
    tasks = {r["backbone"]["name"]: r for r in recs.values() if r["kind"] == "task"}
    assert set(pre) == {"mae_vit_tiny_patch4", "supervised_vit_tiny_patch4"} and len(tasks) == 3
    for name, p in pre.items():
        encoder = Path(p["extra"]["encoder"])
        assert tasks[name]["backbone"]["checkpoint"] == str(encoder)
        assert tasks[name]["backbone"]["sha256"] == p["extra"]["encoder_sha256"]
        assert tasks[name]["backbone"]["pretrain"]["run_id"] == p["run_id"]
    assert tasks["scratch_vit_tiny_patch4"]["backbone"]["checkpoint"] is None
    assert pre["mae_vit_tiny_patch4"]["metrics"]["final_loss"] == pytest.approx(1 / 8 + 0.1)
    assert (out / "results" / "plots" / "pretrain_loss.png").is_file()
    assert (out / "results" / "plots" / "reconstruction_mae_vit_tiny_patch4.png").is_file()
    capsys.readouterr()
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run", "--pretrain") == 0
    plan = capsys.readouterr().out
    assert "0 to run" in plan and "pending" not in plan
    assert harness(monkeypatch, *base_args(preset, out), "--dry-run", "--pretrain-epochs", "3") == 0
    plan = capsys.readouterr().out  # other epochs, other pretrainings, and the runs that wait for them
    assert "1 done, 4 to run" in plan.splitlines()[0] and plan.count("pending") == 2  # scratch stays done


def test_missing_data_stops_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, data="real", suite="[in1k, coco]"), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out)) == DID_NOT_START
    err = capsys.readouterr().err
    assert "--data-root" in err and "imagenet/" in err and "coco/" in err
    (tmp_path / "data" / "imagenet" / "train").mkdir(parents=True)
    assert harness(monkeypatch, *base_args(preset, out), "--data-root", str(tmp_path / "data")) == DID_NOT_START
    err = capsys.readouterr().err
    assert str(tmp_path / "data" / "imagenet") in err and "missing val" in err
    assert "annotations/instances_train2017.json" in err and "--data-root coco=DIR" in err
    assert not out.exists()


def test_missing_weights_and_bad_flags_stop_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    preset, out = write_suite(tmp_path), tmp_path / "out"
    args = base_args(preset, out)
    assert harness(monkeypatch, *args, "--backbones", "mae_vit_base_patch16") == DID_NOT_START
    err = capsys.readouterr().err
    assert str(tmp_path / "cache" / "weights" / "mae_pretrain_vit_base.pth") in err
    assert "--checkpoint mae_vit_base_patch16=PATH" in err
    assert harness(monkeypatch, *args, "--checkpoint", f"scratch_vit_tiny_patch4={tmp_path}/no.pth") == DID_NOT_START
    assert "does not exist" in capsys.readouterr().err
    assert harness(monkeypatch, *args, "--set", "in1k.stepz=3") == DID_NOT_START
    assert "stepz" in capsys.readouterr().err
    assert harness(monkeypatch, *args, "--suite", "in1kk") == DID_NOT_START
    assert "did you mean" in capsys.readouterr().err
    assert harness(monkeypatch, *args, "--protocols", "finetune,probe") == DID_NOT_START
    assert "probe" in capsys.readouterr().err
    assert harness(monkeypatch, *args, "--backbones", "mae_vit_tiny_patch44") == DID_NOT_START
    assert "mae_vit_tiny_patch4" in capsys.readouterr().err
    assert not out.exists()


def test_help_is_fast_and_imports_no_torch() -> None:
    code = ("import sys, harness.run, harness.report, harness.store, harness.plots, harness.presets, "
            "harness.provenance, harness.reference, harness.worker; "
            "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'timm') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--launcher" in r.stdout and "--dry-run" in r.stdout
    assert time.time() - t0 < 5


def test_log_progress_reads_task_output(tmp_path) -> None:
    log = tmp_path / "x.log"
    log.write_text("start\nEpoch(train)  [2][ 40/100]  lr: 1e-3  eta: 0:01:05  loss: 0.3\n")
    assert log_progress(log) == "step 40/100, eta 0:01:05"
    log.write_text("pretrain:  40%|####      | 40/100 [00:10<00:15,  4.0it/s]\r 41/100 [00:10<00:14, 4.0it/s]")
    assert log_progress(log) == "step 41/100, eta 00:14"
    log.write_text("step 3/12\n")
    assert log_progress(log) == "step 3/12"
    assert log_progress(tmp_path / "missing.log") == ""


def test_builtin_presets_plan(tmp_path, monkeypatch, capsys) -> None:
    """The shipped presets name recipes and backbones that exist; tiny plans the README's demo."""
    from harness.presets import list_presets, load_preset

    assert {"tiny", "paper", "short"} <= set(list_presets())
    assert harness(monkeypatch, "run", "--preset", "tiny", "--out", str(tmp_path / "t"), "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    # 4 backbones x (3 in1k protocols + coco + ade20k), three of them shipped, and the controls: a floor for coco and
    # ade20k (in1k's is the scratch linear probe, planned once) and the pixel reference
    assert "23 runs" in lines[0]
    assert harness(monkeypatch, "run", "--preset", "tiny", "--out", str(tmp_path / "t"), "--dry-run", "--pretrain") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "26 runs" in lines[0]  # and the 3 pretrainings
    kinds = [line.split()[1] for line in lines[3:]]
    assert kinds.count("pretrain") == 3 and kinds.count("task") == 20
    assert kinds.count("floor") == 2 and kinds.count("pixels") == 1
    assert load_preset("tiny").pretrain.backbones["mocov3_vit_tiny_patch4"] == "mocov3"
    for name in ("paper", "short"):
        assert harness(monkeypatch, "run", "--preset", name, "--out", str(tmp_path / name)) == DID_NOT_START
        assert "--data-root" in capsys.readouterr().err


def _interval(rec: dict) -> tuple[float, float]:
    from datetime import datetime

    return tuple(datetime.fromisoformat(rec[k]).timestamp() for k in ("started_at", "finished_at"))


@pytest.mark.slow
def test_jobs_run_at_once_and_tasks_wait_only_for_their_own_pretraining(tmp_path, monkeypatch, capsys) -> None:
    """`--jobs 3`: up to three workers at once, each with a third of the cores as threads; a task run starts once the
    pretraining it loads has finished, and scratch runs (which load none) take the free slot meanwhile."""
    preset = write_suite(tmp_path, pretrain=True, suite="[in1k]", protocols="[finetune, linprobe]", steps=2,
                         sleep=0.3, pretrain_sleep=3.0)
    out = tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--jobs", "3", "--pretrain", "--no-report") == 0
    recs = list(latest(out).values())
    pre = {r["backbone"]["name"]: _interval(r) for r in recs if r["kind"] == "pretrain"}
    tasks = [(r["backbone"]["name"], _interval(r), r) for r in recs if r["kind"] == "task"]
    assert len(pre) == 2 and len(tasks) == 6 and all(r["status"] == "finished" for r in recs)
    for name, (start, _), _ in tasks:
        if name in pre:
            assert start >= pre[name][1]  # never before its encoder exists
    intervals = sorted([*pre.values(), *(t[1] for t in tasks)])
    assert max(len([i for i in intervals if i[0] <= t < i[1]]) for t, _ in intervals) == 3  # three at once, no more
    scratch = [t[1] for t in tasks if t[0] == "scratch_vit_tiny_patch4"]
    assert max(end for _, end in scratch) < min(end for _, end in pre.values())  # done while the encoders were made
    threads = str(max(1, (os.cpu_count() or 1) // 3))
    assert {t[2]["extra"]["omp_threads"] for t in tasks} == {threads}


def test_jobs_flag_and_preset_key_are_checked(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    preset = write_suite(tmp_path)
    assert harness(monkeypatch, *base_args(preset, out), "--jobs", "0") == DID_NOT_START
    assert "--jobs must be at least 1" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    bad = write_suite(tmp_path / "bad", extra="jobs: two\n")
    assert harness(monkeypatch, *base_args(bad, out), "--dry-run") == DID_NOT_START
    assert "'jobs' must be a whole number" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    args = [*base_args(preset, out), "--jobs", "2", "--device", "cuda"]
    assert harness(monkeypatch, *args) == DID_NOT_START  # found while planning, before any work
    assert "--jobs 2 with 1 GPU(s) per run needs 2 GPUs; 1 visible (0)" in capsys.readouterr().err
    assert not (out / "records").exists()


def test_machine_shares(monkeypatch) -> None:
    from harness.run.plan import PlanError, machine_shares

    assert machine_shares(1, 1, "auto") == [{}]  # one job: the environment as it is
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert machine_shares(2, 2, "auto") == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    with pytest.raises(PlanError, match="needs 6 GPUs; 4 visible"):
        machine_shares(3, 2, "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert machine_shares(2, 1, "auto") == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert machine_shares(16, 1, "cpu")[0]["OMP_NUM_THREADS"] == "1"


def test_a_user_task_spec_runs_and_reaches_a_table(tmp_path, monkeypatch, capsys) -> None:
    """`--suite my_task.yaml`: a task of the user's with its own target, protocols and columns, reported as ours."""
    preset = write_suite(tmp_path)
    spec = tmp_path / "my_task.yaml"
    spec.write_text(f"name: mytask\ntarget: '{DUMMY}:run'\ntitle: My task score (%)\nprotocols: [easy, hard]\n"
                    "main_metrics: [score]\ncolumns:\n"
                    "  - {key: my_easy, label: My easy score, protocol: easy, metrics: [score]}\n"
                    "  - {key: my_hard, label: My hard score, protocol: hard, metrics: [score], scale: {score: 2.0}}\n")
    out = tmp_path / "out"
    args = [*base_args(preset, out), "--suite", str(spec), "--backbones", TINY[0], "--set", "mytask.metric=score"]
    assert harness(monkeypatch, *args, "--dry-run") == 0
    assert {"easy", "hard"} <= set(capsys.readouterr().out.split())
    assert harness(monkeypatch, *args) == 0
    recs = latest(out)
    assert sorted(r["protocol"] for r in recs.values()) == ["easy", "hard"]
    assert "score=" in capsys.readouterr().out  # the summary shows the spec's main metric
    table = (out / "results" / "mytask.md").read_text()
    assert table.startswith("### My task score (%), recipe ") and "My easy score" in table and "My hard score" in table
    hard = next(r for r in recs.values() if r["protocol"] == "hard")["metrics"]["score"]
    assert f"{2 * hard:.1f} (n=1)" in table  # the spec's scale applies
    assert (out / "specs" / "mytask.yaml").is_file()  # `harness report --runs OUT` finds the table again
    capsys.readouterr()
    assert harness(monkeypatch, "report", "--runs", str(out), "--out", str(tmp_path / "again"), "--no-plots") == 0
    assert (tmp_path / "again" / "mytask.md").read_text() == table


def test_a_bad_task_spec_is_named_before_anything_runs(tmp_path, monkeypatch, capsys) -> None:
    preset, spec = write_suite(tmp_path), tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\ntarget: '{DUMMY}:run'\ncolumns:\n  - {{key: c, label: C, metric: [score]}}\n")
    assert harness(monkeypatch, *base_args(preset, tmp_path / "out"), "--suite", str(spec)) == DID_NOT_START
    err = capsys.readouterr().err
    assert str(spec) in err and "columns[0]" in err and "metric" in err
    assert not (tmp_path / "out").exists()


def test_run_ids_do_not_change() -> None:
    """A run's id is the key of its records and work folder: the same inputs must hash as they always have."""
    spec = {"name": "x", "arch": "vit_tiny_patch16_224", "family": "mae", "checkpoint": "/a", "sha256": "s"}
    run = Run(kind="task", task="in1k", target="tasks.classification:run", backbone="x", spec=spec, seed=1,
              protocol="linprobe", recipe="tiny", recipe_version=2, overrides={"finetune.blr": 0.01}, data="real",
              data_fingerprint="fp", sha256="abc")
    pre = Run(kind="pretrain", task="pretrain", target="harness.pretrain:pretrain", backbone="x", spec=spec,
              recipe="mae_tiny", recipe_version=1, method="mae", epochs=4)
    run.assign_id()
    pre.assign_id()
    assert (run.run_id, pre.run_id) == ("c65521cc981b", "c23608d97934")


def test_controls_are_planned_run_and_skipped_like_any_run(tmp_path, monkeypatch, capsys) -> None:
    """--controls floor,pixels: per seed, the random encoder's linear probe (in1k's floor; here not among the suite's
    protocols, so a run of its own) and the pixel reference, with ids of their own; rows of their own in the report."""
    preset, out = write_suite(tmp_path, suite="[in1k]", protocols="[finetune]"), tmp_path / "out"
    args = [*base_args(preset, out), "--seeds", "0,1"]
    assert harness(monkeypatch, *args, "--controls", "none", "--dry-run") == 0
    assert "6 runs" in capsys.readouterr().out
    assert harness(monkeypatch, *args, "--controls", "floor,pixels", "--dry-run") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[3:] if not line.startswith("weights of ")]
    controls = [(r[1], r[2], r[4], r[5]) for r in rows if r[1] in ("floor", "pixels")]
    assert controls == [("floor", "scratch_vit_tiny_patch4", "linprobe", "0"),
                        ("pixels", "scratch_vit_tiny_patch4", "pixels", "0"),
                        ("floor", "scratch_vit_tiny_patch4", "linprobe", "1"),
                        ("pixels", "scratch_vit_tiny_patch4", "pixels", "1")]
    assert len({r[0] for r in rows}) == 10
    assert harness(monkeypatch, *args, "--controls", "floor,pixels") == 0
    recs = latest(out)
    assert len(recs) == 10 and all(r["status"] == "finished" for r in recs.values())
    assert sorted(r["protocol"] for r in recs.values() if r["protocol"] != "finetune") == ["linprobe"] * 2 + \
        ["pixels"] * 2
    md = (out / "results" / "in1k.md").read_text()
    assert "| random frozen (floor) | floor |" in md and "| pixels, linear | pixels |" in md
    assert "> " not in md  # no pretrained backbone in the floor's column (the linear probe): nothing to compare
    capsys.readouterr()
    assert harness(monkeypatch, *args, "--controls", "floor,pixels", "--dry-run") == 0
    assert "0 to run" in capsys.readouterr().out  # resumed and skipped like any run


def test_bad_controls_stop_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--controls", "flor") == DID_NOT_START
    assert "--controls 'flor': allowed are none or comma-separated floor, pixels" in capsys.readouterr().err
    # the dummy recipe has no model.freeze_backbone: coco's floor cannot run with it
    assert harness(monkeypatch, *base_args(preset, out), "--controls", "floor") == DID_NOT_START
    err = capsys.readouterr().err
    assert "--controls floor: task coco" in err and "freeze_backbone" in err
    (tmp_path / "bad.yaml").write_text(preset.read_text() + "controls: [floor, noise]\n")
    assert harness(monkeypatch, *base_args(tmp_path / "bad.yaml", out)) == DID_NOT_START
    assert "controls 'floor,noise'" in capsys.readouterr().err
    assert not out.exists()


def test_pretrain_flag_on_a_preset_that_makes_no_pretraining_stops(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path), tmp_path / "out"  # no 'pretrain' section
    assert harness(monkeypatch, *base_args(preset, out), "--pretrain") == DID_NOT_START
    assert "--pretrain: preset preset makes no pretraining" in capsys.readouterr().err
    assert not out.exists()
