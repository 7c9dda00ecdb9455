"""Ranking an influence explanation's channels (Leino et al. 2018, Sec. 3: the most influential
neurons of a layer for a quantity of interest): spatial positions collapsed, then top-k."""

from __future__ import annotations

import torch

from whynet.core import Explanation, Options, constraint

REDUCTIONS = ("sum", "max", "mean", None)
REDUCE = constraint(
    Options(("sum", "max", "mean")), None, desc="one of 'sum', 'max', 'mean' or None"
)


def _check_reduce(reduce: str | None) -> str | None:
    if not REDUCE.accepts(reduce):
        raise ValueError(f"reduce must be {REDUCE.describe()}, got {reduce!r}")
    return reduce


def collapse(values: torch.Tensor, reduce: str | None) -> torch.Tensor:
    """Collapse the spatial positions of ``(B, C, *spatial)`` values to ``(B, C)`` channels.

    ``sum`` follows TruLens' notebooks, ``max`` the paper's Keras code; ``None`` keeps every
    neuron and flattens to ``(B, C * prod(spatial))``.
    """
    _check_reduce(reduce)
    if values.dim() < 2:
        raise ValueError(
            f"values need a batch and a channel dimension, got shape {tuple(values.shape)}"
        )
    if reduce is None or values.dim() == 2:
        return values.reshape(values.shape[0], -1)
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    if reduce == "sum":
        return flat.sum(-1)
    if reduce == "mean":
        return flat.mean(-1)
    return flat.amax(-1)


def top_neurons(
    explanation: Explanation | torch.Tensor,
    k: int,
    reduce: str | None = "sum",
    per_input: bool = False,
    absolute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-ranked channels of an influence explanation (see
    :meth:`InternalInfluence.top_neurons`)."""
    values = explanation.values if isinstance(explanation, Explanation) else explanation
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"explanation must be an Explanation or a tensor, got {type(values).__name__}"
        )
    scores = collapse(values.detach(), reduce)
    if not per_input:
        scores = scores.mean(0)
    n = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(
            f"k must be an int in [1, {n}] (the layer has {n} "
            f"{'neurons' if reduce is None else 'channels'}), got {k!r}"
        )
    key = scores.abs() if absolute else scores
    idx = key.topk(k, dim=-1).indices
    return idx, scores.gather(-1, idx)
