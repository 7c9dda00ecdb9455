"""What replaces the masked-out part of an image: x~ = x*m + b*(1-m) (Phillips et al. 2019)."""

from __future__ import annotations

import torch

from whynet.core.image import gaussian_blur

__all__ = ["FILLS", "gaussian_blur", "fill_value", "apply_image_mask"]

FILLS = ("blur", "mean", "zero")


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
