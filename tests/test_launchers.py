"""The launchers: the commands they build, torchrun for real with two gloo processes, and submitit's local executor."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from harness import store
from harness.run import DID_NOT_START
from harness.run.launch import exit_reason, worker_command
from tests.test_log_backends import _without
from tests.test_runner import base_args, harness, latest, write_suite

ROOT = Path(__file__).resolve().parents[1]


def test_worker_commands() -> None:
    job = Path("/o/work/abc/job.json")
    assert worker_command(job, "local", 4) == [sys.executable, "-m", "harness.worker", str(job)]
    cmd = worker_command(job, "torchrun", 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4" and "--standalone" in cmd
    assert cmd[-3:] == ["-m", "harness.worker", str(job)]


def test_exit_reasons() -> None:
    assert exit_reason(-signal.SIGKILL) == "killed by signal SIGKILL"
    assert exit_reason(-signal.SIGSEGV) == "killed by signal SIGSEGV"
    assert "out-of-memory" in exit_reason(137)
    assert exit_reason(3) == "exit status 3"


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path, monkeypatch) -> None:
    preset, out = write_suite(tmp_path, suite="[coco]"), tmp_path / "out"
    args = [*base_args(preset, out), "--backbones", "scratch_vit_tiny_patch4", "--launcher", "torchrun", "--gpus",
            "2", "--no-report"]
    assert harness(monkeypatch, *args) == 0
    (rec,) = latest(out).values()
    assert rec["status"] == "finished" and rec["launcher"] == "pytorch" and rec["world_size"] == 2
    assert rec["metrics"]["world_size"] == 2 and rec["metrics"]["rank_sum"] == 3.0  # 1 + 2 all-reduced over gloo
    assert len(store.read_records(out / "records")) == 1  # rank 0 alone writes


@pytest.mark.slow
def test_submitit_local_executor(tmp_path, monkeypatch) -> None:
    preset, out = write_suite(tmp_path, suite="[coco]"), tmp_path / "out"
    args = [*base_args(preset, out), "--backbones", "scratch_vit_tiny_patch4,mae_vit_tiny_patch4",
            "--checkpoint", f"mae_vit_tiny_patch4={ROOT / 'tests' / 'dummy_task.py'}", "--launcher", "slurm",
            "--slurm-cluster", "local", "--set", "coco.fail_on=mae_vit_tiny_patch4", "--no-report"]
    assert harness(monkeypatch, *args) == 1
    recs = {r["backbone"]["name"]: r for r in latest(out).values()}
    assert recs["scratch_vit_tiny_patch4"]["status"] == "finished"
    assert recs["scratch_vit_tiny_patch4"]["launcher"] == "slurm"
    assert recs["mae_vit_tiny_patch4"]["status"] == "failed" and "dummy failure" in recs["mae_vit_tiny_patch4"]["error"]
    log = Path(recs["scratch_vit_tiny_patch4"]["log"]).read_text()
    assert "step 2/2" in log  # the job's output lands in the run's log, not only in submitit's folder
    assert (out / "slurm").is_dir()
    # on the slurm path too, a finished run is skipped and a failed one runs again
    assert harness(monkeypatch, *args) == 1
    again = latest(out)
    assert again[recs["scratch_vit_tiny_patch4"]["run_id"]]["attempt"] == recs["scratch_vit_tiny_patch4"]["attempt"]
    assert again[recs["mae_vit_tiny_patch4"]["run_id"]]["attempt"] != recs["mae_vit_tiny_patch4"]["attempt"]
    assert len(store.read_records(out / "records")) == 3


def test_slurm_without_submitit_stops_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    preset, out = write_suite(tmp_path, suite="[coco]"), tmp_path / "out"
    _without(monkeypatch, "submitit")  # the `slurm` extra
    assert harness(monkeypatch, *base_args(preset, out), "--launcher", "slurm") == DID_NOT_START
    assert "submitit package is not installed" in capsys.readouterr().err
    assert not (out / "records").exists()


def test_log_backend_reaches_the_worker_env(monkeypatch) -> None:
    import argparse

    from harness.run.launch import worker_env
    from tasks.training import vis_backends

    env = worker_env(argparse.Namespace(log_backend="tensorboard", out="runs/x"))
    assert env["HARNESS_LOG_BACKEND"] == "tensorboard" and str(ROOT) in env["PYTHONPATH"].split(":")
    assert env["HARNESS_FEATURE_CACHE"] == str(Path("runs/x/work/features").resolve())  # shared by a suite's runs
    monkeypatch.setenv("HARNESS_LOG_BACKEND", "tensorboard")
    assert vis_backends() == [{"type": "LocalVisBackend"}, {"type": "TensorboardVisBackend"}]
    monkeypatch.delenv("HARNESS_LOG_BACKEND")
    assert vis_backends() == [{"type": "LocalVisBackend"}]
    monkeypatch.setenv("HARNESS_LOG_BACKEND", "mlflow")
    with pytest.raises(ValueError, match="HARNESS_LOG_BACKEND"):
        vis_backends()


def test_visible_gpus_without_a_driver_asks_torch_nothing(monkeypatch) -> None:
    """No NVIDIA driver and no ROCm device: no GPU, and the runner does not ask torch (its import costs 1.6 s)."""
    import torch

    from harness.run import plan

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: (_ for _ in ()).throw(AssertionError("torch asked")))
    monkeypatch.setattr(plan.Path, "is_dir", lambda self: False)
    monkeypatch.setattr(plan.Path, "exists", lambda self: False)
    assert plan.visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert plan.visible_gpus() == ["2", "3"]
