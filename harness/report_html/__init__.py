"""`results/index.html`: the report as one self-contained page, the tables of `harness report` with the bar chart of
their task beside them, the published numbers, the pretraining loss and the MAE reconstruction figure (He et al. 2021,
Figures 2-4), and each run's provenance one click away.

It is built from what `harness.report.write_report` has made already (the display tables, their titles, the reference
table, the run frame, the compact records and the PNG files written), so that a column the tables gain shows here
too. One file, no network: the stylesheet is inline, the figures are PNG `data:` URIs, and `<details>` opens a run's
provenance without a script. Tables whose runs read the embedded data sets (a record without a data root) are titled
by what they are, Fashion-MNIST in the task's layout, not by the data set whose layout it borrows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.report_html import markup, runs
from harness.report_html.markup import anchor, esc

if TYPE_CHECKING:
    import pandas as pd

    from tasks.spec import TaskSpec

PAGE = "index.html"


def prepare(records: list[dict[str, Any]], specs: dict[str, TaskSpec]) -> runs.Provenance:
    """The runs' provenance and its section of the page, made before the page (while the figures are drawn)."""
    prov = runs.read(records)
    prov.html = runs.section(prov, {name: spec.order for name, spec in specs.items()})
    return prov


def write_page(out: Path, *, frame: pd.DataFrame, tables: dict[str, pd.DataFrame], parts: list[tuple[Any, ...]],
               titles: dict[str, str], reference: pd.DataFrame, records: list[dict[str, Any]] | runs.Provenance,
               files: list[Path], notes: list[str], specs: dict[str, TaskSpec]) -> list[Path]:
    """Writes `out/index.html`. `tables` and `titles` are keyed by file stem; `parts` are the report's
    (stem, task, recipe, ...) of each table; `records` the compact records, or what `prepare` made of them; `notes`
    the Markdown summary's entries (its prose is shown); `files` what the report wrote (its PNG figures are
    inlined)."""
    prov = records if isinstance(records, runs.Provenance) else prepare(records, specs)
    pngs = {p.stem: p for p in map(Path, files) if p.suffix == ".png" and p.is_file()}
    by_task: dict[str, list[str]] = {}
    for stem, task, *_ in parts:
        if stem in tables:
            by_task.setdefault(str(task), []).append(stem)
    order = {name: spec.order for name, spec in specs.items()}
    sections = []
    for task in sorted(by_task, key=lambda t: (order.get(t, 10**6), t)):
        recipes = [p[2] for p in parts if p[0] in by_task[task]]
        sections.append(_task_section(task, by_task[task], tables, titles, specs.get(task), pngs.pop(task, None),
                                      _table_runs(frame, prov, task, recipes)))
    sections.append(_figures("trends", "Trends", [pngs.pop(s) for s in sorted(pngs) if s.startswith("trend_")]))
    sections.append(_published(reference))
    sections.append(_pretraining(pngs, prov))
    sections.append(_figures("other-figures", "Other figures", list(pngs.values())))
    sections.append(Section("runs", "Runs", prov.html))
    shown = [s for s in sections if s is not None]
    body = _header(frame, prov, notes, shown) + "\n".join(s.html() for s in shown)
    path = Path(out) / PAGE
    path.write_text(markup.page("Results", body), encoding="utf-8")
    return [path]


@dataclass
class Section:
    ident: str
    title: str  # plain text: the heading and the link to it
    body: str  # markup
    tag: str = ""  # plain text after the heading, smaller

    def html(self) -> str:
        tag = f' <span class="tag">{esc(self.tag)}</span>' if self.tag else ""
        return f'<section id="{esc(self.ident)}"><h2>{esc(self.title)}{tag}</h2>{self.body}</section>'


def _header(frame: pd.DataFrame, prov: runs.Provenance, notes: list[str], sections: list[Section]) -> str:
    """The title, the report's summary lines, a strip of counts and links to the sections."""
    status = frame.drop_duplicates("run_id")["status"].value_counts()
    hours = sum(r["wall_time_s"] for r in prov.runs if isinstance(r.get("wall_time_s"), int | float)) / 3600
    stats = [(int(status.get("finished", 0)), "finished"), (int(status.get("failed", 0)), "failed"),
             (sum(1 for r in prov.runs if r.get("kind") == "pretrain"), "pretrainings")]
    strip = "".join(f'<span class="stat {k if n else ""}"><b>{n}</b>{k}</span>' for n, k in stats)
    strip += f'<span class="stat"><b>{hours:.2f}</b>hours of run time</span>'
    prose = [n.strip() for n in notes if n.strip() and not n.lstrip().startswith(("#", "|", "!"))]
    nav = "".join(f'<a href="#{esc(s.ident)}">{esc(s.title)}</a>' for s in sections)
    return ("<header><h1>Results</h1>" + "".join(f'<p class="lead">{markup.inline_code(p)}</p>' for p in prose)
            + f'<div class="stats">{strip}</div><nav>{nav}</nav></header>\n')


# --- the tables, one section per task ---


def _table_runs(frame: pd.DataFrame, prov: runs.Provenance, task: str, recipes: list[str]) -> list[dict[str, Any]]:
    """The provenance of the runs whose values the task's tables show."""
    shown = frame[(frame["task"] == task) & frame["recipe"].isin(recipes) & frame["column"].notna()]
    ids = set(shown["run_id"])
    return [r for r in prov.runs if r["run_id"] in ids]


def _dataset_word(spec: TaskSpec | None) -> tuple[str, str] | None:
    """(the real data set's name as the spec's title spells it, its layout's name), e.g. ('ImageNet-1K',
    'ImageNet'), when the title opens with the name of the task's data folder; else None."""
    if spec is None or not spec.title:
        return None
    folder = spec.data.folder if spec.data else spec.name
    word = spec.title.split()[0]
    return (word, word[:len(folder)]) if word.lower().startswith(folder.lower()) else None


def _data_note(task: str, spec: TaskSpec | None, shown: list[dict[str, Any]]) -> tuple[str, str]:
    """(heading, note) of a task's section, saying what data its runs read."""
    embedded, roots, prints = runs.data_origin(shown)
    names = _dataset_word(spec)
    layout = names[1] if names else task
    fp = f" (data fingerprint {', '.join(prints)})" if prints else ""
    if shown and embedded == len(shown):
        real = f"not {names[0]} itself: " if names else ""
        note = (f"Embedded data: real Fashion-MNIST garments in the {layout} layout{fp}, {real}"
                "compare these numbers with each other, not with the published ones.")
        return f"Fashion-MNIST in the {layout} layout", f'<p class="note embedded">{esc(note)}</p>'
    title = spec.title if spec else task
    if embedded:
        others = ", ".join(roots)
        note = f"{embedded} of {len(shown)} runs read the embedded Fashion-MNIST set, the others {others}{fp}."
        return title, f'<p class="note embedded">{esc(note)}</p>'
    data = ", ".join(roots)
    return title, f'<p class="note">Data: {esc(data + fp)}.</p>' if roots else ""


def _task_section(task: str, stems: list[str], tables: dict[str, pd.DataFrame], titles: dict[str, str],
                  spec: TaskSpec | None, chart: Path | None, shown: list[dict[str, Any]]) -> Section:
    """The task's tables (one per setting) with its bar chart beside them."""
    heading, note = _data_note(task, spec, shown)
    names = _dataset_word(spec)
    embedded = bool(shown) and runs.data_origin(shown)[0] == len(shown)
    blocks = []
    for stem in stems:
        title = titles.get(stem, stem)
        if title.startswith(f"{heading}:"):  # the heading names the data already
            title = title[len(heading) + 1:].strip()
        elif embedded and names and title.startswith(names[0]):  # the borrowed name is not the data's
            title = title[len(names[0]):].strip(" ,")
        verdicts = "".join(f'<p class="verdict">{esc(v)}</p>' for v in tables[stem].attrs.get("verdicts", ()))
        blocks.append(f"<h3>{esc(title)}</h3>{markup.table(tables[stem], f'table-{anchor(stem)}')}{verdicts}")
    caption = (f"{task}: the mean over seeds, error bars the 95% t-interval (n ≥ 2), dashed lines the floor (a random "
               "encoder, frozen)")
    figure = markup.figure(chart, caption) if chart else ""
    body = f'{note}<div class="pair"><div class="tables">{"".join(blocks)}</div>{figure}</div>'
    return Section(f"task-{anchor(task)}", heading, body, tag=task)


# --- figures and the published numbers ---

CAPTIONS = {"trend_vs_epochs": "accuracy against pretraining epochs", "trend_vs_size": "accuracy against model size",
            "pretrain_loss": "pretraining loss: the mean over seeds, a band of ± 1 std",
            "partial_k": "partial fine-tuning: top-1 against K, the number of tuned blocks"}


def _caption(stem: str) -> str:
    if stem.startswith("reconstruction_"):
        return f"MAE reconstruction, {stem.removeprefix('reconstruction_')}: original, masked, reconstructed"
    if stem.startswith("sweep_"):  # harness.sweeps: one panel per column, one line per backbone
        return f"top-1 against the swept pretraining setting {stem.removeprefix('sweep_')}: the mean over seeds, " \
               "error bars the 95% t-interval (n ≥ 2)"
    return CAPTIONS.get(stem, stem.replace("_", " "))


def _figures(ident: str, title: str, paths: list[Path], note: str = "") -> Section | None:
    if not paths:
        return None
    figures = "".join(markup.figure(p, _caption(p.stem)) for p in paths)
    return Section(ident, title, f'{note}<div class="figures">{figures}</div>')


def _published(reference: pd.DataFrame) -> Section:
    from harness.reference import PAPER

    note = (f'<p class="note">{esc(PAPER)}: ViT encoders pretrained on ImageNet-1K, transferred in the paper\'s '
            "settings (Tables 3-5); the tables above show them beside a run only for recipe <code>paper</code>.</p>")
    return Section("published", "Published numbers", note + markup.table(reference, "table-published"))


def _pretraining(pngs: dict[str, Path], prov: runs.Provenance) -> Section | None:
    """The loss curves and the reconstruction figures (taken out of `pngs`), with the data the pretrainings read."""
    paths = [pngs.pop("pretrain_loss")] if "pretrain_loss" in pngs else []
    paths += [pngs.pop(s) for s in sorted(pngs) if s.startswith("reconstruction_")]
    pre = [r for r in prov.runs if r.get("kind") == "pretrain"]
    embedded, roots, _ = runs.data_origin(pre)
    data = ", ".join((["the embedded Fashion-MNIST"] if embedded else []) + roots)
    note = f'<p class="note">{len(pre)} pretraining run(s), on {esc(data)}.</p>' if pre else ""
    return _figures("pretraining", "Pretraining", paths, note)
