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

from whynet.core import Accumulator, OutputSpec, StoreCache, resolve_layer, run_model


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
    output: OutputSpec = None,
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
        output=output,
    ):
        f = b.layer_inputs[head]
        if f.dim() != 2 or f.shape[0] != len(b):
            raise ValueError(
                f"head {head!r} input has shape {tuple(f.shape)}; representer points "
                "need flat (batch, features) inputs to the head"
            )
        yield f.float(), b.output, b.labels


def forward_features(
    model: nn.Module, head: str, x: Any, batch_size: int, output: OutputSpec = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head inputs (B, D) float32 and model outputs (B, C) of a batch of inputs ``x``."""
    acc = Accumulator()
    for f, out, _ in iter_features(model, head, x, batch_size=batch_size, output=output):
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


def training_features(
    model: nn.Module,
    head: str,
    data: Any,
    labels: torch.Tensor | None,
    *,
    batch_size: int,
    need_labels: bool,
    progress: bool | None,
    cache: StoreCache | None,
    output: OutputSpec = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(features (n, D) float32, outputs (n, C) float64, labels or None)`` of the training data.

    Read from ``cache`` (memory-mapped features) when it holds them, else one
    :func:`iter_features` walk, written to ``cache`` when one is given.
    """
    if cache is not None and cache.exists():
        arrays, _ = cache.read(mmap=("features",))
        if "features" not in arrays or "outputs" not in arrays:
            raise ValueError(
                f"corrupted representer feature cache {cache.meta_path}: "
                "no features/outputs recorded"
            )
        features, outputs, y = arrays["features"], arrays["outputs"], arrays.get("labels")
        if need_labels and y is None:
            raise ValueError(
                "targets='labels' but the cached training data had no labels; "
                "pass (inputs, labels) pairs or labels=..."
            )
        return features, outputs, y
    acc = Accumulator()
    for f, out, yb in iter_features(
        model,
        head,
        data,
        labels,
        batch_size=batch_size,
        need_labels=need_labels,
        progress=progress,
        output=output,
    ):
        # targets: keep the logits at full precision
        acc.update(features=f, outputs=out.double(), labels=yb)
    if acc.n == 0:
        raise ValueError("train_data is empty")
    parts = acc.compute()
    features, outputs, y = parts["features"], parts["outputs"], parts["labels"]
    check_finite(features)
    if cache is not None:
        cache.write(
            {
                "features": features.cpu().float(),
                "outputs": outputs.cpu().double(),
                "labels": None if y is None else y.cpu().long(),
            },
            {"head": head, "n": int(features.shape[0])},
        )
    return features, outputs, y


def check_loaded(
    model: nn.Module,
    head: str,
    weight: torch.Tensor,
    features: torch.Tensor,
    alpha: torch.Tensor,
    where: str,
) -> None:
    """The saved head ``weight`` (C, D+1), ``features`` and ``alpha`` must fit the model's head."""
    module = linear_head(model, head)
    if weight.shape != (module.out_features, module.in_features + 1):
        raise ValueError(
            f"{where} holds a head of shape {tuple(weight.shape)}, the model's head "
            f"is ({module.out_features}, {module.in_features} + 1)"
        )
    n, d = features.shape
    if d != module.in_features or alpha.shape != (n, module.out_features):
        raise ValueError(
            f"{where} holds features {tuple(features.shape)} and alpha "
            f"{tuple(alpha.shape)}, inconsistent with the model's head "
            f"({module.out_features} outputs, {module.in_features} inputs)"
        )
