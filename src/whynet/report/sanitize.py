"""An allow-list sanitiser for the HTML fragments a report embeds (``Figure.html``).

Fragments are made by :mod:`whynet.viz` (token highlighting) and the tour, but a report rebuilt
from ``sections.json`` reads them back from disk, where anyone could have edited them. Only the
markup those producers emit survives: a few inline tags, ``class`` and ``title`` attributes and
a ``background:rgba(...)`` style; everything else (script, event handlers, links, frames, other
styles) is dropped, and all text is re-escaped.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_TAGS = frozenset({"span", "p", "b", "i", "em", "strong", "code", "br", "div", "small"})
_VOID = frozenset({"br"})
#: content of these is dropped entirely, not shown as text
_SKIP = frozenset({"script", "style", "iframe", "object", "embed", "svg", "math", "template"})
_CLASS = re.compile(r"^[A-Za-z0-9_ -]{0,64}$")
_STYLE = re.compile(
    r"^\s*background:\s*rgba\(\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*"
    r"[01](\.\d{1,6})?\s*\)\s*;?\s*$"
)


class _Sanitiser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip or tag not in _TAGS:
            return
        kept = []
        for name, value in attrs:
            v = value or ""
            if (
                (name == "class" and _CLASS.match(v))
                or (name == "style" and _STYLE.match(v))
                or name == "title"
            ):
                kept.append(f' {name}="{html.escape(v, quote=True)}"')
        self.out.append(f"<{tag}{''.join(kept)}>")
        if tag not in _VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            return
        self.handle_starttag(tag, attrs)
        if tag in self.open and tag not in _VOID and self.open[-1] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip or tag not in self.open:
            return
        while self.open:  # close everything opened inside it too (well-formed output)
            t = self.open.pop()
            self.out.append(f"</{t}>")
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(html.escape(data, quote=True))


def sanitize_fragment(fragment: str) -> str:
    """``fragment`` with only allow-listed markup left (see the module doc); text escaped."""
    if not isinstance(fragment, str):
        raise TypeError(f"an HTML fragment must be a str, got {type(fragment).__name__}")
    p = _Sanitiser()
    p.feed(fragment)
    p.close()
    p.out += [f"</{t}>" for t in reversed(p.open)]
    return "".join(p.out)
