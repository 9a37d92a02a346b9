"""The building blocks of the HTML report: escaped text, tables from the report's frames, inlined PNG figures,
collapsible blocks, and the page's one stylesheet.

Everything the page shows is text of the records or of the frames, so every piece goes through `html.escape`; images
are `data:` URIs and the stylesheet is inline, so that the page opens from a file with no network.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da;
        --good: #1a7f37; --bad: #cf222e; --warn-bg: #fff8c5; --warn-line: #d4a72c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
       font: 14px/1.45 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 0 0 4px; }
h2 .tag { font-size: 13px; font-weight: 400; color: var(--muted); margin-left: 6px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); font-weight: 600; }
section { border-top: 1px solid var(--line); padding: 18px 0 10px; }
.lead { margin: 2px 0; color: var(--muted); }
.stats { display: flex; gap: 8px; margin: 10px 0; flex-wrap: wrap; }
.stat { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; background: var(--soft); }
.stat b { font-size: 16px; margin-right: 4px; }
.stat.failed b { color: var(--bad); }
.stat.finished b { color: var(--good); }
nav { margin: 8px 0 4px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.note { margin: 4px 0 8px; color: var(--muted); font-size: 13px; }
.note.embedded { color: var(--ink); background: var(--warn-bg); border-left: 3px solid var(--warn-line);
                 padding: 5px 10px; border-radius: 0 4px 4px 0; }
.pair { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.pair > .tables { flex: 1 1 560px; min-width: 0; }
.pair > figure { flex: 0 1 460px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 2px 0 8px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; font-size: 12px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.pos { color: var(--good); }
td.neg { color: var(--bad); }
tbody tr:hover { background: #f0f6fc; }
figure { margin: 0 0 12px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; display: block; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 3px; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; }
details { border: 1px solid var(--line); border-radius: 6px; margin: 5px 0; background: #fff; }
details > summary { cursor: pointer; padding: 5px 10px; list-style-position: inside; }
details[open] > summary { border-bottom: 1px solid var(--line); background: var(--soft); }
details > .body { padding: 6px 12px 8px; }
.badge { display: inline-block; min-width: 64px; text-align: center; border-radius: 10px; padding: 0 8px;
         font-size: 12px; margin-right: 6px; color: #fff; background: var(--good); }
.badge.failed { background: var(--bad); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
pre { background: var(--soft); padding: 8px; border-radius: 4px; overflow-x: auto; margin: 4px 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.error { color: var(--bad); }
"""

_NUMBER = re.compile(r"^[+\-−]?\d+(\.\d+)?\b")


def esc(value: Any) -> str:
    """Any value as escaped text; None and NaN as nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return html.escape(str(value), quote=True)


def inline_code(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> (the report's notes are written in Markdown)."""
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _cell(column: str, value: Any) -> str:
    """A body cell: numbers right-aligned, a difference (a column named Δ ...) coloured by its sign."""
    text = esc(value)
    classes = []
    if _NUMBER.match(text):
        classes.append("num")
        if str(column).startswith("Δ") and text[0] in "+-":
            classes.append("pos" if text[0] == "+" else "neg")
    return f'<td class="{" ".join(classes)}">{text}</td>' if classes else f"<td>{text}</td>"


def table(frame: pd.DataFrame, table_id: str | None = None) -> str:
    """A frame as an HTML table, column for column and row for row as the Markdown tables show it."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in frame.columns)
    rows = "".join("<tr>" + "".join(_cell(str(c), v) for c, v in zip(frame.columns, row, strict=True)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure(path: Path, caption: str, alt: str | None = None) -> str:
    """A PNG inlined as a data: URI, with its caption."""
    return (f'<figure><img src="{png_uri(path)}" alt="{esc(alt or caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def details(summary: str, body: str, ident: str | None = None) -> str:
    """A block that opens on a click (no script): `summary` and `body` are markup already."""
    anchor = f' id="{esc(ident)}"' if ident else ""
    return f'<details{anchor}><summary>{summary}</summary><div class="body">{body}</div></details>'


def fields(pairs: list[tuple[str, str]]) -> str:
    """A definition list of (name, markup) pairs, leaving out the empty ones."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs if v) + "</dl>"


def anchor(text: str) -> str:
    """An id from any text: letters, digits and dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")
