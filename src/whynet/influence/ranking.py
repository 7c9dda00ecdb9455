"""Ranking an influence explanation's channels (Leino et al. 2018, Sec. 3: the most influential
neurons of a layer for a quantity of interest): spatial positions collapsed, then top-k."""

from __future__ import annotations

import torch

from whynet.core import Explanation, Options, constraint
from whynet.core.layout import check_channel_dim, is_tokens, neurons_first

REDUCTIONS = ("sum", "max", "mean", None)
REDUCE = constraint(
    Options(("sum", "max", "mean")), None, desc="one of 'sum', 'max', 'mean' or None"
)


def _check_reduce(reduce: str | None) -> str | None:
    if not REDUCE.accepts(reduce):
        raise ValueError(f"reduce must be {REDUCE.describe()}, got {reduce!r}")
    return reduce


def collapse(
    values: torch.Tensor,
    reduce: str | None,
    dim: int = 1,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Collapse the positions of layer values to ``(B, C)`` neurons.

    ``dim`` is the neuron axis (1 for ``(B, C, *spatial)``, 2 for ``(B, T, D)`` token layers;
    see :func:`whynet.core.layout.neuron_dim`); ``valid`` ``(B, T)`` marks the real tokens of a
    token layer, the only positions reduced over (padding excluded). ``sum`` follows TruLens'
    notebooks, ``max`` the paper's Keras code; ``None`` keeps every neuron and flattens the
    per-input values in their own layout, ``(B, prod(shape))``.
    """
    _check_reduce(reduce)
    if values.dim() < 2:
        raise ValueError(
            f"values need a batch and a channel dimension, got shape {tuple(values.shape)}"
        )
    if reduce is None or values.dim() == 2:
        return values.reshape(values.shape[0], -1)
    v = neurons_first(values, check_channel_dim(dim, values.dim(), "the values"))
    flat = v.reshape(v.shape[0], v.shape[1], -1)
    if valid is not None and is_tokens(values.dim(), dim):
        if valid.shape != (flat.shape[0], flat.shape[2]):
            raise ValueError(
                f"the token mask has shape {tuple(valid.shape)}, the values have "
                f"{flat.shape[0]} inputs x {flat.shape[2]} tokens"
            )
        keep = valid.to(flat.device, torch.bool)[:, None, :]
        if reduce == "max":
            return flat.masked_fill(~keep, float("-inf")).amax(-1)
        total = (flat * keep).sum(-1)
        return total if reduce == "sum" else total / keep.sum(-1).clamp_min(1)
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
    channel_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-ranked neurons of an influence explanation (see
    :meth:`InternalInfluence.top_neurons`). The neuron axis is ``channel_dim``, else the one
    the explanation records (``meta["neuron_dim"]``: hidden units of a ``(B, T, D)`` layer),
    else dimension 1; a token layer's padding (``extras["valid_tokens"]``) is excluded."""
    values = explanation.values if isinstance(explanation, Explanation) else explanation
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"explanation must be an Explanation or a tensor, got {type(values).__name__}"
        )
    valid = None
    dim = 1
    if isinstance(explanation, Explanation):
        dim = int(explanation.meta.get("neuron_dim", 1))
        valid = explanation.extras.get("valid_tokens")
    if channel_dim is not None:
        dim = check_channel_dim(channel_dim, values.dim(), "the values")
    scores = collapse(values.detach(), reduce, dim, valid)
    if not per_input:
        scores = scores.mean(0)
    n = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        unit = "neurons" if reduce is None else "hidden units" if dim > 1 else "channels"
        raise ValueError(f"k must be an int in [1, {n}] (the layer has {n} {unit}), got {k!r}")
    key = scores.abs() if absolute else scores
    idx = key.topk(k, dim=-1).indices
    return idx, scores.gather(-1, idx)
