"""Sections on disk (``sections.json`` + figure files) and sections from saved explanations,
so ``whynet report DIR`` can rebuild a report without rerunning anything."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from whynet.core.explanation import Explanation, atomic_write, temp_path
from whynet.report.sections import Figure, Section, Table

SECTIONS_FILE = "sections.json"
FORMAT, VERSION = "whynet.sections", 1
FIGURES = "figures"
_FIGDIR = re.compile(r"^figures(-[0-9a-f]{16})?$")


def save_sections(sections: Sequence[Section], folder: str | os.PathLike[str]) -> Path:
    """Write ``sections.json`` and one PNG per raster figure into ``folder``, atomically as a
    whole.

    The figures go to a temporary folder renamed to ``figures-<content hash>``; only then is
    ``sections.json`` (naming that folder) renamed into place. A save killed at any point
    leaves the old sections with their own figures; the next save removes what it left (temp
    folders, figure folders no ``sections.json`` names).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc: list[dict[str, Any]] = []
    pngs: dict[str, bytes] = {}
    for i, s in enumerate(sections):
        figs = []
        for j, f in enumerate(s.figures):
            entry = {"caption": f.caption, "svg": f.svg, "html": f.html, "png": None}
            if f.png is not None:
                pngs[f"s{i:02d}_f{j:03d}.png"] = f.png
                entry["png"] = f"s{i:02d}_f{j:03d}.png"
            figs.append(entry)
        d = asdict(s)
        d["figures"] = figs
        doc.append(d)
    h = hashlib.sha256()
    for name, png in pngs.items():
        h.update(name.encode() + b"\0" + hashlib.sha256(png).digest())
    figname = f"{FIGURES}-{h.hexdigest()[:16]}"
    if not (folder / figname).is_dir():
        with temp_path(folder / FIGURES, folder=True) as tmp:
            try:
                for name, png in pngs.items():
                    Path(tmp, name).write_bytes(png)
                os.replace(tmp, folder / figname)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    for d in doc:
        for entry in d["figures"]:
            if entry["png"] is not None:
                entry["png"] = f"{figname}/{entry['png']}"
    text = json.dumps(
        {"format": FORMAT, "version": VERSION, "sections": doc}, indent=1, default=str
    )
    out = atomic_write(folder / SECTIONS_FILE, lambda tmp: Path(tmp).write_text(text))
    for old in folder.iterdir():  # figure folders of earlier (or killed) saves
        if old.name != figname and _FIGDIR.match(old.name) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return out


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} is not a valid whynet sections file: {what}")


def _str(value: Any, path: Path, what: str, optional: bool = False) -> Any:
    if (value is None and optional) or isinstance(value, str):
        return value
    raise _fail(path, f"{what} must be a string, got {type(value).__name__}")


def _list(value: Any, path: Path, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, f"{what} must be a list, got {type(value).__name__}")
    return value


def _inside(folder: Path, rel: str, path: Path) -> Path:
    """``folder / rel`` if it lies inside ``folder`` (symbolic links resolved)."""
    root = folder.resolve()
    target = (folder / rel).resolve()
    if os.path.isabs(rel) or not target.is_relative_to(root):
        raise ValueError(
            f"{path}: figure path {rel!r} points outside the report folder {root}; refused"
        )
    return target


def _figure(f: Any, folder: Path, path: Path) -> Figure:
    if not isinstance(f, dict):
        raise _fail(path, "a figure must be a map")
    png = _str(f.get("png"), path, "figure png", optional=True)
    data = _inside(folder, png, path).read_bytes() if png else None
    return Figure(
        caption=_str(f.get("caption", ""), path, "figure caption"),
        png=data,
        svg=_str(f.get("svg"), path, "figure svg", optional=True),
        html=_str(f.get("html"), path, "figure html", optional=True),
    )


def _table(t: Any, path: Path) -> Table:
    if not isinstance(t, dict):
        raise _fail(path, "a table must be a map")
    columns = [_str(c, path, "a column name") for c in _list(t.get("columns"), path, "columns")]
    rows = _list(t.get("rows"), path, "rows")
    for r in rows:
        for v in _list(r, path, "a table row"):
            if not (v is None or isinstance(v, (str, int, float))):
                raise _fail(path, f"a table cell must be text or a number, got {type(v).__name__}")
    return Table(
        caption=_str(t.get("caption", ""), path, "table caption"), columns=columns, rows=rows
    )


def load_sections(folder: str | os.PathLike[str]) -> list[Section]:
    """Read sections written by :func:`save_sections`, validating every field.

    The file is untrusted input: wrong types raise ``ValueError`` naming the file, and a
    figure path leading outside ``folder`` (``..``, an absolute path, a symbolic link) is
    refused.
    """
    folder = Path(folder)
    path = folder / SECTIONS_FILE
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a whynet sections file")
    version = doc.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path} has sections version {version!r}; this whynet reads <= {VERSION}")
    out = []
    for d in _list(doc.get("sections"), path, "sections"):
        if not isinstance(d, dict):
            raise _fail(path, "a section must be a map")
        metrics = d.get("metrics", {})
        if not isinstance(metrics, dict):
            raise _fail(path, "metrics must be a map")
        out.append(
            Section(
                title=_str(d.get("title"), path, "a section title"),
                intro=_str(d.get("intro", ""), path, "intro"),
                figures=[
                    _figure(f, folder, path) for f in _list(d.get("figures", []), path, "figures")
                ],
                tables=[_table(t, path) for t in _list(d.get("tables", []), path, "tables")],
                notes=[_str(n, path, "a note") for n in _list(d.get("notes", []), path, "notes")],
                metrics=metrics,
            )
        )
    return out


def _explanation_figures(e: Explanation, name: str, limit: int = 16) -> list[Figure]:
    from whynet.viz import explanation_figures

    return explanation_figures(e, name, limit=limit)


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
