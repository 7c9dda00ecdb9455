"""``whynet.scale``: fit and explain over millions of training points, locally or on Ray.

One switch: every entry point takes ``engine="local"`` (this process) or ``engine="ray"`` (a
Ray cluster; ``address=None`` starts or joins a local one) and gives the same answers. Work
goes through a sharded store on disk (:class:`ShardedStore`: safetensors shards, a manifest with
checksums, resumable). Install the Ray engine with ``pip install 'whynet[scale]'``.

- :func:`fit` -- a RepresenterPoints fit (sharded extraction, then the one solver) or a
  ClusterSurrogate fit (sharded extraction, then :func:`fit_clusters`);
- :func:`extract` -- head inputs or layer activations into a store;
- :func:`explain` -- any explainer over a dataset, results per shard;
- :func:`top_points` -- representer top-k over the training shards (global merge), with
  ``alpha`` per shard (:func:`write_alpha`) where it should not be broadcast;
- :func:`fit_kmeans`, :func:`nearest_points`, :func:`assign_points` -- sharded k-means,
  class tables and queries over stored activations;
- :func:`influence_dataset` -- class-wide influence as a sum over shards.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from whynet.core import ModelInputs
from whynet.scale.clusters import fit_clusters
from whynet.scale.engine import INSTALL, Engine, as_engine, require_ray
from whynet.scale.extract import explain, explanation_from, extract
from whynet.scale.fit import (
    KMeansResult,
    fit_kmeans,
    fit_representer,
    influence_dataset,
)
from whynet.scale.mapreduce import fit_representer_mapreduce, representer_objective
from whynet.scale.queries import assign_points, nearest_points, top_points, write_alpha
from whynet.scale.store import ShardedStore, StoreError, write_shard

__all__ = [
    "INSTALL",
    "Engine",
    "KMeansResult",
    "ShardedStore",
    "StoreError",
    "as_engine",
    "assign_points",
    "explain",
    "explain_all",
    "explanation_from",
    "extract",
    "fit",
    "fit_clusters",
    "fit_kmeans",
    "fit_representer_mapreduce",
    "fit_representer",
    "influence_dataset",
    "nearest_points",
    "representer_objective",
    "require_ray",
    "top_points",
    "write_alpha",
    "write_shard",
]


def fit(
    explainer: Any,
    data: Any,
    labels: torch.Tensor | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
    shard_rows: int | None = None,
    **fit_params: Any,
) -> Any:
    """The one switch for fitting: ``explainer.fit(data, labels)`` locally or through a store.

    ``engine="local"`` without ``store``: the explainer's own ``fit``. Otherwise what the fit
    needs is extracted shard by shard into ``store`` (resumed if it exists, refused if it
    belongs to another model, head or layer) on ``engine``, then fitted from the store:

    - a RepresenterPoints: the head inputs, solved by the explainer's own solver (the fitted
      state equals ``explainer.fit(data, labels)`` bitwise), or with ``mapreduce=True`` by
      L-BFGS summed over shards (:func:`fit_representer`; alpha equal to rounding);
    - a ClusterSurrogate with ``algorithm="kmeans"``: the layers' activations, fitted shard by
      shard by :func:`fit_clusters` (``fit_params``: ``init=`` initial centres per layer; the
      surrogate then equals ``explainer.fit(data, labels, init=init)`` to 1e-10).

    ``shard_rows`` defaults to 256 batches; ``fit_params`` go to the local ``fit``.
    """
    from whynet.clusters import ClusterSurrogate
    from whynet.representer import RepresenterPoints

    if store is None and engine == "local":
        return explainer.fit(data, labels, **fit_params)
    if not isinstance(explainer, RepresenterPoints | ClusterSurrogate):
        raise TypeError(
            f"a sharded fit (store= or engine='ray') fits RepresenterPoints or ClusterSurrogate; "
            f"got {type(explainer).__name__} (influence_dataset for class-wide influence)"
        )
    if store is None:
        raise ValueError("engine='ray' needs store= (a folder every worker can reach)")
    clusters = isinstance(explainer, ClusterSurrogate)
    head, layers = (None, explainer.layers) if clusters else (explainer.head, [])  # type: ignore[union-attr]
    if set(fit_params) - ({"init"} if clusters else {"mapreduce"}):
        raise TypeError(f"this sharded fit takes no fit parameters {sorted(fit_params)}")
    eng = as_engine(engine, address, workers, explainer.progress)
    st = extract(
        explainer.model,
        data,
        labels,
        store=store,
        head=head,
        layers=layers,
        shard_rows=shard_rows or 256 * explainer.batch_size,
        batch_size=explainer.batch_size,
        engine=eng,
        output=explainer.output,
        pad_id=getattr(explainer, "pad_id", 0),
    )
    if isinstance(explainer, ClusterSurrogate):
        return fit_clusters(explainer, st, engine=eng, **fit_params)
    return fit_representer(explainer, st, engine=eng, **fit_params)


def explain_all(
    explainer: Any,
    inputs: ModelInputs,
    target: Any = None,
    *,
    store: str | os.PathLike[str] | None = None,
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
    shard_rows: int | None = None,
) -> Any:
    """The one switch for explaining: ``explainer.explain(inputs, target)`` locally, or per
    shard through ``store`` on ``engine`` and gathered into one Explanation (same values)."""
    if store is None and engine == "local":
        return explainer.explain(inputs, target=target)
    if store is None:
        raise ValueError("engine='ray' needs store= (a folder every worker can reach)")
    st = explain(
        explainer,
        inputs,
        target,
        store=store,
        shard_rows=shard_rows or 16 * int(getattr(explainer, "batch_size", 256)),
        engine=as_engine(engine, address, workers),
    )
    return explanation_from(st)
