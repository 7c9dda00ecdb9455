"""Head-input features through the core pipeline, and the data fingerprint of the cache key.

The representer decomposition needs ``f_i``, the input of the final linear layer (Yeh et al.
2018, Sec. 3). It is captured by :func:`whynet.core.run_model` with ``inputs=[head]`` (the
head's first input, recorded in :mod:`whynet.core.hooks`), in eval mode without gradients, and
stored as float32. The on-disk cache is :class:`whynet.core.StoreCache`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from whynet.core import Accumulator, resolve_layer, run_model


def linear_head(model: nn.Module, head: str) -> nn.Linear:
    """The head module, which must be an ``nn.Linear`` (the decomposition is linear in it)."""
    module = resolve_layer(model, head)
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"head {head!r} must be a torch.nn.Linear (representer points decompose "
            f"a final linear layer), got {type(module).__name__}"
        )
    return module


def head_weight(module: nn.Linear) -> torch.Tensor:
    """``[W, b]`` (C, D+1): the head with its bias as the last column (zero if it has none)."""
    w = module.weight.detach()
    if module.bias is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    else:
        b = module.bias.detach()
    return torch.cat([w, b[:, None].to(w.dtype)], dim=1)


def iter_features(
    model: nn.Module,
    head: str,
    data: Any,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int,
    need_labels: bool = False,
    progress: bool | None = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Stream ``(features (B, D) float32, model output (B, C), labels)`` over ``data``.

    One :func:`~whynet.core.run_model` walk capturing the head's input; the pipeline raises if
    the head does not run exactly once per forward.
    """
    linear_head(model, head)
    for b in run_model(
        model,
        data,
        labels,
        inputs=[head],
        batch_size=batch_size,
        need_labels=need_labels,
        progress=progress,
        desc="representer features",
    ):
        f = b.layer_inputs[head]
        if f.dim() != 2 or f.shape[0] != len(b):
            raise ValueError(
                f"head {head!r} input has shape {tuple(f.shape)}; representer points "
                "need flat (batch, features) inputs to the head"
            )
        yield f.float(), b.output, b.labels


def forward_features(
    model: nn.Module, head: str, x: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head inputs (B, D) float32 and model outputs (B, C) of a batch of inputs ``x``."""
    acc = Accumulator()
    for f, out, _ in iter_features(model, head, x, batch_size=batch_size):
        acc.update(features=f, outputs=out)
    parts = acc.compute()
    return parts["features"], parts["outputs"]


def check_finite(features: torch.Tensor, where: str = "training") -> None:
    """Reject NaN/inf features with the first offending row."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{where} features are not finite (first at row {row}, "
            f"{int(bad.sum())} rows in all); check the model and inputs"
        )
