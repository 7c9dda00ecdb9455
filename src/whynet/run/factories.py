"""Data from ``FILE.py:factory`` / ``module:factory`` specs, and the ``[data] boxes`` of a run
(see :mod:`whynet.run.readers`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from whynet.core.inputs import batch_len
from whynet.run.config import RunError
from whynet.run.readers import TEXT_COLUMNS, Data, factory_file
from whynet.run.readers import _columns as columns
from whynet.run.readers import _texts as texts
from whynet.run.readers import _token_strings as token_strings


def from_factory(spec: str, info: dict[str, Any]) -> Data:
    from whynet.cli import load_factory
    from whynet.core import iter_batches
    from whynet.core.inputs import concat, is_mapping, main_tensor

    fn = load_factory(spec)
    try:
        ds = fn()
    except Exception as e:
        raise RunError(f"{spec}: the data factory raised {type(e).__name__}: {e}") from None
    attr = spec.rpartition(":")[2]
    file = factory_file(spec) or Path(spec.rpartition(":")[0])
    if isinstance(ds, dict) and any(c in ds for c in TEXT_COLUMNS):  # columns, as a table
        return _factory_columns(spec, ds, info, file, attr)
    if isinstance(ds, tuple) and len(ds) == 2 and isinstance(ds[0], torch.Tensor):
        ds, y = ds
    else:
        y = None
    try:
        parts = list(iter_batches(ds, y, batch_size=256))
    except (TypeError, ValueError) as e:
        raise RunError(f"{spec}: {e}") from None
    if not parts:
        raise RunError(f"{spec}: the data factory returned no examples")
    try:
        # dict batches (an HF collator's {input_ids, attention_mask}) are concatenated per key
        x = concat([p[0] for p in parts])
    except (RuntimeError, ValueError) as e:
        raise RunError(
            f"{spec}: the batches cannot be joined ({e}); pad every batch to one length"
        ) from None
    ys = [p[1] for p in parts]
    labels = torch.cat([t for t in ys if t is not None]) if all(t is not None for t in ys) else None
    main = main_tensor(x)
    kind = "image" if main.dim() == 4 and main.is_floating_point() else "vector"
    if not main.is_floating_point():
        kind = "tokens"
    n = batch_len(x)
    tokens = None
    if kind == "tokens" and (info.get("vocab") is not None or callable(info.get("tokenizer"))):
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        if mask is None:  # padding from the pad id, as the core's token masks take it
            mask = main != int(info.get("pad_id", 0))
        rows = [main[i][mask[i].bool()] for i in range(n)]
        tokens = [token_strings(info, "", r.tolist()) for r in rows]
    return Data(
        x=x,
        kind=kind,
        names=[f"{attr}[{i}]" for i in range(n)],
        labels=labels,
        raw=main if kind == "image" and not is_mapping(x) else None,
        texts=None if tokens is None else [" ".join(t) for t in tokens],
        tokens=tokens,
        classes=list(info["classes"]) if info.get("classes") else None,
        files=[file] if file.is_file() else [],
    )


def _factory_columns(
    spec: str, ds: dict[str, Any], info: dict[str, Any], file: Path, attr: str
) -> Data:
    """A factory's ``{"text" or "smiles": [...], "label": [...], "name": [...]}`` columns,
    read as the rows of a table file."""
    lengths = {k: len(v) for k, v in ds.items() if isinstance(v, (list, tuple, torch.Tensor))}
    if len(set(lengths.values())) > 1:
        raise RunError(f"{spec}: the columns differ in length ({lengths})")
    col = next(c for c in TEXT_COLUMNS if c in ds)
    n = lengths.get(col, 0)
    if n == 0:
        raise RunError(f"{spec}: the data factory returned no examples")
    labels = ds.get("label")
    rows = [
        {col: ds[col][i], **({} if labels is None else {"label": _scalar(labels[i])})}
        for i in range(n)
    ]
    _, table = columns(spec, list(enumerate(rows)))
    names = [str(v) for v in ds["name"]] if "name" in ds else [f"{attr}[{i}]" for i in range(n)]
    data = texts(file, table, info, smiles=col == "smiles", names=names)
    return data


def _scalar(v: Any) -> str:
    return str(int(v)) if isinstance(v, torch.Tensor) else str(v)


def read_boxes(spec: str, data: Data) -> torch.Tensor:
    """``[data] boxes``: one ``(x0, y0, x1, y1)`` pixel box per explained example (x0, y0 the
    first column/row inside, x1, y1 one past the last), from a ``.csv``/``.tsv`` with those
    columns (and an optional ``file`` column naming the example) or a ``FILE.py:factory``
    returning an (N, 4) tensor."""
    target, sep, attr = spec.rpartition(":")
    if sep and attr.isidentifier() and not Path(spec).exists():
        from whynet.cli import load_factory

        try:
            boxes = torch.as_tensor(load_factory(spec)())
        except Exception as e:
            raise RunError(f"{spec}: the boxes factory raised {type(e).__name__}: {e}") from None
    else:
        path = Path(spec)
        if not path.is_file():
            raise RunError(f"boxes file not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            delim = "\t" if path.suffix.lower() == ".tsv" else ","
            rows = list(csv.DictReader(f, delimiter=delim))
        need = ("x0", "y0", "x1", "y1")
        if not rows or not set(need) <= set(rows[0]):
            raise RunError(f"{path}: needs columns {', '.join(need)} (one row per example)")
        if "file" in rows[0]:
            by_name = {r["file"]: r for r in rows}
            missing = [n for n in data.names if n not in by_name]
            if missing:
                raise RunError(f"{path}: no box for {missing[0]}")
            rows = [by_name[n] for n in data.names]
        try:
            boxes = torch.tensor([[int(float(r[k])) for k in need] for r in rows])
        except ValueError as e:
            raise RunError(f"{path}: box coordinates must be numbers ({e})") from None
    if boxes.dim() != 2 or boxes.shape[1] != 4 or len(boxes) != len(data):
        raise RunError(
            f"{spec}: boxes must be (N, 4) with N = {len(data)} examples, got {tuple(boxes.shape)}"
        )
    return boxes.long()
