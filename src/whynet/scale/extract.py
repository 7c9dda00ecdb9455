"""Sharded extraction and sharded explanation: model work, one shard per call.

A worker object holds the model (or explainer) and the data; ``worker(index)`` computes shard
``index`` with the core pipeline (:func:`whynet.core.run_model`, the same walk the single-process
methods use) and writes it with :func:`~whynet.scale.store.write_shard`. The driver commits
records to the manifest. With ``shard_rows`` a multiple of ``batch_size`` every shard's batches
are exactly the batches of the single-process walk, so the stored numbers are bitwise the ones
``RepresenterPoints.fit`` or ``ClusterSurrogate.fit`` compute in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from whynet.clusters._acts import reduce_activation
from whynet.core import (
    Explanation,
    ModelInputs,
    OutputSpec,
    as_inputs,
    batch_len,
    data_fingerprint,
    is_mapping,
    model_fingerprint,
    parse_target,
    run_model,
    take,
)
from whynet.core.data import data_length
from whynet.representer import _features as feat
from whynet.scale.engine import Engine, as_engine
from whynet.scale.store import ShardedStore, StoreError, shard_range, write_shard


def take_rows(data: Any, labels: torch.Tensor | None, a: int, b: int) -> tuple[Any, Any]:
    """Rows ``[a, b)`` of a tensor or a mapping batch (``{input_ids, attention_mask}``, every
    tensor sliced alike; :func:`whynet.core.take`) and of its labels, or of a map-style
    dataset."""
    if isinstance(data, torch.Tensor) or is_mapping(data):
        x = take(as_inputs(data, "data"), slice(a, b))
        return x, None if labels is None else labels[a:b]
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return Subset(data, range(a, b)), None
    raise TypeError(
        "sharded work needs random access to the data: a tensor or a mapping of tensors (with "
        f"labels=) or a map-style Dataset, got {type(data).__name__} (pass loader.dataset for "
        "a DataLoader)"
    )


def check_shards(n: int | None, shard_rows: int, batch_size: int) -> int:
    if n is None:
        raise TypeError("sharded work needs data of known length")
    if shard_rows < 1 or shard_rows % batch_size:
        raise ValueError(
            f"shard_rows ({shard_rows}) must be a positive multiple of batch_size "
            f"({batch_size}): each shard's batches are then those of the one-process walk"
        )
    return n


def fingerprint(model: nn.Module, spec: dict[str, Any], data: Any, labels: Any, bs: int) -> str:
    """What a store was produced from: weights, what was extracted, the data and shard size."""
    what = json.dumps(spec, sort_keys=True)
    h = hashlib.sha256(model_fingerprint(model, extra=what).encode())
    h.update(data_fingerprint(data, labels, bs).encode())
    return h.hexdigest()


def _digest(value: Any) -> str:
    """sha256 of a value's content: tensors by bytes, modules by state, the rest by repr (a
    store of another target or another fit of the same explainer is then refused)."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, nn.Module):
            walk(v.state_dict())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(str(k).encode())
                walk(v[k])
        elif isinstance(v, list | tuple):
            for item in v:
                walk(item)
        else:
            h.update(repr(v).encode())

    walk(value)
    return h.hexdigest()


class ExtractWorker:
    """Computes one shard of head inputs (``head``) or reduced layer activations (``layers``).

    Tensors per shard: ``features`` (float32) for a head, ``acts.<layer>`` (float32, reduced
    as :func:`whynet.clusters._acts.reduce_activation` does) for layers, ``outputs`` (float64
    model outputs) and ``labels`` (int64, where the data has them).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        labels: torch.Tensor | None,
        folder: str,
        n_rows: int,
        shard_rows: int,
        batch_size: int,
        head: str | None,
        layers: Sequence[str],
        output: OutputSpec = None,
        pad_id: int | None = 0,
    ) -> None:
        self.model, self.data, self.labels = model, data, labels
        self.folder, self.n_rows, self.shard_rows = folder, n_rows, shard_rows
        self.batch_size, self.head, self.layers = batch_size, head, list(layers)
        self.output, self.pad_id = output, pad_id

    def compute(self, index: int) -> dict[str, torch.Tensor]:
        a, b = shard_range(index, self.n_rows, self.shard_rows)
        x, y = take_rows(self.data, self.labels, a, b)
        parts: dict[str, list[torch.Tensor]] = {}

        def add(name: str, t: torch.Tensor | None) -> None:
            if t is not None:
                parts.setdefault(name, []).append(t.detach().cpu())

        if self.head is not None:
            for f, out, yb in feat.iter_features(
                self.model, self.head, x, y, batch_size=self.batch_size, output=self.output
            ):
                add("features", f)
                add("outputs", out.double())
                add("labels", None if yb is None else yb.long())
        else:
            for batch in run_model(
                self.model,
                x,
                y,
                layers=self.layers,
                batch_size=self.batch_size,
                output=self.output,
            ):
                for name in self.layers:
                    act = reduce_activation(
                        batch.acts[name], batch.lengths[name], batch.inputs, name, self.pad_id
                    )
                    add(f"acts.{name}", act)
                add("outputs", batch.output.double())
                add("labels", None if batch.labels is None else batch.labels.long())
        return {k: torch.cat(v) for k, v in parts.items()}

    def __call__(self, index: int) -> dict[str, Any]:
        a, _ = shard_range(index, self.n_rows, self.shard_rows)
        return write_shard(self.folder, index, a, self.compute(index))


def extract(
    model: nn.Module,
    data: Any,
    labels: torch.Tensor | None = None,
    *,
    store: str | os.PathLike[str],
    head: str | None = None,
    layers: Sequence[str] = (),
    shard_rows: int = 65536,
    batch_size: int = 256,
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
    output: OutputSpec = None,
    pad_id: int | None = 0,
) -> ShardedStore:
    """Extract head inputs (``head=``) or layer activations (``layers=``) into a sharded store.

    ``data``: a tensor or a mapping of tensors (an HF ``{input_ids, attention_mask}`` batch,
    passed as ``model(**batch)``) with ``labels``, or a map-style Dataset. ``output``: the
    prediction among a multi-output model's outputs; ``pad_id``: padding id of plain token-id
    inputs (token layers are mean-pooled over real tokens, as ``ClusterSurrogate`` does).
    Resumable: an existing store of the same model, layers and data keeps its verified shards
    and only the missing ones are computed (``store.computed`` counts them).
    """
    if (head is None) == (not layers):
        raise ValueError("give head= (representer features) or layers= (activations), not both")
    if head is not None:
        feat.linear_head(model, head)
    eng = as_engine(engine, address, workers, progress)
    n = check_shards(data_length(data), shard_rows, batch_size)
    take_rows(data, labels, 0, 1)  # refuse data without random access before any work
    spec = {"head": head, "layers": list(layers), "shard_rows": shard_rows, "n": n}
    if output is not None or (layers and pad_id != 0):  # the stores of before keep their key
        spec.update(output=_digest(output), pad_id=pad_id)
    st = ShardedStore.create(
        store,
        fingerprint=fingerprint(model, spec, data, labels, batch_size),
        n_rows=n,
        shard_rows=shard_rows,
        meta={"kind": "features" if head else "activations", **spec},
    )
    kwargs = {
        "model": model,
        "data": data,
        "labels": labels,
        "folder": os.fspath(store),
        "n_rows": n,
        "shard_rows": shard_rows,
        "batch_size": batch_size,
        "head": head,
        "layers": list(layers),
        "output": output,
        "pad_id": pad_id,
    }
    eng.map_actors(ExtractWorker, kwargs, st.missing(), st.commit, desc="extract shards")
    st.check_complete()
    return st


class ExplainWorker:
    """Explains the inputs of one shard with any explainer (its ``explain``) and writes
    ``values``, ``target`` and the tensor extras (``extras.<name>``)."""

    def __init__(
        self,
        explainer: Any,
        data: Any,
        target: Any,
        folder: str,
        n_rows: int,
        shard_rows: int,
    ) -> None:
        self.explainer, self.data, self.target = explainer, data, target
        self.folder, self.n_rows, self.shard_rows = folder, n_rows, shard_rows

    def __call__(self, index: int) -> dict[str, Any]:
        a, b = shard_range(index, self.n_rows, self.shard_rows)
        x, _ = take_rows(self.data, None, a, b)
        t = self.target
        if isinstance(t, torch.Tensor):
            t = t[a:b]
        e = self.explainer.explain(x, target=t)
        tensors = {"values": e.values}
        if e.target is not None:
            tensors["target"] = e.target
        tensors.update({f"extras.{k}": v for k, v in e.extras.items()})
        record = write_shard(self.folder, index, a, tensors)
        # what the Explanation says besides its tensors (the same for every shard)
        record["explanation"] = {
            "method": e.method,
            "layer": e.layer,
            "params": e.params,
            "meta": e.meta,
        }
        return record


def explain(
    explainer: Any,
    inputs: ModelInputs,
    target: Any = None,
    *,
    store: str | os.PathLike[str],
    shard_rows: int = 4096,
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> ShardedStore:
    """Explain every input with ``explainer.explain``, results written per shard to ``store``.

    Any registered explainer (fitted ones must be fitted); ``inputs`` a tensor or a mapping of
    tensors (sliced together per shard). ``target`` follows the one target
    policy; a per-input tensor is sliced per shard. Per-input explanations are independent, so
    the shards hold bitwise the values of one ``explain`` call over all inputs (with
    ``shard_rows`` a multiple of the explainer's ``batch_size``).
    """
    eng = as_engine(engine, address, workers, progress)
    check = getattr(explainer, "check_is_fitted", None)
    if check is not None and getattr(explainer, "_fitted_state", None):
        check()
    inputs = as_inputs(inputs)
    n = check_shards(batch_len(inputs), shard_rows, int(getattr(explainer, "batch_size", 1)))
    parse_target(target, n)  # refuse a bad target before any work
    if isinstance(target, list | tuple):
        target = torch.tensor(list(target), dtype=torch.long)
    model = explainer.model
    spec = {
        "explain": explainer.method,
        "params": repr(explainer.params()),
        "target": _digest(target),
        "fitted": _digest(
            {k: getattr(explainer, k, None) for k in getattr(explainer, "_fitted_state", {})}
        ),
    }
    st = ShardedStore.create(
        store,
        fingerprint=fingerprint(model, spec, inputs, None, shard_rows),
        n_rows=n,
        shard_rows=shard_rows,
        meta={"kind": "explanations", "method": explainer.method},
    )
    kwargs = {
        "explainer": explainer,
        "data": inputs,
        "target": target,
        "folder": os.fspath(store),
        "n_rows": n,
        "shard_rows": shard_rows,
    }
    eng.map_actors(ExplainWorker, kwargs, st.missing(), st.commit, desc="explain shards")
    st.check_complete()
    return st


def explanation_from(store: ShardedStore) -> Explanation:
    """The one :class:`~whynet.core.Explanation` of a store written by :func:`explain`
    (gathered on this node: for results that fit in memory)."""
    schema = store.schema or {}
    if "values" not in schema:
        raise StoreError(f"store {store.folder} holds no explanations")
    head = store.manifest["shards"]["0"].get("explanation", {})
    extras = [k for k in schema if k.startswith("extras.")]
    return Explanation(
        values=store.gather("values"),
        target=store.gather("target") if "target" in schema else None,
        method=str(head.get("method", "")),
        layer=head.get("layer"),
        params=dict(head.get("params", {})),
        extras={k.removeprefix("extras."): store.gather(k) for k in extras},
        meta={**dict(head.get("meta", {})), "shards": store.n_shards},
    )
