"""Grad-CAM class activation maps at any convolutional layer (Selvaraju, Cogswell, Das,
Vedantam, Parikh, Batra, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017).

For class ``c`` with pre-softmax score ``y^c`` and the ``K`` feature maps ``A^k`` of a
convolutional layer (``h x w`` positions ``Z = h w``)::

    alpha_k^c = 1/Z sum_{i,j} d y^c / d A^k_ij             (paper, Eq. 1)
    L^c       = ReLU(sum_k alpha_k^c A^k)                  (paper, Eq. 2)

``L^c`` is ``h x w``; the paper upsamples it bilinearly to the input size to overlay it.

This module is the worked example of adding a method to whynet (docs/gradcam.md): the
template (:class:`~whynet.core.explainer.Explainer`) does validation, the target policy,
chunking, ``frozen_eval`` and assembly; the one gradient utility
(:func:`~whynet.core.gradients.qoi_gradients`) does the hooks. What is left is Eq. 1 and 2.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from whynet.core import (
    Class,
    Explainer,
    OutputSpec,
    QoI,
    Target,
    constraint,
    main_tensor,
    qoi_gradients,
    resolve_layer,
)
from whynet.core.layout import tokens_to_grid


class _PredictedLogit(QoI):
    """``y^c`` for the predicted class of each row (the argmax is constant under the gradient,
    so this is ``Class(argmax)`` without a second forward pass)."""

    def value(self, output, rows=None, activation=None):  # type: ignore[no-untyped-def]
        return output.gather(1, output.argmax(1, keepdim=True)).squeeze(1)


class GradCAM(Explainer):
    """Grad-CAM maps of a class at a convolutional layer (Selvaraju et al. 2017, Eq. 1-2).

    Parameters
    ----------
    model : nn.Module
        An image classifier returning pre-softmax scores.
    layer : str
        Dotted path of a layer whose output is ``(B, K, h, w)`` feature maps (the paper: the
        last convolutional layer, where the maps are most class-specific), or a vision
        transformer's ``(B, 1 + h*w, K)`` patch tokens, laid out on their grid (CLS dropped;
        pytorch-grad-cam's ``reshape_transform``).
    relu : bool
        Keep only positive evidence (Eq. 2). False returns the signed map
        ``sum_k alpha_k^c A^k`` (negative where the features speak against the class).
    upsample : bool
        Upsample the map bilinearly to the input's ``(H, W)`` (the paper, for overlays);
        False keeps the layer's ``(h, w)`` resolution.
    batch_size : int
        Images per forward/backward.
    progress : bool, optional
        Progress bar over chunks (default: only on a terminal).
    """

    method = "gradcam"
    _parameter_constraints = {
        "layer": constraint(str, error=TypeError, desc="a dotted layer name"),
        "relu": constraint(bool, error=TypeError),
        "upsample": constraint(bool, error=TypeError),
    }
    _input_ndim = 4
    _token_inputs = False

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        *,
        relu: bool = True,
        upsample: bool = True,
        batch_size: int = 64,
        progress: bool | None = None,
        output: OutputSpec = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, output=output)
        self.layer = layer
        self.relu = relu
        self.upsample = upsample
        self._check_params()
        resolve_layer(model, layer)  # fail early with the closest names

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, Any]:
        """Maps for one chunk: ``values`` (B, H, W) (or (B, h, w) without ``upsample``),
        ``target`` the classes explained, ``cam`` the layer-resolution map (B, h, w)."""
        qoi = _PredictedLogit() if target.classes is None else Class(target.classes)
        g = qoi_gradients(self.model, x, qoi, layer=self.layer, output=self.output)
        at, grads = g.at, g.grads  # d y^c / d A at the layer
        if at.dim() == 3:  # ViT patch tokens -> (B, K, h, w) on the image grid
            at, grads = tokens_to_grid(at), tokens_to_grid(grads)
        if at.dim() != 4:
            raise ValueError(
                f"Grad-CAM needs a convolutional layer with (B, K, h, w) output; layer "
                f"{self.layer!r} outputs shape {tuple(g.at.shape)} (a vision transformer's "
                "(B, T, K) patch tokens work too)"
            )
        if not bool(grads.any()):
            # an all-zero map is not an explanation: the class does not depend on this output
            # (a ViT's last block: only its CLS token reaches the head, not the patch tokens)
            warnings.warn(
                f"Grad-CAM: the class scores do not depend on layer {self.layer!r}'s output "
                "(all gradients are zero), so the maps are all zero; for a vision transformer "
                "use a block before the last (the last block's patch tokens never reach the "
                "CLS-token head)",
                stacklevel=4,
            )
        alpha = grads.mean((2, 3), keepdim=True)  # Eq. 1: global-average-pooled gradients
        cam = (alpha * at).sum(1)  # Eq. 2, before the ReLU
        if self.relu:
            cam = torch.relu(cam)
        values = cam
        if self.upsample:
            size = tuple(main_tensor(x).shape[-2:])
            values = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)
            values = values[:, 0]
        assert g.output is not None
        return {"values": values, "target": target.classes_for(g.output), "cam": cam}
