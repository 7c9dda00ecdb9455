"""The zoo's training recipes on the one training loop (:func:`whynet.core.training.train`):
AdamW with a one-cycle schedule, seeded shuffles and augmentation, optional gradient clipping
and best-validation selection. Used by :mod:`whynet.zoo.train`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from whynet.core.pipeline import predict_logits
from whynet.core.training import train as train_module

__all__ = ["fit_epochs", "fit_sequences", "shift_flip", "train_classifier", "trim"]


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return list(perm.split(batch_size))


def onecycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> Any:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)


def fit_epochs(
    model: nn.Module,
    batches: Callable[[int, torch.Generator], Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hp: dict[str, Any],
    steps_per_epoch: int,
    log: Callable[[str], None],
    clip: float | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
) -> Any:
    """AdamW + OneCycle over ``hp["epochs"]`` epochs through :func:`whynet.core.train`, seeded
    with ``hp["seed"]``; with ``validate`` the weights of the best validation loss are kept."""
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = onecycle(opt, hp["lr"], hp["epochs"] * steps_per_epoch)
    clock = [time.time()]

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        xb, yb = batch
        value = loss_fn(model(xb), yb)
        return value, {"loss": float(value.detach())}, len(xb)

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        val = f" val {-record['val_loss']:.4f}" if "val_loss" in record else ""
        log(
            f"epoch {epoch}/{hp['epochs']}: loss {record['loss']:.4f}{val} "
            f"({time.time() - clock[0]:.0f} s)"
        )
        clock[0] = time.time()

    return train_module(
        model,
        batches,
        loss,
        epochs=hp["epochs"],
        optimizer=opt,
        scheduler=sched,
        clip_grad_norm=clip,
        seed=hp["seed"],
        validate=validate,
        progress=False,
        desc="zoo",
        on_epoch=on_epoch,
    )


def shift_flip(x: torch.Tensor, gen: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    """Light augmentation: random translation by up to ``shift`` px and horizontal flip."""
    b, _, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift, shift, shift, shift))
        oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        x = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    hp: dict[str, Any],
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    log: Callable[[str], None],
) -> None:
    """Label-smoothed cross-entropy; shuffles and augmentation draw from the training seed."""

    def batches(epoch: int, gen: torch.Generator) -> Any:
        for idx in shuffled_batches(len(x), hp["batch_size"], gen):
            yield (x[idx] if augment is None else augment(x[idx], gen)), y[idx]

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target, label_smoothing=hp.get("label_smoothing", 0.0))

    fit_epochs(model, batches, loss_fn, hp, math.ceil(len(x) / hp["batch_size"]), log)


def trim(x: torch.Tensor) -> torch.Tensor:
    """Drop all-padding columns at the end of a padded batch."""
    width = int((x != 0).sum(1).max().clamp_min(1))
    return x[:, :width]


def fit_sequences(
    model: nn.Module,
    sample_epoch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    xv: torch.Tensor,
    yv: torch.Tensor,
    hp: dict[str, Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor, torch.Tensor], float],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train for ``hp['epochs']`` epochs, keep the state with the best validation score."""

    def batches(epoch: int, gen: torch.Generator) -> Any:
        x, y = sample_epoch(epoch)
        for idx in shuffled_batches(len(x), hp["batch_size"], gen):
            yield trim(x[idx]), y[idx]

    def validate() -> dict[str, float]:
        return {"loss": -score(predict_logits(model, xv, 512), yv)}

    x0, _ = sample_epoch(0)
    steps = math.ceil(len(x0) / hp["batch_size"])
    result = fit_epochs(model, batches, loss_fn, hp, steps, log, hp.get("clip", 5.0), validate)
    best = result.history[result.best_epoch - 1]
    return {"best_epoch": result.best_epoch, "val_score": -best["val_loss"]}
