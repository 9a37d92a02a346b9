"""`harness run --log-backend`: a missing package stops the suite before any work; the mmengine tasks put the backend
in their visualizer config; classification and pretraining write the numbers their loops compute to real TensorBoard
event files (read back with TensorBoard's own reader); without the flag nothing is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from harness.run import DID_NOT_START
from tasks.training import LOG_BACKEND_ENV, ScalarLog, vis_backends
from tests.test_runner import base_args, harness, write_suite


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if `modules` were not installed, for the check that looks for them (`importlib.util.find_spec`)."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar tag in the TensorBoard event files of `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# --- the flag ---


@pytest.mark.parametrize("choice, hint", [
    ("tensorboard", "pip install tensorboard"),
    ("wandb", "WANDB_MODE=offline"),
])  # fmt: skip
def test_missing_package_stops_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture, choice: str, hint: str) -> None:
    preset, out = write_suite(tmp_path), tmp_path / "out"
    _without(monkeypatch, choice)
    assert harness(monkeypatch, *base_args(preset, out), "--log-backend", choice) == DID_NOT_START
    err = capsys.readouterr().err
    assert f"--log-backend {choice}: the {choice} package is not installed" in err
    assert f"pip install {choice}" in err and hint in err
    assert not out.exists()


def test_inherited_variable_is_checked_like_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """HARNESS_LOG_BACKEND set by hand reaches the workers too: a missing package or an unknown name stops the suite."""
    preset, out = write_suite(tmp_path), tmp_path / "out"
    monkeypatch.setenv(LOG_BACKEND_ENV, "wandb")
    _without(monkeypatch, "wandb")
    assert harness(monkeypatch, *base_args(preset, out)) == DID_NOT_START
    err = capsys.readouterr().err
    assert f"{LOG_BACKEND_ENV}=wandb (from the environment): the wandb package is not installed" in err
    monkeypatch.setenv(LOG_BACKEND_ENV, "tensorbord")
    assert harness(monkeypatch, *base_args(preset, out)) == DID_NOT_START
    assert "known backends are tensorboard, wandb" in capsys.readouterr().err
    assert not out.exists()


def test_installed_tensorboard_passes_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset, out = write_suite(tmp_path), tmp_path / "out"
    assert harness(monkeypatch, *base_args(preset, out), "--log-backend", "tensorboard", "--dry-run") == 0


def test_worker_side_fails_early_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop started with the variable set by hand (not through `harness run`) says what to install before it trains.
    """
    monkeypatch.setenv(LOG_BACKEND_ENV, "wandb")
    _without(monkeypatch, "wandb")
    with pytest.raises(ModuleNotFoundError, match="pip install wandb"):
        ScalarLog(tmp_path)
    assert not (tmp_path / "vis_data").exists()


def test_vis_backends_per_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_BACKEND_ENV, "wandb")
    assert vis_backends() == [{"type": "LocalVisBackend"}, {"type": "WandbVisBackend"}]
    monkeypatch.setenv(LOG_BACKEND_ENV, " TensorBoard ")
    assert vis_backends() == [{"type": "LocalVisBackend"}, {"type": "TensorboardVisBackend"}]


# --- the mmengine tasks ---


@pytest.mark.mm
def test_detection_and_segmentation_configs_take_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedded import ade20k, coco
    from tasks import TaskContext, detection
    from tasks import segmentation as seg
    from tasks.recipes import load_recipe

    monkeypatch.setenv(LOG_BACKEND_ENV, "tensorboard")
    ctx = TaskContext(backbone="test_vit", work_dir=tmp_path / "work", recipe="tiny")
    seg_cfg = seg.build_config(ctx, load_recipe("ade20k", "tiny"), tmp_path, ade20k.CLASSES)
    root = coco.write(tmp_path / "coco", seed=0, n_train=2, n_val=1)
    recipe = detection._resolve(load_recipe("coco", "tiny"), ctx.backbone)
    det_cfg = detection.build_config(ctx, recipe, root, detection.check_coco_root(root))
    for cfg in (seg_cfg, det_cfg):
        assert cfg["visualizer"]["vis_backends"] == [{"type": "LocalVisBackend"}, {"type": "TensorboardVisBackend"}]
    monkeypatch.delenv(LOG_BACKEND_ENV)
    assert seg.build_config(ctx, load_recipe("ade20k", "tiny"), tmp_path, ade20k.CLASSES)["visualizer"][
        "vis_backends"] == [{"type": "LocalVisBackend"}]


@pytest.mark.mm
@pytest.mark.slow
def test_segmentation_runner_writes_tensorboard_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mmseg's Runner builds the TensorBoard backend from the config and logs its own loss to it."""
    from embedded import ade20k
    from tasks import TaskContext
    from tasks import segmentation as seg

    monkeypatch.setenv(LOG_BACKEND_ENV, "tensorboard")
    data_root = ade20k.write(tmp_path / "ade", seed=0, n_train=2, n_val=1)
    overrides = {"data.batch_size": 2, "data.val_batch_size": 1, "schedule.max_iters": 2, "schedule.warmup_iters": 1,
                 "schedule.val_interval": 2, "schedule.checkpoint_interval": 2, "schedule.log_interval": 1,
                 "model.pyramid": "simple"}
    work = tmp_path / "run"
    result = seg.run(TaskContext(backbone="test_vit", work_dir=work, recipe="tiny", data_root=data_root,
                                 overrides=overrides))
    (vis_data,) = {p.parent for p in work.glob("*/vis_data/events.out.tfevents.*")}  # the Runner's log dir
    scalars = _scalars(vis_data)
    assert [step for step, _ in scalars["loss"]] == [1, 2]
    local = [json.loads(line) for line in (vis_data / "scalars.json").read_text().splitlines()]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in local if "loss" in r], rel=1e-6)
    assert scalars["mIoU"][-1][1] == pytest.approx(result.metrics["mIoU"], rel=1e-6)


# --- the loops of their own ---


def test_classification_logs_its_history_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedded import imagenet
    from tasks import TaskContext
    from tasks import classification as cls

    data = imagenet.write(tmp_path / "data", n_train_per_class=4, n_val_per_class=2)
    overrides = {"data.micro_batch_size": 20, "linprobe.epochs": 2, "linprobe.warmup_epochs": 1,
                 "linprobe.batch_size": 20}

    def run(work: Path) -> Any:
        return cls.run(TaskContext(backbone="test_vit", work_dir=work, recipe="tiny", data_root=data,
                                   protocol="linprobe", overrides=overrides))

    monkeypatch.setenv(LOG_BACKEND_ENV, "tensorboard")
    result = run(tmp_path / "logged")
    scalars = _scalars(tmp_path / "logged" / "vis_data")
    history = result.extra["history"]
    assert scalars["loss"] == [(h["epoch"], pytest.approx(h["loss"], rel=1e-6)) for h in history]
    assert scalars["lr"] == [(h["epoch"], pytest.approx(h["lr"], rel=1e-6)) for h in history]
    assert history[0]["loss"] != history[1]["loss"]  # the epochs are told apart
    for k in ("top1", "top5"):  # evaluated every epoch; the last epoch's is the result
        assert scalars[k] == [(h["epoch"], pytest.approx(h[k], rel=1e-6)) for h in history]
        assert scalars[k][-1] == (2, pytest.approx(result.metrics[k], rel=1e-6))

    monkeypatch.delenv(LOG_BACKEND_ENV)
    plain = run(tmp_path / "plain")
    assert not (tmp_path / "plain" / "vis_data").exists() and not list((tmp_path / "plain").rglob("*tfevents*"))
    assert plain.metrics == result.metrics  # logging changes no number


class _Loader:
    """Two fixed batches an epoch, for the pretraining loop (`engine.Loader`)."""

    def __init__(self) -> None:
        import torch

        self.data = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, epoch: int) -> Any:
        return iter([(x,) for x in self.data])


def _pretrain(out: Path, epochs: int) -> None:
    """The shared pretraining loop (`harness.pretrain.engine.train`) on a linear model: what MAE, MoCo v3 and the
    supervised baseline run, without their models."""
    import torch

    from harness.pretrain import engine

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = engine.Schedule(lr=0.1, epochs=epochs, warmup_epochs=1.0)  # the lr changes at every step

    def loss_fn(batch: tuple[torch.Tensor, ...], t: float) -> torch.Tensor:
        return model(batch[0]).pow(2).mean()

    engine.train(model, loss_fn, _Loader(), optimizer, schedule, engine.LoopConfig(epochs=epochs, amp="none"), out,
                 {"test": 1}, torch.device("cpu"), progress=False)


def test_pretraining_logs_what_log_jsonl_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.pretrain import engine

    monkeypatch.setenv(LOG_BACKEND_ENV, "tensorboard")
    out = tmp_path / "logged"
    _pretrain(out, epochs=2)
    log = [json.loads(line) for line in (out / engine.LOG).read_text().splitlines()]
    scalars = _scalars(out / "vis_data")
    assert [r["step"] for r in log] == [0, 1, 2, 3] and len({r["loss"] for r in log}) == 4
    assert scalars["loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in log]
    assert scalars["lr"] == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in log]
    means = [(log[2 * e]["loss"] + log[2 * e + 1]["loss"]) / 2 for e in range(2)]
    assert scalars["epoch_loss"] == [(1, pytest.approx(means[0], rel=1e-6)), (3, pytest.approx(means[1], rel=1e-6))]

    monkeypatch.delenv(LOG_BACKEND_ENV)
    _pretrain(tmp_path / "plain", epochs=1)
    assert (tmp_path / "plain" / engine.LOG).is_file() and not (tmp_path / "plain" / "vis_data").exists()
