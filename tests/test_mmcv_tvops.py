"""mmcv_tvops: mmcv's `_ext` over torchvision, against golden outputs of mmcv 2.1.0's compiled CPU ops
(tests/data/mmcv_goldens.pt, made by tests/data/make_mmcv_goldens.py), and its finder's precedence rules.

mmcv's own Python ops (`mmcv.ops.roi_align`, `nms`, `batched_nms`) are run with their `ext_module` set to
`mmcv_tvops.ext`, so the tests hold whether the venv has mmcv-lite or a compiled mmcv."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import mmcv
import pytest
import torch

import mmcv_tvops
from mmcv_tvops import ext

# the modules (mmcv.ops re-exports functions of the same names)
mmcv_nms = importlib.import_module("mmcv.ops.nms")
mmcv_roi_align = importlib.import_module("mmcv.ops.roi_align")
ROOT = Path(__file__).resolve().parents[1]
GOLDENS = torch.load(Path(__file__).with_name("data") / "mmcv_goldens.pt", weights_only=True)
MMCV_DIR = Path(mmcv.__file__).parent
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture
def tv_ext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmcv_roi_align, "ext_module", ext)
    monkeypatch.setattr(mmcv_nms, "ext_module", ext)


def _load_ext_names() -> set[str]:
    """Every name that the installed mmcv's ops ask `load_ext('_ext', [...])` for."""
    names: set[str] = set()
    for path in (MMCV_DIR / "ops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load_ext":
                names.update(ast.literal_eval(node.args[1]))
    return names


def test_every_name_mmcv_asks_for_exists():
    names = _load_ext_names()
    assert len(names) == 112  # mmcv 2.1.0
    assert names == set(ext.__all__)


def test_unimplemented_ops_name_themselves_when_called():
    for name in ext.NEEDS_COMPILED:
        with pytest.raises(NotImplementedError, match=f"mmcv op '{name}' needs the compiled mmcv"):
            getattr(ext, name)(torch.zeros(1))


def test_roi_align_max_pooling_needs_compiled_mmcv(tv_ext):
    x, rois = torch.rand(1, 1, 8, 8), torch.tensor([[0.0, 1, 1, 6, 6]])
    with pytest.raises(NotImplementedError, match="roi_align_forward' with pool_mode='max'"):
        mmcv_roi_align.roi_align(x, rois, 2, 1.0, 0, "max", True)


def _case_id(c: dict) -> str:
    return f"aligned={c['aligned']}-ratio={c['sampling_ratio']}-scale={c['spatial_scale']}-{c['output_size']}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GOLDENS["roi_align"]["cases"], ids=_case_id)
def test_roi_align_forward_and_backward_match_compiled_mmcv(tv_ext, case, device):
    g = GOLDENS["roi_align"]
    x = g["input"].to(device, copy=True).requires_grad_(True)
    out = mmcv_roi_align.roi_align(x, g["rois"].to(device), case["output_size"], case["spatial_scale"],
                                   case["sampling_ratio"], "avg", case["aligned"])
    grad = torch.sin(torch.arange(out.numel(), dtype=torch.float32) * 0.7).reshape(out.shape)  # as the script
    out.backward(grad.to(device))
    torch.testing.assert_close(out.detach().cpu(), case["output"], rtol=0, atol=1e-5)
    torch.testing.assert_close(x.grad.cpu(), case["grad_input"], rtol=0, atol=1e-5)


def test_roi_align_module_and_autocast_keep_dtypes(tv_ext):
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.5, 1.0, 6.5, 7.0]])  # float32 boxes, float64 features
    out = mmcv_roi_align.RoIAlign(3, 1.0, 2, aligned=True)(x, rois)
    assert out.dtype == torch.float64 and out.shape == (1, 2, 3, 3)
    assert torch.autograd.gradcheck(lambda t: mmcv_roi_align.roi_align(t, rois.double(), 3, 1.0, 2, "avg", True), x)


def _assert_same_kept(keep: torch.Tensor, scores: torch.Tensor, golden_keep: torch.Tensor) -> None:
    """The same boxes kept, in descending score order; boxes with equal scores may come in another order."""
    keep = keep.cpu()
    assert sorted(keep.tolist()) == sorted(golden_keep.tolist())
    torch.testing.assert_close(scores[keep], scores[golden_keep], rtol=0, atol=0)
    assert torch.all(scores[keep][1:] <= scores[keep][:-1])


@pytest.mark.parametrize("device", DEVICES)
def test_nms_matches_compiled_mmcv(tv_ext, device):
    g = GOLDENS["nms"]
    boxes, scores = g["boxes"].to(device), g["scores"].to(device)
    assert len(g["nms"]) == 6
    for case in g["nms"]:
        dets, keep = mmcv_nms.nms(boxes, scores, case["iou_threshold"], offset=case["offset"])
        _assert_same_kept(keep, g["scores"], case["keep"])
        torch.testing.assert_close(dets.cpu(), torch.cat([g["boxes"], g["scores"][:, None]], 1)[keep.cpu()])
    dets, keep = mmcv_nms.nms(boxes[:0], scores[:0], 0.5)
    assert keep.shape == (0,) and dets.shape == (0, 5) and keep.dtype == g["empty"]["keep"].dtype


def test_nms_equal_scores_are_kept_as_compiled_mmcv_keeps_them(tv_ext):
    g = GOLDENS["nms"]
    ties = g["scores"] == 0.5
    assert ties.sum() == 10  # ten disjoint boxes with one score, each with a shifted copy that ties at 0.3
    kept = {c["iou_threshold"]: c["keep"] for c in g["nms"] if c["offset"] == 0}
    assert ties[kept[0.5]].sum() == 10 and (g["scores"][kept[0.5]] == 0.3).sum() == 0  # copies suppressed (IoU 0.6)
    assert (g["scores"][kept[0.7]] == 0.3).sum() == 10  # and kept above it


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_matches_compiled_mmcv(tv_ext, device):
    g = GOLDENS["nms"]
    assert {c["nms_cfg"]["split_thr"] for c in g["batched_nms"]} == {8, 10000}  # the per-class loop and one call
    for case in g["batched_nms"]:
        dets, keep = mmcv_nms.batched_nms(g["boxes"].to(device), g["scores"].to(device), g["idxs"].to(device),
                                          dict(case["nms_cfg"]), class_agnostic=case["class_agnostic"])
        _assert_same_kept(keep, g["scores"], case["keep"])
        torch.testing.assert_close(dets.cpu(), case["dets"][torch.argsort(case["keep"])][
            torch.argsort(torch.argsort(keep.cpu()))])


def test_served_module_has_every_name_and_says_so():
    spec = mmcv_tvops.ExtFinder().find_spec("mmcv._ext")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert all(callable(getattr(module, name)) for name in ext.__all__)
    assert module.__mmcv_tvops__ is True
    assert mmcv_tvops.ExtFinder().find_spec("mmcv.ops") is None


def _probe(tmp_path: Path, with_compiled: bool) -> str:
    """A fresh interpreter with a stand-in `mmcv` package (with or without an `_ext` of its own) before the real one;
    prints where `import mmcv._ext` came from and what `backend()` says."""
    pkg = tmp_path / "mmcv"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    if with_compiled:
        (pkg / "_ext.py").write_text("COMPILED = True\n")
    code = ("import mmcv_tvops; mmcv_tvops.install(); import mmcv._ext as e; "
            "print(hasattr(e, 'COMPILED'), hasattr(e, 'roi_align_forward'), mmcv_tvops.backend())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_finder_serves_ext_only_where_mmcv_has_none(tmp_path):
    assert _probe(tmp_path, with_compiled=False).split() == ["False", "True", "torchvision"]


def test_compiled_ext_wins_over_the_finder(tmp_path):
    assert _probe(tmp_path, with_compiled=True).split() == ["True", "False", "compiled"]


def test_backend_of_this_venv_and_the_record():
    from harness.provenance import package_versions

    compiled = any(MMCV_DIR.glob("_ext*.so"))
    expected = "compiled" if compiled else "torchvision"
    assert mmcv_tvops.backend() == expected
    versions = package_versions()
    assert versions["mmcv_ops"] == expected and versions["mmcv"] == "2.1.0"
