"""Model hygiene: run in eval mode with frozen parameters, restore everything afterwards."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: one re-entrant lock per model (weakly keyed: a lock never keeps a model alive)
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of one module object (see :func:`frozen_eval`)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def _locked(model: nn.Module) -> Iterator[None]:
    """Hold the lock of every module in ``model`` (itself and all submodules).

    Locking every module, not only the one passed, is what keeps an explainer of ``model`` and
    one of ``model.features`` apart: they share modules, and either block's restore would
    otherwise flip train mode / ``requires_grad`` under the other's forward. The locks are taken
    in one global order (by ``id``), so two blocks over overlapping module sets never deadlock.
    """
    locks = [model_lock(m) for m in sorted(set(model.modules()), key=id)]
    taken: list[threading.RLock] = []
    try:
        for lock in locks:
            lock.acquire()
            taken.append(lock)
        yield
    finally:
        for lock in reversed(taken):
            lock.release()


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` parameters for the block.

    Each module's own ``training`` flag and each parameter's ``requires_grad`` are restored in
    ``finally``, even if the block raises. Parameters themselves are never touched. Eval mode
    matters for correctness, not only speed: batch-summed quantities are only per-sample
    separable when BatchNorm uses running statistics (METHODS.md, Influence).

    Threads: the block holds the re-entrant lock of every module in ``model``, so explains of
    one model (or of a model and one of its submodules) from several threads run one after the
    other and give the sequential results (their hooks never see each other's forward passes,
    and the model is restored only after the last of them). Nested blocks on one thread do not
    deadlock. Models that share no module run in parallel.
    """
    with _locked(model):
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


#: how an explainer picks the prediction tensor from a model's raw output (see select_output)
OutputSpec = int | str | Callable[[Any], torch.Tensor] | None


def _describe(raw: Any) -> str:
    """The choices in a raw output, for error messages: ``0: (8, 4), 1: (8, 10), ...``."""

    def shape(v: Any) -> str:
        return str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(raw, Mapping):
        return ", ".join(f"{k!r}: {shape(v)}" for k, v in raw.items())
    if isinstance(raw, (tuple, list)):
        return ", ".join(f"{i}: {shape(v)}" for i, v in enumerate(raw))
    return type(raw).__name__


def select_output(raw: Any, output: OutputSpec = None) -> torch.Tensor:
    """The prediction tensor of a model's raw output, chosen by ``output``.

    ``output=None``: a tensor is itself; a mapping or an object with ``logits`` (HF
    ``ModelOutput``s) gives its logits. Anything else — a tuple of several outputs, such as
    ``(bbox, landmarks, prob)`` — is refused with the choices named, never ``output[0]``
    silently. ``output`` may be an int index, a key / attribute name, or a callable of the raw
    output returning a tensor.
    """
    if output is None:
        if isinstance(raw, torch.Tensor):
            return raw
        logits = raw.get("logits") if isinstance(raw, Mapping) else getattr(raw, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        if isinstance(raw, (tuple, list)) and len(raw) == 1 and isinstance(raw[0], torch.Tensor):
            return raw[0]  # a 1-tuple (HF return_dict=False classifiers) has no ambiguity
        raise TypeError(
            f"the model returned {type(raw).__name__} ({_describe(raw)}), not one prediction "
            "tensor; pass output= an index, a key/attribute name, or a callable of the raw "
            "output that returns the tensor to explain"
        )
    if callable(output):
        picked = output(raw)
        what = f"output={getattr(output, '__name__', 'callable')}"
    elif isinstance(output, bool) or not isinstance(output, (int, str)):
        raise TypeError(
            f"output must be None, an int index, a key/attribute name or a callable, got {output!r}"
        )
    elif isinstance(output, int):
        seq = raw.to_tuple() if hasattr(raw, "to_tuple") else raw
        if not isinstance(seq, (tuple, list)):
            raise TypeError(
                f"output={output} indexes a tuple, but the model returned {type(raw).__name__}"
            )
        if not -len(seq) <= output < len(seq):
            raise IndexError(
                f"output={output} is out of range: the model returned {len(seq)} outputs "
                f"({_describe(raw)})"
            )
        picked, what = seq[output], f"output={output}"
    else:
        if isinstance(raw, Mapping) and output in raw:
            picked = raw[output]
        elif not isinstance(raw, (Mapping, torch.Tensor)) and hasattr(raw, output):
            picked = getattr(raw, output)
        else:
            raise ValueError(f"output={output!r} is not in the model's output ({_describe(raw)})")
        what = f"output={output!r}"
    if not isinstance(picked, torch.Tensor):
        raise TypeError(f"{what} selects a {type(picked).__name__}, not a tensor")
    return picked


def as_logits(output: object) -> torch.Tensor:
    """The prediction tensor of a model output with no ``output=`` choice (see
    :func:`select_output`): a tensor, or an HF output's ``logits``."""
    return select_output(output, None)
