"""The report's data model: a :class:`Section` per method family, holding :class:`Figure` and
:class:`Table` objects. The tour builds them, the report renders them; all text is plain text
(the report escapes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    """One picture: PNG bytes, or an SVG string (molecules), or trusted HTML made by whynet.viz."""

    caption: str
    png: bytes | None = None
    svg: str | None = None
    html: str | None = None


@dataclass
class Table:
    """A small table of numbers/text; cells are rendered escaped."""

    caption: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    """One method's part of the report."""

    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: numbers worth keeping machine-readable (written to the report folder as JSON)
    metrics: dict[str, Any] = field(default_factory=dict)
