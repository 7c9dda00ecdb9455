"""One self-contained HTML report: figures embedded, no network, data text escaped.

The data model (:class:`Section`, :class:`Figure`, :class:`Table`) lives here; the tour and the
command line build sections, the report renders and stores them (it imports neither).
"""

from whynet.report.html import render_html, write_report
from whynet.report.sections import Figure, Section, Table
from whynet.report.store import load_sections, save_sections, sections_from_explanations

__all__ = [
    "Figure",
    "Section",
    "Table",
    "load_sections",
    "render_html",
    "save_sections",
    "sections_from_explanations",
    "write_report",
]
