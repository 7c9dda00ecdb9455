"""Model hygiene: run in eval mode with frozen parameters, restore everything afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` parameters for the block.

    Each module's own ``training`` flag and each parameter's ``requires_grad`` are restored in
    ``finally``, even if the block raises. Parameters themselves are never touched. Eval mode
    matters for correctness, not only speed: batch-summed quantities are only per-sample
    separable when BatchNorm uses running statistics (METHODS.md, Influence).
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's parameters (float32 for a parameter-free model)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def as_logits(output: object) -> torch.Tensor:
    """The prediction tensor of a model output: a tensor, ``output["logits"]`` or ``output[0]``.

    HuggingFace-style models return dicts or tuples; we take their logits.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "logits" in output:
            return as_logits(output["logits"])
        raise TypeError(f"model returned a dict without 'logits' (keys: {sorted(output)})")
    if hasattr(output, "logits"):
        return as_logits(output.logits)
    if isinstance(output, (tuple, list)) and output:
        return as_logits(output[0])
    raise TypeError(f"model output of type {type(output).__name__} is not a tensor")
