"""The cost meter that tasks record in `extra["cost"]`: steps counted per phase, training and evaluation apart."""

from __future__ import annotations

from types import SimpleNamespace

from tasks.cost import CostMeter, cost_hook


def test_timed_counts_steps_and_keeps_the_length():
    meter = CostMeter("cpu")
    loader = meter.timed("train", list(range(5)))
    assert len(loader) == 5 and list(loader) == [0, 1, 2, 3, 4]
    assert list(meter.timed("eval", [7, 8])) == [7, 8]
    summary = meter.summary()
    assert summary["steps_train"] == 5 and summary["steps_eval"] == 2
    assert summary["step_time_train_s"] >= 0 and summary["peak_mem_train_gb"] is None  # CPU: no accelerator peak


def test_hook_keeps_evaluation_out_of_training():
    meter = CostMeter("cpu")
    hook = cost_hook(meter)
    runner = SimpleNamespace(iter=0, max_iters=4)
    hook.before_train(runner)
    for i in range(4):
        runner.iter = i + 1
        hook.after_train_iter(runner, i)
        if runner.iter % 2 == 0:  # a validation every 2 iterations, the last one after training's last step
            hook.before_val_epoch(runner)
            for j in range(3):
                hook.after_val_iter(runner, j)
            hook.after_val_epoch(runner)
    hook.after_train(runner)
    summary = meter.summary()
    # 4 training steps, the one after a validation timed from the validation's end; 2 validations of 3 images
    assert summary["steps_train"] == 4 and summary["steps_eval"] == 6


def test_data_wait_share_tells_a_data_bound_loop():
    """A loader that sleeps 30 ms a batch in front of a 10 ms step: about three quarters of the time is data wait."""
    import time

    import torch

    def slow_loader():
        for _ in range(4):
            time.sleep(0.03)
            yield torch.zeros(8, 3), torch.zeros(8)

    class Sized:
        def __len__(self):
            return 4

        def __iter__(self):
            return slow_loader()

    meter = CostMeter("cpu")
    for _ in meter.timed("train", Sized()):
        time.sleep(0.01)
    window = meter.window("train")
    assert 0.55 < window["data_wait_share"] <= 1.0 and 0.035 < window["step_time_s"] < 0.2
    assert abs(window["images_per_s"] * window["step_time_s"] - 8) < 0.1  # 8 images a step
    assert meter.window("train")["images_per_s"] is None  # nothing since the last window
    summary = meter.summary()
    assert summary["data_wait_share_train"] == window["data_wait_share"] and summary["images_per_s_eval"] is None
    assert meter.eta_s("train", 10) > 0.3


def test_mmengine_steps_have_no_data_wait_figure():
    meter = CostMeter("cpu")
    meter.start("train")
    meter.step("train")
    meter.step("train")
    assert meter.summary()["data_wait_share_train"] is None  # not measured, not 0
