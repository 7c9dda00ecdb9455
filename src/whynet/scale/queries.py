"""Distributed queries: representer top points and nearest training samples, shard by shard
with a global top-k merge.

Each shard returns its own top-k (largest and smallest representer values, or nearest
training points) with global row indices; the driver merges the ``S x k`` candidates into the
global top-k. The global top-k is contained in the union of per-shard top-k's, so the merge
equals the single-process top-k (ties aside).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from whynet.clusters.lloyd import nearest_centre
from whynet.core import parse_target
from whynet.representer import _features as feat
from whynet.representer.explainer import TopPoints
from whynet.scale.engine import Engine, as_engine
from whynet.scale.fit import _need, _shard
from whynet.scale.store import ShardedStore


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int, largest: bool) -> Any:
    values = torch.cat([p[0] for p in parts], 1)
    idx = torch.cat([p[1] for p in parts], 1)
    top = values.topk(min(k, values.shape[1]), dim=1, largest=largest)
    return idx.gather(1, top.indices), top.values


def _representer_partial(shared: tuple[Any, ...], index: int) -> tuple[torch.Tensor, ...]:
    _, _, ft, classes, alpha_t, k, dtype, kdt, start, alpha_store = shared
    f = _shard(shared, index)["features"]
    a = start[index]
    if alpha_store is None:
        coef = alpha_t[classes, a : a + f.shape[0]]  # (B, n_s)
    else:  # this shard's coefficients only (no broadcast of the whole alpha)
        coef = _shard(alpha_store, index)["alpha"].T[classes]
    # the representer terms alpha_ic ([f_i, 1] . [f_t, 1]) (Thm. 3.1), as the explainer's _terms
    v = torch.addcmul(coef, coef, (ft.to(kdt) @ f.to(kdt).T).to(dtype))
    kk = min(k, v.shape[1])
    hi, lo = v.topk(kk, dim=1), v.topk(kk, dim=1, largest=False)
    return hi.values, hi.indices + a, lo.values, lo.indices + a


def top_points(
    explainer: Any,
    inputs: torch.Tensor,
    k: int = 5,
    target: Any = None,
    *,
    store: ShardedStore,
    alpha: ShardedStore | None = None,
    engine: str | Engine = "local",
) -> TopPoints:
    """``RepresenterPoints.top`` scored over the training shards of ``store`` (fitted on it).

    The test features and classes are computed on the driver (one forward); each shard scores
    its training points against them and returns its top-k; the driver merges. ``alpha``: the
    coefficients written per shard by :func:`write_alpha` (each task then reads its own
    shard of them instead of receiving the whole ``alpha_``).
    """
    explainer.check_is_fitted()
    _need(store, "features")
    n = store.n_rows
    if explainer.alpha_.shape[0] != n or not torch.equal(
        store.read_shard(0)["features"], explainer.features_[: store.range(0)[1]].cpu()
    ):
        raise ValueError(f"the explainer was not fitted on the features of store {store.folder}")
    if alpha is not None:
        _need(alpha, "alpha")
        if alpha.manifest["fingerprint"] != _alpha_fingerprint(explainer, store):
            raise ValueError(f"alpha store {alpha.folder} is not this fit's (write_alpha again)")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
    x = explainer._check_inputs(inputs)
    tgt = parse_target(target, len(x))
    explainer._check_target(x, tgt)
    f, outputs = feat.forward_features(explainer.model, explainer.head, x, explainer.batch_size)
    feat.check_finite(f, "test")
    classes = explainer._classes(outputs, tgt).cpu()
    dtype = explainer.dtype
    kdt = explainer.kernel_dtype or dtype
    alpha_t = None if alpha is not None else explainer.alpha_.detach().cpu().T.contiguous()
    starts = [store.range(i)[0] for i in range(store.n_shards)]
    alpha_src = None if alpha is None else (alpha.folder, alpha.manifest)
    shared: tuple[Any, ...] = (store.folder, store.manifest, f.cpu(), classes, alpha_t)
    shared = (*shared, k, dtype, kdt, starts, alpha_src)
    parts = as_engine(engine).map_tasks(
        _representer_partial, shared, range(store.n_shards), desc="representer top-k"
    )
    hi_i, hi_v = _merge([(p[0], p[1]) for p in parts], k, True)
    lo_i, lo_v = _merge([(p[2], p[3]) for p in parts], k, False)
    return TopPoints(hi_i, hi_v, lo_i, lo_v)


def _alpha_fingerprint(explainer: Any, store: ShardedStore) -> str:
    h = hashlib.sha256(store.manifest["fingerprint"].encode())
    a = explainer.alpha_.detach().cpu().contiguous()
    h.update(a.numpy().tobytes())
    return h.hexdigest()


def write_alpha(explainer: Any, store: ShardedStore, folder: Any) -> ShardedStore:
    """Write the fitted ``alpha_`` (n, C) in the shard layout of ``store`` (the features it was
    fitted on), for :func:`top_points` at a size where ``alpha`` is not broadcast."""
    explainer.check_is_fitted()
    out = ShardedStore.create(
        folder,
        fingerprint=_alpha_fingerprint(explainer, store),
        n_rows=store.n_rows,
        shard_rows=store.shard_rows,
        meta={"kind": "alpha", "features": os.fspath(store.folder)},
    )
    for i in out.missing():
        a, b = out.range(i)
        out.put(i, {"alpha": explainer.alpha_[a:b].detach().cpu()})
    return out


def _nearest_partial(shared: tuple[Any, ...], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, name, queries, k, start = shared
    x = _shard(shared, index)[name].flatten(1).double()
    d2 = (
        (queries * queries).sum(1, keepdim=True) - 2.0 * queries @ x.T + (x * x).sum(1)[None]
    ).clamp_min(0.0)
    top = d2.topk(min(k, d2.shape[1]), dim=1, largest=False)
    return top.values, top.indices + start[index]


def nearest_points(
    store: ShardedStore,
    name: str,
    queries: torch.Tensor,
    k: int = 5,
    *,
    engine: str | Engine = "local",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` training rows of ``store[name]`` nearest each query (indices, squared
    distances), shard by shard with a global merge (similar training samples)."""
    _need(store, name)
    q = queries.flatten(1).double()
    starts = [store.range(i)[0] for i in range(store.n_shards)]
    shared = (store.folder, store.manifest, name, q, k, starts)
    parts = as_engine(engine).map_tasks(
        _nearest_partial, shared, range(store.n_shards), desc="nearest"
    )
    return _merge(parts, k, False)


def assign_points(
    store: ShardedStore, name: str, centres: torch.Tensor, *, engine: str | Engine = "local"
) -> torch.Tensor:
    """Nearest-centre cluster of every stored row (``(n,)`` int64), shard by shard."""
    _need(store, name)
    shared = (store.folder, store.manifest, name, centres.double())
    parts = as_engine(engine).map_tasks(_assign_partial, shared, range(store.n_shards))
    return torch.cat(parts)


def _assign_partial(shared: tuple[Any, ...], index: int) -> torch.Tensor:
    x = _shard(shared, index)[shared[2]].flatten(1).double()
    return nearest_centre(x, shared[3])[0]
