"""The functional core of representer points: objective, gradient, alpha, and the solver.

Notation (Yeh et al., "Representer Point Selection for Explaining Deep Neural Networks",
NeurIPS 2018, Sec. 3): ``F`` (n, D+1) are the head's input features with a ones column appended
(the bias lives in ``W``), ``W`` (C, D+1) the head, ``Phi = F W^T`` the logits and ``T`` (n, C)
the targets. The fine-tuning objective (Eq. 2) is

    J(W) = (1/n) sum_i L(Phi_i, T_i) + lambda ||W||^2,   L = softmax cross-entropy,

and Theorem 3.1 gives ``W = sum_i alpha_i f_i^T`` at a stationary point with

    alpha_i = -1/(2 lambda n) dL/dPhi_i.

For ANY ``W`` (stationary or not) ``W - alpha^T F = grad J(W) / (2 lambda)`` exactly, which is how
the tests check this module without relying on convergence. Everything here is pure (no model,
no hooks) so that it can run per shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def augment(features: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Append the ones column: ``[f, 1]`` (the bias as one more feature, on train AND test side).

    Dropping it makes the decomposition miss ``sum_i alpha_i`` (METHODS.md, Representer points).
    """
    n, d = features.shape
    out = torch.empty(n, d + 1, dtype=dtype or features.dtype, device=features.device)
    out[:, :d] = features  # converted while copied: one pass, no intermediate
    out[:, d] = 1.0
    return out


def loss_grad_phi(phi: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``dL/dPhi`` of soft-target cross-entropy ``L = sum_c t_c (logsumexp(Phi) - Phi_c)``.

    Equals ``softmax(Phi) * sum_c t_c - t``; ``softmax - t`` when targets sum to one.
    """
    return torch.softmax(phi, dim=1) * targets.sum(1, keepdim=True) - targets


def objective(
    phi: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, l2: float
) -> torch.Tensor:
    """``J(W)`` of Eq. 2 from the logits ``phi = F W^T`` (mean loss + ``l2 * ||W||^2``)."""
    lse = torch.logsumexp(phi, dim=1)
    loss = (lse * targets.sum(1) - (targets * phi).sum(1)).mean()
    return loss + l2 * (weight * weight).sum()


def gradient(
    features: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    phi: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grad J(W) = (1/n) (dL/dPhi)^T F + 2 lambda W`` (C, D+1); ``features`` are augmented."""
    if phi is None:
        phi = features @ weight.T
    return loss_grad_phi(phi, targets).T @ features / features.shape[0] + 2.0 * l2 * weight


def alpha_from(phi: torch.Tensor, targets: torch.Tensor, l2: float) -> torch.Tensor:
    """Representer coefficients ``alpha_i = -1/(2 lambda n) dL/dPhi_i`` (Thm. 3.1), (n, C).

    One division by ``n`` only: ``dL/dPhi`` here is the per-example derivative, not the
    derivative of a mean-reduced loss (which would divide by ``n`` twice).
    """
    return -loss_grad_phi(phi, targets) / (2.0 * l2 * phi.shape[0])


@dataclass
class SolveResult:
    """Outcome of :func:`solve`: the best iterate and how the run went."""

    weight: torch.Tensor  # (C, D+1), the iterate with the smallest mean |grad|
    phi: torch.Tensor  # (n, C) logits at ``weight``
    grad_mean: float  # mean |grad J| at ``weight``
    grad_mean0: float  # mean |grad J| at the start
    n_iter: int  # gradient steps taken
    converged: bool  # the stopping test held
    objective: float  # J at ``weight``
    residual: float = float("nan")  # residual_bound at ``weight`` (decomposition error bound)
    n_eval: int = 0  # objective + gradient evaluations (L-BFGS: one per line-search trial)


#: default decomposition tolerance of the exact solver: a bound on
#: ``|values.sum - logit|`` over the training points (see :func:`residual_bound`)
EXACT_ATOL = 1e-9


def residual_bound(g: torch.Tensor, fmax: float, l2: float) -> float:
    """Bound on the decomposition error ``|sum_i alpha_ic k(x_i, x_t) - Phi(x_t)_c|``.

    The error is ``grad J(W)_c . [f_t, 1] / (2 lambda)`` (module docstring), at most
    ``max_c ||grad_c||_1 * max|[f_t, 1]| / (2 lambda)``; ``fmax`` = the largest ``|F|`` entry of
    the training points (test points with larger entries scale the bound with them).
    """
    return float(g.abs().sum(1).max()) * fmax / (2.0 * l2)


def check_kernel(kdt: torch.dtype, tol: float | None) -> None:
    """Refuse a kernel dtype that rounds coarser than the tolerance asked for (Bad input)."""
    eps = torch.finfo(kdt).eps / 2  # unit roundoff of one product f_i . f_t
    if tol is not None and tol < eps and kdt != torch.float64:
        raise ValueError(
            f"kernel_dtype={kdt} rounds each f_i . f_t to ~{eps:.1e} relative, coarser "
            f"than the requested tol={tol:g}: the decomposition cannot hold to it; "
            f"pass kernel_dtype=torch.float64 (and dtype=torch.float64) or tol >= {eps:.1e}"
        )


def kronecker_preconditioner(
    p_mean: torch.Tensor, p_outer: torch.Tensor, f_outer: torch.Tensor, l2: float
) -> Any:
    """``G -> (A (x) B + 2 lambda I)^{-1} G`` from moments: ``A = diag(p_mean) - p_outer``,
    ``B = f_outer``; applied through both eigenbases at O(C D (C + D)) per call. The moments
    are sums a sharded caller can add up shard by shard (``whynet.scale``)."""
    a, u = torch.linalg.eigh(torch.diag(p_mean) - p_outer)
    b, v = torch.linalg.eigh(f_outer)
    den = a.clamp_min(0)[:, None] * b.clamp_min(0)[None, :] + 2.0 * l2

    def apply(g: torch.Tensor) -> torch.Tensor:
        return u @ ((u.T @ g @ v) / den) @ v.T

    return apply


#: largest ``C (D+1)`` whose preconditioner is the dense Hessian of a subsample
#: (:func:`hessian_preconditioner`, a (C (D+1))^2 matrix); larger heads take the Kronecker model
HESSIAN_MAX_DIM = 2048
#: training points in that subsample (evenly spaced: :func:`hessian_rows`)
HESSIAN_ROWS = 2048


def hessian_rows(n: int) -> torch.Tensor:
    """Indices of the Hessian subsample: ``min(n, HESSIAN_ROWS)`` points spaced ``n // m``
    apart (deterministic, so a sharded caller picks the same rows shard by shard)."""
    m = min(n, HESSIAN_ROWS)
    return torch.arange(m) * (n // m if m else 1)


def use_hessian(n_classes: int, d1: int) -> bool:
    """Whether :func:`hessian_preconditioner` is the preconditioner of a (C, D+1) head."""
    return n_classes * d1 <= HESSIAN_MAX_DIM


def hessian_preconditioner(rows: torch.Tensor, weight: torch.Tensor, l2: float) -> Any:
    """``G -> (H_m + 2 lambda I)^{-1} G``, ``H_m`` the Hessian of the mean loss of Eq. 2 at
    ``weight`` on ``rows`` (m, D+1), a subsample of ``[F, 1]`` (:func:`hessian_rows`).

    ``H_m = (1/m) sum_i (diag p_i - p_i p_i^T) (x) f_i f_i^T`` (targets summing to one; the
    preconditioner need not be exact). Unlike the Kronecker model it keeps how the softmax
    curvature varies with ``f_i``: on ``fashion-cnn`` (C (D+1) = 1290, n = 60k) L-BFGS reaches
    the exact residual in 23 oracle calls instead of 85, for ~m (C (D+1))^2 flops once.
    """
    x = rows.contiguous()
    m, d1 = x.shape
    p = torch.softmax(x @ weight.T, dim=1)
    c = p.shape[1]
    u = (p[:, :, None] * x[:, None, :]).reshape(m, c * d1)  # row i: p_i (x) f_i
    h = u.T @ u
    h.neg_()
    for k in range(c):  # the diag(p_i) part: block k is sum_i p_ik f_i f_i^T
        h[k * d1 : (k + 1) * d1, k * d1 : (k + 1) * d1] += u[:, k * d1 : (k + 1) * d1].T @ x
    h.div_(max(m, 1)).diagonal().add_(2.0 * l2)
    chol = torch.linalg.cholesky(h)

    def apply(g: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(g.reshape(-1, 1), chol).reshape(g.shape)

    return apply


def _preconditioner(features_t: torch.Tensor, phi: torch.Tensor, l2: float) -> Any:
    """A Kronecker model of the Hessian of Eq. 2 (:func:`kronecker_preconditioner`).

    ``B = F^T F / n`` (feature second moments) and ``A = mean_i (diag p_i - p_i p_i^T)`` (the
    softmax curvature at the start). It removes the feature scaling that makes plain L-BFGS
    take hundreds of steps.
    """
    n = phi.shape[0]
    p = torch.softmax(phi, dim=1)
    return kronecker_preconditioner(p.mean(0), p.T @ p / n, features_t @ features_t.T / n, l2)


#: ``fun_and_grad(x) -> (f, g)``: a float64 objective and its gradient (shape of ``x``)
Oracle = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


@dataclass
class LbfgsInfo:
    """How an :func:`lbfgs` run went; ``f`` and ``g`` are at the returned ``x``."""

    f: float  # objective at x
    g: torch.Tensor  # gradient at x
    grad_mean: float  # mean |g| at x (the smallest over the iterates)
    grad_mean0: float  # mean |g| at x0
    n_iter: int  # accepted steps
    n_eval: int  # oracle calls (one per line-search trial, plus one at x0)
    converged: bool  # a stopping test held


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)))


def lbfgs(
    fun_and_grad: Oracle,
    x0: torch.Tensor,
    *,
    tol: float | None,
    max_iter: int,
    stop: Callable[[torch.Tensor], bool] | None = None,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
    memory: int = 100,
    min_step: float = 1e-10,
) -> tuple[torch.Tensor, LbfgsInfo]:
    """L-BFGS (Nocedal & Wright, Alg. 7.4) with Armijo backtracking on a ``(f, grad)`` oracle.

    ``fun_and_grad(x) -> (f, g)`` is the only access to the problem, so a map/reduce caller can
    sum the objective and gradient over shards (:mod:`whynet.scale`); the in-memory
    :func:`solve_lbfgs` calls it with the products over the whole ``F``. One oracle call per
    line-search trial; steps start at 1 and halve. Where ``|f(x - t d) - f(x)|`` is below
    float64 rounding (1e-12 relative) a step is also accepted when the slope
    ``d/dt f(x - t d) = -g(x - t d) . d <= 0`` (Hager & Zhang's approximate Armijo), which lets
    the gradient keep shrinking to rounding.

    Parameters
    ----------
    fun_and_grad : callable
        ``x -> (f, g)``, ``f`` a float, ``g`` a tensor of ``x``'s shape (float64 for exactness).
    x0 : the start (any shape; its dtype is the working dtype).
    tol : float or None
        Stop when ``mean|g| < tol * mean|g(x0)|`` (the relative rule); None: only ``stop``.
    max_iter : accepted steps at most.
    stop : callable, optional
        ``g -> bool``, an extra stopping test (e.g. :func:`residual_bound` ``<= atol``).
    precondition : callable, optional
        ``g -> H0 g``, the initial inverse Hessian (else the scalar ``s.y / y.y``).
    memory : curvature pairs kept.
    min_step : a line search ending below this step stops the run (the precision floor).

    Returns
    -------
    ``(x, info)``: the iterate with the smallest ``mean|g|`` and :class:`LbfgsInfo`.
    """
    if tol is None and stop is None:
        raise ValueError("give tol (relative gradient rule) or stop (an absolute test)")
    x = x0.clone()
    f, g = fun_and_grad(x)
    n_eval = 1
    gmean0 = float(g.abs().mean())

    def done(g: torch.Tensor, gmean: float) -> bool:
        if tol is not None and gmean < tol * gmean0:
            return True
        return stop is not None and bool(stop(g))

    best = (gmean0, x, f, g)
    converged = gmean0 == 0.0 or done(g, gmean0)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[float] = []
    n_iter = 0
    for it in range(1, max_iter + 1):
        if converged:
            break
        # two-loop recursion: d = H g, H0 = the preconditioner (else the scalar s.y / y.y)
        q = g.clone()
        coef = []
        for s_k, y_k, rho in zip(
            reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True
        ):
            a = rho * _dot(s_k, q)
            q.add_(y_k, alpha=-a)
            coef.append(a)
        if precondition is not None:
            q = precondition(q)
        elif s_hist:
            q *= 1.0 / (rho_hist[-1] * _dot(y_hist[-1], y_hist[-1]))
        for s_k, y_k, rho, a in zip(s_hist, y_hist, rho_hist, reversed(coef), strict=True):
            q.add_(s_k, alpha=a - rho * _dot(y_k, q))
        d = q  # minus the search direction
        gd = _dot(g, d)
        if gd <= 0:  # not a descent direction (numerical trouble): restart from the gradient
            s_hist.clear()
            y_hist.clear()
            rho_hist.clear()
            d, gd = g, _dot(g, g)
        t = 1.0
        while True:  # backtracking: Armijo, or the approximate Armijo below rounding
            x_t = x - t * d
            f_t, g_t = fun_and_grad(x_t)
            n_eval += 1
            if math.isfinite(f_t) and f_t - f + 1e-4 * t * gd < 0.0:
                break
            if abs(f_t - f) <= 1e-12 * max(1.0, abs(f)) and _dot(g_t, d) >= 0.0:
                break
            t /= 2.0
            if t < min_step:
                break
        if t < min_step:  # the precision floor: no step decreases f any more
            break
        s_k, y_k = x_t - x, g_t - g
        sy = _dot(s_k, y_k)
        if sy > 1e-16:  # keep the update positive definite
            s_hist.append(s_k)
            y_hist.append(y_k)
            rho_hist.append(1.0 / sy)
            if len(s_hist) > memory:
                del s_hist[0], y_hist[0], rho_hist[0]
        x, f, g, n_iter = x_t, f_t, g_t, it
        gmean = float(g.abs().mean())
        if gmean < best[0]:
            best = (gmean, x, f, g)
        converged = done(g, gmean)
    gmean, x, f, g = best
    return x, LbfgsInfo(f, g, gmean, gmean0, n_iter, n_eval, converged)


def augment_t(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[F, 1]^T`` (D+1, n), contiguous, in ``dtype``: one pass over ``features``."""
    n, d = features.shape
    out = torch.empty(d + 1, n, dtype=dtype, device=features.device)
    out[:d] = features.T
    out[d] = 1.0
    return out


#: training points per block of the oracle: Phi and dL/dPhi of a block stay in cache
ORACLE_BLOCK = 4096


def oracle_t(
    features_t: torch.Tensor, targets_t: torch.Tensor, l2: float, block: int = ORACLE_BLOCK
) -> Oracle:
    """The in-memory oracle of Eq. 2, ``W -> (J(W), grad J(W))``, on ``F^T`` (D+1, n).

    Block by block of training points: ``Phi_b^T = W F_b^T`` (C, nb), its logsumexp, the
    softmax as ``exp(Phi - logsumexp)`` (the loss's reduction reused), and
    ``grad += dL/dPhi_b^T F_b``; the block's (C, nb) arrays stay in cache, so the cost is the
    two products with ``F``. ``targets_t`` (C, n).
    """
    n = features_t.shape[1]
    tsum = targets_t.sum(0)
    unit = bool(torch.allclose(tsum, torch.ones_like(tsum)))

    def fun_and_grad(w: torch.Tensor) -> tuple[float, torch.Tensor]:
        grad = torch.zeros_like(w)
        data = 0.0
        for a in range(0, n, block):
            fb, tb = features_t[:, a : a + block], targets_t[:, a : a + block]
            phi = w @ fb
            lse = torch.logsumexp(phi, dim=0)
            if unit:
                data += float(lse.sum() - (tb * phi).sum())
                dphi = torch.exp(phi.sub_(lse)).sub_(tb)
            else:
                ts = tsum[a : a + block]
                data += float((lse * ts).sum() - (tb * phi).sum())
                dphi = torch.exp(phi.sub_(lse)).mul_(ts).sub_(tb)
            grad.addmm_(dphi, fb.T)
        return data / n + l2 * _dot(w, w), grad.div_(n).add_(w, alpha=2.0 * l2)

    return fun_and_grad


def objective_and_gradient(features: torch.Tensor, targets: torch.Tensor, l2: float) -> Oracle:
    """:func:`oracle_t` from augmented ``features`` (n, D+1) and ``targets`` (n, C)."""
    return oracle_t(features.T.contiguous(), targets.T.contiguous(), l2)


def solve_lbfgs(
    features: torch.Tensor,
    weight0: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    *,
    max_iter: int = 3000,
    tol: float | None = 1.0 / 200,
    atol: float | None = None,
    memory: int = 100,
    precondition: bool = True,
    min_step: float = 1e-10,
) -> SolveResult:
    """Preconditioned L-BFGS on Eq. 2: :func:`lbfgs` on :func:`objective_and_gradient`.

    Not the authors' procedure (:func:`solve` is) but the same objective, which is strongly
    convex for ``l2 > 0``: both reach the same unique minimiser. Stops when
    ``mean|grad| < tol * mean|grad_0|`` (``tol``, the authors' rule) or when
    :func:`residual_bound` ``<= atol`` (the decomposition holds to ``atol`` on the training
    points: the exact default of :class:`~whynet.representer.RepresenterPoints`), whichever is
    given and met first. The initial inverse Hessian is :func:`hessian_preconditioner` (the
    Hessian at ``weight0`` of a subsample) where ``C (D+1) <= HESSIAN_MAX_DIM``, else the
    Kronecker :func:`_preconditioner` (``C (D+1)`` is small, so ``memory`` pairs cost nothing
    next to the two products with ``F`` per step).
    """
    return solve_lbfgs_t(
        features.T.contiguous(),
        weight0,
        targets,
        l2,
        max_iter=max_iter,
        tol=tol,
        atol=atol,
        memory=memory,
        precondition=precondition,
        min_step=min_step,
    )


def solve_lbfgs_t(
    features_t: torch.Tensor,
    weight0: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    *,
    max_iter: int = 3000,
    tol: float | None = 1.0 / 200,
    atol: float | None = None,
    memory: int = 100,
    precondition: bool = True,
    min_step: float = 1e-10,
) -> SolveResult:
    """:func:`solve_lbfgs` on ``F^T`` (D+1, n) (:func:`augment_t`): no (n, D+1) copy needed."""
    if l2 <= 0:
        raise ValueError(f"l2 (lambda) must be > 0 for the representer theorem, got {l2}")
    if tol is None and atol is None:
        raise ValueError("give tol (relative gradient rule) or atol (decomposition residual)")
    n = features_t.shape[1]
    lo, hi = torch.aminmax(features_t) if n else (torch.tensor(1.0), torch.tensor(1.0))
    fmax = max(float(hi), -float(lo))
    pre = None
    if precondition and use_hessian(*weight0.shape):
        pre = hessian_preconditioner(features_t[:, hessian_rows(n)].T, weight0, l2)
    elif precondition:
        pre = _preconditioner(features_t, (weight0 @ features_t).T, l2)
    w, info = lbfgs(
        oracle_t(features_t, targets.T.contiguous(), l2),
        weight0,
        tol=tol,
        max_iter=max_iter,
        stop=None if atol is None else (lambda g: residual_bound(g, fmax, l2) <= atol),
        precondition=pre,
        memory=memory,
        min_step=min_step,
    )
    return SolveResult(
        weight=w,
        phi=(w @ features_t).T.contiguous(),
        grad_mean=info.grad_mean,
        grad_mean0=info.grad_mean0,
        n_iter=info.n_iter,
        converged=info.converged,
        objective=info.f,
        residual=residual_bound(info.g, fmax, l2),
        n_eval=info.n_eval,
    )
