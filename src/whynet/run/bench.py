"""The table ``whynet bench`` prints and writes to ``benchmarks/results/README.md``: one row per
measured ratio in ``benchmarks/results/*.json`` with the work, whynet's time, the peer's or
the floor's time, the ratio, its target and whether it is met.

A ratio is a key naming one (``ratio_*``, ``*_vs_*``, ``speedup*``, ``time_vs_whynet``); its
times are the numeric ``*_s`` / ``*_ms`` / ``median_s`` entries beside it. The orientation
comes from the key: ``A_over_B`` is A's time over B's. A node's own ``"target"`` (a number, the
bound) overrides the defaults: whynet no slower than a peer (peer/whynet >= 1), within 1.5x of
a floor (whynet/floor <= 1.5).
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

RATIO = re.compile(r"ratio|speedup|_vs_")
#: default bounds: a peer is matched or beaten, a floor (hand-written minimum) nearly reached
PEER_TARGET, FLOOR_TARGET = 1.0, 1.5
FLOOR_WORDS = ("floor", "forward")


def _time(d: dict[str, Any], words: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    for k, v in d.items():
        unit = "ms" if k.endswith("_ms") else "s" if (k.endswith("_s") or k == "s") else None
        if unit is None or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        low = k.lower()
        if any(w in low for w in words) and not any(w in low for w in exclude):
            return f"{v:.3g} {unit}"
    return ""


def _work(path: list[str], node: dict[str, Any]) -> str:
    desc = [
        f"{k}={node[k]}"
        for k in ("model", "method", "layer", "n_train", "n_inputs", "images", "n")
        if isinstance(node.get(k), (str, int)) and not isinstance(node.get(k), bool)
    ]
    return " / ".join(path) + (f" ({', '.join(desc)})" if desc else "")


def ratio_rows(name: str, doc: Any) -> list[list[str]]:
    """Rows ``[benchmark, work, whynet, peer or floor, ratio, target, met]`` of one file."""
    rows: list[list[str]] = []

    def walk(d: Any, path: list[str]) -> None:
        if isinstance(d, list):
            for i, v in enumerate(d):
                label = v.get("case") or v.get("method") if isinstance(v, dict) else None
                walk(v, [*path, str(label or i)])
            return
        if not isinstance(d, dict):
            return
        for key, value in d.items():
            if isinstance(value, (dict, list)):
                walk(value, [*path, str(key)])
            elif RATIO.search(key) and isinstance(value, (int, float)):
                if "diff" in key or "abs" in key or isinstance(value, bool):
                    continue  # an accuracy check, not a time ratio
                if key == "time_vs_whynet" and str(d.get("method", "")).startswith("whynet"):
                    continue  # whynet against itself (the baseline row, other batch sizes)
                rows.append(_row(name, path, d, key, float(value)))

    walk(doc, [])
    return rows


def _row(name: str, path: list[str], d: dict[str, Any], key: str, value: float) -> list[str]:
    low = key.lower()
    floor = any(w in low for w in FLOOR_WORDS) or any(w in str(k) for k in d for w in ("floor",))
    # orientation: is the ratio whynet's time over the other's (lower is better)?
    whynet_first = bool(re.search(r"whynet_over|over_floor|fit_over", low)) or (
        low == "ratio" and floor
    )
    peer_first = bool(re.search(r"over_whynet|over_index|time_vs_whynet|speedup", low))
    target = d.get("target") if isinstance(d.get("target"), (int, float)) else None
    if whynet_first:
        bound = target if target is not None else FLOOR_TARGET if floor else PEER_TARGET
        goal, met = f"<= {bound:g}", "yes" if value <= bound else "no"
    elif peer_first:
        bound = target if target is not None else PEER_TARGET
        goal, met = f">= {bound:g}", "yes" if value >= bound else "no"
    else:
        goal, met = "", ""
    other = ("floor", "captum", "dattri", "sklearn", "brute", "peer", "quantus", "batch_1")
    mine = _time(d, ("whynet", "index", "batch_16"), exclude=("over",))
    theirs = _time(d, other, exclude=("over", "whynet"))
    if key == "time_vs_whynet" and isinstance(d.get("median_s"), (int, float)) and value:
        # a row of a peer in a table of rows: its time, and whynet's = its time / the ratio
        theirs, mine = f"{d['median_s']:.3g} s", f"{d['median_s'] / value:.3g} s"
        path = path[:-1]
    return [
        name,
        _work([*path, key], d),
        mine,
        theirs,
        f"{value:.3g}",
        goal,
        met,
    ]


def results_table(results: Path) -> str:
    """The markdown table of every ratio in ``results/*.json`` (see the module docstring)."""
    lines = [
        "# Benchmarks: whynet against peers and floors",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Ratios are measured in one run side by side; targets: "
        f"peer/whynet >= {PEER_TARGET:g} (no slower than the peer), whynet/floor <= "
        f"{FLOOR_TARGET:g} (within {FLOOR_TARGET:g}x of the hand-written floor), unless the "
        "benchmark sets its own.",
        "",
        "| benchmark | work | whynet | peer / floor | ratio | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in sorted(results.glob("*.json")):
        try:
            doc = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        for row in ratio_rows(f.stem, doc):
            lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    return "\n".join(lines) + "\n"
