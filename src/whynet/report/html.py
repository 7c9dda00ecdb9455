"""Render :class:`whynet.report.Section` objects into one self-contained HTML file.

Every field is untrusted (a report may be rebuilt from an edited ``sections.json``): text is
escaped, HTML fragments pass an allow-list sanitiser, images are data URIs, and a strict
Content-Security-Policy allows no network loads and no script but the report's own (by hash).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import os
import platform
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from whynet.core.explanation import atomic_write
from whynet.report.sanitize import sanitize_fragment
from whynet.report.sections import Figure, Section, Table

# Marks the page once every image has decoded, so a headless browser test can check it.
_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(bad));
});
"""
_CHECK_SCRIPT = f"<script>{_CHECK_JS}</script>"
#: no network, no plugins, no forms; images only as data URIs; inline styles (the stylesheet
#: and token highlighting); scripts only the report's own, by hash (CSP level 2)
_CHECK_HASH = base64.b64encode(hashlib.sha256(_CHECK_JS.encode()).digest()).decode()
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_CHECK_HASH}'; "
    "base-uri 'none'; form-action 'none'"
)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _esc(value)


def figure_html(fig: Figure) -> str:
    """One figure as HTML: images as data URIs, HTML fragments allow-listed, text escaped."""
    if fig.png is not None:
        data = base64.b64encode(fig.png).decode("ascii")
        body = f'<img alt="{_esc(fig.caption)}" src="data:image/png;base64,{data}">'
    elif fig.svg is not None:  # RDKit's SVG: embedded as an image, so it cannot run script
        data = base64.b64encode(fig.svg.encode("utf-8")).decode("ascii")
        body = f'<img alt="{_esc(fig.caption)}" src="data:image/svg+xml;base64,{data}">'
    elif fig.html is not None:  # allow-listed markup only: it may come back from disk
        body = f"<div>{sanitize_fragment(fig.html)}</div>"
    else:
        body = ""
    return f"<figure>{body}<figcaption>{_esc(fig.caption)}</figcaption></figure>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in t.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in t.rows)
    return f"<table><caption>{_esc(t.caption)}</caption><tr>{head}</tr>{rows}</table>"


def _anchor(i: int) -> str:
    return f"s{i}"


def render_html(
    sections: Sequence[Section], title: str = "whynet report", subtitle: str = ""
) -> str:
    """The whole report as one HTML string (CSS inline, images as data URIs)."""
    css = resources.files("whynet.report").joinpath("report.css").read_text(encoding="utf-8")
    nav = "".join(f'<a href="#{_anchor(i)}">{_esc(s.title)}</a>' for i, s in enumerate(sections))
    parts = []
    for i, s in enumerate(sections):
        body = [f'<section id="{_anchor(i)}"><h2>{_esc(s.title)}</h2>']
        if s.intro:
            body += [f"<p>{_esc(p)}</p>" for p in s.intro.split("\n\n")]
        body += [_table(t) for t in s.tables]
        body += [figure_html(f) for f in s.figures]
        body += [f'<p class="note">{_esc(n)}</p>' for n in s.notes]
        body.append("</section>")
        parts.append("\n".join(body))
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f'<meta name="viewport" content="width=device-width"><title>{_esc(title)}</title>'
        f"<style>{css}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}</p>"
        f'<p class="meta">generated {when} on {_esc(machine)}</p></header>'
        f"<nav>{nav}</nav><main>{''.join(parts)}</main>{_CHECK_SCRIPT}</body></html>\n"
    )


def write_report(
    sections: Sequence[Section],
    path: str | os.PathLike[str],
    title: str = "whynet report",
    subtitle: str = "",
) -> Path:
    """Write the report atomically and return its path."""
    text = render_html(sections, title, subtitle)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
