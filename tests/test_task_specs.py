"""Task specs (`tasks/specs/*.yaml`, `tasks.spec`): what the runner and the report know of a task, as data."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from harness.reference import rows
from tasks.spec import SpecError, all_columns, builtin_specs, load_spec, task_spec

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_specs_in_report_order_with_their_columns() -> None:
    specs = builtin_specs()
    assert list(specs) == ["in1k", "coco", "ade20k"]
    assert [c.key for c in all_columns(specs).values()] == [
        "in1k_finetune", "in1k_linprobe", "in1k_partial", "coco_box", "coco_mask", "ade20k_miou"]
    assert specs["in1k"].protocols == ("finetune", "linprobe", "partial") and not specs["coco"].protocols
    assert specs["coco"].columns[0].scale == {"coco/bbox_mAP": 100.0}
    assert specs["ade20k"].data.alternatives == ("ADEChallengeData2016",)
    assert all(importlib.util.find_spec(s.target.partition(":")[0]) for s in specs.values())
    assert task_spec("tasks.detection:run") is specs["coco"] and task_spec("mytask") is None


def test_every_published_number_has_a_column() -> None:
    keys = set(all_columns(builtin_specs()))
    assert {k for row in rows() for k in row if k.startswith(("in1k", "coco", "ade20k"))} <= keys


def test_loading_specs_imports_neither_torch_nor_the_mm_stack() -> None:
    code = ("import sys; from tasks.spec import builtin_specs; builtin_specs(); "
            "heavy = [m for m in ('torch', 'mmengine', 'mmdet', 'mmseg', 'harness') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize(("text", "named"), [
    ("name: x\n", "missing target"),
    ("name: x\ntarget: nocolon\n", "target: must look like"),
    ("name: x\ntarget: m:f\ncolour: red\n", "unknown key colour"),
    ("name: x\ntarget: m:f\ncolumns:\n  - {key: a, label: A}\n", "columns[0]: missing metrics"),
    ("name: x\ntarget: m:f\ncolumns:\n  - {key: a, label: A, metrics: [m], protocol: p}\n", "columns[0].protocol"),
    ("name: x\ntarget: m:f\ncolumns:\n  - {key: a, label: A, metrics: m}\n", "columns[0].metrics"),
    ("name: x\ntarget: m:f\ndata: {folder: d}\n", "data: missing required"),
    ("name: x\ntarget: m:f\n  bad: [\n", "not YAML"),
])
def test_bad_specs_name_the_file_and_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "my_task.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and named in str(e.value)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return out | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_the_runner_s_modules_import_in_one_direction() -> None:
    """options <- inputs <- plan <- view <- launch <- the command: no module imports one after it."""
    order = ["options", "inputs", "plan", "view", "launch", "__init__"]
    for i, name in enumerate(order):
        later = {f"harness.run.{m}" for m in order[i + 1:] if m != "__init__"} | ({"harness.run"} if i < 5 else set())
        assert not _imports(ROOT / "harness" / "run" / f"{name}.py") & later, name


def test_specs_and_training_import_nothing_of_the_harness() -> None:
    for module in ("spec.py", "training.py", "__init__.py"):
        assert not {m for m in _imports(ROOT / "tasks" / module) if m.split(".")[0] == "harness"}, module


def test_a_table_of_embedded_runs_names_the_data_it_read() -> None:
    from tasks.spec import builtin_specs

    specs = builtin_specs()
    assert specs["in1k"].data_title(False) == specs["in1k"].title == "ImageNet-1K top-1 (%)"
    assert specs["in1k"].data_title(True) == "Fashion-MNIST in the ImageNet layout: top-1 (%)"
    assert specs["coco"].data_title(True) == "Fashion-MNIST in the COCO layout: Mask R-CNN AP (%)"
    assert specs["ade20k"].data_title(True) == "Fashion-MNIST in the ADE20K layout: UperNet mIoU (%)"
