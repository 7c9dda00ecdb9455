"""Model and data readers of ``whynet run``: what a path is decides how it is read.

- a folder of images (one sub-folder per class = labels, the ImageFolder convention; PIL);
- ``.txt`` (one example per line), ``.csv``/``.tsv``/``.jsonl`` (``text`` or ``smiles``
  column, optional ``label``), ``.smi`` (SMILES, optional name after whitespace);
- ``FILE.py:factory`` returning a Dataset or DataLoader of ``(input, label)`` pairs or of dict
  batches (``{"input_ids", "attention_mask", "labels"}``), a tensor, an ``(inputs, labels)``
  pair, or columns as a table has them (``{"text" or "smiles": [...], "label": [...]}``).

Text and SMILES go through the model factory's ``info["tokenizer"]`` (a callable returning
ids, or a dict with ``input_ids``) and are padded here with ``info.get("pad_id", 0)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from whynet.core.inputs import batch_len
from whynet.run.config import RunError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl"}
TEXT_COLUMNS = ("text", "smiles")


@dataclass
class Data:
    """Examples read from one path.

    ``x`` is what the model takes (images after ``preprocess``; padded token ids); ``raw``
    the images in [0, 1] for overlays; ``names`` one display name per example (file name, or
    ``file:line``); ``texts``/``tokens`` the examples' text and token strings.
    """

    x: Any  # a tensor, or {"input_ids", "attention_mask"} for an HF tokenizer's text
    kind: str  # "image" | "tokens" | "vector"
    names: list[str]
    labels: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    texts: list[str] | None = None
    tokens: list[list[str]] | None = None
    classes: list[str] | None = None
    files: list[Path] = field(default_factory=list)
    #: the texts are SMILES (``.smi``, a ``smiles`` column): the report draws molecules
    smiles: bool = False
    #: (N, 4) ``(x0, y0, x1, y1)`` pixel boxes of the evidence (``[data] boxes``)
    boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return batch_len(self.x)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def factory_file(spec: str) -> Path | None:
    """The source file of a ``FILE.py:factory`` or ``package.module:factory`` spec (its
    checksum goes into the report and the fit cache key), or None."""
    target = spec.rpartition(":")[0]
    if Path(target).is_file():
        return Path(target)
    if not target or "/" in target or target.endswith(".py"):
        return None
    import importlib.util

    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None


def checksums(files: Sequence[Path]) -> dict[str, str]:
    return {str(f): sha256(f) for f in files}


# ---------------------------------------------------------------------------- the model
def load_model(factory: str, weights: Path | None) -> tuple[nn.Module, dict[str, Any]]:
    """Call ``factory`` (``FILE.py:fn`` or ``module:fn``); load ``weights`` (safetensors,
    strict) into the module it returns."""
    from whynet.cli import load_factory

    fn = load_factory(factory)
    try:
        made = fn()
    except Exception as e:
        raise RunError(f"{factory}: the factory raised {type(e).__name__}: {e}") from None
    model, info = made if isinstance(made, tuple) and len(made) == 2 else (made, {})
    if not isinstance(model, nn.Module):
        raise RunError(f"{factory} returned {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(info, dict):
        raise RunError(f"{factory}: info must be a dict, got {type(info).__name__}")
    if weights is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not weights.is_file():
            raise RunError(f"weights file not found: {weights}")
        if weights.suffix != ".safetensors":
            raise RunError(f"{weights}: weights must be a .safetensors file (never unpickled)")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise RunError(f"{weights}: not a readable safetensors file ({e})") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise RunError(f"{weights}: does not fit the model: {' '.join(first[:3])}") from None
    return model, info


# ---------------------------------------------------------------------------- data
def read_data(
    spec: str,
    info: dict[str, Any],
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    labels_file: Path | None = None,
    boxes: str | None = None,
) -> Data:
    """Read the examples at ``spec`` (see the module docstring); ``boxes`` see
    :func:`read_boxes`."""
    target, sep, attr = spec.rpartition(":")
    if sep and attr.isidentifier() and not Path(spec).exists():
        from whynet.run.factories import from_factory

        data = from_factory(spec, info)
    else:
        path = Path(spec)
        if not path.exists():
            raise RunError(f"data not found: {path}")
        if path.is_dir():
            data = _images(path, size, channels, info)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            data = _images_from([path], [None], path.parent, size, channels, info, None)
        elif path.suffix.lower() == ".txt":
            data = _texts(path, _lines(path), info)
        elif path.suffix.lower() == ".smi":
            rows: list[tuple[int, str, str | None]] = [
                (i, line.split()[0], None) for i, line, _ in _lines(path)
            ]
            data = _texts(path, rows, info, smiles=True)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            col, table = _table(path)
            data = _texts(path, table, info, smiles=col == "smiles")
        else:
            raise RunError(
                f"{path}: cannot tell how to read it (a folder of images, .txt, .csv, .tsv, "
                ".jsonl, .smi, or FILE.py:factory)"
            )
    if labels_file is not None:
        data.labels = _labels([(i, t) for i, t, _ in _lines(labels_file)], labels_file, data)
    if boxes is not None:
        from whynet.run.factories import read_boxes

        data.boxes = read_boxes(boxes, data)
    return data


def _lines(path: Path) -> list[tuple[int, str, str | None]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out: list[tuple[int, str, str | None]] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            raise RunError(f"{path}:{i}: empty line (one example per line)")
        out.append((i, line.strip(), None))
    if not out:
        raise RunError(f"{path}: no examples")
    return out


def _table(path: Path) -> tuple[str, list[tuple[int, str, str | None]]]:
    """(the text column's name, its rows) of a ``.csv``/``.tsv``/``.jsonl`` file."""
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                raise RunError(f"{path}:{i}: empty line")
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise RunError(f"{path}:{i}: not JSON ({e.msg})") from None
    else:
        with open(path, newline="", encoding="utf-8") as f:
            delim = "\t" if path.suffix.lower() == ".tsv" else ","
            rows = [(i, r) for i, r in enumerate(csv.DictReader(f, delimiter=delim), 2)]
    if not rows:
        raise RunError(f"{path}: no examples")
    return _columns(path, rows)


def _columns(
    path: Path | str, rows: list[tuple[int, dict[str, Any]]]
) -> tuple[str, list[tuple[int, str, str | None]]]:
    cols = set(rows[0][1])
    col = next((c for c in TEXT_COLUMNS if c in cols), None)
    if col is None:
        raise RunError(
            f"{path}: needs a 'text' or 'smiles' column; it has {', '.join(sorted(cols))}"
        )
    out = []
    for i, r in rows:
        text = r.get(col)
        if not isinstance(text, str) or not text.strip():
            raise RunError(f"{path}:{i}: empty {col!r}")
        label = r.get("label")
        out.append((i, text.strip(), None if label in (None, "") else str(label)))
    return col, out


def _class_index(value: str, classes: list[str] | None, where: str) -> int:
    if classes and value in classes:
        return classes.index(value)
    try:
        return int(value)
    except ValueError:
        known = f"; classes: {', '.join(classes)}" if classes else " (no info['classes'] given)"
        raise RunError(f"{where}: label {value!r} is not a class{known}") from None


def _labels(rows: list[tuple[int, str]], path: Path, data: Data) -> torch.Tensor:
    if len(rows) != len(data):
        raise RunError(f"{path}: {len(rows)} labels for {len(data)} examples")
    return torch.tensor([_class_index(t, data.classes, f"{path}:{i}") for i, t in rows])


def _token_strings(info: dict[str, Any], text: str, ids: list[int]) -> list[str]:
    """Token strings for display: ``info["tokens"](text)``, a vocab, or whitespace words."""
    if callable(info.get("tokens")):
        return [str(t) for t in info["tokens"](text)]
    convert = getattr(info.get("tokenizer"), "convert_ids_to_tokens", None)
    if callable(convert):  # an HF tokenizer
        return [str(t) for t in convert(ids)]
    vocab = info.get("vocab")
    if isinstance(vocab, dict):
        inv = {v: k for k, v in vocab.items()}
        return [str(inv.get(i, i)) for i in ids]
    if isinstance(vocab, (list, tuple)):
        return [str(vocab[i]) if 0 <= i < len(vocab) else str(i) for i in ids]
    words = text.split()
    return words if len(words) == len(ids) else [str(i) for i in ids]


def _texts(
    path: Path,
    rows: list[tuple[int, str, str | None]],
    info: dict[str, Any],
    *,
    smiles: bool = False,
    names: list[str] | None = None,
) -> Data:
    tok: Callable[[str], Any] | None = info.get("tokenizer")
    if not callable(tok):
        raise RunError(f"{path}: text data needs info['tokenizer'] from the model factory")
    ids: list[list[int]] = []
    with_mask = False  # an HF tokenizer: the model is called with input_ids + attention_mask
    for i, text, _ in rows:
        try:
            out = tok(text)
        except Exception as e:
            raise RunError(f"{path}:{i}: the tokenizer raised {type(e).__name__}: {e}") from None
        if isinstance(out, dict) or hasattr(out, "keys"):
            with_mask = with_mask or "attention_mask" in out
            out = out["input_ids"]
        seq = torch.as_tensor(out).flatten().tolist()
        if not seq:
            raise RunError(f"{path}:{i}: the tokenizer returned no ids")
        ids.append([int(v) for v in seq])
    pad_default = getattr(tok, "pad_token_id", None)
    pad = int(info.get("pad_id", 0 if pad_default is None else pad_default))
    width = max(len(s) for s in ids)
    ids_t = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, s in enumerate(ids):
        ids_t[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    # with an attention mask the batch is a mapping: explainers call model(**x) and take
    # padding from the mask (whynet.core.inputs)
    x: Any = {"input_ids": ids_t, "attention_mask": mask} if with_mask else ids_t
    classes = list(info["classes"]) if info.get("classes") else None
    data = Data(
        x=x,
        kind="tokens",
        names=names or [f"{path.name}:{i}" for i, _, _ in rows],
        texts=[t for _, t, _ in rows],
        tokens=[_token_strings(info, t, s) for (_, t, _), s in zip(rows, ids)],
        classes=classes,
        files=[path] if path.is_file() else [],
        smiles=smiles,
    )
    if any(lab is not None for _, _, lab in rows):
        missing = [i for i, _, lab in rows if lab is None]
        if missing:
            raise RunError(f"{path}:{missing[0]}: no label (some rows have one)")
        data.labels = _labels([(i, str(lab)) for i, _, lab in rows], path, data)
    return data


def _images(
    folder: Path, size: tuple[int, int] | None, channels: int | None, info: dict[str, Any]
) -> Data:
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int | None] = []
    classes = list(info["classes"]) if info.get("classes") else None
    if subdirs:  # ImageFolder: one sub-folder per class
        names = [d.name for d in subdirs]
        if classes and not set(names) <= set(classes):
            bad = sorted(set(names) - set(classes))
            raise RunError(
                f"{folder}: class folder(s) {', '.join(bad)} are not among the model's classes "
                f"{', '.join(classes)}"
            )
        classes = classes or names
        for d in subdirs:
            found = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [classes.index(d.name)] * len(found)
    else:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        labels = [None] * len(files)
    if not files:
        raise RunError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return _images_from(files, labels, folder, size, channels, info, classes)


def _images_from(
    files: list[Path],
    labels: list[int | None],
    folder: Path,
    size: tuple[int, int] | None,
    channels: int | None,
    info: dict[str, Any],
    classes: list[str] | None,
) -> Data:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB", None: "RGB"}.get(channels)
    if mode is None:
        raise RunError(f"[data] channels must be 1 or 3, got {channels!r}")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as opened:
                im = opened.convert(mode)
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise RunError(f"{f}: cannot decode the image ({type(e).__name__}: {e})") from None
        t = torch.from_numpy(a.copy())
        arrays.append(t[None] if t.dim() == 2 else t.permute(2, 0, 1))
    shapes = {tuple(a.shape[1:]) for a in arrays}
    if len(shapes) > 1:
        raise RunError(
            f"{folder}: images differ in size {sorted(shapes)}; set [data] size = [H, W]"
        )
    raw = torch.stack(arrays)
    x = raw
    if callable(info.get("preprocess")):
        x = info["preprocess"](raw)
        if not isinstance(x, torch.Tensor):
            raise RunError(f"info['preprocess'] returned {type(x).__name__}, not a tensor")
    root = folder if folder.is_dir() else folder.parent
    return Data(
        x=x,
        kind="image",
        names=[str(f.relative_to(root)) if f.is_relative_to(root) else f.name for f in files],
        labels=None if any(v is None for v in labels) else torch.tensor(labels),
        raw=raw,
        classes=classes,
        files=files,
    )
