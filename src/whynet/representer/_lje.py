"""RPS-LJE: representer points from a local Jacobian expansion (Sui, Wu, Sanner, NeurIPS 2021).

Representer point selection (Yeh et al. 2018) explains a *fine-tuned* head, the stationary
point of an L2-regularised objective. RPS-LJE explains the trained head ``Theta*`` itself
(no regularisation needed): it moves to a nearby point and expands the loss gradient there.
Notation as in :mod:`._solver`: ``f_i`` are the head's inputs with a ones column appended,
``L(Theta) = (1/n) sum_i L_i`` the mean softmax cross-entropy on the *training labels*.

1. One step of gradient *ascent* (the authors' choice, their Sec. 4 "in practice"):
   ``Theta_0 = Theta* + eta grad L(Theta*)``.
2. First-order (Newton) expansion of the gradient around ``Theta_0`` (Eq. 4-6): the point
   where the expanded gradient vanishes is

       Theta_LJE = Theta_0 - H^{-1} grad L(Theta_0),   grad L(Theta_0) = (1/n) sum_i g_i,

   with ``H`` the Hessian of ``L`` at ``Theta_0`` and ``g_i = r_i f_i^T``, ``r_i = p_i - y_i``
   (``p_i`` the softmax at ``Theta_0``). ``Theta_LJE`` is ``Theta*`` when the loss is quadratic
   around it and ``Theta*`` was stationary; otherwise it is one Newton step further.
3. Splitting the sum gives one weight matrix per training point (the authors' code stores it),

       Theta_LJE = sum_i W_i,   W_i = (1/n) (Theta_0 - H^{-1} g_i),

   so the head's output decomposes exactly: ``Theta_LJE f_t = sum_i W_i f_t``. The value of
   point ``i`` for test input ``t`` and class ``c`` is ``(W_i f_t)_c``. (The paper writes it in
   the representer form ``alpha_i f_i^T f_t`` by dividing element-wise by ``f_i``; the
   weight-matrix form is the same number without that division, which breaks at ``f_i = 0``.)

Here ``H = (1/n) sum_i (diag p_i - p_i p_i^T) (x) f_i f_i^T`` is formed explicitly over the
``C (D+1)`` head parameters, plus ``damping * mean(diag H)`` on the diagonal: the softmax Hessian
is singular along "add the same vector to every class" (the gradients ``g_i`` have no component
there, so the damping only regularises the ill-conditioned directions) and along input features
that are zero on every training point. The decomposition is exact for the damped ``H`` too.
Values of a test batch cost ``O(B (D+1) P + n B C (D+1))`` with ``P = C (D+1)``: one product
with the class's rows of ``H^{-1}`` and one with the training features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from whynet.representer._solver import augment, loss_grad_phi

#: largest head (C x (D+1) parameters) whose Hessian is formed explicitly (P^2 float64 entries:
#: 8192 parameters = 512 MB). Beyond it RPS-LJE is refused with the size in the message.
MAX_PARAMS = 8192


@dataclass
class LJEResult:
    """What :func:`fit` returns (see the module docstring for the symbols)."""

    weight: torch.Tensor  # (C, D+1) Theta_LJE: the head the values decompose
    weight0: torch.Tensor  # (C, D+1) Theta_0, the expansion point
    hinv: torch.Tensor  # (P, P) inverse of the damped Hessian at Theta_0, P = C (D+1)
    alpha: torch.Tensor  # (n, C) -r_i / n: the coefficient of f_i in -grad L(Theta_0)
    grad_mean0: float  # mean |grad L(Theta*)|
    grad_mean: float  # mean |grad L(Theta_LJE)|
    objective: float  # L(Theta_LJE), mean cross-entropy on the labels


def check_targets(solver: str, targets: str) -> None:
    """RPS-LJE expands the loss on the training labels (Bad input otherwise)."""
    if solver == "lje" and targets != "labels":
        raise ValueError(
            "solver='lje' expands the training loss on the labels: pass targets='labels' "
            "(the model's own softmax targets have zero gradient at its weights)"
        )


def hessian(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``(1/n) sum_i (diag p_i - p_i p_i^T) (x) f_i f_i^T`` (P, P), rows ``c * (D+1) + d``.

    The diagonal blocks ``F^T diag(p_c) F / n`` minus ``Q^T Q / n`` with ``Q_i = p_i (x) f_i``.
    """
    n, d1 = features.shape
    c = probs.shape[1]
    q = (probs[:, :, None] * features[:, None, :]).reshape(n, c * d1)
    h = -(q.T @ q)
    for k in range(c):
        blk = slice(k * d1, (k + 1) * d1)
        h[blk, blk] += (features * probs[:, k : k + 1]).T @ features
    return h / n


def fit(
    features: torch.Tensor, weight: torch.Tensor, onehot: torch.Tensor, step: float, damping: float
) -> LJEResult:
    """RPS-LJE on augmented features ``(n, D+1)``, trained head ``(C, D+1)``, one-hot labels."""
    n, d1 = features.shape
    c = weight.shape[0]
    p_count = c * d1
    if p_count > MAX_PARAMS:
        raise ValueError(
            f"solver='lje' forms the Hessian of the head's {c} x {d1} = {p_count} parameters "
            f"explicitly ({p_count**2 * 8 / 2**20:.0f} MB in float64); the limit is "
            f"{MAX_PARAMS} parameters. Use a head with fewer inputs or solver='lbfgs'"
        )

    def grad(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = features @ w.T
        r = loss_grad_phi(phi, onehot)  # p_i - y_i
        return r.T @ features / n, phi

    g_star, _ = grad(weight)
    w0 = weight + step * g_star  # one step of gradient ascent (Sec. 4)
    g0, phi0 = grad(w0)
    probs = torch.softmax(phi0, dim=1)
    h = hessian(features, probs)
    h.diagonal().add_(damping * float(h.diagonal().mean().clamp_min(1e-300)))
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(
            f"the damped Hessian is not positive definite (leading minor {int(info)}); "
            f"pass a larger lje_damping (now {damping:g})"
        )
    hinv = torch.cholesky_inverse(chol)
    hinv = (hinv + hinv.T) / 2  # exact symmetry: the values use both sides of it
    w_lje = w0 - (hinv @ g0.reshape(-1)).reshape(c, d1)
    g_lje, phi_lje = grad(w_lje)
    lse = torch.logsumexp(phi_lje, dim=1)
    loss = float((lse - (onehot * phi_lje).sum(1)).mean())
    return LJEResult(
        weight=w_lje,
        weight0=w0,
        hinv=hinv,
        alpha=-(probs - onehot) / n,
        grad_mean0=float(g_star.abs().mean()),
        grad_mean=float(g_lje.abs().mean()),
        objective=loss,
    )


def values(
    features: torch.Tensor,
    alpha: torch.Tensor,
    weight0: torch.Tensor,
    hinv: torch.Tensor,
    test: torch.Tensor,
    classes: torch.Tensor,
    n_total: int | None = None,
) -> torch.Tensor:
    """``(W_i f_t)_c`` (B, n) for augmented training ``features`` (n, D+1) and ``test`` (B, D+1).

    ``features``/``alpha`` may be one block of the training points; ``n_total`` is then the
    size of the whole training set (the ``1/n`` of ``W_i``).

    ``(W_i f_t)_c = (Theta_0 f_t)_c / n + sum_k alpha_ik f_i . U_t[k]`` with ``alpha = -r / n``
    and ``U_t = reshape(f_t^T H^{-1}[rows of class c])`` (C, D+1): ``H`` is symmetric, so the
    class-``c`` row of ``H^{-1} g_i`` dotted with ``f_t`` is ``g_i . (H^{-1} (e_c (x) f_t))``.
    """
    n, d1 = features.shape
    c = alpha.shape[1]
    b = test.shape[0]
    hrows = hinv.reshape(c, d1, c * d1)
    u = torch.empty(b, c * d1, dtype=hinv.dtype, device=hinv.device)
    for k in classes.unique().tolist():
        rows = (classes == k).nonzero()[:, 0]
        u[rows] = test[rows] @ hrows[k]
    # (n, B*C): f_i . U_t[k] for every test t and class k, weighted by alpha_ik
    fu = (features @ u.reshape(b * c, d1).T).reshape(n, b, c)
    out = torch.einsum("nbk,nk->bn", fu, alpha)
    # (Theta_0 f_t)_c / n, the same for every i
    base = (test * weight0[classes]).sum(1) / (n if n_total is None else n_total)
    return out + base[:, None]


def self_values(
    features: torch.Tensor,
    alpha: torch.Tensor,
    weight0: torch.Tensor,
    hinv: torch.Tensor,
    classes: torch.Tensor,
    chunk: int = 256,
) -> torch.Tensor:
    """``(W_i f_i)_{c_i}`` (n,): each training point's value for itself (the authors' debugging
    score, ranked by its absolute value), ``chunk`` points at a time."""
    n, d1 = features.shape
    c = alpha.shape[1]
    hrows = hinv.reshape(c, d1, c * d1)
    out = torch.empty(n, dtype=hinv.dtype, device=hinv.device)
    for a in range(0, n, chunk):
        f, cls, al = features[a : a + chunk], classes[a : a + chunk], alpha[a : a + chunk]
        u = torch.empty(f.shape[0], c * d1, dtype=hinv.dtype, device=hinv.device)
        for k in cls.unique().tolist():
            rows = (cls == k).nonzero()[:, 0]
            u[rows] = f[rows] @ hrows[k]
        fu = torch.einsum("bd,bkd->bk", f, u.reshape(-1, c, d1))
        out[a : a + chunk] = (fu * al).sum(1) + (f * weight0[cls]).sum(1) / n
    return out


def fitted_state(
    features: torch.Tensor, weight: torch.Tensor, onehot: torch.Tensor, step: float, damping: float
) -> dict[str, object]:
    """:func:`fit` as the fitted state of :class:`~whynet.representer.RepresenterPoints`."""
    res = fit(features, weight, onehot, step, damping)
    return {
        "alpha_": res.alpha,
        "weight_": res.weight,
        "lje_weight0_": res.weight0,
        "lje_hinv_": res.hinv,
        "converged_": True,  # closed form: nothing to converge
        "grad_norm_": res.grad_mean,
        "grad_norm0_": res.grad_mean0,
        "n_iter_": 1,
        "objective_": res.objective,
    }


def parts(rp: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fitted RPS-LJE explainer's augmented training features, alpha, Theta_0 and H^{-1}."""
    assert rp.lje_hinv_ is not None and rp.lje_weight0_ is not None
    fa = augment(rp.features_.to(rp.alpha_.device), rp.dtype)
    return fa, rp.alpha_, rp.lje_weight0_, rp.lje_hinv_


def blocks(
    rp: Any, test: torch.Tensor, classes: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, values (B, nb))`` over blocks of ``rp.block_size`` training points."""
    fa, alpha, w0, hinv = parts(rp)
    ft, n, bs = augment(test, rp.dtype), fa.shape[0], rp.block_size
    for a in range(0, n, bs):
        yield a, values(fa[a : a + bs], alpha[a : a + bs], w0, hinv, ft, classes, n)
