"""A self-contained HTML page: sections of notes, tables and figures, each figure a PNG embedded as
a base64 data URI with its caption, its table and, in a collapsible block, the configs and seeds
behind it. The page primitives of every report (:mod:`granularity.report`, the advise page)."""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    title: str
    path: Path
    caption: str
    details: Any = None  # JSON-able: the configs and seeds behind the figure
    table: list[list[str]] | None = None  # first row = header
    data: Any = None  # what the figure draws, as its plotting function drew it (for tests and audits)


@dataclass
class Section:
    title: str
    source: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[list[str]]]] = field(default_factory=list)


class Names:
    """Unique, file-safe figure names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = re.sub(r"[^A-Za-z0-9.=+-]+", "_", "_".join(p for p in parts if p)).strip("_")[:90] or "figure"
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name + ".png"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1.5em 0;padding:.5em;border:1px solid #eee;border-radius:6px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#444;margin:.4em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
details{margin:.4em 0}summary{cursor:pointer;color:#0645ad}
pre{background:#f8f8f8;padding:.6em;overflow:auto;max-height:30em;font-size:.8em}
.src{color:#666;font-size:.85em}.note{color:#444}
"""


def table_html(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(fig: Figure, out: Path) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    rel = fig.path.relative_to(out).as_posix()
    parts = [
        "<figure>",
        f"<h3>{html.escape(fig.title)}</h3>",
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}" data-file="{html.escape(rel)}">',
        f"<figcaption>{html.escape(fig.caption)} (PNG: <code>{html.escape(rel)}</code>)</figcaption>",
    ]
    if fig.table:
        parts.append(table_html(fig.table))
    if fig.details is not None:
        text = json.dumps(fig.details, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>Resolved configs and seeds behind this figure</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</figure>")
    return "\n".join(parts)


def render(sections: list[Section], out: Path, title: str) -> str:
    import granularity

    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='src'>granularity {html.escape(granularity.__version__)}, built {time.strftime('%Y-%m-%d %H:%M:%S')}; "
            "every figure is drawn from stored results; error bars and bands are 95% confidence intervals over seeds.</p>"]
    if len(sections) > 1:
        body.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections)) + "</ul>")
    for i, sec in enumerate(sections):
        body.append(f"<section id='s{i}'><h2>{html.escape(sec.title)}</h2><p class='src'>from <code>{html.escape(sec.source)}</code></p>")
        body += [f"<p class='note'>{html.escape(n)}</p>" for n in sec.notes]
        for caption, rows in sec.tables:
            if caption == "Spec":
                body.append(f"<details><summary>Sweep file</summary><pre>{html.escape(rows[0][1])}</pre></details>")
            else:
                body.append(f"<h4>{html.escape(caption)}</h4>{table_html(rows)}")
        body += [figure_html(f, out) for f in sec.figures]
        body.append("</section>")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
