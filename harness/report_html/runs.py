"""Each run's provenance for the HTML report, as lm-evaluation-harness keeps the config, versions and git hash beside
each result: what ran (recipe, backbone spec and checkpoint hash, seed, data), where and with what (versions, git
commit, hardware), how long, its log, and how it failed.

The page shows in full at most `LIMIT` runs of each group (pretrainings, then each task): its failed runs first, then
its newest; a line says how many more there are, which `runs.csv` and `results.json` list. Those runs' records are
read again, whole (the report's own reading, `harness.results.read_compact`, keeps only what the tables need), so
that the page's cost grows with the runs it shows, not with a sweep's thousands. The resolved recipe, the backbone
spec and the environment (versions, git, hardware) repeat across runs; each distinct one is shown once and the runs
link to it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.report_html.markup import details, esc, fields

KEEP = ("run_id", "status", "kind", "task", "protocol", "recipe_name", "recipe_version", "overrides", "seed", "method",
        "metrics", "error", "failure", "launcher", "world_size", "wall_time_s", "started_at", "finished_at", "log",
        "work_dir", "data_root", "data_fingerprint")
SHARED = {"recipe": "Resolved recipes", "spec": "Backbone specs", "env": "Environments"}


LIMIT = 50  # runs shown in full per group


@dataclass
class Provenance:
    runs: list[dict[str, Any]] = field(default_factory=list)  # the newest compact record of every run
    full: list[dict[str, Any]] = field(default_factory=list)  # the provenance (`extract`) of the runs shown in full
    groups: Counter[str] = field(default_factory=Counter)  # group -> its runs, shown or not
    failed: Counter[str] = field(default_factory=Counter)  # group -> its failed runs, shown or not
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {key: content}
    users: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (kind, key, task) -> runs shown
    attempts: Counter[str] = field(default_factory=Counter)  # run id -> records of it
    html: str = ""  # the page's section of the runs (`section`), once made


def _key(content: Any) -> str:
    return hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _whole(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as written (the compact one carries its file as `_path`); the compact one if it is unreadable."""
    path = rec.get("_path")
    if not path:
        return rec
    try:
        with open(path, "rb") as f:
            whole = json.loads(f.read())
        return whole if isinstance(whole, dict) else rec
    except (OSError, ValueError) as e:
        warnings.warn(f"provenance of {rec['run_id']}: {path} is unreadable ({e}); showing what the tables read",
                      stacklevel=2)
        return rec


def extract(rec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, Any]]]:
    """A whole record's provenance: the run's own fields (`KEEP`, the backbone's name, checkpoint, hash and
    pretraining, its git state, and the key of each shared block) and the shared blocks, kind -> (key, content)."""
    run = {k: rec.get(k) for k in KEEP}
    backbone = _mapping(rec.get("backbone"))
    run["backbone"] = {k: backbone.get(k) for k in ("name", "checkpoint", "sha256")}
    run["backbone"]["pretrain"] = _mapping(backbone.get("pretrain"))
    env = {k: _mapping(rec.get(k)) for k in ("versions", "git", "hardware")}
    blocks = {}
    for kind, content in (("recipe", _mapping(rec.get("recipe"))), ("spec", _mapping(backbone.get("spec"))),
                          ("env", env)):
        if content:
            run[f"{kind}_key"] = _key(content)
            blocks[kind] = (run[f"{kind}_key"], content)
    run["git"] = env["git"]
    return run, blocks


def _mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a mapping, else an empty one: what the page shows of a field a record holds in another shape."""
    return value if isinstance(value, dict) else {}


def group_of(run: dict[str, Any]) -> str:
    return "pretraining" if run.get("kind") == "pretrain" else str(run.get("task"))


def _shown(runs: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The failed runs first, then the others, each newest first; `limit` of them."""
    newest = sorted(runs, key=lambda r: (str(r.get("finished_at") or ""), str(r["run_id"])), reverse=True)
    return sorted(newest, key=lambda r: r.get("status") != "failed")[:limit]


def read(records: list[dict[str, Any]], limit: int = LIMIT) -> Provenance:
    """The newest record of each run id in `records` (the report's compact records, or whole ones), and the
    provenance of the runs shown in full: in each group, the failed ones first, then the newest, `limit` in all."""
    from harness import store

    out = Provenance(attempts=Counter(r["run_id"] for r in records))
    out.runs = list(store.latest(records).values())
    by_group: dict[str, list[dict[str, Any]]] = {}
    for run in out.runs:
        by_group.setdefault(group_of(run), []).append(run)
    for group, members in by_group.items():
        out.groups[group] = len(members)
        out.failed[group] = sum(1 for r in members if r.get("status") == "failed")
        for compact in _shown(members, limit):
            run, blocks = extract(_whole(compact))
            for kind, (key, content) in blocks.items():
                out.shared.setdefault(kind, {}).setdefault(key, content)
                out.users[kind, key, " / ".join(str(x) for x in (run["task"], run["protocol"]) if x)] += 1
            out.full.append(run)
    return out


def data_origin(runs: list[dict[str, Any]]) -> tuple[int, list[str], list[str]]:
    """(runs on the embedded data sets, the real data roots, the data fingerprints) of `runs`: a record without a
    data root ran on the embedded Fashion-MNIST sets (`harness.records.Job.data_root`)."""
    embedded = sum(1 for r in runs if not r.get("data_root"))
    roots = sorted({str(r["data_root"]) for r in runs if r.get("data_root")})
    prints = sorted({str(r["data_fingerprint"]) for r in runs if r.get("data_fingerprint")})
    return embedded, roots, prints


# --- the page's section ---


def _link(kind: str, key: str | None, text: str) -> str:
    return f'<a href="#{kind}-{key}">{esc(text)}</a>' if key else ""


def _json(value: Any) -> str:
    return esc(json.dumps(value, sort_keys=True, default=str)) if value else ""


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _headline(run: dict[str, Any]) -> str:
    status = str(run.get("status"))
    badge = f'<span class="badge {"failed" if status == "failed" else ""}">{esc(status)}</span>'
    what = " / ".join(str(x) for x in (run.get("task"), run.get("protocol")) if x)
    parts = [f'<span class="mono">{esc(run["run_id"])}</span>', esc(what), esc(run["backbone"].get("name")),
             esc(run.get("recipe_name")), f"seed {esc(run.get('seed'))}"]
    if isinstance(run.get("wall_time_s"), int | float):
        parts.append(f"{run['wall_time_s']:.1f} s")
    line = badge + " · ".join(p for p in parts if p)
    if run.get("error"):
        line += f' <span class="error">{esc(str(run["error"]).splitlines()[0][:160])}</span>'
    return line


def _body(run: dict[str, Any], attempts: int) -> str:
    """The run's provenance; what its line shows already (status, task, seed, wall time) is not repeated, and what
    many runs share (resolved recipe, backbone spec, environment) is a link."""
    bb, git = run["backbone"], run.get("git") or {}
    pretrain = bb.get("pretrain") or {}
    data = esc(run["data_root"]) if run.get("data_root") else "embedded Fashion-MNIST set (no --data-root)"
    commit = str(git.get("commit") or "")[:12] + (" + uncommitted changes" if git.get("dirty") else "")
    recipe = [esc(run.get("recipe_name")), f"v{esc(run.get('recipe_version'))}" if run.get("recipe_version") else "",
              _json(run.get("overrides")), _link("recipe", run.get("recipe_key"), "resolved")]
    return fields([
        ("error", f'<span class="error">{esc(run.get("error"))}</span>' if run.get("error") else ""),
        ("failure", _json(run.get("failure"))),
        ("metrics", esc(", ".join(f"{k} {_number(v)}" for k, v in sorted((run.get("metrics") or {}).items())))),
        ("backbone", esc(bb.get("name")) + " " + _link("spec", run.get("spec_key"), "spec")),
        ("checkpoint", esc(bb.get("checkpoint"))),
        ("sha256", f'<span class="mono">{esc(bb.get("sha256"))}</span>' if bb.get("sha256") else ""),
        ("encoder from", _link("run", pretrain.get("run_id"), str(pretrain.get("run_id")))),
        ("recipe", " ".join(x for x in recipe if x)),
        ("data", data + (f' · fingerprint <span class="mono">{esc(run["data_fingerprint"])}</span>'
                         if run.get("data_fingerprint") else "")),
        ("environment", _link("env", run.get("env_key"), f"git {commit}" if commit else "versions, hardware")),
        ("time", esc(" → ".join(str(run[k]) for k in ("started_at", "finished_at") if run.get(k)))),
        ("log", f'<span class="mono">{esc(run.get("log"))}</span>' if run.get("log") else ""),
        ("work dir", f'<span class="mono">{esc(run.get("work_dir"))}</span>' if run.get("work_dir") else ""),
        ("attempts", f"{attempts} records of this run; the newest is shown" if attempts > 1 else ""),
    ])


def _order(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run.get("status") != "failed", str(run.get("protocol") or ""), str(run["backbone"].get("name")),
            str(run.get("recipe_name") or ""), str(run.get("seed")), run["run_id"])


def section(prov: Provenance, order: dict[str, int]) -> str:
    """The runs shown in full, grouped by task (pretrainings first, then in `order`), failed ones first in each
    group, with how many more the group has; then the distinct resolved recipes, backbone specs and environments the
    runs link to."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in prov.full:
        groups.setdefault(group_of(run), []).append(run)
    parts = []
    for group in sorted(groups, key=lambda g: (g != "pretraining", order.get(g, 10**6), g)):
        runs = sorted(groups[group], key=_order)
        total, failed = prov.groups[group], prov.failed[group]
        parts.append(f"<h3>{esc(group)}: {total} runs" + (f", {failed} failed" if failed else "") + "</h3>")
        if total > len(runs):
            parts.append(f'<p class="note">Shown here: {len(runs)} of {total} runs, the failed ones first, then the '
                         f"newest. Every run is in runs.csv and results.json.</p>")
        parts += [details(_headline(r), _body(r, prov.attempts[r["run_id"]]), f"run-{r['run_id']}") for r in runs]
    for kind, title in SHARED.items():
        blocks = prov.shared.get(kind) or {}
        if blocks:
            parts.append(f"<h3>{esc(title)}</h3>")
            names = {key: _shared_name(kind, content, key) for key, content in blocks.items()}
            parts += [details(names[key] + _used_by(prov, kind, key),
                              f"<pre>{esc(json.dumps(blocks[key], indent=1))}</pre>", f"{kind}-{key}")
                      for key in sorted(blocks, key=lambda k: (names[k], k))]  # by name: the same in every report
    return "".join(parts)


def _shared_name(kind: str, content: dict[str, Any], key: str) -> str:
    """What a shared block is called in its line: a recipe's name, a spec's backbone, an environment's commit."""
    if kind == "recipe":
        name = content.get("name")
    elif kind == "spec":
        name = content.get("name") or content.get("arch")
    else:
        commit = str((content.get("git") or {}).get("commit") or "")[:12]
        name = ", ".join(x for x in (commit, str((content.get("hardware") or {}).get("host") or "")) if x)
    return f'{esc(name or kind)} <span class="mono">{esc(key)}</span>'


def _used_by(prov: Provenance, kind: str, key: str) -> str:
    uses = sorted((task, n) for (k, c, task), n in prov.users.items() if (k, c) == (kind, key))
    shown = " the runs shown:" if len(prov.full) < len(prov.runs) else ""
    return esc(f" · used by{shown} " + ", ".join(f"{task} ({n})" for task, n in uses)) if uses else ""
