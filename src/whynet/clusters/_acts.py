"""Layer activations for clustering, reduced per input to a fixed shape.

The activations themselves are captured by :func:`whynet.core.pipeline.run_model` (which
unpacks tuples and ``PackedSequence`` outputs and reports the sequences' lengths) and kept in
:class:`whynet.core.store.ActivationStore`. Each chosen layer's output is reduced here:

- ``(B, C, H, W)`` (convolutional feature maps) are kept as they are (a convolutional
  autoencoder embeds them);
- ``(B, F)`` (flat layers) are kept;
- ``(B, T, H)`` (token sequences, batch first, e.g. a GRU's output) are mean-pooled over the
  *valid* tokens: those of a ``PackedSequence`` (its lengths), of the inputs' attention mask
  (a mapping batch, e.g. an HF ``BatchEncoding``), or, when the model's input is integer token
  ids ``(B, T)``, the positions whose id is not ``pad_id``. If the time axis is axis 2 instead
  (a ``Conv1d`` output ``(B, C, T)`` over token ids) it is pooled there. Other 3-D outputs
  (a ViT's patch tokens) are treated as ``(B, T, H)`` and averaged over axis 1.
"""

from __future__ import annotations

from typing import Any

import torch

from whynet.core import batch_len, valid_tokens


def reduce_activation(
    t: torch.Tensor,
    lengths: torch.Tensor | None,
    x: Any,
    layer: str,
    pad_id: int | None = 0,
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
    n = batch_len(x)
    if t.dim() == 0 or t.shape[0] != n:
        raise ValueError(
            f"layer {layer!r} output of shape {tuple(t.shape)} has no batch "
            f"dimension matching the {n} inputs"
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
        else:
            valid = valid_tokens(x, pad_id=pad_id)  # attention mask, else ids != pad_id
            if valid is not None and valid.dim() == 2:
                if t.shape[1] == valid.shape[1]:
                    mask = valid.to(t.device)
                elif t.shape[2] == valid.shape[1]:
                    axis, mask = 2, valid.to(t.device)
        if mask is None:
            return t.mean(dim=axis)
        m = mask.to(t.dtype).unsqueeze(3 - axis)  # (B, T, 1) or (B, 1, T)
        return (t * m).sum(dim=axis) / m.sum(dim=axis).clamp_min(1.0)
    return t.flatten(1)
