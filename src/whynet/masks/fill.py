"""What replaces the masked-out part of an image: x~ = x*m + b*(1-m) (Phillips et al. 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["FILLS", "gaussian_blur", "fill_value", "apply_image_mask"]

FILLS = ("blur", "mean", "zero")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images (B, C, H, W), replicate padding, kernel 2*ceil(3s)+1."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    # replicate padding works for any radius (reflect needs radius < size)
    z = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    z = F.conv2d(z, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    z = F.pad(z, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(z, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fill_value(x: torch.Tensor, fill: str, sigma: float) -> torch.Tensor:
    """The reference b for images x (B, C, H, W): blurred x, per-image channel mean, or zeros."""
    if fill == "blur":
        return gaussian_blur(x, sigma)
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if fill == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")


def apply_image_mask(x: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """x~ = x*m + b*(1-m) with m (B, H, W) broadcast over channels. m = 1 gives x exactly."""
    m = mask.unsqueeze(1)
    return x * m + reference * (1 - m)
