"""The speed options of the training loops: the `compile` recipe key, fused AdamW on CUDA only, and a compiled MAE
that trains to the same losses as the eager one (same masks: the masking noise is drawn outside the compiled graph)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.pretrain import build_method, build_optimizer, pretrain, resolve_recipe, speed_up
from tasks.recipes import load_recipe
from tasks.training import fused_optimizer, resolve_compile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_compile_resolves_per_device() -> None:
    assert resolve_compile("auto", CUDA) is True and resolve_compile("auto", CPU) is False
    assert resolve_compile(True, CPU) is True and resolve_compile(False, CUDA) is False
    for bad in ("yes", 1, None, "True"):
        with pytest.raises(ValueError, match="recipe key compile must be auto, true or false"):
            resolve_compile(bad, CPU)


def test_fused_adamw_on_cuda_only() -> None:
    assert fused_optimizer(CUDA) is True and fused_optimizer(CPU) is False
    cfg = resolve_recipe("mae", overrides={"model.decoder_depth": 1})
    model = build_method("mae", _spec(), cfg)
    optimizer, _ = build_optimizer(model, cfg, 256, fused=fused_optimizer(CPU))
    assert not optimizer.defaults["fused"]


@pytest.mark.parametrize("task,recipe", [("pretrain", "mae_tiny"), ("in1k", "tiny")])
def test_bad_compile_value_stops_while_planning(task: str, recipe: str) -> None:
    assert load_recipe(task, recipe)["compile"] == "auto"
    assert load_recipe(task, recipe, {"compile": False})["compile"] is False  # a flag where the recipe has a string
    for bad in ("fast", 1, None):
        with pytest.raises(ValueError, match="compile.*allowed: auto, true, false"):
            load_recipe(task, recipe, {"compile": bad})


def test_bad_compile_value_in_a_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("include: " + str(Path("tasks/recipes/pretrain/mae_tiny.yaml").resolve()) + "\ncompile: maybe\n")
    with pytest.raises(ValueError, match=f"compile='maybe' in {path}"):
        load_recipe("pretrain", str(path))


def test_compile_is_not_part_of_a_runs_settings() -> None:
    from harness.pretrain import _settings

    a = _settings("mae", "b", 0, "d", resolve_recipe("mae", overrides={"compile": True}))
    b = _settings("mae", "b", 0, "d", resolve_recipe("mae", overrides={"compile": False}))
    assert a == b  # a compiled run resumes an eager one's checkpoint and exports the same bytes


def test_mocov3_stays_eager() -> None:
    cfg = resolve_recipe("mocov3", overrides={"model.dim": 32, "model.mlp_dim": 64})
    model = build_method("mocov3", _spec("mocov3_vit_tiny_patch4"), cfg)
    assert speed_up(model, "mocov3", {**cfg, "compile": "auto"}, CUDA) is False
    with pytest.raises(ValueError, match="compile=true: mocov3"):
        speed_up(model, "mocov3", {**cfg, "compile": True}, CPU)


@pytest.mark.slow
def test_compiled_mae_trains_as_eager(tmp_path: Path) -> None:
    """torch.compile (inductor, on CPU) of the tiny MAE: the same losses step by step as eager, in float32."""
    fast = {"data.subset": 64, "data.batch_size": 32, "optim.warmup_epochs": 0, "model.decoder_embed_dim": 32,
            "model.decoder_depth": 1, "optim.base_lr": 2e-3}
    losses = {}
    for on in (False, True):
        pretrain("mae", "mae_vit_tiny_patch4", tmp_path / str(on), epochs=1, overrides={**fast, "compile": on},
                 progress=False)
        losses[on] = [json.loads(ln)["loss"] for ln in (tmp_path / str(on) / "log.jsonl").read_text().splitlines()]
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert (tmp_path / "True" / "encoder.pth").is_file() and (tmp_path / "True" / "reconstruction.png").is_file()


def _spec(name: str = "mae_vit_tiny_patch4"):
    from backbones.registry import get_spec

    return get_spec(name)


def _one_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    torch.manual_seed(1)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    return [p.detach().clone() for p in params]


def test_fused_adamw_takes_the_same_step() -> None:
    """The fused path, run on CPU (torch has a CPU kernel): pretraining's and in1k's AdamW, the same update."""
    from tasks import TaskContext
    from tasks import classification as cls

    cfg = resolve_recipe("mae", overrides={"model.decoder_depth": 1})
    after = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_method("mae", _spec(), cfg)
        optimizer, _ = build_optimizer(model, cfg, 256, fused=fused)
        assert bool(optimizer.defaults["fused"]) is fused
        after.append(_one_step(optimizer, [p for p in model.parameters() if p.requires_grad]))
    for a, b in zip(*after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    section = cls.resolve_section(load_recipe("in1k", "paper"), "finetune", "base")
    model, _ = cls.build_classifier(TaskContext(backbone="test_vit", work_dir=Path(".")), section, "finetune", 10, 32,
                                    0)
    assert cls.build_optimizer(model, section, 1e-3, fused=True).defaults["fused"] is True
    assert not cls.build_optimizer(model, section, 1e-3).defaults.get("fused")


@pytest.mark.slow
def test_compiled_finetune_runs(tmp_path: Path) -> None:
    """in1k fine-tuning of test_vit with compile=true on CPU: trains, records that it compiled, same state dict keys."""
    from embedded import imagenet
    from tasks import TaskContext
    from tasks import classification as cls

    data = imagenet.write(tmp_path / "data", n_train_per_class=8, n_val_per_class=4)
    results = {}
    for on in (False, True):
        ctx = TaskContext(backbone="test_vit", work_dir=tmp_path / str(on), recipe="tiny", data_root=data,
                          protocol="finetune", overrides={"data.micro_batch_size": 16, "finetune.epochs": 1,
                                                          "finetune.batch_size": 16, "finetune.drop_path": 0.0,
                                                          "compile": on})
        results[on] = cls.run(ctx)
    assert results[True].extra["compiled"] is True and results[False].extra["compiled"] is False
    assert results[True].extra["history"][0]["loss"] == pytest.approx(results[False].extra["history"][0]["loss"],
                                                                      rel=1e-3)
    weights = torch.load(tmp_path / "True" / cls.CHECKPOINT, weights_only=True)["model"]
    assert not any("_orig_mod" in k for k in weights)  # compiled in place: the checkpoint keeps the model's names


def test_engine_speed_benchmark_prints_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark's plumbing (one short eager-vs-engine round on CPU), not its figures."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_speed.py"
    spec = importlib.util.spec_from_file_location("engine_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu", "--batch", "4", "--warmup", "1", "--steps", "1", "--rounds", "1",
                        "--compile", "false"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith(("| mae |", "| finetune |"))]
    assert len(rows) == 2 and all(ln.rstrip(" |").endswith("x") for ln in rows)
