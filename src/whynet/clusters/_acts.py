"""Layer activations for clustering, reduced per input to a fixed shape.

The activations themselves are captured by :func:`whynet.core.pipeline.run_model` (which
unpacks tuples and ``PackedSequence`` outputs and reports the sequences' lengths) and kept in
:class:`whynet.core.store.ActivationStore`. Each chosen layer's output is reduced here:

- ``(B, C, H, W)`` (convolutional feature maps) are kept as they are (a convolutional
  autoencoder embeds them);
- ``(B, F)`` (flat layers) are kept;
- ``(B, T, H)`` (token sequences, batch first, e.g. a GRU's output) are mean-pooled over the
  *valid* tokens: those of a ``PackedSequence`` (its lengths), or, when the model's input is
  integer token ids ``(B, T)``, the positions whose id is not 0 (padding). If the time axis is
  axis 2 instead (a ``Conv1d`` output ``(B, C, T)`` over token ids) it is pooled there. Other
  3-D outputs are treated as ``(B, T, H)`` and averaged over axis 1.
"""

from __future__ import annotations

import torch


def reduce_activation(
    t: torch.Tensor, lengths: torch.Tensor | None, x: torch.Tensor, layer: str
) -> torch.Tensor:
    """Reduce a layer's output batch to ``(B, C, H, W)`` or ``(B, F)`` float32 (module doc)."""
    if not t.is_floating_point():
        raise TypeError(
            f"layer {layer!r} gives activations of dtype {t.dtype}; clustering needs "
            "floating activations (choose a layer after the embedding/cast)"
        )
    if not bool(torch.isfinite(t).all()):  # NaN would make NaN posteriors and index -1 queries
        raise ValueError(
            f"layer {layer!r} gives NaN or infinite activations (NaN or infinite inputs?); "
            "clustering needs finite values"
        )
    if t.dim() == 0 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"layer {layer!r} output of shape {tuple(t.shape)} has no batch "
            f"dimension matching the {x.shape[0]} inputs"
        )
    t = t.detach().float()
    if t.dim() == 1:
        return t[:, None]
    if t.dim() in (2, 4):
        return t
    if t.dim() == 3:
        axis, mask = 1, None
        if lengths is not None:
            steps = torch.arange(t.shape[1], device=t.device)
            mask = steps[None, :] < lengths.to(t.device)[:, None]
        elif x.dim() == 2 and not x.is_floating_point():
            if t.shape[1] == x.shape[1]:
                mask = x != 0
            elif t.shape[2] == x.shape[1]:
                axis, mask = 2, x != 0
        if mask is None:
            return t.mean(dim=axis)
        m = mask.to(t.dtype).unsqueeze(3 - axis)  # (B, T, 1) or (B, 1, T)
        return (t * m).sum(dim=axis) / m.sum(dim=axis).clamp_min(1.0)
    return t.flatten(1)
