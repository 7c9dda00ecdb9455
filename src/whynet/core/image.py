"""Image operations shared by methods and metrics: the one Gaussian blur, the one reference
(what a masked-out pixel becomes) and the one blend of an image with it.

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


#: what the named references are (a float or a tensor broadcastable to the inputs also work)
REFERENCES = ("blur", "zero", "mean")
ReferenceSpec = str | float | torch.Tensor


def reference(
    x: torch.Tensor, spec: ReferenceSpec, blur_sigma: float = 0.0, *, name: str = "reference"
) -> torch.Tensor:
    """The one reference an image is blended into where it is masked out.

    ``"blur"``: a Gaussian-blurred copy (Du et al. 2018's ``p``; Petsiuk et al.'s blurred
    deletion); ``"zero"``: zeros; ``"mean"``: each image's per-channel mean; a float: that
    constant; a tensor: broadcast to ``x`` (``(B, C, H, W)``). ``name`` is the caller's
    parameter name, used in error messages.
    """
    if isinstance(spec, str):
        if spec == "blur":
            return gaussian_blur(x, blur_sigma)
        if spec == "zero":
            return torch.zeros_like(x)
        if spec == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        raise ValueError(f"{name} must be one of {REFERENCES}, a float or a tensor; got {spec!r}")
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not math.isfinite(spec):
            raise ValueError(f"{name} must be finite, got {spec!r}")
        return torch.full_like(x, float(spec))
    if isinstance(spec, torch.Tensor):
        try:
            return spec.to(dtype=x.dtype, device=x.device).expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(spec.shape)} does not broadcast to "
                f"inputs of shape {tuple(x.shape)}"
            ) from None
    raise TypeError(
        f"{name} must be one of {REFERENCES}, a float or a tensor; got {type(spec).__name__}"
    )


def blend(x: torch.Tensor, mask: torch.Tensor | float, ref: torch.Tensor) -> torch.Tensor:
    """``x * m + ref * (1 - m)``: keep ``x`` where the mask is 1, the reference where it is 0.

    ``mask`` is ``(B, H, W)`` (broadcast over channels), ``(B, 1, H, W)``, shaped like ``x``,
    or a number (a point on the straight line from ``ref`` to ``x``).
    A mask of ones gives ``x`` exactly. (Du et al. 2018 Eq. 2, Phillips et al. 2019, the
    deletion/insertion perturbation, a DoI's straight line with ``m = alpha``.)
    """
    if isinstance(mask, torch.Tensor) and mask.dim() == x.dim() - 1:
        mask = mask.unsqueeze(1)
    return x * mask + ref * (1 - mask)
