"""The one training loop: seeded without touching the global RNG, progress, early stopping on
a validation loss with the best weights kept.

Used by the explanatory-mask network, the clustering autoencoders (IDEC) and the zoo trainers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from whynet.core.progress import progress_bar

#: ``loss(batch) -> (loss tensor, {stat: value}, rows)``; stats are averaged weighted by rows
LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, float], int]]


@dataclass
class TrainResult:
    """What :func:`train` did: one record per epoch (``epoch``, the mean training stats and the
    validation stats prefixed ``val_``), the epoch whose weights were kept, early stopping."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False


def train(
    module: nn.Module,
    batches: Callable[[int, torch.Generator], Iterable[Any]],
    loss: LossFn,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    scheduler: Any = None,
    clip_grad_norm: float | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    patience: int | None = None,
    progress: bool | None = None,
    desc: str = "train",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``module`` in place: for each epoch, each batch of ``batches(epoch, generator)``
    takes one optimiser step on ``loss(batch)``.

    Parameters
    ----------
    batches : callable
        ``(epoch, generator) -> iterable of batches``; shuffles draw from ``generator``, which
        is seeded with ``seed`` once (so the order depends on the seed only).
    loss : callable
        ``batch -> (loss, stats, rows)``.
    optimizer : torch.optim.Optimizer, optional
        Default Adam over ``module``'s parameters with ``lr``.
    scheduler : optional
        A learning-rate scheduler stepped after every optimiser step.
    clip_grad_norm : float, optional
        Clip the global gradient norm of ``module``'s parameters before every step.
    validate : callable, optional
        ``() -> stats`` with a ``"loss"`` key, run after each epoch in eval mode without
        gradients; the weights of the best validation loss are restored at the end.
    patience : int, optional
        Stop after this many epochs without a better validation loss (needs ``validate``).
    on_epoch : callable, optional
        ``(epoch, record)`` after each epoch (logging).

    The whole loop runs inside ``torch.random.fork_rng`` seeded with ``seed``: dropout and
    other random ops are reproducible and the caller's global RNG state is left as it was.
    The module ends in eval mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    opt = optimizer if optimizer is not None else torch.optim.Adam(module.parameters(), lr=lr)
    result = TrainResult()
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    bad_epochs = 0
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: fork_rng saved it
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            bar = progress_bar(
                desc=f"{desc} epoch {epoch + 1}/{epochs}", enabled=progress, unit="batch"
            )
            module.train()
            totals: dict[str, float] = {}
            n = 0
            try:
                for batch in batches(epoch, gen):
                    value, stats, rows = loss(batch)
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    if clip_grad_norm is not None:
                        nn.utils.clip_grad_norm_(module.parameters(), clip_grad_norm)
                    opt.step()
                    if scheduler is not None:
                        scheduler.step()
                    for k, v in stats.items():
                        totals[k] = totals.get(k, 0.0) + float(v) * rows
                    n += rows
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v / n:.3f}" for k, v in totals.items()})
            finally:
                if bar is not None:
                    bar.close()
            if n == 0:
                raise ValueError("the training data is empty")
            record = {"epoch": float(epoch + 1), **{k: v / n for k, v in totals.items()}}
            if validate is not None:
                module.eval()
                with torch.no_grad():
                    val = validate()
                record.update({f"val_{k}": v for k, v in val.items()})
                if best is None or val["loss"] < best[0]:
                    best = (val["loss"], copy.deepcopy(module.state_dict()))
                    result.best_epoch = epoch + 1
                    bad_epochs = 0
                else:
                    bad_epochs += 1
            result.history.append(record)
            if on_epoch is not None:
                on_epoch(epoch + 1, record)
            if validate is not None and patience is not None and bad_epochs >= patience:
                result.stopped_early = True
                break
    if best is not None:
        module.load_state_dict(best[1])
    module.eval()
    return result
