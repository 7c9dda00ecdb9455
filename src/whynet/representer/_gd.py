"""The authors' solver: full-batch gradient descent with backtracking (Yeh et al. 2018, Sec. 3.1).

Kept to reproduce the paper (``solver="gd"``, their 1/200 stopping rule); the exact default is
:func:`whynet.representer._solver.solve_lbfgs` on the same objective (Eq. 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from whynet.representer._solver import (
    SolveResult,
    gradient,
    loss_grad_phi,
    objective,
    residual_bound,
)


def _line(
    phi: torch.Tensor,
    p: torch.Tensor,
    w: torch.Tensor,
    g: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    tsum: torch.Tensor | None,
) -> Any:
    """``t -> (J(W - t g), Phi - t p)`` from a few scalars: one logsumexp, O(nC), per trial."""
    n = phi.shape[0]
    tphi, tp = float((targets * phi).sum()), float((targets * p).sum())
    ww, wg, gg = float((w * w).sum()), float((w * g).sum()), float((g * g).sum())

    def line(t: float) -> tuple[float, torch.Tensor]:
        phi_t = phi - t * p
        lse = torch.logsumexp(phi_t, dim=1)
        data = float(lse.sum() if tsum is None else (lse * tsum).sum())
        return (data - tphi + t * tp) / n + l2 * (ww - 2 * t * wg + t * t * gg), phi_t

    return line


def _backtrack(
    line: Any,
    p: torch.Tensor,
    w: torch.Tensor,
    d: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    t: float,
    decrease: float,
    min_step: float,
) -> tuple[float, torch.Tensor]:
    """Backtracking line search on ``t -> J(W - t d)`` (the GD solver's).

    Halves ``t`` until the Armijo test ``J(W - t d) < J(W) - decrease * t`` holds; where the
    change in ``J`` is below its rounding error, accepts a step whose slope
    ``d/dt J(W - t d) <= 0`` instead (see :func:`solve`). Returns ``(t, Phi(W - t d))``;
    ``t < min_step`` means no step was found.
    """
    n = p.shape[0]
    wd, dd = float((w * d).sum()), float((d * d).sum())
    f0, _ = line(0.0)
    while True:
        f_t, phi_t = line(t)
        if math.isfinite(f_t) and f_t - f0 + decrease * t < 0.0:
            return t, phi_t
        if abs(f_t - f0) <= 1e-12 * max(1.0, abs(f0)):
            # J differences are below rounding: the derivative form of the test
            slope = float((loss_grad_phi(phi_t, targets) * p).sum()) / n + 2.0 * l2 * (wd - t * dd)
            if slope >= 0.0:  # d/dt J(W - t d) = -slope
                return t, phi_t
        t /= 2.0
        if t < min_step:
            return t, phi_t


def solve(
    features: torch.Tensor,
    weight0: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    *,
    max_iter: int = 3000,
    tol: float = 1.0 / 200,
    step0: float = 10.0,
    min_step: float = 1e-10,
) -> SolveResult:
    """Full-batch gradient descent with backtracking Armijo line search (the authors' procedure).

    Each step starts at ``step0`` and halves until ``J(W - t g) <= J(W) - t/2 ||g||^2``; below
    ``min_step`` it gives up. Near the optimum the decrease ``t/2 ||g||^2`` falls below the
    rounding error of ``J`` and the test can no longer pass; there (``|J(W-tg) - J(W)|`` within
    1e-12 relative) a step is also accepted when the slope ``d/dt J(W - t g) <= 0``, which is the
    Armijo test with constant 1/2 written for the local quadratic (Hager & Zhang's
    "approximate Armijo"). It lets float64 reach ``mean|grad|`` ~1e-12 instead of ~1e-9. Stops when
    ``mean|grad| < tol * mean|grad at step 0|`` and returns the iterate with the smallest
    ``mean|grad|``. Logits are updated as ``Phi - t F g^T`` so each step costs two products with
    ``F`` (the line search itself is O(nC)); they are recomputed exactly every 50 steps.

    Parameters
    ----------
    features : (n, D+1) augmented features, in the working dtype.
    weight0 : (C, D+1) starting head (the pre-trained weights with the bias as last column).
    targets : (n, C) soft or one-hot targets.
    l2 : lambda of Eq. 2.
    """
    if l2 <= 0:
        raise ValueError(f"l2 (lambda) must be > 0 for the representer theorem, got {l2}")
    tsum = targets.sum(1)
    unit = bool(torch.allclose(tsum, torch.ones_like(tsum)))
    w = weight0.clone()
    phi = features @ w.T
    g = gradient(features, w, targets, l2, phi)
    gmean0 = float(g.abs().mean())
    best = (gmean0, w, 0)
    converged = gmean0 == 0.0
    n_iter = 0
    for it in range(1, max_iter + 1):
        if converged:
            break
        p = features @ g.T  # Phi(W - t g) = Phi - t p
        line = _line(phi, p, w, g, targets, l2, None if unit else tsum)
        t, phi_t = _backtrack(
            line, p, w, g, targets, l2, step0, float((g * g).sum()) / 2.0, min_step
        )
        if t < min_step:  # no step satisfies Armijo: we are at the precision floor
            break
        w, phi, n_iter = w - t * g, phi_t, it
        if it % 50 == 0:
            phi = features @ w.T
        g = gradient(features, w, targets, l2, phi)
        gmean = float(g.abs().mean())
        if gmean < best[0]:
            best = (gmean, w, it)
        if gmean < tol * gmean0:
            converged = True
    gmean, w, _ = best
    phi = features @ w.T  # exact logits of the returned iterate
    return SolveResult(
        weight=w,
        phi=phi,
        grad_mean=gmean,
        grad_mean0=gmean0,
        n_iter=n_iter,
        converged=converged,
        objective=float(objective(phi, w, targets, l2)),
        residual=residual_bound(
            gradient(features, w, targets, l2, phi), float(features.abs().max()), l2
        ),
    )
