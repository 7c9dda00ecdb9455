"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk, Das, Saenko, "RISE",
BMVC 2018, Sec. 4.1) and fidelity of masked inputs.

Deletion removes pixels from the image in decreasing order of saliency (replacing them by a
baseline: a blurred copy or zeros) and records the target-class probability; a faithful map makes
it drop fast (low AUC). Insertion starts from the baseline and puts pixels back in the same order;
a faithful map makes the probability rise fast (high AUC). After ``k`` of ``steps`` steps exactly
``round(k * H * W / steps)`` pixels (all channels) are changed, so the curve's x-axis is the
fraction ``k / steps`` and the AUC is the trapezoid rule over [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from whynet.core import blend, predict_logits, reference
from whynet.core.validation import check_batch_size
from whynet.metrics._common import (
    BaselineSpec,
    Score,
    as_saliency,
    check_images,
    scores,
    targets_for,
)
from whynet.metrics.auc import trapezoid

Mode = Literal["deletion", "insertion"]


def saliency_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel (0 = most salient) per map, ties broken by row-major pixel index."""
    flat = saliency.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(saliency)


def pixel_counts(n_pixels: int, steps: int) -> torch.Tensor:
    """Pixels changed after step ``k = 0..steps``: ``round(k * n_pixels / steps)``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    limit = max(n_pixels, 50)  # the default 50 stays valid on tiny images
    if steps > limit:  # more steps than pixels only repeat points, and build a huge grid
        raise ValueError(f"steps must be <= the number of pixels ({limit}), got {steps}")
    k = torch.arange(steps + 1, dtype=torch.float64)
    return torch.round(k * n_pixels / steps).long()


@torch.no_grad()
def perturbation_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    mode: Mode,
    target: Any = None,
    *,
    baseline: BaselineSpec = "blur",
    blur_sigma: float = 5.0,
    steps: int = 50,
    score: Score = "softmax",
    batch_size: int = 64,
) -> torch.Tensor:
    """The deletion or insertion curve, (B, steps + 1) float64.

    Parameters
    ----------
    model : nn.Module
        The classifier (run in eval mode, parameters frozen, restored afterwards).
    inputs : torch.Tensor
        (B, C, H, W) images in the model's input space.
    saliency : torch.Tensor or Explanation
        (B, H, W) maps (see :func:`whynet.metrics.as_saliency` for other shapes).
    mode : {"deletion", "insertion"}
        Remove salient pixels from the image, or insert them into the baseline.
    target : None, int or (B,) tensor
        Class to score; ``None`` = the model's prediction on the unperturbed input.
    baseline : "blur", "zero", "mean", float or tensor
        What removed pixels become (:func:`whynet.core.reference`; RISE: zeros for deletion,
        a blurred image for insertion).
    blur_sigma : float
        Gaussian sigma in pixels for ``baseline="blur"``.
    steps : int
        Number of steps; each changes ``H*W/steps`` pixels (rounded, see module docstring).
    score : {"softmax", "logit"}
        Record the softmax probability (the paper) or the raw logit of the target.
    batch_size : int
        Perturbed images per forward pass.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    x = check_images(inputs)
    check_batch_size(batch_size)
    b, _, h, w = x.shape
    sal = as_saliency(saliency, (h, w), n=b).to(x.device)
    counts = pixel_counts(h * w, steps).to(x.device)
    classes = targets_for(model, x, target, batch_size)
    base = reference(x, baseline, blur_sigma, name="baseline")
    ranks = saliency_ranks(sal)
    # walk the B x (steps+1) grid of perturbed images in chunks of batch_size; the pipeline
    # runs each chunk (eval mode, no gradients, modes restored)
    img = torch.arange(b, device=x.device).repeat_interleave(steps + 1)
    step = torch.arange(steps + 1, device=x.device).repeat(b)
    out = torch.empty(b * (steps + 1), dtype=torch.float64, device=x.device)
    for s in range(0, len(img), batch_size):
        i, k = img[s : s + batch_size], step[s : s + batch_size]
        changed = (ranks[i] < counts[k].view(-1, 1, 1)).to(x.dtype)
        # deletion keeps the image where unchanged; insertion keeps it where changed
        keep = 1 - changed if mode == "deletion" else changed
        pert = blend(x[i], keep, base[i])
        logits = predict_logits(model, pert, batch_size)
        out[s : s + batch_size] = scores(logits, classes[i], score).double()
    return out.view(b, steps + 1)


def deletion_curve(
    model: nn.Module, inputs: torch.Tensor, saliency: Any, target: Any = None, **kwargs: Any
) -> torch.Tensor:
    """Deletion curve (B, steps + 1); keyword arguments as :func:`perturbation_curve`."""
    return perturbation_curve(model, inputs, saliency, "deletion", target, **kwargs)


def insertion_curve(
    model: nn.Module, inputs: torch.Tensor, saliency: Any, target: Any = None, **kwargs: Any
) -> torch.Tensor:
    """Insertion curve (B, steps + 1); keyword arguments as :func:`perturbation_curve`."""
    return perturbation_curve(model, inputs, saliency, "insertion", target, **kwargs)


def deletion_auc(
    model: nn.Module, inputs: torch.Tensor, saliency: Any, target: Any = None, **kwargs: Any
) -> torch.Tensor:
    """Per-image area under the deletion curve, (B,) float64; lower is more faithful.

    Petsiuk et al. 2018, Sec. 4.1; trapezoid rule over the fraction of pixels removed.
    Keyword arguments as :func:`perturbation_curve` (``baseline``, ``blur_sigma``, ``steps``,
    ``score``, ``batch_size``).
    """
    return trapezoid(deletion_curve(model, inputs, saliency, target, **kwargs))


def insertion_auc(
    model: nn.Module, inputs: torch.Tensor, saliency: Any, target: Any = None, **kwargs: Any
) -> torch.Tensor:
    """Per-image area under the insertion curve, (B,) float64; higher is more faithful."""
    return trapezoid(insertion_curve(model, inputs, saliency, target, **kwargs))


@dataclass
class Fidelity:
    """Per-input scores of the target class (all (B,) float64).

    ``original``: on the input; ``kept``: on ``x*m + b*(1-m)`` (only the mask kept);
    ``removed``: on ``x*(1-m) + b*m`` (the mask removed); ``agreement``: 1.0 where the argmax
    on the kept input equals the target.
    """

    original: torch.Tensor
    kept: torch.Tensor
    removed: torch.Tensor
    agreement: torch.Tensor


@torch.no_grad()
def mask_fidelity(
    model: nn.Module,
    inputs: torch.Tensor,
    mask: Any,
    target: Any = None,
    *,
    baseline: BaselineSpec = "zero",
    blur_sigma: float = 5.0,
    score: Score = "softmax",
    batch_size: int = 64,
) -> Fidelity:
    """How well a soft mask in [0, 1] preserves (and its complement destroys) the prediction.

    The preservation/deletion games of Fong & Vedaldi (ICCV 2017) and Dabkowski & Gal (NeurIPS
    2017); the explanatory-mask objective of Phillips et al. (2019) uses the ``kept`` input.
    """
    x = check_images(inputs)
    b, _, h, w = x.shape
    m = as_saliency(mask, (h, w), n=b).to(x.device, x.dtype)
    if float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError("mask values must lie in [0, 1]")
    classes = targets_for(model, x, target, batch_size)
    base = reference(x, baseline, blur_sigma, name="baseline")
    kept_out = predict_logits(model, blend(x, m, base), batch_size)
    return Fidelity(
        original=scores(predict_logits(model, x, batch_size), classes, score).double(),
        kept=scores(kept_out, classes, score).double(),
        removed=scores(
            predict_logits(model, blend(x, 1 - m, base), batch_size), classes, score
        ).double(),
        agreement=(kept_out.argmax(-1) == classes.to(kept_out.device)).double(),
    )
