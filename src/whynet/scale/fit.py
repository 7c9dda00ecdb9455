"""Distributed fits over a sharded store: representer points, k-means, class-wide influence.

- **Representer points** (Yeh et al. 2018, Eq. 2), two ways. *Gathered* (default): the
  features are gathered on the driver and solved by :meth:`RepresenterPoints.fit_features`
  (the one solver, unchanged), so alpha and the decomposition are bitwise those of
  ``RepresenterPoints.fit``; the fastest where the solver's float64 ``[F, 1]^T`` fits the
  node (each L-BFGS trial is two products with F; on Ray each would be a round of tasks).
  *Map/reduce* (``mapreduce=True``, :mod:`whynet.scale.mapreduce`): every objective and
  gradient is a sum over shards (``representer_objective``) fed to the one L-BFGS driver, so
  the driver holds no float64 copy of F; alpha equals the gathered fit to rounding.
- **k-means** (Lloyd 1982): full-batch Lloyd steps as sums over shards (per-shard assignment,
  per-cluster sums and counts in float64, summed in shard order) driven by the one Lloyd loop
  (:func:`whynet.clusters.lloyd.lloyd`), so with the same initial centres it equals the
  single-process Lloyd result; the class table ``H[k, y]`` of Liu & Arik
  (2020) is the sum of per-shard counts (:func:`whynet.clusters.layer.class_counts`).
- **class-wide influence** (Leino et al. 2018, Sec. 2.2): ``chi = mean_x E[dq/dz]`` is a sum
  over shards of ``explain_dataset`` (per-shard mean times its count) divided by the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from whynet.clusters.layer import class_counts, posterior_table, soft_or_hard
from whynet.clusters.lloyd import lloyd, lloyd_step, nearest_centre
from whynet.core import Explanation
from whynet.scale.engine import Engine, as_engine
from whynet.scale.extract import take_rows
from whynet.scale.store import ShardedStore, StoreError


def _shard(shared: tuple[Any, ...], index: int) -> dict[str, torch.Tensor]:
    folder, manifest = shared[0], shared[1]
    return ShardedStore(folder, manifest).read_shard(index)


def _need(store: ShardedStore, *names: str) -> None:
    store.check_complete()
    have = set(store.schema or {})
    missing = [n for n in names if n not in have]
    if missing:
        raise StoreError(f"store {store.folder} has no {missing} (it holds {sorted(have)})")


# ---------------------------------------------------------------- representer points
def fit_representer(
    explainer: Any,
    store: ShardedStore,
    *,
    mapreduce: bool = False,
    engine: str | Engine = "local",
) -> Any:
    """Fit ``explainer`` (a RepresenterPoints) on the features of ``store``: gathered and
    solved in memory (default), or with ``mapreduce`` by L-BFGS whose every objective and
    gradient is a sum over shards on ``engine``
    (:func:`whynet.scale.mapreduce.fit_representer_mapreduce`: no float64 copy of the
    features, the same alpha to rounding)."""
    if mapreduce:
        from whynet.scale.mapreduce import fit_representer_mapreduce

        return fit_representer_mapreduce(explainer, store, engine=engine)
    _need(store, "features", "outputs")
    features, outputs = store.gather("features"), store.gather("outputs")
    labels = store.gather("labels") if "labels" in (store.schema or {}) else None
    if explainer.targets == "labels" and labels is None:
        raise ValueError("targets='labels' but the store holds no labels; extract with labels")
    return explainer.fit_features(features, outputs=outputs, labels=labels)


# ---------------------------------------------------------------- k-means
def _lloyd_partial(shared: tuple[Any, ...], index: int) -> tuple[torch.Tensor, ...]:
    """A Lloyd step's sums and counts of one shard or, with ``tables``, its cluster sizes,
    squared distances and class counts at the final centres."""
    _, _, name, centres, tables, labels_name, n_classes = shared
    t = _shard(shared, index)
    x = t[name].flatten(1).double()
    if not tables:
        return lloyd_step(x, centres)
    assign, d2 = nearest_centre(x, centres)
    k = centres.shape[0]
    counts = torch.bincount(assign, minlength=k).double()
    table = torch.zeros(k, max(n_classes, 1), dtype=torch.float64)
    if labels_name is not None:
        table = class_counts(assign, t[labels_name], k, n_classes)
    return counts, d2.sum().reshape(1), table


@dataclass
class KMeansResult:
    """Centres, class table and fit summary of :func:`fit_kmeans`."""

    centres: torch.Tensor  # (k, d) float64
    counts: torch.Tensor  # (k, n_classes) float64 class counts per cluster (summed over shards)
    sizes: torch.Tensor  # (k,) points per cluster
    inertia: float  # sum of squared distances to the nearest centre
    n_iter: int
    converged: bool
    smoothing: float = 1.0

    @property
    def posterior(self) -> torch.Tensor:
        """H[k, y] (Laplace-smoothed class table, :func:`whynet.clusters.layer.posterior_table`)."""
        return posterior_table(self.counts, self.smoothing)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        return nearest_centre(z.flatten(1).double(), self.centres)[0]

    def proba(self, z: torch.Tensor, alpha: float = 1.0, hard: bool = False) -> torch.Tensor:
        """The surrogate term q(z)^T H (DEC eq. 1 soft assignment, or one-hot with ``hard``)."""
        return soft_or_hard(z.flatten(1).double(), self.centres, alpha, hard) @ self.posterior


def fit_kmeans(
    store: ShardedStore,
    name: str,
    init: torch.Tensor,
    *,
    labels: str | None = "labels",
    n_classes: int | None = None,
    max_iter: int = 300,
    smoothing: float = 1.0,
    engine: str | Engine = "local",
) -> KMeansResult:
    """Full-batch Lloyd k-means over the shards of ``store[name]`` from centres ``init``.

    Each step: every shard assigns its rows to the nearest centre and returns per-cluster sums
    and counts (float64); the new centre is the summed mean (an empty cluster keeps its centre).
    Stops when no centre moves (then the assignment is a fixed point). ``labels``: the stored
    tensor whose per-cluster counts give the class table (None: no table).
    """
    if (store.schema or {}).get(name) is None:
        _need(store, name)
    if labels is not None:
        _need(store, name, labels)
        if n_classes is None:
            n_classes = int(store.gather(labels).max()) + 1
    eng = as_engine(engine)
    d = int(torch.tensor((store.schema or {})[name]["shape"]).prod())
    if init.flatten(1).shape[1] != d or init.shape[0] < 1:
        raise ValueError(f"init has shape {tuple(init.shape)}; expected (k, {d})")

    def step(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # summed in shard order: independent of which worker ran what
        shared = (store.folder, store.manifest, name, c, False, None, 0)
        parts = eng.map_tasks(_lloyd_partial, shared, range(store.n_shards), desc="lloyd")
        sums, counts = parts[0][0].clone(), parts[0][1].clone()
        for p in parts[1:]:
            sums += p[0]
            counts += p[1]
        return sums, counts

    res = lloyd(step, init, max_iter)
    c, n_iter, converged = res.centres, res.n_iter, res.converged
    shared = (store.folder, store.manifest, name, c, True, labels, n_classes or 0)
    parts = eng.map_tasks(_lloyd_partial, shared, range(store.n_shards), desc="tables")
    sizes = torch.stack([p[0] for p in parts]).sum(0)
    table = parts[0][2].clone()
    for p in parts[1:]:
        table += p[2]
    inertia = float(sum(float(p[1][0]) for p in parts))
    return KMeansResult(c, table, sizes, inertia, n_iter, converged, smoothing)


# ---------------------------------------------------------------- class-wide influence
def _influence_partial(shared: tuple[Any, ...], rows: tuple[int, int]) -> Any:
    explainer, data, labels, cls, target = shared
    x, y = take_rows(data, labels, *rows)
    try:
        e = explainer.explain_dataset(x, y, cls=cls, target=target)
    except ValueError as err:
        if "has no examples" in str(err):
            return None  # no example of the class in this shard
        raise
    n = int(e.meta["n_examples"])
    return e, e.values.double() * n, n


def influence_dataset(
    explainer: Any,
    data: Any,
    labels: torch.Tensor | None = None,
    cls: Any = None,
    target: Any = None,
    *,
    shard_rows: int = 65536,
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
) -> Explanation:
    """``explainer.explain_dataset`` (an InternalInfluence) as a sum over shards of ``data``."""
    from whynet.core.data import data_length

    eng = as_engine(engine, address, workers)
    n = data_length(data)
    if n is None or n < 1:
        raise ValueError("the data has no examples")
    take_rows(data, labels, 0, 1)
    ranges = [(a, min(a + shard_rows, n)) for a in range(0, n, shard_rows)]
    parts = [
        p
        for p in eng.map_tasks(
            _influence_partial, (explainer, data, labels, cls, target), ranges, desc="influence"
        )
        if p is not None
    ]
    if not parts:
        which = "" if cls is None else f" of class {cls}"
        raise ValueError(f"the data has no examples{which}")
    total, count = parts[0][1].clone(), parts[0][2]
    for p in parts[1:]:
        total += p[1]
        count += p[2]
    first: Explanation = parts[0][0]
    return Explanation(
        values=(total / count).to(first.values.dtype),
        method=first.method,
        layer=first.layer,
        params=first.params,
        meta={**first.meta, "n_examples": count, "shards": len(ranges)},
    )
