"""The pieces of guided feature inversion that are pure functions (Du et al., KDD 2018, Sec. 3).

``Phi(x, m) = x * m + p * (1 - m)`` (Eq. 2) blends the image into a reference ``p`` (a blurred
copy) outside the mask: that is core's one :func:`~whynet.core.image.blend`;
``Phi_bg(x, m) = Phi(x, 1 - m)`` keeps only the background (Eq. 6's second term). The mask is
a non-negative combination of a basis layer's channels computed on the original image (Eq. 4),
min-max normalised per image, then upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from whynet.core.image import blend


def phi_bg(x: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The complement: ``x * (1 - m) + p * m = Phi(x, 1 - m)`` (Du et al. 2018, Eq. 6)."""
    return blend(x, 1 - mask, background)


def normalise(m: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-map min-max normalisation of (B, h, w) to [0, 1].

    A map whose range is ``<= eps`` (a constant image, or omega = 0) becomes all zeros: the
    denominator is swapped for 1 there *before* dividing, so neither the value nor its gradient
    is NaN, and for every other map the result is exactly ``(m - min) / (max - min)``, hence
    invariant to scaling omega by ``c > 0``.
    """
    flat = m.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    span = (flat.max(1).values - flat.min(1).values).view(-1, 1, 1)
    ok = span > eps
    return torch.where(
        ok, (m - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(m)
    )


def basis_mask(
    omega: torch.Tensor, basis: torch.Tensor, size: tuple[int, int], eps: float = 1e-12
) -> torch.Tensor:
    """The input-resolution mask ``up(norm(sum_k omega_k A_k))`` (Eq. 4), (B, H, W) in [0, 1].

    ``omega`` is (B, K), ``basis`` the detached (B, K, h, w) activations. Normalised before the
    bilinear upsampling (the paper's order); bilinear interpolation is a convex combination, so
    the result stays in [0, 1].
    """
    m = torch.einsum("bk,bkhw->bhw", omega, basis)
    m = normalise(m, eps)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    return m.clamp(0.0, 1.0)  # guards rounding only
