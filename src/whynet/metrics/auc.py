"""Area under a curve by the trapezoid rule, by hand (numpy 2.x removed ``np.trapz``)."""

from __future__ import annotations

import torch


def trapezoid(y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Trapezoid-rule integral of ``y`` over its last dimension.

    ``sum_k (x_{k+1} - x_k) (y_k + y_{k+1}) / 2``; ``x`` defaults to ``K`` equally spaced points
    on [0, 1] (the fraction of pixels removed/inserted), so a constant curve ``c`` has area ``c``.
    """
    if y.shape[-1] < 2:
        raise ValueError(f"a curve needs at least 2 points, got {y.shape[-1]}")
    if x is None:
        x = torch.linspace(0.0, 1.0, y.shape[-1], dtype=torch.float64)
    x = x.to(device=y.device, dtype=torch.float64)
    y = y.to(torch.float64)
    dx = x[..., 1:] - x[..., :-1]
    return (dx * (y[..., 1:] + y[..., :-1]) * 0.5).sum(-1)
