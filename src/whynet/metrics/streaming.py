"""Streaming versions of the per-image metrics: ``update`` batch by batch, ``compute`` the mean.

The functional metrics return one value per image, so a stream keeps those values (a few bytes
per image) and its result equals the one-shot call on the concatenated data (tested).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from whynet.metrics.faithfulness import deletion_auc, insertion_auc
from whynet.metrics.localisation import BoxesSpec, localisation_error, pointing_game


class StreamingMetric:
    """Accumulates per-image values; ``compute()`` is their mean, ``values`` all of them."""

    def __init__(self) -> None:
        self._values: list[torch.Tensor] = []

    def reset(self) -> None:
        self._values.clear()

    def _add(self, v: torch.Tensor) -> torch.Tensor:
        v = v.detach().double().cpu()
        self._values.append(v)
        return v

    @property
    def values(self) -> torch.Tensor:
        """Every per-image value seen so far, in update order, (N,) float64."""
        if not self._values:
            return torch.empty(0, dtype=torch.float64)
        return torch.cat(self._values)

    def compute(self) -> float:
        """Mean over every image seen; raises if nothing was added."""
        if not self._values:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        return float(self.values.mean())


class _Curve(StreamingMetric):
    _fn: Any = None

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def update(self, inputs: torch.Tensor, saliency: Any, target: Any = None) -> torch.Tensor:
        """Score one batch; returns its per-image AUCs."""
        return self._add(type(self)._fn(self.model, inputs, saliency, target, **self.kwargs))


class DeletionAUC(_Curve):
    """Streaming :func:`whynet.metrics.deletion_auc` (keyword arguments as that function)."""

    _fn = staticmethod(deletion_auc)


class InsertionAUC(_Curve):
    """Streaming :func:`whynet.metrics.insertion_auc` (keyword arguments as that function)."""

    _fn = staticmethod(insertion_auc)


class PointingGame(StreamingMetric):
    """Streaming :func:`whynet.metrics.pointing_game`; ``compute()`` is the accuracy."""

    def __init__(self, tolerance: float = 0.0, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.tolerance, self.size = tolerance, size

    def update(self, saliency: Any, boxes: BoxesSpec) -> torch.Tensor:
        return self._add(pointing_game(saliency, boxes, self.tolerance, self.size))


class LocalisationError(StreamingMetric):
    """Streaming :func:`whynet.metrics.localisation_error`; ``compute()`` is the error rate."""

    def __init__(
        self,
        threshold: float = 0.5,
        iou_threshold: float = 0.5,
        component: Literal["largest", "all"] = "largest",
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.threshold, self.iou_threshold, self.component = threshold, iou_threshold, component
        self.size = size

    def update(self, saliency: Any, boxes: BoxesSpec) -> torch.Tensor:
        return self._add(
            localisation_error(
                saliency, boxes, self.threshold, self.iou_threshold, self.component, self.size
            )
        )
