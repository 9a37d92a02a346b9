"""The harness from Python: `run_suite` does what `harness run` does and returns the records as a DataFrame;
`report` does what `harness report` does and returns what it wrote, with the tables as frames.

    from harness import api
    runs = api.run_suite(preset="tiny", backbones="mae_vit_tiny_patch4", seeds=[0, 1], out="runs/try")
    tables = api.report("runs/try", "results/try")["tables"]

The options are those of the command line (`harness.run.options.RunOptions`, the flags with `_` for `-`); a list is
accepted where the flag takes a comma-separated list (`suite`, `backbones`, `seeds`, `protocols`, `controls`) or repeats
(`recipe`, `checkpoint`, `overrides`, `backbone_module`). Bad options raise before any run starts.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from harness.run.options import RunOptions

COMMA_LISTS = ("suite", "backbones", "seeds", "protocols", "controls")


def run_options(**options: Any) -> RunOptions:
    """`RunOptions` from keyword options, as the command line would give them."""
    from harness.run.options import RunOptions

    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run_suite: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in options.items():
        if key in COMMA_LISTS and isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, list):
            value = tuple(str(v) for v in value)
        elif key == "sweep" and isinstance(value, dict):  # {"pretrain.model.mask_ratio": [0.5, 0.75]}
            value = tuple(f"{k}={','.join(str(v) for v in vs)}" for k, vs in value.items())
        elif isinstance(value, Path):
            value = str(value)
        values[key] = value
    return RunOptions(**values)


def run_suite(**options: Any) -> pd.DataFrame:
    """Runs a suite as `harness run` with these options and returns one row per run of its records folder (the newest
    record of each): identity, backbone, setting and each metric as a column `metrics.<key>`. The command's exit
    status (the number of runs that did not finish) is in `frame.attrs['exit_status']`. Raises
    `harness.run.PlanError` on bad input, before anything runs."""
    from harness.run import run
    from harness.run.plan import build_plan

    opts = run_options(**options)
    plan = build_plan(opts)  # bad input raises here, with the flag or file it concerns
    status = run(opts)
    frame = records(plan.records)
    frame.attrs["exit_status"] = status
    return frame


def records(runs: str | Path) -> pd.DataFrame:
    """The runs of a run folder (or records folder) as `run_suite` returns them."""
    import pandas as pd

    from harness import results
    from harness.report import records_dir, report_specs

    specs = report_specs(runs)
    recs = results.read_compact(records_dir(runs), results.report_fields(specs))
    frame = results.records_frame(recs, results.split_overrides(specs))
    metrics = pd.json_normalize(list(frame["metrics"])).add_prefix("metrics.") if len(frame) else pd.DataFrame()
    return pd.concat([frame.drop(columns=["metrics"]), metrics.set_axis(frame.index)], axis=1)


def report(runs: str | Path, out: str | Path = "results", **options: Any) -> dict[str, Any]:
    """`harness report --runs RUNS --out OUT` with `write_report`'s options (`formats`, `plots`, `top1`); returns
    `files` (written), `results` (the path of `results.json`), `summary` (one row per cell) and `tables` (name ->
    the table as shown)."""
    import json

    import pandas as pd

    from harness.report import RESULTS_JSON, records_dir, write_report

    source = records_dir(runs)
    if not source.is_dir():
        raise FileNotFoundError(f"report: no records folder at {source}")
    out = Path(out)
    files = write_report(source, out, **options)
    doc = json.loads((out / RESULTS_JSON).read_text())
    return {"files": files, "results": out / RESULTS_JSON, "summary": pd.DataFrame(doc["cells"]),
            "tables": {t["name"]: pd.DataFrame(t["rows"]) for t in doc["tables"]}}
