"""The public L-BFGS driver on a ``(f, grad)`` oracle: exact minimisers, map/reduce = in-memory."""

from __future__ import annotations

import pytest
import torch

from whynet.representer import (
    LbfgsInfo,
    augment,
    gradient,
    lbfgs,
    objective,
    objective_and_gradient,
    solve_lbfgs,
)
from whynet.representer._solver import residual_bound

pytestmark = pytest.mark.usefixtures("one_thread")


def problem(n: int = 90, d: int = 5, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = augment(torch.randn(n, d, generator=g, dtype=torch.float64) * 2)
    t = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 3, 1)
    w0 = torch.randn(c, d + 1, generator=g, dtype=torch.float64)
    return f, t, w0


def test_quadratic_reaches_its_minimiser() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.1 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)

    def fg(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        return float(0.5 * x @ a @ x - b @ x), a @ x - b

    x, info = lbfgs(fg, torch.zeros(12, dtype=torch.float64), tol=1e-12, max_iter=500)
    assert isinstance(info, LbfgsInfo) and info.converged and info.n_eval >= info.n_iter
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=0, atol=1e-9)
    # the info is about the returned iterate
    torch.testing.assert_close(info.g, a @ x - b, rtol=0, atol=0)
    assert info.grad_mean == float(info.g.abs().mean()) and info.f == fg(x)[0]


def test_oracle_is_the_objective_and_its_gradient() -> None:
    f, t, w0 = problem()
    val, grad = objective_and_gradient(f, t, 0.003)(w0)
    torch.testing.assert_close(val, float(objective(f @ w0.T, w0, t, 0.003)), rtol=1e-14, atol=0)
    torch.testing.assert_close(grad, gradient(f, w0, t, 0.003), rtol=0, atol=1e-14)
    # with targets that do not sum to one (the soft-target cross-entropy, scaled)
    val2, grad2 = objective_and_gradient(f, 2 * t, 0.003)(w0)
    torch.testing.assert_close(grad2, gradient(f, w0, 2 * t, 0.003), rtol=0, atol=1e-14)
    assert val2 == pytest.approx(float(objective(f @ w0.T, w0, 2 * t, 0.003)), rel=1e-14)


def test_map_reduce_oracle_gives_the_in_memory_solve() -> None:
    """A caller summing (f, g) over shards lands on the in-memory solver's minimiser."""
    f, t, w0 = problem(n=150)
    l2 = 0.01
    ref = solve_lbfgs(f, w0, t, l2, tol=None, atol=1e-11, max_iter=2000)
    shards = [(f[a : a + 40], t[a : a + 40]) for a in range(0, 150, 40)]

    def fg(w: torch.Tensor) -> tuple[float, torch.Tensor]:
        loss, grad = 0.0, torch.zeros_like(w)
        for fs, ts in shards:  # per-shard sums, reduced here
            phi = fs @ w.T
            loss += float((torch.logsumexp(phi, 1) - (ts * phi).sum(1)).sum())
            grad += (torch.softmax(phi, 1) - ts).T @ fs
        return loss / 150 + l2 * float((w * w).sum()), grad / 150 + 2 * l2 * w

    fmax = float(f.abs().max())
    w, info = lbfgs(
        fg, w0, tol=None, max_iter=2000, stop=lambda g: residual_bound(g, fmax, l2) <= 1e-11
    )
    assert info.converged and ref.converged
    torch.testing.assert_close(w, ref.weight, rtol=0, atol=1e-9)


def test_needs_a_stopping_rule() -> None:
    with pytest.raises(ValueError, match="tol"):
        lbfgs(lambda x: (0.0, x), torch.zeros(2), tol=None, max_iter=3)


def test_hessian_preconditioner_inverts_the_regularised_subsample_hessian() -> None:
    """``apply((H_m + 2 lambda I) v) == v``, ``H_m`` the autograd Hessian of the mean loss on
    the rows (targets summing to one: the Hessian does not depend on them)."""
    from whynet.representer._solver import hessian_preconditioner

    f, t, w0 = problem(n=40, d=4, c=3)
    l2 = 0.01

    def mean_loss(w: torch.Tensor) -> torch.Tensor:
        phi = f @ w.reshape(w0.shape).T
        return (torch.logsumexp(phi, 1) - (t * phi).sum(1)).mean()

    h = torch.autograd.functional.hessian(mean_loss, w0.reshape(-1))
    h = h + 2 * l2 * torch.eye(h.shape[0], dtype=torch.float64)
    apply = hessian_preconditioner(f, w0, l2)
    v = torch.randn(w0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(apply((h @ v.reshape(-1)).reshape(w0.shape)), v, rtol=0, atol=1e-10)


def test_hessian_rows_are_evenly_spaced_and_both_preconditioners_reach_one_minimiser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from whynet.representer import _solver

    assert torch.equal(_solver.hessian_rows(100), torch.arange(100))
    rows = _solver.hessian_rows(10_000)
    assert len(rows) == _solver.HESSIAN_ROWS and rows[-1] < 10_000
    assert set((rows[1:] - rows[:-1]).tolist()) == {10_000 // _solver.HESSIAN_ROWS}
    f, t, w0 = problem(n=300)
    kw = dict(tol=None, atol=1e-10, max_iter=500)
    hess = solve_lbfgs(f, w0, t, 0.003, **kw)
    monkeypatch.setattr(_solver, "HESSIAN_ROWS", 37)  # a strided subsample
    strided = solve_lbfgs(f, w0, t, 0.003, **kw)
    monkeypatch.setattr(_solver, "HESSIAN_MAX_DIM", 1)  # the Kronecker model
    kron = solve_lbfgs(f, w0, t, 0.003, **kw)
    assert hess.converged and strided.converged and kron.converged
    # the exact Hessian on all 300 rows needs fewer oracle calls than the Kronecker model
    assert hess.n_eval < kron.n_eval
    for other in (strided, kron):
        torch.testing.assert_close(other.weight, hess.weight, rtol=0, atol=1e-8)
