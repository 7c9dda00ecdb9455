"""The training objective of the explanatory masks (Phillips, Goh & Hodas, 2019), eq. (1):

    L = l(f(x~), y) + sparsity * mean(m) [+ smoothness * TV(m)]                         (1)

with x~ the input masked by m (:meth:`MaskExplainer.masked_output`) and l the cross-entropy to
f's predicted class (or the label), or the squared error to f's unmasked output divided by the
output variance ``scale`` (regression).

Deletion term (an option; weight ``deletion``, 0 = the paper's preservation-only loss). A mask
that only has to *preserve* the prediction finds what is *enough*: when the model reads the
evidence redundantly, any one copy will do. Adding a term that asks the model, given the
*complement* of the mask, to lose the prediction makes the mask hold *all* of the evidence
(the background term of guided feature inversion's stage 2, Du et al. 2018; the deletion game
of Fong & Vedaldi 2017):

    L_del = p_c(f(x~_bar))                           (classification, c = the goal class)
    L_del = ||f(x~_bar) - f(x~_0)||^2 / scale        (regression)                      (2)
    L = (1) + deletion * L_del

with x~_bar the input masked by 1 - m (padding kept at 0) and x~_0 the input with everything
removed (mask 0): the complement should carry no more of the output than nothing does. Both
are bounded below (by 0), so the term cannot run away; a mask of all ones minimises it, which
``sparsity`` counters.
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

__all__ = ["OBJECTIVES", "deletion_loss", "mask_loss", "mask_size", "objective_name"]

#: the names an explanation's meta gives the loss a mask explainer was trained with
OBJECTIVES = ("preserve", "preserve+delete")


def objective_name(deletion: float) -> str:
    """``"preserve"`` (the paper's (1)) or ``"preserve+delete"`` ((1) + deletion * (2))."""
    return OBJECTIVES[1] if deletion > 0 else OBJECTIVES[0]


def mask_size(me: MaskExplainer, x: ModelInputs, mask: torch.Tensor) -> torch.Tensor:
    """mean(m) of (1) per example; token padding is excluded from the mean."""
    if me.modality == "image":
        return mask.flatten(1).mean(1)
    valid = token_valid(x, me.pad_id).to(mask.dtype)
    return mask.sum(1) / valid.sum(1)


def deletion_loss(
    me: MaskExplainer,
    x: ModelInputs,
    mask: torch.Tensor,
    goal: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Term (2): the model given the complement 1 - m of ``mask`` should lose the prediction.

    ``goal``: the class kept by (1) (classification) or its output (regression: unused, the
    complement is compared with the output on the fully removed input).
    """
    complement = 1.0 - mask
    if me.modality == "sequence":  # padding stays removed in the complement too
        complement = complement * token_valid(x, me.pad_id).to(mask.dtype)
    out = me.masked_output(x, complement)
    if me.task == "classification":
        prob = torch.softmax(out, dim=-1)
        return prob.gather(1, goal.to(out.device).long().reshape(-1, 1)).mean()
    with torch.no_grad():
        empty = me.masked_output(x, torch.zeros_like(mask))
    return F.mse_loss(out, empty.to(out)) / scale


def mask_loss(
    me: MaskExplainer,
    net: nn.Module,
    x: ModelInputs,
    y: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Objective (1) [+ deletion * (2)] on one batch, with the batch's mean mask size and
    fidelity (and the value of (2) when its weight is > 0).

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
    deleted = None
    if me.deletion > 0:
        deleted = deletion_loss(me, x, mask, goal, scale)
        loss = loss + me.deletion * deleted
    if me.modality == "image" and me.smoothness > 0:
        loss = loss + me.smoothness * total_variation(mask).mean()
    stats = {
        "loss": float(loss.detach()),
        "size": float(size.detach().mean()),
        "fidelity": fidelity,
    }
    if deleted is not None:
        stats["deletion"] = float(deleted.detach())
    return loss, stats
