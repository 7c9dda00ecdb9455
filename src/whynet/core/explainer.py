"""Base classes shared by the explainers: one entry shape, scikit-learn style fitting."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from whynet.core.explanation import Explanation
from whynet.core.model import as_logits, frozen_eval
from whynet.core.qoi import Class, MaxClass, as_qoi
from whynet.core.validation import check_batch_size


class NotFittedError(ValueError, AttributeError):
    """A fitted explainer was used before ``fit``."""


class Explainer:
    """``explainer.explain(inputs, target=None) -> Explanation``.

    Constructors store settings only: no hooks, no ``.eval()``, no heavy imports.
    """

    #: registry name of the method (see :mod:`whynet.registry`)
    method: ClassVar[str] = ""

    def __init__(
        self, model: nn.Module, *, batch_size: int = 64, progress: bool | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def explain(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r})"


class FittedMixin:
    """``fit(data) -> self``; learned attributes end in ``_``; use before fit raises."""

    def check_is_fitted(self) -> None:
        if not any(k.endswith("_") and not k.startswith("_") for k in vars(self)):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call .fit(data)")


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 256, **forward_kwargs: Any
) -> torch.Tensor:
    """The model's prediction tensor for ``inputs``, in eval mode, chunked by ``batch_size``."""
    check_batch_size(batch_size)
    with frozen_eval(model):
        outs = [
            as_logits(model(inputs[i : i + batch_size], **forward_kwargs))
            for i in range(0, len(inputs), batch_size)
        ]
    return torch.cat(outs)


def resolve_targets(output: torch.Tensor, target: Any) -> torch.Tensor:
    """One class index per input: ``None``/"predicted" -> argmax of ``output``; an int or a
    ``(B,)`` tensor -> checked against the number of classes."""
    if target is None or (isinstance(target, str) and target == "predicted"):
        qoi = MaxClass().bind(output)
    else:
        if isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((output.shape[0],), target, dtype=torch.long)
        qoi = as_qoi(target).bind(output)
    if not isinstance(qoi, Class):
        raise TypeError(f"target must be None, an int or a (B,) tensor of classes, got {target!r}")
    classes = qoi.classes.to(output.device)
    if classes.shape != (output.shape[0],):
        raise ValueError(f"target gives {classes.numel()} classes for {output.shape[0]} inputs")
    return classes
