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
