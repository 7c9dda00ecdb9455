"""A fitted ``ClusterSurrogate`` (Liu & Arik 2020) from a store of layer activations, shard by
shard: the same surrogate as ``ClusterSurrogate.fit`` on the same data.

The surrogate's fit (k-means path: standardise, PCA to ``embed_dim``, k-means, class tables)
is split into its additive parts, each a round of per-shard tasks summed in shard order:

1. moments: per-batch sums of every layer's activations and the targets (the model's class or
   the label), in the batches of the one-process walk (:class:`~whynet.clusters.layer.Moments`);
2. the fitting sample (:func:`whynet.clusters.fitting.fit_rows`, the same draws) gathered and
   the PCA fitted on it on the driver (at most ``max_fit_points`` rows);
3. embeddings: every shard standardised and embedded in the one-process products
   (:func:`~whynet.clusters.layer.encode_rows`) and written to an embedding store;
4. k-means: from given initial centres, Lloyd steps as sums of per-shard cluster sums and counts
   (:func:`whynet.clusters.lloyd.lloyd_step`) over the fitting rows -- the one Lloyd driver of
   the one-process fit, so the centres equal it to float64 rounding of the sums; without
   ``init``, the k-means restarts on the gathered sample (as in one process);
5. tables: per shard the hard assignment and class counts ``H[k, y]``, summed.

The embeddings of every training point end on the driver: they are part of the fitted
surrogate (its similar-sample index), ``(n, embed_dim)`` float32.
"""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

import numpy as np
import torch

from whynet.clusters import ClusterSurrogate, PCAEmbed
from whynet.clusters.embedding import encode_rows
from whynet.clusters.fitting import Inits, check_size, finish, fit_rows, layer_inits
from whynet.clusters.layer import Moments, class_counts, hard_assign
from whynet.clusters.lloyd import lloyd_step
from whynet.core import check_classes
from whynet.scale.engine import Engine, as_engine
from whynet.scale.fit import _need, _shard
from whynet.scale.store import ShardedStore, write_shard


def _targets_and_moments(shared: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    _, _, names, batch_size, posterior = shared
    t = _shard(shared, index)
    target = t["outputs"].argmax(1) if posterior == "model" else t["labels"].long()
    sums = {
        name: [
            Moments.batch_sums(t[f"acts.{name}"][i : i + batch_size])
            for i in range(0, len(target), batch_size)
        ]
        for name in names
    }
    return target, sums


def _rows(shared: tuple[Any, ...], index: int) -> torch.Tensor:
    t = _shard(shared, index)[shared[2]]
    return t[torch.from_numpy(shared[3][index])]


def _embed(shared: tuple[Any, ...], item: tuple[int, int, Any, torch.Tensor]) -> dict[str, Any]:
    _, _, name, mean, std, embedder, folder = shared
    index, start, fit, target = item
    acts = _shard(shared, index)[name]
    z = encode_rows(
        embedder,
        lambda rows: acts[rows.start - start : rows.stop - start].sub(mean).div(std),
        start,
        start + len(acts),
    )
    return write_shard(folder, index, start, {"z": z, "fit": torch.from_numpy(fit), "t": target})


def _lloyd(shared: tuple[Any, ...], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = _shard(shared, index)
    return lloyd_step(t["z"][t["fit"]], shared[2])


def _tables(shared: tuple[Any, ...], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, centres, k, n_classes = shared
    t = _shard(shared, index)
    assign = hard_assign(t["z"], centres)
    return assign, class_counts(assign, t["t"], k, n_classes)


def _summed(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Partials summed in shard order (the same sums whichever worker ran which shard)."""
    total = [p.clone() for p in parts[0]]
    for p in parts[1:]:
        for acc, v in zip(total, p):
            acc += v
    return tuple(total)


def fit_clusters(
    surrogate: ClusterSurrogate,
    store: ShardedStore,
    *,
    init: Inits = None,
    engine: str | Engine = "local",
) -> ClusterSurrogate:
    """Fit ``surrogate`` (``algorithm="kmeans"``) on the activations of ``store``.

    ``store``: written by :func:`whynet.scale.extract` with ``layers=surrogate.layers`` (and
    the surrogate's ``batch_size``, ``output``, ``pad_id``), with labels where
    ``posterior="labels"``. ``init``: initial centres per layer (as ``ClusterSurrogate.fit``
    takes them): the k-means are then Lloyd iterations summed over shards and the surrogate
    equals ``surrogate.fit(data, labels, init=init)`` to float64 rounding (bitwise embeddings
    where ``shard_rows`` is a multiple of 1024). Without ``init`` the restarts run on the
    gathered fitting sample, as in one process. The embeddings are written next to the
    activations (``<store>/embed-<digest>/``) and removed after the fit.
    """
    s = surrogate
    if s.algorithm != "kmeans":
        raise ValueError(
            f"a sharded clusters fit runs the k-means path (algorithm='kmeans'), got "
            f"{s.algorithm!r}: IDEC trains an autoencoder over all points in one process"
        )
    names = [f"acts.{n}" for n in s.layers]
    _need(store, *names, "outputs", *(["labels"] if s.posterior == "labels" else []))
    if store.shard_rows % s.batch_size:
        raise ValueError(
            f"store {store.folder} has shards of {store.shard_rows} rows, not a multiple of the "
            f"surrogate's batch_size {s.batch_size} (extract with batch_size={s.batch_size})"
        )
    inits = layer_inits(s, init)
    eng = as_engine(engine)
    s._reset_fitted()
    n, shards = store.n_rows, range(store.n_shards)
    check_size(s, n)
    n_classes = int((store.schema or {})["outputs"]["shape"][0])
    shared: tuple[Any, ...] = (store.folder, store.manifest, s.layers, s.batch_size, s.posterior)
    parts = eng.map_tasks(_targets_and_moments, shared, shards, desc="clusters: moments")
    target = torch.cat([p[0] for p in parts])
    check_classes(target, n_classes, name="label")
    holdout, pool, sample = fit_rows(s, n)
    rows = np.arange(n) if sample is None else sample
    fit_mask = np.zeros(n, dtype=bool)
    fit_mask[rows] = True
    ranges = [store.range(i) for i in shards]
    work = store.folder / f"embed-{_digest(store, s)}"
    clusterers = []
    for li, layer in enumerate(s.layers):
        moments = Moments()
        for p in parts:
            for batch in p[1][layer]:
                moments.add(*batch)
        shape = (store.schema or {})[names[li]]["shape"]
        mean, std = moments.standardiser(shape, "cpu")
        c = s._clusterer(li)
        local = [np.flatnonzero(fit_mask[a:b]) for a, b in ranges]
        got = eng.map_tasks(_rows, (store.folder, store.manifest, names[li], local), shards)
        x_fit = torch.cat(got).sub_(mean).div_(std)
        embedder = PCAEmbed.fit(x_fit, s.embed_dim, seed=c.seed).eval()
        del x_fit, got
        emb_store = _embeddings(
            store, names[li], mean, std, embedder, work / str(li), eng, fit_mask, target
        )
        emb = emb_store.gather("z")
        e_shared = (emb_store.folder, emb_store.manifest)

        def step(centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _summed(eng.map_tasks(_lloyd, (*e_shared, centres), shards, desc="lloyd"))  # type: ignore[return-value]  # noqa: B023

        centres, history = c.kmeans_centres(
            emb, target, n_classes, rows, holdout, pool, inits[li], step=step
        )
        tables = eng.map_tasks(_tables, (*e_shared, centres, s.n_clusters, n_classes), shards)
        assign = torch.cat([p[0] for p in tables])
        counts = _summed([(p[1],) for p in tables])[0]
        clusterers.append(c.set_fit(embedder, mean, std, centres, counts, emb, assign, history))
    shutil.rmtree(work, ignore_errors=True)
    return finish(s, clusterers, target, holdout, n_classes, spilled=False)


def _digest(store: ShardedStore, s: ClusterSurrogate) -> str:
    h = hashlib.sha256(store.manifest["fingerprint"].encode())
    h.update(repr(sorted(s.get_params().items(), key=str)).encode())
    return h.hexdigest()[:16]


def _embeddings(
    store: ShardedStore,
    name: str,
    mean: torch.Tensor,
    std: torch.Tensor,
    embedder: PCAEmbed,
    folder: Any,
    eng: Engine,
    fit_mask: np.ndarray,
    target: torch.Tensor,
) -> ShardedStore:
    """Every shard of ``store[name]`` standardised and embedded into a store of ``z`` (the
    embeddings), ``fit`` (in the fitting sample) and ``t`` (the targets)."""
    h = hashlib.sha256(store.manifest["fingerprint"].encode())
    for v in (mean, std, embedder.mean, embedder.components):
        h.update(v.numpy().tobytes())
    out = ShardedStore.create(
        folder, fingerprint=h.hexdigest(), n_rows=store.n_rows, shard_rows=store.shard_rows
    )
    items = [(i, a, fit_mask[a:b], target[a:b]) for i in out.missing() for a, b in [store.range(i)]]
    shared = (store.folder, store.manifest, name, mean, std, embedder, str(folder))
    for record in eng.map_tasks(_embed, shared, items, desc="clusters: embed"):
        out.commit(record)
    out.check_complete()
    return out
