"""Shared helpers of the metrics: saliency maps in one shape, image checks, class scores, targets.

Targets follow the one policy of :func:`whynet.core.parse_target` and predictions come from
the one pipeline (:func:`whynet.core.predict_logits`); baselines are the one image
:func:`whynet.core.reference`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from whynet.core import Explanation, as_logits, check_inputs, parse_target, predict_logits
from whynet.core.image import ReferenceSpec
from whynet.core.validation import check_batch_size

Score = Literal["softmax", "logit"]
BaselineSpec = ReferenceSpec


def as_saliency(
    saliency: Any, size: tuple[int, int] | None = None, n: int | None = None
) -> torch.Tensor:
    """Saliency maps as a float (B, H, W) tensor.

    Accepts a tensor or an :class:`~whynet.core.Explanation` (its ``values``) of shape (B, H, W),
    (B, 1, H, W) or (B, C, H, W) (summed over channels, as for per-channel gradients). A map of
    another spatial size than ``size`` (e.g. a 7x7 Grad-CAM) is bilinearly upsampled to it.
    """
    if isinstance(saliency, Explanation):
        saliency = saliency.values
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(
            f"saliency must be a tensor or an Explanation, got {type(saliency).__name__}"
        )
    s = saliency.detach()
    if not s.is_floating_point():
        s = s.float()
    if s.dim() == 4:
        s = s.sum(1)
    if s.dim() != 3:
        raise ValueError(
            f"saliency must have shape (B, H, W) or (B, C, H, W), got {tuple(saliency.shape)}"
        )
    if n is not None and s.shape[0] != n:
        raise ValueError(f"saliency has {s.shape[0]} maps for {n} inputs")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("saliency contains NaN or infinite values")
    if size is not None and tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return s


def check_images(x: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """Image batches are (B, C, H, W) floats."""
    return check_inputs(x, name=name, ndim=4)


def scores(output: Any, classes: torch.Tensor, score: Score) -> torch.Tensor:
    """Per-row score of ``classes``: softmax probability or raw logit."""
    logits = as_logits(output)
    if score == "softmax":
        logits = logits.softmax(-1)
    elif score != "logit":
        raise ValueError(f"score must be 'softmax' or 'logit', got {score!r}")
    return logits.gather(1, classes.view(-1, 1).to(logits.device)).squeeze(1)


def targets_for(model: nn.Module, x: torch.Tensor, target: Any, batch_size: int) -> torch.Tensor:
    """One class per input under the one target policy (:func:`whynet.core.parse_target`):
    ``None``/``"predicted"`` -> the model's prediction on the unperturbed input; given classes
    are range-checked against the model's output width (one forward pass of one input)."""
    check_batch_size(batch_size)
    tgt = parse_target(target, len(x))
    rows = x if tgt.classes is None else x[:1]
    return tgt.classes_for(predict_logits(model, rows, batch_size)).to(x.device)
