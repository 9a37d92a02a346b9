"""The report's statistics over seeds: each cell's mean, sample std, n and 95% t-interval of the mean, and the
difference to the baseline (the supervised backbone of the same architecture and setting, as in He et al. 2021,
Tables 3-5) compared seed by seed.

Intervals are Student-t intervals, `mean ± t(0.975, n-1) · s / √n`, not bootstrap ones: with the
2-5 seeds a sweep affords, a bootstrap has too few distinct resamples to mean much. The Δ of a backbone pairs its runs
with the baseline's of the same seed (only seeds both have) and takes the t-interval of the paired differences, which
removes what a seed does to both (data order, the head's initialisation); it is marked `*` when that interval
excludes 0. With fewer than two pairs Δ is the plain difference of the means, without an interval.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

BASELINE_FAMILY = "supervised"
# The rows of the controls (`harness.controls`): after the backbones in every table and chart; the floor's means (a
# random encoder, frozen) are the charts' dashed lines.
CONTROL_FAMILIES = ("floor",)
LAST_FAMILIES = ("floor", "pixels")
LEVEL = 0.95
INTERVAL_NOTE = ("Cells: mean ± sample std over seeds, [95% t-interval of the mean: mean ± t(0.975, n-1)·s/√n] "
                 "(n seeds); Δ: difference to the supervised backbone of the same architecture and recipe, paired by "
                 "seed (mean of the per-seed differences with its 95% t-interval, `*` when it excludes 0, n pairs); "
                 "with fewer than two pairs, the difference of the means.")
SUMMARY_COLUMNS = ["recipe", "backbone", "pretrain_epochs", "sweep_key", "sweep_value", "family", "model", "size",
                   "column", "mean", "std", "n",
                   "ci_lo", "ci_hi", "label", "baseline", "delta", "delta_lo", "delta_hi", "delta_n", "delta_sig",
                   "published", "control"]


def t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` (a whole number) degrees of freedom, in closed form (Abramowitz and
    Stegun 26.7.3-4: a finite series in cos(θ), θ = atan(t / √df)); here rather than scipy.stats, whose import
    alone costs more than the whole report's arithmetic."""
    theta = math.atan(t / math.sqrt(df))
    c2, term = math.cos(theta) ** 2, 1.0
    if df % 2 == 0:
        total = 1.0
        for k in range(2, df, 2):  # 1 + (1/2) c² + (1·3)/(2·4) c⁴ + ...
            term *= c2 * (k - 1) / k
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    total = term = math.cos(theta)
    for k in range(3, df - 1, 2):  # cos θ (1 + (2/3) c² + (2·4)/(3·5) c⁴ + ...)
        term *= c2 * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * total)


@lru_cache(maxsize=256)
def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = `level` (t(0.975, df) for level 0.95), by bisection on `t_central`."""
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < level:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_central(mid, df) < level else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def t_interval(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The `level` t-interval of a mean of `n` values with sample std `std`; (nan, nan) for n < 2."""
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    half = t_quantile(level, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """mean, std (sample, n-1), n and t-interval per (recipe, backbone, pretraining length, column), the paired
    difference to the baseline, and the published value where the setting matches the paper's; the baseline's rows
    first in each table (`row_order`)."""
    import pandas as pd

    from harness.reference import published

    done = frame[frame["column"].notna() & frame["value"].notna()]
    if done.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    # the same backbone name pretrained for different epochs (an epochs sweep) is a different encoder, not a seed
    # and so is each setting of a `--sweep`
    keys = ["recipe", "backbone", "pretrain_epochs", "sweep_key", "sweep_value", "family", "model", "size", "column"]
    done = done.fillna({"recipe": "", "family": "", "model": ""})
    group = done.groupby(keys, dropna=False, sort=True).ngroup()
    agg = done.assign(gid=group).groupby("gid").agg(
        **{k: (k, "first") for k in keys}, mean=("value", "mean"), std=("value", "std"), n=("value", "count"))
    agg = agg.reset_index()
    seeds: dict[int, dict] = {}
    for (g, seed), value in done.assign(gid=group).groupby(["gid", "seed"])["value"].mean().items():
        seeds.setdefault(g, {})[seed] = value
    ci = [t_interval(m, s, n) for m, s, n in zip(agg["mean"], agg["std"], agg["n"], strict=True)]
    agg["ci_lo"], agg["ci_hi"] = [c[0] for c in ci], [c[1] for c in ci]
    agg["label"] = _row_labels(agg)
    base = agg[agg["family"] == BASELINE_FAMILY].sort_values(["backbone", "pretrain_epochs", "sweep_key"],
                                                             na_position="first")
    base = base.drop_duplicates(["recipe", "size", "column"]).set_index(["recipe", "size", "column"])
    deltas = [_delta(row, base, seeds) for row in agg.itertuples(index=False)]
    delta_cols = ["baseline", "delta", "delta_lo", "delta_hi", "delta_n", "delta_sig"]
    out = pd.concat([agg, pd.DataFrame(deltas, columns=delta_cols)], axis=1)
    out["published"] = [
        published(f, m, c) if r == "paper" else None for r, f, m, c in
        zip(out["recipe"], out["family"], out["model"], out["column"], strict=True)
    ]
    out["control"] = out["family"].isin(CONTROL_FAMILIES)
    out["_first"] = [0 if f == BASELINE_FAMILY else 2 + LAST_FAMILIES.index(f) if f in LAST_FAMILIES else 1
                     for f in out["family"]]  # the baseline, the backbones, then the controls
    out = out.sort_values(["recipe", "column", "_first", "label"]).reset_index(drop=True)
    return out[SUMMARY_COLUMNS]


def _delta(row: tuple, base: pd.DataFrame, seeds: dict[int, dict]) -> tuple:
    """(baseline label, Δ, its interval, pairs, interval excludes 0) of one summary row."""
    nan = math.nan
    key = (row.recipe, row.size, row.column)
    if key not in base.index:
        return None, nan, nan, nan, 0, False
    b = base.loc[key]
    if b["label"] == row.label:  # the baseline row itself
        return b["label"], nan, nan, nan, 0, False
    mine, theirs = seeds.get(row.gid, {}), seeds.get(int(b["gid"]), {})
    pairs = [mine[s] - theirs[s] for s in mine if s in theirs]
    if len(pairs) < 2:
        return b["label"], row.mean - b["mean"], nan, nan, len(pairs), False
    mean = sum(pairs) / len(pairs)
    std = math.sqrt(sum((d - mean) ** 2 for d in pairs) / (len(pairs) - 1))
    lo, hi = t_interval(mean, std, len(pairs))
    return b["label"], mean, lo, hi, len(pairs), bool(lo > 0 or hi < 0)


def _row_labels(agg: pd.DataFrame) -> list[str]:
    """A table row's name: the backbone, with its pretraining epochs where one setting holds several of them."""
    epochs = agg.groupby(["recipe", "backbone"], dropna=False)["pretrain_epochs"].transform(
        lambda e: e.nunique(dropna=False))
    labels = [f"{b} ({int(e)} ep)" if n > 1 and e == e else b
              for b, e, n in zip(agg["backbone"], agg["pretrain_epochs"], epochs, strict=True)]
    # a --sweep setting other than epochs (which the epochs label above shows)
    return [f"{label} ({str(k).rsplit('.', 1)[-1]}={v})" if isinstance(k, str) and k != "epochs" else label
            for label, k, v in zip(labels, agg["sweep_key"], agg["sweep_value"], strict=True)]


def row_order(part: pd.DataFrame) -> list[str]:
    """The rows of a table or bars of a chart: the baseline first (the row Δ refers to), then alphabetical, then the
    controls (floor, pixels)."""
    rank = {label: 0 if family == BASELINE_FAMILY else 2 + LAST_FAMILIES.index(family) if family in LAST_FAMILIES
            else 1 for label, family in zip(part["label"], part["family"], strict=True)}
    return sorted(rank, key=lambda label: (rank[label], label))


def fmt_cell(mean: float, std: float, n: int, digits: int = 1) -> str:
    """'83.6 ± 0.2 [83.1, 84.1] (n=3)' (std, then the 95% t-interval); a single seed: '83.6 (n=1)'."""
    if n > 1 and not math.isnan(std):
        lo, hi = t_interval(mean, std, n)
        return f"{mean:.{digits}f} ± {std:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (n={n})"
    return f"{mean:.{digits}f} (n={n})"


def fmt_delta(delta: float, lo: float = math.nan, hi: float = math.nan, pairs: int = 0, digits: int = 1) -> str:
    """'+1.2 [+0.4, +2.0]* (3 pairs)' (paired, `*`: the interval excludes 0), or '+1.2' without pairs."""
    if delta is None or math.isnan(delta):
        return ""
    if pairs < 2 or math.isnan(lo):
        return f"{delta:+.{digits}f}"
    mark = "*" if lo > 0 or hi < 0 else ""
    return f"{delta:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark} ({pairs} pairs)"
