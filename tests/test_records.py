"""The job and the record that cross the process boundary (`harness.records`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import results, store
from harness.records import Job, Record, build_record


def _job(tmp_path: Path, **kw) -> Job:
    base = dict(run_id="abc123", attempt="a1", kind="task", task="in1k", target="tasks.classification:run",
                backbone="mae_vit_tiny_patch4", work_dir=str(tmp_path / "w"), log=str(tmp_path / "l.log"),
                records=str(tmp_path / "records"))
    return Job(**{**base, **kw})


def test_job_file_round_trip(tmp_path: Path) -> None:
    job = _job(tmp_path, protocol="finetune", overrides={"optim.lr": 1e-3}, seed=2, recipe_version=3,
               pretrain_run={"run_id": "p", "method": "mae", "epochs": 2})
    path = job.to_json(tmp_path / "job.json")
    assert Job.from_json(path) == job
    assert not list(tmp_path.glob(".job.json.*"))  # no temporary file left


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d.pop("work_dir"), "lacks work_dir"),
    (lambda d: d.update(seed="zero"), "seed is 'zero'"),
    (lambda d: d.update(seed=True), "seed is True"),
    (lambda d: d.update(colour="red"), "unknown key colour"),
    (lambda d: d.update(overrides=[1]), r"overrides is \[1\], not dict"),
])
def test_bad_job_files_name_the_file_and_the_key(tmp_path: Path, change, named: str) -> None:
    data = json.loads(_job(tmp_path).to_json(tmp_path / "job.json").read_text())
    change(data)
    (tmp_path / "job.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=named) as e:
        Job.from_json(tmp_path / "job.json")
    assert str(tmp_path / "job.json") in str(e.value)


def test_a_record_is_the_json_it_always_was(tmp_path: Path) -> None:
    job = _job(tmp_path, protocol="linprobe", recipe="tiny", data_fingerprint="fp")
    rec = build_record(job, "finished", metrics={"top1": 51}, recipe={"name": "tiny"}, started_at="t", wall_time_s=1.5)
    path = store.write_record(job.records, rec)
    written = json.loads(path.read_text())
    assert set(written) == {
        "run_id", "attempt", "status", "kind", "task", "target", "protocol", "metrics", "recipe", "recipe_name",
        "recipe_version", "overrides", "seed", "backbone", "method", "extra", "error", "failure", "launcher",
        "world_size", "versions", "git", "hardware", "wall_time_s", "started_at", "finished_at", "log", "work_dir",
        "data_root", "data_fingerprint"}
    assert set(written["backbone"]) == {"name", "spec", "checkpoint", "sha256", "pretrain"}
    assert written["metrics"] == {"top1": 51.0} and written["wall_time_s"] == 1.5
    back = store.read_records(job.records)[0]
    assert Record.from_dict(back).to_dict() == written  # `_path` is left out


def test_older_records_without_newer_keys_still_read(tmp_path: Path) -> None:
    old = {"run_id": "r", "attempt": "a", "status": "failed", "task": "coco", "_path": "x"}
    rec = Record.from_dict(old)
    assert rec.data_fingerprint is None and rec.metrics == {} and rec.kind == "task"


def test_the_report_reads_record_fields() -> None:
    """What the report keeps of a record names fields of `Record`."""
    assert set(results.report_fields()) <= set(Record.__dataclass_fields__)


def test_the_worker_names_a_bad_job_file_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "job.json").write_text(json.dumps({"run_id": "r"}))
    r = subprocess.run([sys.executable, "-m", "harness.worker", str(tmp_path / "job.json")], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"job file {tmp_path / 'job.json'} lacks attempt" in r.stderr
