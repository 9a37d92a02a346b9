"""The result records as the report reads them: each record pruned to the fields the tables need, read once, and the
pretraining loss histories aggregated per setting (mean and spread over seeds at each logged step).

A sweep leaves thousands of records of a few kilobytes each (resolved recipe, per-epoch history, provenance); the
report needs a few dozen values from each. `read_compact` parses every file once and keeps only `FIELDS`, so that
the memory held grows with those values, not with the files; a records cache spares a repeated report the parsing.
The HTML page reads the whole record again only for the few hundred runs whose provenance it shows
(`harness.report_html.runs`). Histories are read only for the loss
figure and reduced at once to one curve per setting: the figure's cost grows with the settings, not with the seeds.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import store
from harness.records import record_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from tasks.spec import TaskSpec

# What the report reads from a record: a key maps to True (kept whole) or to the fields kept below it. Provenance,
# the resolved recipe beyond these keys and the tasks' per-epoch histories are left on disk.
FIELDS: dict[str, Any] = {
    "run_id": True, "attempt": True, "status": True, "kind": True, "task": True, "protocol": True, "seed": True,
    "metrics": True, "recipe_name": True, "overrides": True, "method": True, "error": True, "log": True,
    "wall_time_s": True, "finished_at": True, "data_root": True, "data_fingerprint": True,
    "recipe": {"name": True, "epochs": True, "partial": {"blocks": True}},
    "backbone": {"name": True, "pretrain": True, "checkpoint": True,
                 "spec": {"family": True, "paper_name": True, "arch": True, "arch_kwargs": True,
                          "pretrain_epochs": True}},
    "extra": {"log_jsonl": True, "reconstruction": True},
}  # plus what the task specs' split columns read (`report_fields`)


def split_overrides(specs: dict[str, TaskSpec] | None = None) -> frozenset[str]:
    """Overrides that split columns (`tasks.spec.Split`) already turn into columns of their own: `partial.blocks`."""
    from tasks.spec import builtin_specs

    specs = builtin_specs() if specs is None else specs
    return frozenset(c.split.recipe for s in specs.values() for c in s.columns if c.split is not None)


def report_fields(specs: dict[str, TaskSpec] | None = None) -> dict[str, Any]:
    """`FIELDS` and the keys the specs' split columns read: `extra.blocks`, `recipe.partial.blocks`."""
    from tasks.spec import builtin_specs

    specs = builtin_specs() if specs is None else specs
    out = json.loads(json.dumps(FIELDS))
    for col in (c for s in specs.values() for c in s.columns if c.split is not None):
        out["extra"][col.split.extra] = True
        node = out["recipe"]
        *parents, leaf = col.split.recipe.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if node.get(part) is not True else {}
        node[leaf] = True
    return out


def prune(node: Any, fields: dict[str, Any]) -> Any:
    """`node` with only `fields` (nested); a value that is not a mapping where one is expected is kept as it is."""
    if not isinstance(node, dict):
        return node
    return {k: node[k] if sub is True else prune(node[k], sub) for k, sub in fields.items() if k in node}


def read_compact(folder: str | Path, fields: dict[str, Any] | None = None, cache: bool = True,
                 meanwhile: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Every record in `folder` (all attempts) pruned to `fields` (default: `report_fields()`), each with `_path`;
    unreadable files are reported and skipped, as `store.read_records` does. With `cache`, the pruned records are kept
    in `folder/CACHE` and a file whose name, size and mtime are unchanged is not parsed again (`_Cache`). Many files
    to parse are parsed by forked helpers and here (`_parse`); `meanwhile`, if given, is run here while the helpers
    start (the report's figure workers: `harness.drawing.Drawer.executor`)."""
    fields = report_fields() if fields is None else fields
    folder = Path(folder)
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        # a record being written is a dot-file (`.tmp-...`) until it is complete
        entries = sorted((e for e in it if e.name.endswith(store.SUFFIX) and not e.name.startswith(".")),
                         key=lambda e: e.name)
    known = _Cache(folder / CACHE, fields) if cache else None
    hits = {e.name: known.get(e) for e in entries} if known else {}
    todo = [e for e in entries if hits.get(e.name) is None]
    parsed, texts = _parse([e.path for e in todo], fields, meanwhile)
    for entry, hit in zip(todo, parsed, strict=True):
        hits[entry.name] = hit
        if known and hit is not None and entry.name not in texts:
            known.put(entry, hit)
    if known:
        known.put_text(texts)
        known.save({e.name for e in entries})
    return [{**hits[e.name], "_path": e.path} for e in entries if hits[e.name] is not None]


PARALLEL_FROM = 500  # files to parse from which helpers share the work: below, forking costs more than it saves
CHUNK = 250  # files a process claims at a time


def _parse(paths: list[str], fields: dict[str, Any], meanwhile: Callable[[], Any] | None
           ) -> tuple[list[Any], dict[str, str]]:
    """(`_read_pruned` of each path, in order; the cache's entries of the files parsed in chunks, as JSON: a fragment
    of an object per chunk, by the names it holds). Many files are parsed in chunks by forked helpers and here
    (`harness.forkwork`), `meanwhile` run here first; a chunk comes back as JSON, which the cache writes as it is."""
    from harness import forkwork

    if len(paths) < PARALLEL_FROM:
        return [_read_pruned(p, fields) for p in paths], {}
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    done = forkwork.run_chunks(lambda c: _read_chunk(c, fields), chunks, forkwork.helpers_for(), meanwhile)
    out: list[Any] = []
    texts: dict[str, str] = {}
    for chunk, (body, problems) in zip(chunks, done, strict=True):
        entries = json.loads("{" + body + "}")
        for message in problems:
            warnings.warn(message, stacklevel=4)
        for path in chunk:
            entry = entries.get(os.path.basename(path))
            out.append(None if entry is None else entry[2])
        texts.update(dict.fromkeys(entries, body))
    return out, texts


def _read_chunk(paths: list[str], fields: dict[str, Any]) -> tuple[str, list[str]]:
    """(the cache's entries of the files, `"name": [size, mtime, record], ...`, as JSON; the warnings they gave)."""
    entries = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            hit = _read_pruned(path, fields)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if hit is not None:
                entries[os.path.basename(path)] = [st.st_size, st.st_mtime_ns, hit]
    return json.dumps(entries)[1:-1], [str(w.message) for w in caught]


def _read_pruned(path: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The record in `path` pruned to `fields`; None (with a warning) for a file that is not a record."""
    try:
        with open(path, "rb") as f:
            rec = json.loads(f.read())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        warnings.warn(f"skipping unreadable record {path}: {e}", stacklevel=4)
        return None
    if not isinstance(rec, dict) or any(k not in rec for k in store.REQUIRED):
        warnings.warn(f"skipping {path}: not a result record (needs {', '.join(store.REQUIRED)})", stacklevel=4)
        return None
    pruned = prune(rec, fields)
    problem = record_problem(pruned)
    if problem is not None:
        warnings.warn(f"skipping {path}: {problem}", stacklevel=4)
        return None
    return pruned


CACHE = ".report-cache"  # a dot-file without the records' suffix: never read as a record
CACHE_VERSION = 3  # 3: the pruned records only (2 held each record's provenance too)


class _Cache:
    """Pruned records by file name, valid while the file's size and mtime are those recorded and the fields the same:
    a record is written once and never rewritten (`store.write_record`), so that a sweep's report parses each file
    once. A missing, unreadable or other-fields cache is rebuilt without a word; it is written to a temporary file and
    renamed, and a folder that cannot be written is simply not cached."""

    def __init__(self, path: Path, fields: dict[str, Any]) -> None:
        self.path, self.changed = path, False
        self.key = json.dumps(fields, sort_keys=True)
        self.entries: dict[str, list[Any]] = {}
        self.texts: dict[str, str] = {}  # name -> a JSON fragment holding its entry (`put_text`)
        try:
            doc = json.loads(path.read_bytes())
            if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION and doc.get("fields") == self.key \
                    and isinstance(doc.get("entries"), dict):
                self.entries = doc["entries"]
        except (OSError, ValueError):
            pass

    @staticmethod
    def _stamp(entry: os.DirEntry) -> list[int]:
        st = entry.stat()
        return [st.st_size, st.st_mtime_ns]

    def get(self, entry: os.DirEntry) -> dict[str, Any] | None:
        hit = self.entries.get(entry.name)
        try:
            valid = isinstance(hit, list) and len(hit) == 3 and isinstance(hit[2], dict)
            valid = valid and hit[:2] == self._stamp(entry)
        except (OSError, TypeError):
            return None
        return hit[2] if valid else None

    def put(self, entry: os.DirEntry, hit: dict[str, Any]) -> None:
        try:
            self.entries[entry.name] = [*self._stamp(entry), hit]
            self.changed = True
        except OSError:
            pass

    def put_text(self, texts: dict[str, str]) -> None:
        """Entries as JSON already: name -> a fragment of an object (`"name": [...], ...`) that holds its entry."""
        for name in texts:
            self.entries.pop(name, None)
        self.texts.update(texts)
        self.changed = self.changed or bool(texts)

    def save(self, names: set[str]) -> None:
        gone = set(self.entries) - names
        for name in gone:
            del self.entries[name]
        if not (self.changed or gone):
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            parts = [json.dumps(self.entries)[1:-1], *dict.fromkeys(self.texts.values())]
            entries = "{" + ", ".join(p for p in parts if p) + "}"
            tmp.write_text(f'{{"version": {CACHE_VERSION}, "fields": {json.dumps(self.key)}, "entries": {entries}}}')
            os.replace(tmp, self.path)
        except (OSError, TypeError, ValueError):  # read-only folder, or a value JSON cannot hold
            tmp.unlink(missing_ok=True)


def recipe_label(rec: dict[str, Any], split: frozenset[str] | None = None) -> str:
    """The setting a run belongs to: the recipe's name (a recipe given as a YAML path is named by its file's stem),
    then its `--set` overrides, so that runs of different settings are never averaged as if they were seeds:
    `tiny`, `tiny [model.pyramid=taps]`."""
    name = str(rec.get("recipe_name") or (rec.get("recipe") or {}).get("name") or "")
    name = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    overrides = rec.get("overrides")
    if not overrides:
        return name
    split = split_overrides() if split is None else split
    overrides = {k: v for k, v in overrides.items() if k not in split}
    if overrides:
        name += " [" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(overrides.items())) + "]"
    return name


# --- pretraining loss histories ---


def read_loss(log_jsonl: Path) -> tuple[list[float], list[float]]:
    """(steps, losses) of a pretraining log; lines cut by a kill are skipped."""
    text = log_jsonl.read_text()
    try:  # one parse for the whole file; a cut or blank line sends it to the line-by-line path
        entries = json.loads("[" + text.strip().replace("\n", ",") + "]")
    except json.JSONDecodeError:
        entries = []
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    number = (int, float)  # not bool, not a string
    pairs = [(e.get("step", i), e.get("loss")) for i, e in enumerate(entries) if type(e) is dict]
    pairs = [(float(s), float(v)) for s, v in pairs if type(s) in number and type(v) in number and math.isfinite(v)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def pretrain_setting(rec: dict[str, Any], split: frozenset[str] | None = None) -> tuple[str, str]:
    """(panel, line) of a pretraining in the loss figure: one panel per method (MAE's pixel MSE, cross-entropy and
    MoCo's InfoNCE are on different scales), one line per backbone, recipe (with overrides) and length."""
    epochs = (rec.get("recipe") or {}).get("epochs")
    line = f"{(rec.get('backbone') or {}).get('name')}, {recipe_label(rec, split)}"
    line += f", {epochs} ep" if epochs else ""
    return str(rec.get("method")), line


def loss_curves(pretrains: list[dict[str, Any]], split: frozenset[str] | None = None) -> pd.DataFrame:
    """One row per (panel, setting, logged step): mean and sample std of the loss over the seeds that logged that
    step, and their number n (a run cut short by a kill counts where it has values)."""
    return curves_from_logs(loss_logs(pretrains, split))


def loss_logs(pretrains: list[dict[str, Any]], split: frozenset[str] | None = None
              ) -> list[tuple[tuple[str, str], str, list[int]]]:
    """((panel, setting), log path, [size, mtime]) of each pretraining whose log is there: what `curves_from_logs`
    reads, and what tells whether it changed."""
    out = []
    for rec in pretrains:
        log = (rec.get("extra") or {}).get("log_jsonl")
        try:
            st = os.stat(log) if log else None
        except OSError:
            st = None
        if st is not None and Path(log).is_file():
            out.append((pretrain_setting(rec, split), str(log), [st.st_size, st.st_mtime_ns]))
    return out


def curves_from_logs(logs: list[tuple[tuple[str, str], str, list[int]]]) -> pd.DataFrame:
    """`loss_curves` of the logs `loss_logs` found."""
    import numpy as np
    import pandas as pd

    runs: dict[tuple[str, str], list[tuple[list[float], list[float]]]] = defaultdict(list)
    for setting, log, _ in logs:
        steps, losses = read_loss(Path(log))
        if losses:
            runs[tuple(setting)].append((steps, losses))
    parts = []
    for (panel, setting), curves in sorted(runs.items()):
        steps = np.concatenate([np.asarray(s) for s, _ in curves])
        losses = np.concatenate([np.asarray(v) for _, v in curves])
        grid, at = np.unique(steps, return_inverse=True)
        n = np.bincount(at)
        mean = np.bincount(at, losses) / n
        var = np.bincount(at, (losses - mean[at]) ** 2) / np.maximum(n - 1, 1)
        parts.append(pd.DataFrame({"panel": panel, "setting": setting, "step": grid, "mean": mean,
                                   "std": np.where(n > 1, np.sqrt(var), np.nan), "n": n}))
    if not parts:
        return pd.DataFrame(columns=["panel", "setting", "step", "mean", "std", "n"])
    return pd.concat(parts, ignore_index=True)


# --- one results file ---

IDENTITY = ("run_id", "kind", "task", "protocol", "seed", "status")


def records_frame(records: list[dict[str, Any]], split: frozenset[str] | None = None) -> pd.DataFrame:
    """One row per run (its newest record): its identity, backbone, setting (`recipe_label`), the `--sweep` setting
    of the pretraining it loads (`{key, value}`, else None) and every metric."""
    import pandas as pd

    rows = []
    for rec in store.latest(records).values():
        backbone = rec.get("backbone") or {}
        rows.append({**{k: rec.get(k) for k in IDENTITY}, "backbone": backbone.get("name"),
                     "family": (backbone.get("spec") or {}).get("family"), "recipe": recipe_label(rec, split),
                     "sweep": (backbone.get("pretrain") or {}).get("sweep"), "error": rec.get("error"),
                     "metrics": rec.get("metrics") or {}})
    return pd.DataFrame(rows, columns=[*IDENTITY, "backbone", "family", "recipe", "sweep", "error", "metrics"])


def write_json(path: Path, runs: pd.DataFrame, summary: pd.DataFrame, tables: list[dict[str, Any]]) -> Path:
    """`results.json`: `runs` (`records_frame`), `cells` (the summary: mean, std, n, interval, paired Δ per recipe,
    backbone and column) and `tables` (name, title, rows as shown, Markdown); NaN is written as null. Written to a
    temporary file and renamed, so that a reader never sees half of it."""
    cells = summary.drop(columns=["size"], errors="ignore")
    # pandas writes the frames (NaN as null) and json the rest, each with its C encoder: 10,000 runs in a blink
    text = (f'{{"runs": {runs.to_json(orient="records", force_ascii=False)},\n'
            f'"cells": {cells.to_json(orient="records", force_ascii=False)},\n'
            f'"tables": {json.dumps(tables, ensure_ascii=False, allow_nan=False)}}}\n')
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def embedded_tasks(records: list[dict[str, Any]]) -> frozenset[str]:
    """Tasks whose runs all read the embedded Fashion-MNIST sets: no record of theirs names a data root."""
    real = {r.get("task") for r in records if r.get("data_root")}
    return frozenset({str(r.get("task")) for r in records if r.get("kind") != "pretrain"} - real)
