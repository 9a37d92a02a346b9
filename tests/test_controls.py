"""Controls (`harness.controls`): which control runs a suite plans, how their records become the tables' floor and
pixel rows (after the backbones, in the setting they control), and the verdict under each table in every branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import controls, store
from harness.report import flatten, summarize, tables, write_report
from tasks.spec import builtin_specs
from tests.test_report import rec

FREEZE = {"model.freeze_backbone": True}
FLOOR, PIXELS = controls.LABELS["floor"], controls.LABELS["pixels"]


def _floor(task: str, seed: int, metrics: dict, protocol: str | None = None, backbone: str = "random:mae_t") -> dict:
    overrides = {} if task == "in1k" else FREEZE
    return rec(backbone, "scratch", task, protocol, seed, metrics, overrides=overrides,
               run_id=f"floor-{backbone}-{task}-{seed}")


def _tables(recs: list[dict]) -> dict:
    return tables(summarize(flatten(recs)))


def test_parse_controls() -> None:
    assert controls.parse_controls("floor,pixels", "--controls") == ("floor", "pixels")
    assert controls.parse_controls(["pixels"], "preset x: controls") == ("pixels",)
    assert controls.parse_controls("none", "--controls") == () == controls.parse_controls(None, "--controls")
    with pytest.raises(ValueError, match="--controls 'flor': allowed are none or comma-separated floor, pixels"):
        controls.parse_controls("flor", "--controls")
    for empty in ("", " , "):
        with pytest.raises(ValueError, match="--controls is empty"):
            controls.parse_controls(empty, "--controls")
    assert controls.parse_controls([], "preset x: controls") == ()  # a preset's empty list: no controls


def test_one_floor_per_architecture_and_one_pixel_run() -> None:
    tiny = {"arch": "vit_tiny", "arch_kwargs": {"depth": 6}, "img_size": 32, "patch_size": 4}
    specs = {"mae_t": {**tiny, "family": "mae"}, "sup_t": {**tiny, "family": "supervised"},
             "mae_b": {"arch": "vit_base", "img_size": 224, "patch_size": 16, "family": "mae", "url": "https://x"}}
    assert controls.floor_backbones(specs) == ["random:mae_t", "random:mae_b"]
    # a from-scratch backbone of the suite is its architecture's random encoder (its linear probe is the in1k floor)
    specs["scratch_t"] = {**tiny, "family": "scratch"}
    assert controls.floor_backbones(specs) == ["scratch_t", "random:mae_b"]
    assert controls.floor_backbones({**specs, "scratch_t": {**specs["scratch_t"], "checkpoint": "/w.pth"}}) == [
        "random:mae_t", "random:mae_b"]  # given weights (--checkpoint), it is no random encoder
    spec = builtin_specs()
    in1k = [(c.kind, c.protocol, b) for c, b in controls.control_settings(spec["in1k"], ("floor", "pixels"), specs)]
    assert in1k == [("floor", "linprobe", "scratch_t"), ("floor", "linprobe", "random:mae_b"),
                    ("pixels", "pixels", "scratch_t")]
    coco = controls.control_settings(spec["coco"], ("floor", "pixels"), specs)  # no pixel reference for detection
    assert [(c.kind, c.overrides, b) for c, b in coco] == [("floor", FREEZE, "scratch_t"), ("floor", FREEZE,
                                                                                            "random:mae_b")]
    assert controls.control_settings(spec["coco"], (), specs) == []


def _coco(mae: list[float], sup: list[float], floor: list[float]) -> list[dict]:
    out = [rec("mae_t", "mae", "coco", None, s, {"bbox_mAP": v, "segm_mAP": v}) for s, v in enumerate(mae)]
    out += [rec("sup_t", "supervised", "coco", None, s, {"bbox_mAP": v, "segm_mAP": v}) for s, v in enumerate(sup)]
    return out + [_floor("coco", s, {"bbox_mAP": v, "segm_mAP": v}) for s, v in enumerate(floor)]


def test_floor_row_follows_the_backbones_in_their_setting() -> None:
    out = _tables(_coco([20.0, 21.0, 22.0], [18.0, 18.5, 19.0], [3.0, 3.5, 4.0]))
    assert list(out) == ["coco"]  # the floor's freeze override is not a setting of its own
    table = out["coco"]
    assert list(table["backbone"]) == ["sup_t", "mae_t", FLOOR] and table["family"].iloc[-1] == "floor"
    assert table.set_index("backbone").loc[FLOOR, "COCO APbox"] == "3.5 ± 0.5 [2.3, 4.7] (n=3)"


def test_verdict_separates_with_the_numbers() -> None:
    lines = _tables(_coco([20.0, 21.0, 22.0], [18.0, 18.5, 19.0], [3.0, 3.5, 4.0]))["coco"].attrs["verdicts"]
    assert lines[0] == ("COCO APbox: separates: best mae_t 21.0 ± 1.0 (n=3), floor 3.5 ± 0.5 (n=3); gap 17.5 > 3 × "
                        "the larger std = 3.0")
    assert len(lines) == 2 and lines[1].startswith("COCO APmask: separates")


def test_verdict_does_not_separate_within_three_stds() -> None:
    lines = _tables(_coco([5.0, 7.0, 9.0], [4.0, 5.0, 6.0], [3.0, 4.0, 5.0]))["coco"].attrs["verdicts"]
    assert lines[0] == ("COCO APbox: this task does not separate these backbones at this budget (best mae_t 7.0 ± 2.0 "
                        "(n=3), floor 4.0 ± 1.0 (n=3); gap 3.0 ≤ 3 × the larger std = 6.0)")


def test_verdict_with_one_seed_says_it_cannot_tell() -> None:
    lines = _tables(_coco([20.0], [18.0], [3.0]))["coco"].attrs["verdicts"]
    assert lines[0].startswith("COCO APbox: one seed cannot tell whether this task separates the backbones from the "
                               "floor (best mae_t 20.0 (n=1), floor 3.0 (n=1))")


def test_verdict_compares_pretrained_backbones_only() -> None:
    """A from-scratch backbone is no candidate for the best (in1k: its linear probe is the floor itself)."""
    recs = _coco([2.0, 2.5, 3.0], [2.0, 2.1, 2.2], [3.0, 3.5, 4.0])
    recs += [rec("scratch_t", "scratch", "coco", None, s, {"bbox_mAP": 30.0 + s, "segm_mAP": 30.0}) for s in range(3)]
    lines = _tables(recs)["coco"].attrs["verdicts"]
    assert lines[0].startswith(f"COCO APbox: {controls.NO_SEPARATION} (best mae_t 2.5 ± 0.5 (n=3)")
    only_scratch = [r for r in recs if r["backbone"]["name"] not in ("mae_t", "sup_t")]
    assert _tables(only_scratch)["coco"].attrs["verdicts"] == []  # a floor, but nothing pretrained to compare


def test_verdict_without_a_floor_says_how_to_get_one() -> None:
    lines = _tables(_coco([20.0, 21.0], [18.0, 19.0], []))["coco"].attrs["verdicts"]
    assert lines == ["No floor row: run with --controls floor to see whether this task separates the backbones."]


def test_in1k_floor_is_the_random_linear_probe_and_pixels_sit_in_the_linear_column() -> None:
    recs = [rec("mae_t", "mae", "in1k", "linprobe", s, {"top1": v}) for s, v in enumerate([60.0, 61.0])]
    recs += [rec("mae_t", "mae", "in1k", "finetune", s, {"top1": v}) for s, v in enumerate([80.0, 81.0])]
    # a from-scratch backbone of the suite: its linear probe is both its own cell and the floor (one run)
    recs += [rec("scratch_t", "scratch", "in1k", "linprobe", s, {"top1": v}) for s, v in enumerate([30.0, 31.0])]
    recs += [rec("random:mae_t", "scratch", "in1k", "pixels", s, {"top1": v}) for s, v in enumerate([70.0, 72.0])]
    table = _tables(recs)["in1k"]
    assert list(table["backbone"]) == ["mae_t", "scratch_t", FLOOR, PIXELS]
    rows = table.set_index("backbone")
    lp, ft = "IN1K linear top-1", "IN1K fine-tune top-1"
    assert rows.loc["scratch_t", lp] == rows.loc[FLOOR, lp] == "30.5 ± 0.7 [24.1, 36.9] (n=2)"
    assert rows.loc[PIXELS, lp] == "71.0 ± 1.4 [58.3, 83.7] (n=2)" and rows.loc[PIXELS, ft] == ""
    assert rows.loc[FLOOR, ft] == ""
    given = rec("scratch_t", "scratch", "in1k", "linprobe", 0, {"top1": 1.0}, run_id="given")
    given["backbone"]["checkpoint"] = "/w.pth"  # weights given to a from-scratch entry: a backbone, not the floor
    assert controls.control_of(given, builtin_specs()["in1k"]) is None
    (line,) = table.attrs["verdicts"]  # the floor is in the linear column only; pixels are no backbone
    assert line.startswith("IN1K linear top-1: separates: best mae_t 60.5 ± 0.7 (n=2), floor 30.5 ± 0.7 (n=2)")


def test_report_files_show_rows_and_verdicts(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    for r in _coco([20.0, 21.0, 22.0], [18.0, 18.5, 19.0], [3.0, 3.5, 4.0]):
        store.write_record(folder, r)
    write_report(folder, tmp_path / "out", formats=["md"], plots=False)
    md = (tmp_path / "out" / "coco.md").read_text()
    assert f"| {FLOOR} |" in md and "> COCO APbox: separates: best mae_t" in md
    assert "> COCO APbox: separates" in (tmp_path / "out" / "README.md").read_text()
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    (coco,) = doc["tables"]
    assert coco["verdicts"][0].startswith("COCO APbox: separates") and coco["rows"][-1]["backbone"] == FLOOR
    cells = [c for c in doc["cells"] if c["family"] == "floor"]
    assert cells and all(c["control"] for c in cells) and {c["backbone"] for c in cells} == {FLOOR}
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<p class="verdict">COCO APbox: separates' in page and FLOOR in page


def test_floor_is_the_dashed_line_of_the_chart(tmp_path: Path) -> None:
    from harness import plots
    from harness.report import column_label, table_parts

    summary = summarize(flatten(_coco([20.0, 21.0], [18.0, 19.0], [3.0, 4.0])
                                + [rec("scratch_t", "scratch", "coco", None, s, {"bbox_mAP": 15.0, "segm_mAP": 14.0})
                                   for s in (0, 1)]))
    (_, _, _, part, present), = table_parts(summary)
    assert set(part[part["control"]]["label"]) == {FLOOR}  # a from-scratch fine-tune is a backbone, not the floor
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    plots._bar_panel(ax, part, present, {c: column_label(c) for c in present}, "coco")
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert sorted(line.get_ydata()[0] for line in dashed) == [3.5, 3.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sup_t", "mae_t", "scratch_t", FLOOR]


def test_floors_of_several_architectures_are_named_by_theirs() -> None:
    base = {"arch": "vit_base_patch16_224", "arch_kwargs": {}, "paper_name": "ViT-B"}
    large = {"arch": "vit_large_patch16_224", "arch_kwargs": {}, "paper_name": "ViT-L"}
    recs = [rec("mae_b", "mae", "coco", None, 0, {"bbox_mAP": 40.0}, spec=base),
            rec("mae_l", "mae", "coco", None, 0, {"bbox_mAP": 45.0}, spec=large),
            rec("random:mae_b", "scratch", "coco", None, 0, {"bbox_mAP": 5.0}, spec=base, overrides=FREEZE),
            rec("random:mae_l", "scratch", "coco", None, 0, {"bbox_mAP": 6.0}, spec=large, overrides=FREEZE)]
    table = _tables(recs)["coco"].set_index("backbone")
    assert table.loc[f"{FLOOR}, ViT-B", "COCO APbox"] == "5.0 (n=1)"
    assert table.loc[f"{FLOOR}, ViT-L", "COCO APbox"] == "6.0 (n=1)"
    lines = _tables(recs)["coco"].attrs["verdicts"]  # each floor against the backbones of its architecture
    assert lines[0].startswith(f"COCO APbox, {FLOOR}, ViT-B: one seed cannot tell") and "best mae_b 40.0" in lines[0]
    assert lines[1].startswith(f"COCO APbox, {FLOOR}, ViT-L: one seed cannot tell") and "best mae_l 45.0" in lines[1]
