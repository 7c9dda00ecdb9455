"""Which axis of a layer's output holds its neurons, and how token layers map to positions.

Convolutional layers are ``(B, C, H, W)`` (or ``(B, C, L)``): neurons are channels, dimension 1.
Transformer and recurrent layers are ``(B, T, D)``: neurons are the D hidden units, the last
dimension, and the T token positions are reduced over (padding excluded). Ranking the T
positions as if they were channels is a silent wrong answer, so every ranking, masking and
drawing of layer values goes through :func:`neuron_dim`; ``channel_dim=`` overrides it.

A ViT's patch tokens ``(B, 1 + h*w, D)`` are drawn on the image grid by :func:`tokens_to_grid`
(leading special tokens such as CLS dropped), as pytorch-grad-cam's ``reshape_transform``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from whynet.core.layers import resolve_layer

#: modules whose 3-d output is channel-first ``(B, C, L)``
_CHANNEL_FIRST_1D = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)


def _last_leaf(module: nn.Module) -> nn.Module:
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    return leaves[-1] if leaves else module


def check_channel_dim(channel_dim: int, ndim: int, what: str = "the layer") -> int:
    """Normalise ``channel_dim`` (negative counts from the end) for an ``ndim``-d output."""
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"channel_dim must be an int, got {channel_dim!r}")
    d = channel_dim + ndim if channel_dim < 0 else channel_dim
    if not 1 <= d < ndim:
        raise ValueError(
            f"channel_dim={channel_dim} is out of range for {what} with {ndim} dimensions "
            f"(batch first): pass one of 1..{ndim - 1} or -1..-{ndim - 1}"
        )
    return d


def neuron_dim(
    model: nn.Module | None,
    layer: str | None,
    ndim: int,
    channel_dim: int | None = None,
) -> int:
    """The (positive) dimension of a layer output's neurons.

    ``channel_dim`` if given; else 1 for ``(B, C)`` and ``(B, C, H, W, ...)`` outputs; for 3-d
    outputs the last dimension (``(B, T, D)`` token layers), unless the layer ends in a 1-d
    convolution, pooling or normalisation, which are channel-first ``(B, C, L)``.
    """
    if channel_dim is not None:
        return check_channel_dim(channel_dim, ndim, f"layer {layer!r}" if layer else "inputs")
    if ndim != 3:
        return 1
    if model is None or layer is None:
        return 1  # inputs: a (B, C, L) signal (token embeddings are explained at a layer)
    leaf = _last_leaf(resolve_layer(model, layer))
    return 1 if isinstance(leaf, _CHANNEL_FIRST_1D) else 2


def is_tokens(ndim: int, dim: int) -> bool:
    """A ``(B, T, D)`` layout: neurons last, one position axis."""
    return ndim == 3 and dim == 2


def neurons_first(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values`` with the neuron axis moved to dimension 1 (``(B, C, *positions)``)."""
    return values if dim == 1 else values.movedim(dim, 1)


def grid_side(tokens: int) -> tuple[int, int]:
    """``(extra, side)``: the number of leading special tokens and the patch grid's side, for
    a ViT sequence of ``tokens`` = ``extra + side**2`` (extra 0, 1 or 2: CLS, distillation)."""
    for extra in (1, 0, 2):
        side = math.isqrt(tokens - extra) if tokens > extra else 0
        if side > 0 and side * side == tokens - extra:
            return extra, side
    raise ValueError(
        f"{tokens} tokens do not form a square patch grid (with 0-2 leading special tokens); "
        "pass a layer of patch tokens or a basis_transform"
    )


def tokens_to_grid(values: torch.Tensor) -> torch.Tensor:
    """Patch tokens ``(B, T, D)`` -> ``(B, D, side, side)`` on the image grid (CLS dropped)."""
    if values.dim() != 3:
        raise ValueError(f"token values must be (B, T, D), got shape {tuple(values.shape)}")
    extra, side = grid_side(values.shape[1])
    patches = values[:, extra:]
    return patches.transpose(1, 2).reshape(values.shape[0], values.shape[2], side, side)
