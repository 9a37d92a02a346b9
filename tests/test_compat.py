"""`backbones.mm.compat` and the config-level fixes of `tasks.mmcommon`: each test fails without its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones.mm import compat

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.mm


def _mmengine_style_checkpoint(path: Path) -> Path:
    """What mmengine's CheckpointHook writes: tensors plus pickled Python objects (the message hub's buffers)."""
    from mmengine.logging import HistoryBuffer

    path.parent.mkdir(parents=True, exist_ok=True)
    loss = HistoryBuffer()
    loss.update(1.0)
    loss.update(0.5)
    ckpt = {
        "meta": {"iter": 2, "seed": 0},
        "state_dict": {"w": torch.ones(2)},
        "message_hub": {"log_scalars": {"train/loss": loss}},
    }
    torch.save(ckpt, path)
    return path


def test_upstream_loader_fails_on_its_own_checkpoints(tmp_path: Path) -> None:
    """The breakage the fix exists for (mmengine#1655); when this stops failing, the fix can go."""
    from mmengine.runner import checkpoint as mm_checkpoint

    path = _mmengine_style_checkpoint(tmp_path / "iter_2.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        mm_checkpoint.load_from_local(str(path), map_location="cpu")  # mmengine's original, still in its module


def test_trusted_work_dir_checkpoint_resumes(tmp_path: Path) -> None:
    from mmengine.runner.checkpoint import _load_checkpoint

    work_dir = tmp_path / "run"
    path = _mmengine_style_checkpoint(work_dir / "iter_2.pth")
    compat.trust_checkpoint_dir(work_dir)
    try:
        ckpt = _load_checkpoint(str(path), map_location="cpu")  # the path Runner.resume / load_from take
    finally:
        compat.untrust_checkpoint_dir(work_dir)
    assert ckpt["meta"]["iter"] == 2 and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    assert ckpt["message_hub"]["log_scalars"]["train/loss"].mean() == pytest.approx(0.75)


def test_untrusted_files_are_never_unpickled(tmp_path: Path) -> None:
    from mmengine.runner.checkpoint import _load_checkpoint

    compat.trust_checkpoint_dir(tmp_path / "run")
    try:
        path = _mmengine_style_checkpoint(tmp_path / "user" / "weights.pth")  # outside the trusted work_dir
        with pytest.raises(RuntimeError, match="outside the run's own work_dir"):
            _load_checkpoint(str(path), map_location="cpu")
        plain = tmp_path / "user" / "plain.pth"
        torch.save({"state_dict": {"w": torch.zeros(3)}}, plain)  # tensors only: fine anywhere
        assert torch.equal(_load_checkpoint(str(plain), map_location="cpu")["state_dict"]["w"], torch.zeros(3))
        with pytest.raises(FileNotFoundError, match="can not be found"):
            _load_checkpoint(str(tmp_path / "missing.pth"))
    finally:
        compat.untrust_checkpoint_dir(tmp_path / "run")


def test_trust_is_by_directory_not_by_name_prefix(tmp_path: Path) -> None:
    compat.trust_checkpoint_dir(tmp_path / "run")
    try:
        assert compat.is_trusted(tmp_path / "run" / "sub" / "x.pth")
        assert not compat.is_trusted(tmp_path / "run2" / "x.pth")  # a sibling whose name starts the same
        assert not compat.is_trusted(tmp_path / "run" / ".." / "x.pth")
    finally:
        compat.untrust_checkpoint_dir(tmp_path / "run")


def test_each_runner_gets_its_own_experiment_name(tmp_path: Path) -> None:
    """Config-level fix: mmengine's default experiment name (a timestamp to the second) keys the default scope, so an
    mmdet and an mmseg runner made in the same second would share one."""
    from tasks import TaskContext
    from tasks.mmcommon import runtime_cfg

    ctx = TaskContext(backbone="test_vit", work_dir=tmp_path)
    names = {runtime_cfg(ctx, scope, 1, 1, 1)["experiment_name"] for scope in ("mmseg", "mmdet", "mmseg")}
    assert len(names) == 3


def test_plain_optim_wrapper_on_cpu() -> None:
    """Config-level fix: mmengine's AmpOptimWrapper asserts CUDA, so CPU runs get a plain OptimWrapper."""
    from mmengine.optim import AmpOptimWrapper

    from tasks.mmcommon import optim_wrapper_cfg

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    if not torch.cuda.is_available():
        with pytest.raises(AssertionError):
            AmpOptimWrapper(optimizer=optimizer, dtype="bfloat16")
    assert optim_wrapper_cfg(dict(type="AdamW", lr=1e-4), None, "cpu")["type"] == "OptimWrapper"


def test_mmcv_ext_is_served_without_the_pth(tmp_path: Path) -> None:
    """An install without mmcv_tvops.pth (`pip install .`): importing backbones.mm.compat makes mmcv's ops
    importable."""
    code = ("import sys, mmcv_tvops; sys.meta_path[:] = [f for f in sys.meta_path "
            "if not isinstance(f, mmcv_tvops.ExtFinder)]\n"
            "import backbones.mm.compat, mmcv.ops, mmcv_tvops\n"
            "print(sum(isinstance(f, mmcv_tvops.ExtFinder) for f in sys.meta_path), mmcv_tvops.backend())")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "1" and out.split()[1] in ("torchvision", "compiled")
