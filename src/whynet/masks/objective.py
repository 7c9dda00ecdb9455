"""The training objective of the explanatory masks (Phillips, Goh & Hodas, 2019), eq. (1):

    L = l(f(x~), y) + sparsity * mean(m) [+ smoothness * TV(m)]                         (1)

with x~ the input masked by m (:meth:`MaskExplainer.masked_output`) and l the cross-entropy to
f's predicted class (or the label), or the squared error to f's unmasked output divided by the
output variance ``scale`` (regression).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from whynet.core import ModelInputs, check_classes
from whynet.masks.inputs import token_valid
from whynet.masks.networks import total_variation

if TYPE_CHECKING:
    from whynet.masks.explainer import MaskExplainer

__all__ = ["mask_loss", "mask_size"]


def mask_size(me: MaskExplainer, x: ModelInputs, mask: torch.Tensor) -> torch.Tensor:
    """mean(m) of (1) per example; token padding is excluded from the mean."""
    if me.modality == "image":
        return mask.flatten(1).mean(1)
    valid = token_valid(x, me.pad_id).to(mask.dtype)
    return mask.sum(1) / valid.sum(1)


def mask_loss(
    me: MaskExplainer,
    net: nn.Module,
    x: ModelInputs,
    y: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Objective (1) on one batch, with the batch's mean mask size and fidelity.

    ``scale``: the regression error is divided by it (the output variance, see ``fit``).
    """
    with torch.no_grad():
        ref_out = me._predict(x)
    mask = me._mask(net, x)
    out = me.masked_output(x, mask)
    if me.task == "classification":
        goal = ref_out.argmax(1) if me.target == "prediction" else y
        assert goal is not None
        check_classes(goal, ref_out.shape[-1], name="label")
        fit = F.cross_entropy(out, goal.to(out.device).long())
        fidelity = float((out.argmax(1) == ref_out.argmax(1)).double().mean())
    else:
        goal = ref_out if me.target == "prediction" else y
        assert goal is not None
        goal = goal.to(out).reshape(out.shape)
        fit = F.mse_loss(out, goal) / scale
        # fidelity for regression: 1 - MSE(masked, unmasked) / var (an R^2 against f)
        fidelity = 1.0 - float(F.mse_loss(out.detach(), ref_out)) / scale
    size = mask_size(me, x, mask)
    loss = fit + me.sparsity * size.mean()
    if me.modality == "image" and me.smoothness > 0:
        loss = loss + me.smoothness * total_variation(mask).mean()
    stats = {
        "loss": float(loss.detach()),
        "size": float(size.detach().mean()),
        "fidelity": fidelity,
    }
    return loss, stats
