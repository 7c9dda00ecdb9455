"""Sections on disk (``sections.json`` + figure files) and sections from saved explanations,
so ``whynet report DIR`` can rebuild a report without rerunning anything."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from whynet.core.explanation import Explanation, atomic_write
from whynet.report.sections import Figure, Section, Table

SECTIONS_FILE = "sections.json"


def save_sections(sections: Sequence[Section], folder: str | os.PathLike[str]) -> Path:
    """Write ``sections.json`` and one PNG per raster figure into ``folder``."""
    folder = Path(folder)
    figdir = folder / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    doc = []
    for i, s in enumerate(sections):
        figs = []
        for j, f in enumerate(s.figures):
            entry = {"caption": f.caption, "svg": f.svg, "html": f.html, "png": None}
            if f.png is not None:
                name = f"s{i:02d}_f{j:03d}.png"
                png = f.png
                atomic_write(figdir / name, lambda tmp, b=png: Path(tmp).write_bytes(b))
                entry["png"] = f"figures/{name}"
            figs.append(entry)
        d = asdict(s)
        d["figures"] = figs
        doc.append(d)
    text = json.dumps(
        {"format": "whynet.sections", "version": 1, "sections": doc}, indent=1, default=str
    )
    return atomic_write(folder / SECTIONS_FILE, lambda tmp: Path(tmp).write_text(text))


def load_sections(folder: str | os.PathLike[str]) -> list[Section]:
    """Read sections written by :func:`save_sections`."""
    folder = Path(folder)
    path = folder / SECTIONS_FILE
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if doc.get("format") != "whynet.sections":
        raise ValueError(f"{path} is not a whynet sections file")
    out = []
    for d in doc["sections"]:
        figs = []
        for f in d.get("figures", []):
            png = (folder / f["png"]).read_bytes() if f.get("png") else None
            figs.append(Figure(caption=f["caption"], png=png, svg=f.get("svg"), html=f.get("html")))
        tables = [Table(**t) for t in d.get("tables", [])]
        out.append(
            Section(
                title=d["title"],
                intro=d.get("intro", ""),
                figures=figs,
                tables=tables,
                notes=d.get("notes", []),
                metrics=d.get("metrics", {}),
            )
        )
    return out


def _explanation_figures(e: Explanation, name: str, limit: int = 16) -> list[Figure]:
    from whynet.viz import grid_png, overlay

    v = e.values.detach().float()
    inputs = e.extras.get("inputs")
    figs: list[Figure] = []
    if v.dim() >= 3:  # spatial: (B, H, W) or (B, C, H, W) -> one map per input
        maps = v if v.dim() == 3 else v.abs().sum(1)
        n = min(len(maps), limit)
        if inputs is not None and inputs.dim() == 4:
            imgs = [overlay(inputs[i], maps[i]) for i in range(n)]
        else:
            from whynet.viz import heatmap

            imgs = [heatmap(maps[i]) for i in range(n)]
        titles = [
            f"#{i}" + (f" t={int(e.target[i])}" if e.target is not None else "") for i in range(n)
        ]
        figs.append(
            Figure(
                caption=f"{name}: {e.method} on {e.layer or 'input'}",
                png=grid_png(imgs, ncol=8, titles=titles),
            )
        )
    return figs


def sections_from_explanations(folder: str | os.PathLike[str]) -> list[Section]:
    """One section per ``*.safetensors`` explanation file in ``folder``."""
    out = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            e = Explanation.load(path)
        except ValueError:
            continue  # not an explanation file (e.g. a fitted explainer)
        rows = [
            [k, json.dumps(v) if not isinstance(v, (int, float, str)) else v]
            for k, v in sorted(e.params.items())
        ]
        tables = (
            [Table(caption="settings", columns=["parameter", "value"], rows=rows)] if rows else []
        )
        shape = "x".join(map(str, e.values.shape))
        stats = Table(
            caption="values",
            columns=["shape", "min", "max", "mean |v|"],
            rows=[
                [shape, float(e.values.min()), float(e.values.max()), float(e.values.abs().mean())]
            ],
        )
        out.append(
            Section(
                title=f"{path.stem} ({e.method})",
                intro=f"layer: {e.layer or 'input'}",
                figures=_explanation_figures(e, path.stem),
                tables=[stats, *tables],
                metrics={"n": len(e), "dtype": str(e.values.dtype).replace("torch.", "")},
            )
        )
    return out
