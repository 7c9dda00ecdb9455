"""Token weights as highlighted HTML (escaped: tokens come from data)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np


def highlight_text(tokens: Sequence[str], weights: Any, color: str = "255,140,0") -> str:
    """Tokens as ``<span>`` elements whose background opacity is the weight in [0, 1].

    Negative weights (if any) are shown in blue. Every token is HTML-escaped.
    """
    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if len(tokens) != len(w):
        raise ValueError(f"{len(tokens)} tokens but {len(w)} weights")
    parts = []
    for tok, v in zip(tokens, w):
        rgb = color if v >= 0 else "30,110,255"
        a = min(1.0, abs(float(v)))
        parts.append(
            f'<span class="tok" style="background:rgba({rgb},{a:.3f})" '
            f'title="{v:.3f}">{html.escape(str(tok))}</span>'
        )
    return '<span class="tokens">' + " ".join(parts) + "</span>"
