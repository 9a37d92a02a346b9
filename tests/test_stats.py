"""The report's intervals on known records, cell by cell: the t-interval of each cell and the seed-paired Δ."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from scipy.stats import t

from harness import store
from harness.report import flatten, tables
from harness.stats import fmt_delta, summarize, t_interval
from tests.test_report import rec

MAE = {0: 80.0, 1: 83.0, 2: 84.5}  # seed -> top-1
SUP = {0: 79.0, 1: 81.5, 3: 78.0}  # seed 3 has no MAE partner, seed 2 no supervised one
MOCO = {0: 81.0, 1: 83.0, 2: 82.0}
SUP_LP = {0: 60.0, 1: 61.0, 2: 62.0}
MAE_LP = {0: 70.0, 1: 72.0, 2: 73.0}


def by_formula(values: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper): mean ± t(0.975, n-1) s / √n."""
    n, mean, s = len(values), statistics.mean(values), statistics.stdev(values)
    half = t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.fixture
def summary(tmp_path: Path):
    folder = tmp_path / "records"
    for name, family, protocol, values in (("mae_t", "mae", "finetune", MAE), ("sup_t", "supervised", "finetune", SUP),
                                           ("moco_t", "mocov3", "finetune", MOCO),
                                           ("sup_t", "supervised", "linprobe", SUP_LP),
                                           ("mae_t", "mae", "linprobe", MAE_LP)):
        for seed, v in values.items():
            store.write_record(folder, rec(name, family, "in1k", protocol, seed, {"top1": v}))
    return summarize(flatten(store.read_records(folder))).set_index(["backbone", "column"])


@pytest.mark.parametrize(("backbone", "column", "values"), [
    ("mae_t", "in1k_finetune", MAE), ("sup_t", "in1k_finetune", SUP), ("moco_t", "in1k_finetune", MOCO),
    ("sup_t", "in1k_linprobe", SUP_LP), ("mae_t", "in1k_linprobe", MAE_LP)])
def test_cell_intervals(summary, backbone: str, column: str, values: dict) -> None:
    row = summary.loc[(backbone, column)]
    mean, lo, hi = by_formula(list(values.values()))
    assert row["n"] == 3 and row["mean"] == pytest.approx(mean)
    assert row["ci_lo"] == pytest.approx(lo) and row["ci_hi"] == pytest.approx(hi)


def test_paired_delta_uses_only_shared_seeds(summary) -> None:
    mae = summary.loc[("mae_t", "in1k_finetune")]
    diffs = [MAE[s] - SUP[s] for s in (0, 1)]  # 1.0, 1.5
    mean, lo, hi = by_formula(diffs)
    assert mae["delta_n"] == 2 and mae["delta"] == pytest.approx(1.25) == pytest.approx(mean)
    assert mae["delta_lo"] == pytest.approx(lo) and mae["delta_hi"] == pytest.approx(hi)
    assert lo < 0 < hi and not mae["delta_sig"]  # two seeds: the interval is wide
    assert mae["delta"] != pytest.approx(statistics.mean(MAE.values()) - statistics.mean(SUP.values()))
    base = summary.loc[("sup_t", "in1k_finetune")]
    assert math.isnan(base["delta"]) and base["baseline"] == "sup_t"


def test_paired_delta_marks_an_interval_without_zero(summary) -> None:
    lp = summary.loc[("mae_t", "in1k_linprobe")]
    diffs = [MAE_LP[s] - SUP_LP[s] for s in (0, 1, 2)]  # 10, 11, 11
    mean, lo, hi = by_formula(diffs)
    assert lp["delta_n"] == 3 and lp["delta"] == pytest.approx(mean) and lp["delta_sig"]
    assert (lp["delta_lo"], lp["delta_hi"]) == pytest.approx((lo, hi)) and lo > 0
    assert fmt_delta(lp["delta"], lp["delta_lo"], lp["delta_hi"], 3) == f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]* (3 pairs)"


def test_table_cells_and_row_order(summary) -> None:
    table = tables(summary.reset_index())["in1k"].set_index("backbone")
    assert list(table.index) == ["sup_t", "mae_t", "moco_t"]  # the baseline first, then alphabetical
    ft = "IN1K fine-tune top-1"
    mean, lo, hi = by_formula(list(MAE.values()))
    s = statistics.stdev(MAE.values())
    assert table.loc["mae_t", ft] == f"{mean:.1f} ± {s:.1f} [{lo:.1f}, {hi:.1f}] (n=3)"
    d, dlo, dhi = by_formula([MAE[s] - SUP[s] for s in (0, 1)])
    assert table.loc["mae_t", f"Δ {ft}"] == f"{d:+.1f} [{dlo:+.1f}, {dhi:+.1f}] (2 pairs)"  # no mark: 0 inside
    moco = by_formula([MOCO[s] - SUP[s] for s in (0, 1)])
    assert table.loc["moco_t", f"Δ {ft}"] == f"{moco[0]:+.1f} [{moco[1]:+.1f}, {moco[2]:+.1f}] (2 pairs)"


def test_t_interval_needs_two_values() -> None:
    assert all(math.isnan(x) for x in t_interval(80.0, float("nan"), 1))
    assert t_interval(10.0, 1.0, 4) == pytest.approx((10 - 3.182446 / 2, 10 + 3.182446 / 2))  # t(0.975, 3)
    assert fmt_delta(2.0, float("nan"), float("nan"), 1) == "+2.0"


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 9, 29, 100])
def test_t_quantile_matches_scipy(df: int) -> None:
    from harness.stats import t_quantile

    for level in (0.5, 0.9, 0.95, 0.99):
        assert t_quantile(level, df) == pytest.approx(t.ppf(0.5 + level / 2, df), rel=1e-9)
