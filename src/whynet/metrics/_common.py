"""Shared helpers of the metrics: saliency maps in one shape, baselines, class scores."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from whynet.core import Explanation, as_logits, check_inputs, resolve_targets
from whynet.core.image import gaussian_blur
from whynet.core.validation import check_batch_size, check_classes

Score = Literal["softmax", "logit"]
BaselineSpec = str | float | torch.Tensor


def make_baseline(x: torch.Tensor, baseline: BaselineSpec, blur_sigma: float) -> torch.Tensor:
    """The reference image replacing removed pixels: ``"blur"``, ``"zero"``, a float or a tensor
    broadcastable to ``x``."""
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(x, blur_sigma)
        if baseline == "zero":
            return torch.zeros_like(x)
        raise ValueError(f"baseline must be 'blur', 'zero', a float or a tensor; got {baseline!r}")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(dtype=x.dtype, device=x.device).expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to "
                f"inputs of shape {tuple(x.shape)}"
            ) from None
    raise TypeError(
        f"baseline must be 'blur', 'zero', a float or a tensor; got {type(baseline).__name__}"
    )


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


@torch.no_grad()
def targets_for(model: nn.Module, x: torch.Tensor, target: Any, batch_size: int) -> torch.Tensor:
    """One class per input (``None`` -> the model's prediction on the unperturbed input)."""
    check_batch_size(batch_size)
    if target is None or isinstance(target, str):
        out = torch.cat(
            [as_logits(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        )
        return resolve_targets(out, target)
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((len(x),), target, dtype=torch.long)
    if not isinstance(target, torch.Tensor) or target.shape != (len(x),):
        raise ValueError(f"target must be None, an int or a ({len(x)},) tensor of classes")
    # class range is checked against the model's output width on first use
    out = as_logits(model(x[:1]))
    check_classes(target.long(), out.shape[-1], name="target")
    return target.long().to(x.device)
