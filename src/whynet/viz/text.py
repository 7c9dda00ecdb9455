"""Token weights as highlighted HTML (escaped: tokens come from data)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_RGB = re.compile(r"^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$")


def _rgb(color: str) -> str:
    """``"R,G,B"`` with integers in [0, 255], normalised; anything else is refused (the colour
    goes into a style attribute)."""
    m = _RGB.match(color) if isinstance(color, str) else None
    if m is None or any(int(c) > 255 for c in m.groups()):
        raise ValueError(
            f"color must be 'R,G,B' with integers 0-255 (e.g. '255,140,0'), got {color!r}"
        )
    return ",".join(str(int(c)) for c in m.groups())


def highlight_text(tokens: Sequence[str], weights: Any, color: str = "255,140,0") -> str:
    """Tokens as ``<span>`` elements whose background opacity is the weight in [0, 1].

    Negative weights (if any) are shown in blue. Every token is HTML-escaped; ``color`` must be
    ``"R,G,B"`` and the weights finite.
    """
    color = _rgb(color)
    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.ndim != 1 or len(tokens) != len(w):
        raise ValueError(f"{len(tokens)} tokens but {w.size} weights")
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite (NaN or infinite weights cannot be shown)")
    parts = []
    for tok, v in zip(tokens, w):
        rgb = color if v >= 0 else "30,110,255"
        a = min(1.0, abs(float(v)))
        parts.append(
            f'<span class="tok" style="background:rgba({rgb},{a:.3f})" '
            f'title="{v:.3f}">{html.escape(str(tok))}</span>'
        )
    return '<span class="tokens">' + " ".join(parts) + "</span>"
