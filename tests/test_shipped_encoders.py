"""The three tiny encoders the registry ships: each file has its entry's sha256, loads with every key accounted, and
comes with a record whose command remakes it; pretraining is bit-for-bit (the same command, the same file); a changed
file is refused; the tiny preset loads them unless `--pretrain`, and the sanity figures measure what they say."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from backbones import create_backbone
from backbones.checkpoint import CheckpointError, resolve_checkpoint
from backbones.registry import get_spec
from backbones.weights import file_sha256
from harness import api
from harness.pretrain import pretrain, record, resolve_recipe, sanity
from harness.run.plan import build_plan

SHIPPED = {"mae_vit_tiny_patch4": "mae", "supervised_vit_tiny_patch4": "supervised", "mocov3_vit_tiny_patch4": "mocov3"}
FIGURE = {"mae": "reconstruction_loss", "supervised": "top1", "mocov3": "knn20_top1"}
# Two steps of each method on 64 images: seconds on CPU
TWO_STEPS = {"data.subset": 64, "data.batch_size": 32, "optim.warmup_epochs": 0, "model.decoder_embed_dim": 32}
OVERRIDES = {"mae": TWO_STEPS, "supervised": {k: v for k, v in TWO_STEPS.items() if not k.startswith("model.")},
             "mocov3": {**{k: v for k, v in TWO_STEPS.items() if not k.startswith("model.")}, "model.dim": 32,
                        "model.mlp_dim": 64}}


@pytest.fixture
def small_sanity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sanity, "LIMIT", 200)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the shipped files' commands (--threads 1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_file_matches_its_entry_and_loads_strictly(name: str) -> None:
    spec = get_spec(name)
    path = Path(spec.checkpoint)
    assert path.is_file() and path.parent.name == "pretrained" and path.stat().st_size < 4 * 2**20
    assert file_sha256(path) == spec.sha256
    model = create_backbone(name)  # the entry's own file, its hash checked
    assert model.load_report == {"initialised_fresh": [], "skipped": []}
    exported = torch.load(path, weights_only=True)["model"]
    assert set(exported) == set(model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, exported[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_record_says_how_to_remake_the_file(name: str) -> None:
    spec = get_spec(name)
    rec = json.loads(Path(spec.checkpoint).with_suffix(".json").read_text())
    method = SHIPPED[name]
    assert rec["sha256"] == spec.sha256 and rec["method"] == method and rec["backbone"] == name
    assert rec["command"].startswith(f"python -m harness pretrain --method {method} --arch {name} --seed 0 --threads 1")
    assert "--set" not in rec["command"] and "--epochs" not in rec["command"]  # the recipe as it is
    assert rec["recipe"] == f"{method}_tiny" and rec["threads"] == 1 and rec["device"] == "cpu"
    recipe = resolve_recipe(method)  # the file was made by the recipe as it stands, not an earlier version of it
    assert (rec["recipe_version"], rec["epochs"]) == (recipe["version"], recipe["epochs"])
    assert rec["images_seen"] > 0 and rec["training_time_s"] > 0
    assert rec["sanity"]["name"] == FIGURE[method] and math.isfinite(rec["sanity"]["value"])
    assert rec["sanity"]["split"] == "fashion-mnist test" and rec["sanity"]["n"] == 10_000
    meta = torch.load(spec.checkpoint, weights_only=True)["meta"]
    assert meta["recipe_version"] == rec["recipe_version"] and meta["torch"] == rec["torch"]


def test_a_changed_shipped_file_is_refused(tmp_path: Path) -> None:
    spec = get_spec("mae_vit_tiny_patch4")
    copy = tmp_path / "mae_vit_tiny_patch4.pth"
    shutil.copyfile(spec.checkpoint, copy)
    moved = dataclasses.replace(spec, checkpoint=str(copy))
    assert resolve_checkpoint(moved, None) == copy  # the same bytes elsewhere: fine
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="mae_vit_tiny_patch4.*pins"):
        resolve_checkpoint(moved, None)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mae", "supervised", "mocov3"])
def test_pretraining_twice_gives_the_same_file(
    tmp_path: Path, method: str, small_sanity: None, one_thread: None
) -> None:
    """What `harness pretrain` promises for the shipped files: the same command makes the same bytes."""
    name = f"{method}_vit_tiny_patch4"
    files = [pretrain(method, name, tmp_path / run, epochs=1, overrides=OVERRIDES[method], progress=False,
                      device="cpu") for run in ("a", "b")]
    assert file_sha256(files[0]) == file_sha256(files[1])
    recs = [json.loads((f.parent / record.RECORD).read_text()) for f in files]
    assert recs[0]["sha256"] == file_sha256(files[0]) and recs[0]["steps"] == 2 and recs[0]["images_seen"] == 64
    assert recs[0]["sanity"] == recs[1]["sanity"] and recs[0]["sanity"]["n"] == 200
    assert recs[0]["sanity"]["name"] == FIGURE[method] and math.isfinite(recs[0]["sanity"]["value"])
    assert "--epochs 1" in recs[0]["command"] and "--set data.subset=64" in recs[0]["command"]


def test_a_finished_run_without_record_gets_one(tmp_path: Path, small_sanity: None) -> None:
    """A run exported before its record (an older harness) gets it from the last checkpoint, without training."""
    out = tmp_path / "run"
    path = pretrain("supervised", "supervised_vit_tiny_patch4", out, epochs=1, overrides=OVERRIDES["supervised"],
                    progress=False, device="cpu")
    first = json.loads((out / record.RECORD).read_text())
    (out / record.RECORD).unlink()
    mtime = path.stat().st_mtime_ns
    assert pretrain("supervised", "supervised_vit_tiny_patch4", out, epochs=1, overrides=OVERRIDES["supervised"],
                    progress=False, device="cpu") == path
    assert path.stat().st_mtime_ns == mtime  # not retrained
    assert json.loads((out / record.RECORD).read_text())["sanity"] == first["sanity"]


def test_sanity_figures_measure_their_method() -> None:
    """kNN votes as DINO's: weighted by exp(sim / T) over the k nearest; a perfect bank classifies its own copy."""
    bank = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    labels = torch.arange(40) % 10
    assert sanity.knn_top1(bank, labels, bank, labels, k=1) == 100.0
    # one near neighbour of class 1 against two far ones of class 2: the weights, not the count, decide
    test = torch.tensor([[1.0, 0.0]])
    near, far = torch.tensor([[1.0, 0.0]]), torch.nn.functional.normalize(torch.tensor([[0.2, 1.0]] * 2), dim=1)
    top1 = sanity.knn_top1(torch.cat([near, far]), torch.tensor([1, 2, 2]), test, torch.tensor([1]), k=3, classes=3)
    assert top1 == 100.0


def test_encoder_knn_benchmark_scores_pixels_and_encoders(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/encoder_knn.py on 600 images: a row for the pixels and one per encoder, and the supervised encoder
    (trained on these labels) scores well above a random one, with both feature kinds."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_knn.py"
    spec = importlib.util.spec_from_file_location("encoder_knn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--limit", "600", "--encoder", "sup=supervised_vit_tiny_patch4",
                        "--encoder", "rand=random:scratch_vit_tiny_patch4"]) == 0
    rows = {ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"pixels", "sup", "rand"} and 0 < rows["pixels"][0] <= 100
    assert rows["sup"][0] > rows["rand"][0] + 15 and rows["sup"][1] > rows["rand"][1] + 15
    for bad in (["--encoder", "x=nope"], ["--encoder", "x=mae_vit_tiny_patch4:/no/file"], ["--limit", "0"]):
        with pytest.raises(SystemExit) as stop:  # named in one line before any data is read
            module.main(bad)
        assert stop.value.code == 2 and "Fashion-MNIST" not in capsys.readouterr().out


def test_tiny_preset_loads_the_shipped_encoders_unless_pretrain(tmp_path: Path) -> None:
    def plan(**flags):
        return build_plan(api.run_options(preset="tiny", out=str(tmp_path / "out"), device="cpu", **flags))

    shipped = plan()
    assert not [r for r in shipped.runs if r.kind == "pretrain"]
    for r in shipped.runs:
        if r.backbone in SHIPPED:
            assert r.checkpoint == get_spec(r.backbone).checkpoint and r.sha256 == get_spec(r.backbone).sha256
    assert {r.run_id for r in shipped.runs} == {r.run_id for r in plan().runs}  # stable ids
    for flags in ({"pretrain": True}, {"pretrain_epochs": 2}, {"sweep": "pretrain.epochs=1,2"}):
        pre = [r for r in plan(**flags).runs if r.kind == "pretrain"]
        assert {r.backbone for r in pre} == set(SHIPPED), flags  # --pretrain, said or implied


def test_controls_run_beside_their_task_seed_by_seed(tmp_path: Path) -> None:
    """Each seed's runs come task by task in the suite's order, a task's controls right after its runs: the long COCO
    floor no longer runs alone at the end of a seed while the other job slots idle."""
    plan = build_plan(api.run_options(preset="tiny", out=str(tmp_path / "out"), device="cpu", seeds="1,0"))
    order = [(r.seed, r.task, r.control) for r in plan.runs]
    assert [s for s, _, _ in order] == sorted((s for s, _, _ in order), key=lambda s: s != 1)  # --seeds order
    for seed in (1, 0):
        tasks = [t for s, t, _ in order if s == seed]
        assert tasks == sorted(tasks, key=["in1k", "coco", "ade20k"].index), seed  # grouped, the suite's order
        for task in ("coco", "ade20k"):
            kinds = [c for s, t, c in order if s == seed and t == task]
            assert kinds[-1] == "floor" and kinds.count("floor") == 1 and len(kinds) == 5


def test_dry_run_names_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.test_runner import harness

    assert harness(monkeypatch, "run", "--preset", "tiny", "--out", str(tmp_path / "t"), "--dry-run") == 0
    printed = capsys.readouterr().out
    for name in SHIPPED:
        assert f"weights of {name}: {get_spec(name).checkpoint}" in printed
    assert harness(monkeypatch, "run", "--preset", "tiny", "--out", str(tmp_path / "t"), "--dry-run",
                   "--pretrain") == 0
    printed = capsys.readouterr().out
    assert "weights of mae_vit_tiny_patch4" not in printed and printed.count(" pretrain ") >= 3
