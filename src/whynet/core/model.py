"""Model hygiene: run in eval mode with frozen parameters, restore everything afterwards."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: one re-entrant lock per model (weakly keyed: a lock never keeps a model alive)
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock :func:`frozen_eval` holds for ``model`` (one per model object)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` parameters for the block.

    Each module's own ``training`` flag and each parameter's ``requires_grad`` are restored in
    ``finally``, even if the block raises. Parameters themselves are never touched. Eval mode
    matters for correctness, not only speed: batch-summed quantities are only per-sample
    separable when BatchNorm uses running statistics (METHODS.md, Influence).

    Threads: the block holds the model's re-entrant lock (:func:`model_lock`), so explains of
    one model from several threads run one after the other and give the sequential results
    (their hooks never see each other's forward passes, and the model is restored only after
    the last of them). Nested blocks on one thread do not deadlock. Different models run in
    parallel.
    """
    with model_lock(model):
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
