"""Representer points (Yeh et al. 2018, Eq. 2) fitted by map/reduce L-BFGS over the shards.

The in-memory fit holds ``[F, 1]^T`` (D+1, n) in float64 next to the float32 features: at 10M
points and D = 128 that is 10 GB more than the features themselves. Here each shard task reads
its features and model outputs from the store and returns its part of the oracle of Eq. 2,

    sum_{i in shard} L(Phi_i, T_i)   and   sum_{i in shard} dL/dPhi_i^T [f_i, 1],

(the in-memory oracle :func:`whynet.representer._solver.oracle_t` on the shard, without the
penalty); the driver sums them in shard order, adds ``lambda ||W||^2`` and its gradient and
hands the oracle to the one L-BFGS driver :func:`whynet.representer.lbfgs` with the settings of
the in-memory solver (stopping rule, the Kronecker preconditioner from moments summed over the
shards in one more pass). The iterates are those of ``RepresenterPoints.fit`` up to the rounding
of the sums, so alpha equals the gathered fit to ~1e-12 in float64. Memory on the driver: the
fitted state (the features, float32, and alpha) and one shard's worth of work per task.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from whynet.representer import _features as feat
from whynet.representer import lbfgs
from whynet.representer._solver import (
    EXACT_ATOL,
    augment_t,
    hessian_preconditioner,
    hessian_rows,
    kronecker_preconditioner,
    loss_grad_phi,
    oracle_t,
    residual_bound,
    use_hessian,
)
from whynet.scale.engine import Engine, as_engine
from whynet.scale.fit import _need, _shard
from whynet.scale.store import ShardedStore, shard_range

#: per process: shard problems already read, verified and converted
_PROBLEMS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def cache_budget() -> int:
    """Bytes of converted shards one process keeps between oracle passes
    (``WHYNET_SCALE_CACHE_MB``, default 1024; 0 turns the cache off)."""
    return int(float(os.environ.get("WHYNET_SCALE_CACHE_MB", "1024")) * 2**20)


def _shard_problem(shared: tuple[Any, ...], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[F, 1]^T`` (D+1, n_s) and the targets ``T^T`` (C, n_s) of one shard, in ``dtype``.

    Every L-BFGS trial is one pass over all shards: reading, hashing and converting a shard
    again each time cost more than its two products. A process therefore keeps the converted
    shards it has verified, keyed by the manifest's checksum of the shard (a recomputed shard
    is a new key), until :func:`cache_budget` bytes are held; later shards are read each pass
    (no eviction: the passes scan the shards in order, where LRU would keep none).
    """
    folder, manifest, dtype, targets, n_classes = shared[:5]
    key = (str(folder), index, manifest["shards"][str(index)]["sha256"], dtype, targets, n_classes)
    hit = _PROBLEMS.get(key)
    if hit is not None:
        return hit
    if any(k[0] != key[0] or k[3:] != key[3:] for k in _PROBLEMS):
        _PROBLEMS.clear()  # another store or problem: a worker holds one fit's shards at most
    t = _shard(shared, index)
    ft = augment_t(t["features"], dtype)
    if targets == "model":
        tgt = torch.softmax(t["outputs"].to(dtype), dim=1)
    else:
        tgt = torch.nn.functional.one_hot(t["labels"].long(), n_classes).to(dtype)
    problem = (ft, tgt.T.contiguous())
    held = sum(sum(x.numel() * x.element_size() for x in v) for v in _PROBLEMS.values())
    if held + sum(x.numel() * x.element_size() for x in problem) <= cache_budget():
        _PROBLEMS[key] = problem
    return problem


def _moments(shared: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    """What the preconditioner needs from one shard, and max |F|: the shard's rows of the
    Hessian subsample (``hessian_rows`` of the whole set, (m_s, D+1)), or, for a head too
    large for the dense Hessian, the Kronecker sums at ``W0`` (sum p_i, sum p_i p_i^T, F^T F)."""
    ft, _ = _shard_problem(shared, index)
    lo, hi = torch.aminmax(ft)
    fmax = max(float(hi), -float(lo))
    w0, rows = shared[5], shared[6]
    if rows is not None:
        a, b = shard_range(index, shared[1]["n_rows"], shared[1]["shard_rows"])
        local = rows[(rows >= a) & (rows < b)] - a
        return ft[:, local].T.contiguous(), fmax
    p = torch.softmax((w0 @ ft).T, dim=1)
    return p.sum(0), p.T @ p, ft @ ft.T, fmax


def _oracle(shared: tuple[Any, ...], index: int) -> tuple[float, torch.Tensor]:
    """One shard's loss sum and gradient sum at ``W`` (``oracle_t`` without the penalty)."""
    ft, tt = _shard_problem(shared, index)
    f, g = oracle_t(ft, tt, 0.0)(shared[5])
    n = ft.shape[1]
    return f * n, g * n


def _alpha(shared: tuple[Any, ...], index: int) -> torch.Tensor:
    """alpha_i = -1/(2 lambda n) dL/dPhi_i (Thm. 3.1) of one shard, n the whole set's size."""
    ft, tt = _shard_problem(shared, index)
    l2, n = shared[6], shared[7]
    return -loss_grad_phi((shared[5] @ ft).T, tt.T) / (2.0 * l2 * n)


def _summed_oracle(store: ShardedStore, base: tuple[Any, ...], l2: float, eng: Engine) -> Any:
    """``W -> (J(W), grad J(W))`` of Eq. 2 as sums of per-shard :func:`_oracle` parts."""
    n, shards = store.n_rows, range(store.n_shards)

    def fun_and_grad(w: torch.Tensor) -> tuple[float, torch.Tensor]:
        got = eng.map_tasks(_oracle, (*base, w), shards, desc="representer: oracle")
        f = sum(p[0] for p in got[1:]) + got[0][0]
        g = got[0][1].clone()
        for p in got[1:]:  # in shard order: independent of which worker ran what
            g += p[1]
        return f / n + l2 * float((w * w).sum()), g.div_(n).add_(w, alpha=2.0 * l2)

    return fun_and_grad


def _preconditioner(
    store: ShardedStore, base: tuple[Any, ...], w0: torch.Tensor, l2: float, eng: Engine
) -> tuple[Any, float]:
    """The in-memory solver's preconditioner (``solve_lbfgs_t``) and max |F|, in one pass."""
    n, (c, d1) = store.n_rows, w0.shape
    rows = hessian_rows(n) if use_hessian(c, d1) else None
    shards = range(store.n_shards)
    parts = eng.map_tasks(_moments, (*base, w0, rows), shards, desc="representer: moments")
    fmax = max(p[-1] for p in parts)
    if rows is not None:
        return hessian_preconditioner(torch.cat([p[0] for p in parts]), w0, l2), fmax
    sums = [sum((p[j] for p in parts[1:]), parts[0][j].clone()) for j in range(3)]
    return kronecker_preconditioner(sums[0] / n, sums[1] / n, sums[2] / n, l2), fmax


def representer_objective(
    store: ShardedStore,
    weight: torch.Tensor,
    l2: float,
    *,
    targets: str = "model",
    engine: str | Engine = "local",
) -> tuple[float, torch.Tensor]:
    """``J(W)`` and ``grad J(W)`` of Eq. 2 as map/reduce sums over the shards (float64).

    ``J = (1/n) sum_i L(Phi_i, T_i) + lambda ||W||^2`` and ``grad J = (1/n) sum_i dL/dPhi_i^T
    [f_i, 1] + 2 lambda W``: each shard returns its loss sum and its (C, D+1) gradient sum.
    """
    _need(store, "features", "outputs", *(["labels"] if targets == "labels" else []))
    w = weight.double()
    base = (store.folder, store.manifest, torch.float64, targets, w.shape[0])
    return _summed_oracle(store, base, l2, as_engine(engine))(w)


def fit_representer_mapreduce(
    explainer: Any, store: ShardedStore, *, engine: str | Engine = "local"
) -> Any:
    """Fit ``explainer`` (a RepresenterPoints, ``solver="lbfgs"``) on ``store`` by map/reduce
    L-BFGS: every oracle call is one round of shard tasks (module doc). The fitted state
    equals ``explainer.fit_features`` on the gathered features to rounding of the sums."""
    rp = explainer
    if rp.solver != "lbfgs":
        raise ValueError(f"the map/reduce fit runs solver='lbfgs', got {rp.solver!r}")
    _need(store, "features", "outputs", *(["labels"] if rp.targets == "labels" else []))
    head = feat.linear_head(rp.model, rp.head)
    d = int((store.schema or {})["features"]["shape"][0])
    if d != head.in_features:
        raise ValueError(f"features have {d} columns but head {rp.head!r} takes {head.in_features}")
    eng = as_engine(engine)
    rp._check_kernel()
    dtype, l2, n, shards = rp.dtype, rp.l2, store.n_rows, range(store.n_shards)
    base = (store.folder, store.manifest, dtype, rp.targets, head.out_features)
    w0 = feat.head_weight(head).detach().cpu().to(dtype)

    atol = EXACT_ATOL if rp.tol is None else None
    # sticky: on Ray every pass asks each worker process for the same shards (its cache)
    with eng.sticky():
        try:
            pre, fmax = _preconditioner(store, base, w0, l2, eng)
            w, info = lbfgs(
                _summed_oracle(store, base, l2, eng),
                w0,
                tol=rp.tol,
                max_iter=rp.max_iter,
                stop=None if atol is None else (lambda g: residual_bound(g, fmax, l2) <= atol),
                precondition=pre,
            )
            parts = eng.map_tasks(_alpha, (*base, w, l2, n), shards, desc="representer: alpha")
            alpha = torch.cat(parts)
        finally:
            _PROBLEMS.clear()  # this process's kept shards (the local engine's) end with the fit
    if not info.converged:
        warnings.warn(
            f"map/reduce representer fit ended unconverged after {info.n_iter} L-BFGS steps "
            f"(mean|grad J| {info.grad_mean:.3g}); pass a larger max_iter (now {rp.max_iter})",
            UserWarning,
            stacklevel=2,
        )
    labels = store.gather("labels") if "labels" in (store.schema or {}) else None
    rp._reset_fitted()
    rp._set_fitted(
        alpha_=alpha,
        weight_=w,
        features_=store.gather("features"),
        labels_=labels,
        converged_=bool(info.converged),
        grad_norm_=float(info.grad_mean),
        grad_norm0_=float(info.grad_mean0),
        n_iter_=int(info.n_iter),
        objective_=float(info.f),
    )
    return rp
