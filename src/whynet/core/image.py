"""Image operations shared by methods and metrics: the one Gaussian blur.

Used for guided feature inversion's background ``p`` (Du et al. 2018, Sec. 3.2), the masks'
blurred fill, the deletion/insertion reference (Petsiuk et al. 2018) and neuron-map smoothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1-D normalised Gaussian kernel of radius ``ceil(3 sigma)`` (at least 1)."""
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(B, C, H, W)`` batch, per channel, edges replicated.

    ``sigma == 0`` returns ``x`` unchanged; a negative sigma raises ``ValueError``. Replicate
    padding works for any radius (reflect padding needs radius < size).
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur expects (B, C, H, W), got shape {tuple(x.shape)}")
    if sigma == 0:
        return x
    k = gaussian_kernel(sigma, x.dtype).to(x.device)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    y = F.pad(x, (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
