"""One self-contained HTML report: figures embedded, no network, data text escaped."""

from whynet.report.html import render_html, write_report
from whynet.report.store import load_sections, save_sections, sections_from_explanations

__all__ = [
    "load_sections",
    "render_html",
    "save_sections",
    "sections_from_explanations",
    "write_report",
]
