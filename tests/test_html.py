"""`results/index.html`: the report's tables cell for cell, every figure inlined, nothing fetched from a network, text
escaped, the embedded data named for what it is, each run's provenance; and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness import store
from harness.report import flatten, summarize, tables, write_report
from tests.test_report import BASE_SPEC, rec

SHA = "5af0a4374e998823edc84eef53e0edfc153b33d063a9c9a699abf2f59b7fef48"
COMMIT = "7357b48d7efac20ffb9dbc54cef790ce2ddd1a1a"
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


def _provenance(i: int, data_root: str | None = None) -> dict:
    """What a worker writes beside the metrics (`harness.records.build_record`)."""
    return {"versions": {"torch": "2.14.1", "timm": "1.0.31", "mmdet": "3.3.0", "python": "3.11.7"},
            "git": {"commit": COMMIT, "dirty": False}, "hardware": {"cpu": "AMD EPYC", "cpu_count": 2, "host": "vm"},
            "wall_time_s": 40.0 + i, "started_at": "2026-01-01T00:00:00+00:00", "log": f"/runs/logs/r{i}.log",
            "work_dir": f"/runs/work/r{i}", "data_root": data_root, "data_fingerprint": "a52864e5fce39c32",
            "recipe": {"name": "tiny", "epochs": 6, "lr": 0.001}, "recipe_version": 1}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of the three tasks (IN1K and ADE20K on the embedded data, COCO on a real data root), a failed run,
    a pretraining with its loss log and reconstruction figure."""
    tmp = tmp_path_factory.mktemp("html")
    folder = tmp / "records"
    recs = [rec("mae_t", "mae", "in1k", "finetune", s, {"top1": v}) for s, v in enumerate([80.0, 82.0, 84.0])]
    recs += [rec("sup_t", "supervised", "in1k", "finetune", s, {"top1": v}) for s, v in enumerate([79.0, 81.0])]
    recs += [rec("mae_t", "mae", "in1k", "linprobe", 0, {"top1": 40.0}),
             rec("sup_t", "supervised", "in1k", "linprobe", 0, {"top1": 45.5})]
    recs += [rec("mae_t", "mae", "ade20k", None, 0, {"mIoU": 30.0}),
             rec("sup_t", "supervised", "ade20k", None, 0, {"mIoU": 28.0})]
    recs += [rec(b, f, "coco", None, 0, {"bbox_mAP": v, "segm_mAP": v - 4}, data_root="/data/coco")
             for b, f, v in (("mae_t", "mae", 50.3), ("sup_t", "supervised", 47.9))]
    recs += [rec("scratch_t", "scratch", "coco", None, 0, {}, status="failed", error=HOSTILE, run_id="bad-run")]
    recs = [{**_provenance(i, r.pop("data_root", None)), **r} for i, r in enumerate(recs)]
    for r in recs:
        r["backbone"].update(checkpoint="/ckpt/encoder.pth", sha256=SHA)
        r["backbone"]["spec"]["url"] = "https://example.org/weights.pth"  # text on the page, never fetched
    pre = tmp / "pre"
    pre.mkdir()
    (pre / "log.jsonl").write_text("\n".join(json.dumps({"step": i, "loss": 1.0 / (i + 1)}) for i in range(20)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(pre / "reconstruction.png", [[0.0, 1.0], [1.0, 0.0]])
    recs.append({**_provenance(99), "run_id": "pre1", "attempt": "a", "status": "finished", "kind": "pretrain",
                 "task": "pretrain", "method": "mae", "backbone": {"name": "mae_t", "spec": BASE_SPEC},
                 "finished_at": "2026-01-01", "seed": 0,
                 "extra": {"log_jsonl": str(pre / "log.jsonl"), "reconstruction": str(pre / "reconstruction.png")}})
    for r in recs:
        store.write_record(folder, r)
    out = tmp / "results"
    assert out / "index.html" in write_report(folder, out, formats=["md"])
    return out


class _Page(HTMLParser):
    """The page's tables (id -> rows of cell texts), headings, ids, resource references and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headings: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self._table: str | None = None
        self._text: list[str] | None = None
        self._heading: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.ids.update([a["id"]] if a.get("id") else [])
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "poster", "data")]
        if tag == "table":
            self._table = a.get("id") or f"anonymous{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._text = []
        elif tag in ("h2", "h3"):
            self._heading, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._text is not None:
            self.tables[self._table][-1].append("".join(self._text).strip())
            self._text = None
        elif tag == "table":
            self._table = None
        elif tag == self._heading and self._text is not None:
            self.headings.append((tag, " ".join("".join(self._text).split())))
            self._heading, self._text = None, None


def _expected_tables(report: Path) -> dict:
    return tables(summarize(flatten(store.read_records(report.parent / "records"))))


def test_tables_are_the_reports_tables_cell_for_cell(report: Path) -> None:
    page = _Page((report / "index.html").read_text())
    expected = _expected_tables(report)
    assert set(expected) == {"in1k", "coco", "ade20k"}
    for stem, frame in expected.items():
        rows = page.tables[f"table-{stem}"]
        assert rows[0] == list(frame.columns)
        assert rows[1:] == [["" if v is None else str(v) for v in row] for row in frame.itertuples(index=False)]
    in1k = {r[0]: r for r in page.tables["table-in1k"][1:]}
    assert in1k["mae_t"][2] == "82.0 ± 2.0 [77.0, 87.0] (n=3)"  # mean ± std [95% t-interval] (n)
    assert re.fullmatch(r"\+\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]\*? \(\d pairs\)", in1k["mae_t"][3])  # paired Δ
    published = page.tables["table-published"]
    assert published[0][:3] == ["family", "model", "IN1K fine-tune top-1"] and ["MAE", "ViT-B", "83.6"] == \
        published[1][:3]


def test_the_page_needs_no_network_and_inlines_every_figure(report: Path) -> None:
    text = (report / "index.html").read_text()
    page = _Page(text)
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    assert "url(" not in text and "@import" not in text
    for tag, attr, value in page.refs:
        assert value.startswith(("data:image/png;base64,", "#")), (tag, attr, value[:80])
    links = {v[1:] for _, attr, v in page.refs if attr == "href"}
    assert links and links <= page.ids  # every link lands on the page
    inlined = {v.removeprefix("data:image/png;base64,") for tag, _, v in page.refs if tag == "img"}
    pngs = sorted((report / "plots").glob("*.png"))
    assert {p.stem for p in pngs} >= {"in1k", "coco", "ade20k", "pretrain_loss", "reconstruction_mae_t"}
    assert inlined == {base64.b64encode(p.read_bytes()).decode() for p in pngs}
    assert "https://example.org/weights.pth" in text  # the spec's url, as text inside <pre>


def test_text_is_escaped(report: Path) -> None:
    text = (report / "index.html").read_text()
    assert HOSTILE not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text


def test_the_embedded_data_is_named_for_what_it_is(report: Path) -> None:
    page = _Page((report / "index.html").read_text())
    h2 = [t for tag, t in page.headings if tag == "h2"]
    assert "Fashion-MNIST in the ImageNet layout in1k" in h2 and "Fashion-MNIST in the ADE20K layout ade20k" in h2
    assert "COCO Mask R-CNN AP (%) coco" in h2  # its runs read a real data root
    h3 = [t for tag, t in page.headings if tag == "h3"]
    assert "top-1 (%), last epoch, recipe tiny" in h3 and "UperNet mIoU (%), recipe tiny" in h3
    assert not any(t.startswith(("ImageNet-1K", "ADE20K")) for t in h2 + h3)
    text = (report / "index.html").read_text()
    assert "Data: /data/coco (data fingerprint a52864e5fce39c32)." in text
    assert "Fashion-MNIST garments in the ImageNet layout (data fingerprint a52864e5fce39c32), not ImageNet-1K" in text


def test_each_runs_provenance_is_one_click_away(report: Path) -> None:
    text = (report / "index.html").read_text()
    page = _Page(text)
    records = store.latest(store.read_records(report.parent / "records"))
    assert {f"run-{i}" for i in records} <= page.ids
    block = text.split('<details id="run-bad-run">', 1)[1].split("</details>", 1)[0]
    assert 'class="badge failed"' in block and "&lt;script&gt;" in block and "/runs/logs/r" in block
    run = text.split('<details id="run-mae_t-in1k-finetune-1-tiny">', 1)[1].split("</details>", 1)[0]
    for expected in (SHA, "/ckpt/encoder.pth", "seed 1", "41.0 s", "/runs/logs/r1.log", f"git {COMMIT[:12]}",
                     "embedded Fashion-MNIST set", "top1 82", "/runs/work/r1"):
        assert expected in run, expected

    def shared(kind: str) -> str:  # what many runs share is shown once, a link away
        key = run.split(f'href="#{kind}-', 1)[1].split('"', 1)[0]
        return text.split(f'<details id="{kind}-{key}">', 1)[1].split("</details>", 1)[0]

    assert "&quot;lr&quot;: 0.001" in shared("recipe") and "in1k / finetune (5)" in shared("recipe")
    assert text.count('"lr": 0.001') == 0 and text.count("&quot;lr&quot;: 0.001") == 1
    assert all(x in shared("env") for x in (COMMIT, "&quot;torch&quot;: &quot;2.14.1&quot;", "AMD EPYC"))
    assert "https://example.org/weights.pth" in shared("spec")



def test_the_page_shows_a_bounded_number_of_runs_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many runs a sweep leaves, each group shows at most `LIMIT` in full: its failed runs first, then the
    newest, and says how many there are; the provenance shown is read from the whole records, and only theirs."""
    from harness import results
    from harness.report_html import runs

    folder = tmp_path / "records"
    for seed in range(7):  # seed 6 finishes last
        run = rec("mae_t", "mae", "in1k", "finetune", seed, {"top1": 80.0 + seed})
        store.write_record(folder, {**_provenance(seed), **run, "finished_at": f"2026-01-0{seed + 1}"})
    failed = rec("mae_t", "mae", "in1k", "linprobe", 0, {}, status="failed", error="boom", run_id="old-failure")
    store.write_record(folder, {**_provenance(9), **failed, "finished_at": "2025-01-01"})
    compact = results.read_compact(folder)
    assert all("versions" not in r and "git" not in r and "_prov" not in r for r in compact)  # tables' fields only
    read: list[str] = []
    whole = runs._whole
    monkeypatch.setattr(runs, "_whole", lambda r: read.append(r["run_id"]) or whole(r))
    prov = runs.read(compact, limit=3)
    shown = [r["run_id"] for r in prov.full]
    assert shown == ["old-failure", "mae_t-in1k-finetune-6-tiny", "mae_t-in1k-finetune-5-tiny"] and read == shown
    assert len(prov.runs) == prov.groups["in1k"] == 8 and prov.failed["in1k"] == 1
    assert prov.full[1]["git"]["commit"] == COMMIT and prov.full[1]["metrics"] == {"top1": 86.0}
    html = runs.section(prov, {"in1k": 0})
    assert "in1k: 8 runs, 1 failed" in html and "Shown here: 3 of 8 runs" in html
    assert html.count("<details id=\"run-") == 3 and "used by the runs shown: in1k / finetune (2)" in html
    assert "Shown here" not in runs.section(runs.read(compact), {})  # all 8 fit under the default limit


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (scripts/setup_env.sh installs it when "
                    "run as root)")
    return exe


def _browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,2000"]
    return subprocess.run([_chromium(), *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=True)


@pytest.mark.slow
def test_chromium_renders_the_tables_and_the_figures(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    dom = _Page(_browse(report / "index.html", tmp_path, "--dump-dom").stdout)
    for stem, frame in _expected_tables(report).items():  # the browser shows every cell as written
        assert dom.tables[f"table-{stem}"][0] == list(frame.columns)
        assert dom.tables[f"table-{stem}"][1:] == [["" if v is None else str(v) for v in row]
                                                   for row in frame.itertuples(index=False)]
    shot = tmp_path / "shot.png"
    _browse(report / "index.html", tmp_path, f"--screenshot={shot}")
    import numpy as np

    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape == (2000, 1280, 3)
    pixels = image.reshape(-1, 3)
    assert (pixels != 255).any(axis=1).mean() > 0.05  # not a blank page
    colours = np.unique((pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2])
    assert len(colours) > 500  # text, tables and figures, not a flat error page

    def near(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.asarray(rgb)) <= 12).all(axis=1).sum())

    # the bar charts were decoded and drawn: matplotlib's first two colours (C0 blue, C1 orange) fill their bars
    assert near((31, 119, 180)) > 2000 and near((255, 127, 14)) > 1000
