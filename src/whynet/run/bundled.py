"""Model and data factories of the bundled runs (``whynet/run/configs/*.toml``, ``whynet demo``).

The zoo's models as ``whynet run`` model factories (``(model, info)`` with ``classes`` and,
for text and SMILES, a ``tokenizer`` and the ``vocab``) and bundled data as data factories:
the same factory contract a user's own ``FILE.py:factory`` follows (docs/run.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: examples explained by the bundled runs (small: ``whynet demo`` stays under two minutes)
N_EXPLAIN = 8
#: training examples the bundled runs fit on
N_TRAIN = 1000


def _zoo(name: str) -> tuple[nn.Module, dict[str, Any]]:
    from whynet.zoo import load_model

    model, zinfo = load_model(name)
    info: dict[str, Any] = {"classes": zinfo.get("class_names")}
    vocab = zinfo.get("vocab")
    if vocab is not None:
        from whynet.data.molecules import tokenize_smiles
        from whynet.data.text import tokenize

        split: Callable[[str], list[str]] = (
            tokenize_smiles if name.endswith("-smiles") else tokenize
        )
        info["vocab"] = list(vocab.itos)
        info["tokens"] = split
        info["tokenizer"] = lambda text: vocab.encode(split(text))
    return model, info


def fashion_cnn() -> tuple[nn.Module, dict[str, Any]]:
    """The zoo's ``fashion-cnn`` (Fashion-MNIST, 28 x 28 grey)."""
    return _zoo("fashion-cnn")


def canvas_cnn() -> tuple[nn.Module, dict[str, Any]]:
    """The zoo's ``canvas-cnn`` (one Fashion-MNIST item on a cluttered 64 x 64 canvas)."""
    return _zoo("canvas-cnn")


def sentiment_gru() -> tuple[nn.Module, dict[str, Any]]:
    """The zoo's ``sentiment-gru`` (rotten / fresh review snippets)."""
    return _zoo("sentiment-gru")


def tpsa_smiles() -> tuple[nn.Module, dict[str, Any]]:
    """The zoo's ``tpsa-smiles`` (topological polar surface area from SMILES characters)."""
    return _zoo("tpsa-smiles")


def _fashion(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from whynet.data import fashion_mnist

    x, y = fashion_mnist(split).tensors()
    return x[:n], y[:n]


def fashion_train() -> tuple[torch.Tensor, torch.Tensor]:
    """The first :data:`N_TRAIN` Fashion-MNIST training images with labels."""
    return _fashion("train", N_TRAIN)


def fashion_explain() -> tuple[torch.Tensor, torch.Tensor]:
    """The first :data:`N_EXPLAIN` Fashion-MNIST test images with labels."""
    return _fashion("test", N_EXPLAIN)


@functools.lru_cache(maxsize=1)
def _canvas() -> Any:
    from whynet.data.canvas import canvas

    return canvas("test", n=N_EXPLAIN)


def canvas_explain() -> tuple[torch.Tensor, torch.Tensor]:
    """:data:`N_EXPLAIN` canvas test images with labels."""
    return _canvas().tensors()


def canvas_boxes() -> torch.Tensor:
    """The items' exact boxes ``(x0, y0, x1, y1)`` in those images (the pointing game)."""
    return _canvas().boxes


def _reviews(split: str, n: int) -> dict[str, Any]:
    from whynet.data.text import rotten_tomatoes

    ds = rotten_tomatoes(split)
    return {"text": ds.texts[:n], "label": ds.y[:n].tolist()}


def reviews_train() -> dict[str, Any]:
    """:data:`N_TRAIN` training review snippets with labels (columns, as a ``.csv`` has)."""
    return _reviews("train", N_TRAIN)


def reviews_explain() -> dict[str, Any]:
    """The first :data:`N_EXPLAIN` test review snippets with labels."""
    return _reviews("test", N_EXPLAIN)


def molecules_explain() -> dict[str, Any]:
    """Six NCI test molecules (SMILES) with their RDKit ids as names."""
    from whynet.data.molecules import nci_molecules

    ds = nci_molecules("test", max_len=60)
    picks = [i for i, s in enumerate(ds.smiles) if 20 <= len(s) <= 50][:6]
    return {
        "smiles": [ds.smiles[i] for i in picks],
        "name": [str(ds.ids[i]) for i in picks],  # type: ignore[attr-defined]
    }
