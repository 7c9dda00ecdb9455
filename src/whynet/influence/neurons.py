"""Interpret an internal neuron by attributing its activation to the input (Leino et al. 2018,
Sec. 3.2 "Interpretation"; the rendering follows TruLens' ``ChannelMaskVisualizer``).

QoI = one channel's activation summed over space (:class:`~whynet.core.qoi.Channel`),
attributed to the input as gradient x input (``doi="point"``) or Integrated Gradients from a
zero baseline (``doi="ig"``). The attribution is averaged over colour channels, blurred, kept
where positive, scaled to [0, 1] per image, thresholded at a percentile, and the image is shown
through that mask with a small opacity elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from whynet.core import Channel, LinearPath, Point, check_inputs, image
from whynet.influence.internal import InternalInfluence, check_channel


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``(B, H, W)`` maps with a Gaussian of std ``sigma`` pixels (edges replicated)."""
    if sigma <= 0:
        return maps
    return image.gaussian_blur(maps[:, None], sigma)[:, 0]


def visualize_neuron(
    model: nn.Module,
    layer: str,
    channel: int,
    inputs: torch.Tensor,
    doi: str = "point",
    steps: int = 32,
    blur: float = 2.0,
    percentile: float = 0.8,
    opacity: float = 0.2,
    batch_size: int = 64,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap and masked image showing what channel ``channel`` of ``layer`` responds to.

    Parameters
    ----------
    model : nn.Module
        Image model taking ``(B, C, H, W)`` inputs.
    layer : str
        Layer holding the neuron (channel dimension 1).
    channel : int
        Channel index; its activation summed over space is the QoI.
    inputs : torch.Tensor
        ``(B, C, H, W)`` images (as the model consumes them).
    doi : {"point", "ig"}
        Gradient x input, or Integrated Gradients from a zero baseline with ``steps`` steps.
    blur : float
        Gaussian blur std in pixels (0 = none).
    percentile : float
        Keep pixels whose heat is at or above this quantile (in [0, 1)) of each image's heat.
    opacity : float
        Brightness factor for the masked-out pixels.

    Returns
    -------
    (heatmap, masked)
        ``heatmap`` ``(B, H, W)`` in [0, 1]; ``masked`` the inputs times
        ``mask + opacity * (1 - mask)``, same shape as ``inputs``.
    """
    x = check_inputs(inputs, ndim=4)
    if doi not in ("point", "ig"):
        raise ValueError(f"doi must be 'point' or 'ig', got {doi!r}")
    if not 0.0 <= percentile < 1.0:
        raise ValueError(f"percentile must be in [0, 1), got {percentile}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if not blur >= 0:
        raise ValueError(f"blur must be >= 0, got {blur}")
    dim = check_channel(model, layer, channel, x)
    dist = Point() if doi == "point" else LinearPath(0.0, steps=steps, rule="riemann_middle")
    expl = InternalInfluence(
        model,
        None,
        qoi=Channel(layer, channel, dim),
        doi=dist,
        multiply_activation=True,
        batch_size=batch_size,
        progress=progress,
    ).explain(x)
    heat = gaussian_blur(expl.values.mean(1), blur).clamp_min(0)
    top = heat.flatten(1).amax(1).clamp_min(torch.finfo(heat.dtype).tiny)
    heat = heat / top[:, None, None]
    thr = torch.quantile(heat.flatten(1).float(), percentile, dim=1).to(heat.dtype)
    mask = ((heat >= thr[:, None, None]) & (heat > 0)).to(x.dtype)
    masked = x * (mask + opacity * (1 - mask))[:, None]
    return heat.to(x.dtype), masked
