"""The demo tour: one module per registered method family, each returning a report
:class:`Section`.

Tours sit above the methods and the report, below the CLI. Each ``whynet.tour.<name>`` module
(``name`` a method of :mod:`whynet.registry`) has ``run(out: Path, fast: bool = True,
progress: bool | None = None) -> Section`` that uses only shipped weights and bundled data, and
finishes in about a minute on 2 CPU cores when ``fast``. A registered method without a tour
module is skipped (Grad-CAM appears as a comparison inside the inversion tour). The data model
(:class:`Section`, :class:`Figure`, :class:`Table`) lives in :mod:`whynet.report` and is
re-exported here for the tour modules.
"""

from __future__ import annotations

import importlib.util

from whynet.registry import registered
from whynet.report.sections import Figure, Section, Table

__all__ = ["Figure", "Section", "Table", "tour_modules"]


def tour_modules() -> dict[str, str]:
    """Registered methods that have a tour module, in registry order (name -> module)."""
    out: dict[str, str] = {}
    for info in registered():
        module = f"{__name__}.{info.name}"
        if importlib.util.find_spec(module) is not None:
            out[info.name] = module
    return out
