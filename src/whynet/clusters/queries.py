"""The surrogate's read side: predictions, embeddings, reports, similar samples and concepts
(Liu & Arik 2020), over the fitted per-layer clusterers.

:class:`SurrogateQueries` is a base of :class:`~whynet.clusters.ClusterSurrogate`; it reads the
declared fitted state and the clusterers the surrogate builds from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from whynet.clusters._acts import reduce_activation
from whynet.clusters.index import WeightedIndex
from whynet.clusters.layer import LayerClusterer, class_counts
from whynet.clusters.mixture import check_weights
from whynet.core import run_model
from whynet.core.data import data_length


class SurrogateQueries:
    """Predictions and queries of a fitted clustering surrogate (see the module doc)."""

    # what the surrogate provides (settings, declared state, derived views)
    model: nn.Module
    layers: list[str]
    n_clusters: int
    assignment: str
    batch_size: int
    progress: bool | None
    output: Any
    pad_id: int | None
    n_classes_: int
    n_train_: int
    layer_weights_: torch.Tensor
    _clusterers: list[LayerClusterer]
    _index: WeightedIndex

    if TYPE_CHECKING:

        def check_is_fitted(self) -> None: ...

        def clusterer(self, layer: str) -> LayerClusterer: ...

    # ------------------------------------------------------------------ read-only views
    @property
    def posteriors_(self) -> dict[str, torch.Tensor]:
        """H_l per layer, ``(n_clusters, n_classes)`` float64, rows summing to 1."""
        self.check_is_fitted()
        return {c.name: c.posterior_ for c in self._clusterers}

    @property
    def centres_(self) -> dict[str, torch.Tensor]:
        """Cluster centres in each layer's embedding space, ``(n_clusters, embed_dim)``."""
        self.check_is_fitted()
        return {c.name: c.centres_ for c in self._clusterers}

    @property
    def train_embeddings_(self) -> dict[str, torch.Tensor]:
        """Embeddings of the training points per layer, ``(n_train, embed_dim)`` float32."""
        self.check_is_fitted()
        return {c.name: c.embeddings_ for c in self._clusterers}

    @property
    def train_assignments_(self) -> dict[str, torch.Tensor]:
        """Hard cluster of each training point per layer, ``(n_train,)`` int64."""
        self.check_is_fitted()
        return {c.name: c.assign_ for c in self._clusterers}

    # ------------------------------------------------------------------ inference
    def _q(self, c: LayerClusterer, z: torch.Tensor) -> torch.Tensor:
        """q_l(z) under this surrogate's ``assignment`` (soft, or one-hot)."""
        return c.q(z, hard=self.assignment == "hard")

    def _walk(
        self,
        data: Any,
        labels: torch.Tensor | None = None,
        need_labels: bool = False,
        progress: bool | None = None,
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
        """Per batch: per-layer embeddings, the model's logits and the labels (if any)."""
        self.check_is_fitted()
        if isinstance(data, torch.Tensor) and data.dim() == 0:
            raise ValueError("inputs must be a batch (first dimension = inputs)")
        for b in run_model(
            self.model,
            data,
            labels,
            layers=self.layers,
            batch_size=self.batch_size,
            need_labels=need_labels,
            progress=self.progress if progress is None else progress,
            desc="clusters",
            output=self.output,
        ):
            zs = [
                c.transform(
                    reduce_activation(
                        b.acts[c.name], b.lengths[c.name], b.inputs, c.name, self.pad_id
                    )
                )
                for c in self._clusterers
            ]
            yield zs, b.output, b.labels

    def _combine(self, zs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """p(y|x) = sum_l w_l q_l(x)^T H_l / sum_l w_l (Liu & Arik; normalised by the weight
        sum, not the number of layers, so that rows sum to 1 for any weights)."""
        p = torch.zeros(zs[0].shape[0], self.n_classes_, dtype=torch.float64, device=zs[0].device)
        for w, z, c in zip(weights.tolist(), zs, self._clusterers):
            if w:
                p += w * (self._q(c, z) @ c.posterior_.to(z.device))
        return p / float(weights.sum())

    def _weights(self, layer_weights: Sequence[float] | None) -> torch.Tensor:
        self.check_is_fitted()
        if layer_weights is None:
            return self.layer_weights_
        return check_weights(layer_weights, len(self.layers))

    def predict_proba(self, x: Any, layer_weights: Sequence[float] | None = None) -> torch.Tensor:
        """Surrogate class probabilities ``(B, n_classes)`` float64 (rows sum to 1).

        ``x`` is a tensor of inputs (or any data form); ``layer_weights`` overrides w_l.
        """
        w = self._weights(layer_weights)
        return torch.cat([self._combine(zs, w).cpu() for zs, _, _ in self._walk(x)])

    def predict(self, x: Any, layer_weights: Sequence[float] | None = None) -> torch.Tensor:
        """Surrogate class ``(B,)``: argmax of :meth:`predict_proba`."""
        return self.predict_proba(x, layer_weights).argmax(1)

    def embed(self, x: Any) -> dict[str, torch.Tensor]:
        """Per-layer embeddings of ``x`` (``(B, embed_dim)`` each)."""
        parts = [zs for zs, _, _ in self._walk(x)]
        return {n: torch.cat([p[i] for p in parts]).cpu() for i, n in enumerate(self.layers)}

    def assign(self, x: Any) -> dict[str, torch.Tensor]:
        """Per-layer hard cluster of each input (``(B,)`` int64)."""
        return {n: self.clusterer(n).assign(z) for n, z in self.embed(x).items()}

    def fidelity(self, data: Any, labels: torch.Tensor | None = None) -> float:
        """Share of inputs where the surrogate's class equals the model's argmax."""
        if data_length(data) == 0:
            raise ValueError("fidelity needs non-empty data (got 0 inputs)")
        return self.layer_report(data, labels, with_labels=False)["combined"]["fidelity"]

    def accuracy(self, data: Any, labels: torch.Tensor | None = None) -> float:
        """Share of inputs where the surrogate's class equals the label."""
        return self.layer_report(data, labels, with_labels=True)["combined"]["accuracy"]

    def layer_report(
        self, data: Any, labels: torch.Tensor | None = None, *, with_labels: bool | None = None
    ) -> dict[str, dict[str, float]]:
        """Per layer and combined: fidelity, accuracy (when labels exist) and purity.

        ``purity`` = share of the inputs whose model class is their cluster's majority model
        class on ``data``; ``train_purity`` the same on the training targets (from the counts).
        Per-layer fidelity/accuracy use that layer alone (q_l^T H_l).
        """
        self.check_is_fitted()
        n_layers = len(self.layers)
        agree = torch.zeros(n_layers + 1, dtype=torch.float64)
        correct = torch.zeros(n_layers + 1, dtype=torch.float64)
        joint = torch.zeros(n_layers, self.n_clusters, self.n_classes_, dtype=torch.float64)
        total, have_labels = 0, True
        for zs, logits, y in self._walk(data, labels, need_labels=bool(with_labels)):
            pred = logits.argmax(1).cpu()
            outs = [
                (self._q(c, z) @ c.posterior_.to(z.device)).cpu()
                for z, c in zip(zs, self._clusterers)
            ]
            outs.append(self._combine(zs, self.layer_weights_).cpu())
            for i, p in enumerate(outs):
                agree[i] += float((p.argmax(1) == pred).sum())
                if y is not None:
                    correct[i] += float((p.argmax(1) == y.cpu()).sum())
            for i, (z, c) in enumerate(zip(zs, self._clusterers)):
                joint[i] += class_counts(c.assign(z), pred, self.n_clusters, self.n_classes_)
            have_labels &= y is not None
            total += len(pred)
        report: dict[str, dict[str, float]] = {}
        for i, name in enumerate([*self.layers, "combined"]):
            row = {"fidelity": float(agree[i] / total)}
            if have_labels:
                row["accuracy"] = float(correct[i] / total)
            if i < n_layers:
                row["purity"] = float(joint[i].max(1).values.sum() / total)
                counts = self._clusterers[i].counts_
                row["train_purity"] = float(counts.max(1).values.sum() / counts.sum())
                row["clusters_used"] = int((counts.sum(1) > 0).sum())
            report[name] = row
        report["combined"]["n"] = total
        return report

    def similar(
        self, x: Any, k: int = 10, layer_weights: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k training samples nearest each input (Liu & Arik's similar-sample query).

        Distance: sqrt(sum_l w_l ||z_l(x) - z_l(t)||^2) over the per-layer embeddings, w
        default this surrogate's ``layer_weights``; e.g. [2, 1, 0, 0] emphasises low-level
        layers, [0, 0, 1, 2] high-level ones.

        Returns
        -------
        indices : torch.Tensor
            ``(B, k)`` int64 indices into the training data (in the order ``fit`` walked it).
        distances : torch.Tensor
            ``(B, k)`` float64, ascending.
        """
        self.check_is_fitted()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > self.n_train_:
            raise ValueError(
                f"k={k} exceeds the {self.n_train_} training points (pass k <= {self.n_train_})"
            )
        w = self._weights(layer_weights)
        emb = self.embed(x)
        return self._index.search([emb[n] for n in self.layers], w, k)

    def concepts(self, layer: str, k: int = 9) -> torch.Tensor:
        """Indices ``(n_clusters, k)`` of the training samples nearest each cluster centre of
        ``layer`` in its embedding space (the cluster's "concept"), nearest first."""
        return self.clusterer(layer).concepts(k)
