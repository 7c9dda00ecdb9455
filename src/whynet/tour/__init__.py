"""The demo tour: one module per method family, each returning a report :class:`Section`.

Tours sit above the methods and below the report/CLI. Each ``whynet.tour.<name>`` module has
``run(out: Path, fast: bool = True, progress: bool | None = None) -> Section`` that uses only
shipped weights and bundled data, and finishes in about a minute on 2 CPU cores when ``fast``.
The report renders sections; all text here is plain text (the report escapes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: tour modules in report order (name -> module); a missing module is skipped by the report
TOURS: dict[str, str] = {
    "influence": "whynet.tour.influence",
    "inversion": "whynet.tour.inversion",
    "masks": "whynet.tour.masks",
    "representer": "whynet.tour.representer",
    "clusters": "whynet.tour.clusters",
}


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
