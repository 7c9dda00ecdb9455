"""``ClusterSurrogate``: distil a network into clusters of its activations (Liu & Arik, 2020).

Each chosen layer l is embedded (IDEC autoencoder or PCA) and clustered into K clusters; each
cluster k carries the class distribution H_l[k, y] of the training points assigned to it (the
model's predictions or the true labels, Laplace-smoothed). The surrogate predicts

    p(y | x) = sum_l w_l q_l(x)^T H_l[:, y] / sum_l w_l

with q_l(x) the Student-t soft assignment of x's layer-l embedding (DEC eq. 1). The same
embeddings give similar training samples (weighted per-layer distances) and concepts (training
samples nearest each cluster centre).

One :class:`~whynet.clusters.layer.LayerClusterer` per layer holds that layer's embedding,
clusters and table; the surrogate walks the data (:func:`whynet.core.run_model`), combines the
layers with the mixture weights w_l and answers the similar-sample queries from one index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from whynet.clusters._acts import reduce_activation
from whynet.clusters.embedding import IDECSettings, build_embedder, embedder_config
from whynet.clusters.fitting import (
    Inits,
    check_logits,
    check_size,
    finish,
    fit_rows,
    layer_inits,
    split_rows,
)
from whynet.clusters.index import WeightedIndex
from whynet.clusters.layer import LayerClusterer, Moments, posterior_table, unpack_state
from whynet.clusters.mixture import check_weights, fit_mixture_weights
from whynet.clusters.queries import SurrogateQueries
from whynet.core import (
    ActivationStore,
    Constraint,
    Explainer,
    FittedMixin,
    Interval,
    Options,
    OutputSpec,
    State,
    Target,
    check_classes,
    constraint,
    model_device,
    resolve_layer,
    run_model,
)

__all__ = ["ClusterSurrogate", "fit_mixture_weights"]


def _embedders_config(module: nn.Module) -> dict[str, Any]:
    return {"embedders": [embedder_config(m) for m in module.children()]}


def _build_embedders(config: dict[str, Any]) -> nn.Module:
    return nn.ModuleList([build_embedder(c) for c in config["embedders"]])


def _int(low: int, desc: str | None = None) -> Constraint:
    return constraint(Interval(int, low, None), desc=desc)


def _number(low: float, closed: str = "left") -> Constraint:
    return constraint(Interval(float, low, None, closed))


class ClusterSurrogate(FittedMixin, Explainer, SurrogateQueries):
    """Activation-clustering surrogate of a classifier (Liu & Arik, 2020).

    Parameters
    ----------
    model : nn.Module
        The classifier to explain (outputs ``(B, n_classes)`` scores).
    layers : sequence of str
        Dotted names of the layers to cluster. Feature maps ``(B, C, H, W)`` get a conv
        autoencoder, flat ``(B, F)`` outputs a fully connected one; token sequences
        ``(B, T, H)`` are mean-pooled over valid (non-padding) tokens first.
    n_clusters : int
        Clusters per layer (K).
    algorithm : {"idec", "kmeans"}
        ``"idec"``: autoencoder pretraining, k-means init, IDEC refinement (the authors' method).
        ``"kmeans"``: fast path, PCA to ``embed_dim`` then k-means (faiss if installed).
    embed_dim : int
        Embedding dimension per layer (20 in the paper).
    layer_weights : "fit", sequence of float or None
        w_l of the surrogate. ``"fit"`` (default): learned during :meth:`fit` on a held-out
        part of the *training* data (``weight_holdout``): the non-negative weights summing to 1
        that maximise the mean log-likelihood of the model's class (the posterior targets)
        under the mixture, found by EM (see :func:`fit_mixture_weights`); the held-out points
        are left out of the clustering fit sample and of the tables used for this fit. A
        sequence fixes the weights; ``None`` = all ones (equal weights, as in the paper). The
        weights in use are ``layer_weights_`` after :meth:`fit`.
    posterior : {"model", "labels"}
        Build H_l from the model's predictions (a surrogate of the model) or from the labels.
    batch_size : int
        Chunk size for forwards and autoencoder mini-batches.
    seed : int
        Seeds autoencoder init, mini-batch order, subsampling and k-means.
    cache_dir : path, optional
        Where activations of large training sets spill as float32 files during ``fit``
        (deleted afterwards); default the system temporary folder.
    progress : bool, optional
        Progress bars (default: on a terminal).
    alpha : float
        Student-t degrees of freedom a of the soft assignment (1 in DEC, 100 in the authors'
        fork).
    gamma : float
        Weight of KL(P || Q) against reconstruction (0.1).
    pretrain_epochs, max_iter, update_interval, tol : int, int, int, float
        Autoencoder pretraining epochs; maximum IDEC iterations; target update period T (140);
        stop when fewer than ``tol`` (0.1%) of assignments change between updates.
    max_fit_points : int, optional
        Train the autoencoder / PCA and IDEC on at most this many random training points (all
        points still get embeddings, assignments and enter the posterior tables). None = all.
    smoothing : float
        Laplace smoothing of the posterior tables (added to every count).
    assignment : {"soft", "hard"}
        Use q_l(x) (paper) or its one-hot argmax in the surrogate.
    lr : float
        Adam learning rate of the autoencoder.
    n_init : int
        k-means restarts (20 in the paper).
    memory_limit : int
        Bytes of activations kept in memory during ``fit`` before spilling to disk.
    weight_holdout : float
        With ``layer_weights="fit"`` or ``restart_selection="likelihood"``: share of the
        training points (0 < share <= 0.5) held out to fit the weights / select the restart.
    restart_selection : {"inertia", "likelihood"}
        Which of the ``n_init`` k-means restarts to keep (the clusters of the k-means path; the
        initial centres of IDEC). ``"inertia"`` (default, standard k-means): the lowest k-means
        objective. ``"likelihood"``: run the restarts separately and keep, per layer, the one
        whose surrogate term q_l^T H_l gives held-out *training* points (``weight_holdout``)
        their targets with the highest mean log-likelihood; tables from the other training
        points (k-means path) or from the fitting sample (IDEC). Restarts differ a lot in
        fidelity (fashion-cnn's last block: 0.67-0.93 over 30 restarts), and the objective
        does not pick the faithful ones reliably.
    output : int, str or callable, optional
        The prediction among a multi-output model's outputs (``whynet.core.select_output``).
    pad_id : int or None
        Padding id of plain ``(B, T)`` id inputs (default 0); a mapping's attention mask takes
        precedence. Token layers are mean-pooled over the real tokens only.

    Attributes (after ``fit``)
    --------------------------
    n_classes_, n_train_ : int
    train_targets_ : (n_train,) int64, the targets H was counted from (fit's data order)
    layer_weights_ : (n_layers,) float64, the w_l in use; ``weight_fit_`` how they were fitted
    history_ : per layer, IDEC losses / assignment changes / restart likelihoods
    posteriors_, centres_, train_embeddings_, train_assignments_ : per-layer views
    (the fitted state is declared in ``_fitted_state`` and saved by
    :class:`whynet.core.FittedMixin`; per-layer state lives in one
    :class:`~whynet.clusters.layer.LayerClusterer` per layer, :meth:`clusterer`)
    """

    method: ClassVar[str] = "clusters"
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "n_clusters": _int(1, "a positive int"),
        "algorithm": constraint(Options(("idec", "kmeans"))),
        "embed_dim": _int(1),
        "posterior": constraint(Options(("model", "labels"))),
        "seed": constraint(int, error=TypeError, desc="an int"),
        "cache_dir": constraint(str, os.PathLike, None, error=TypeError, desc="a folder or None"),
        "progress": constraint(bool, None, error=TypeError),
        "alpha": _number(0, "neither"),
        "gamma": _number(0),
        "pretrain_epochs": _int(0),
        "max_iter": _int(0),
        "update_interval": _int(1),
        "tol": _number(0),
        "max_fit_points": constraint(Interval(int, 1, None), None),
        "smoothing": _number(0),
        "assignment": constraint(Options(("soft", "hard"))),
        "lr": _number(0, "neither"),
        "n_init": _int(1),
        "memory_limit": _int(0),
        "weight_holdout": constraint(Interval(float, 0, 0.5, "right"), desc="in (0, 0.5]"),
        "restart_selection": constraint(Options(("inertia", "likelihood"))),
        "pad_id": constraint(int, None, error=TypeError, desc="an int token id or None"),
    }
    _fitted_state: ClassVar[dict[str, State]] = {
        "n_classes_": State("json"),
        "n_train_": State("json"),
        "train_targets_": State(device=False),
        "layer_weights_": State(device=False),
        "weight_fit_": State("json"),
        "spilled_to_disk_": State("json"),
        # the per-layer clusterers' state, flattened (see whynet.clusters.layer.pack_state)
        "layer_tensors_": State("tensors", device=False),
        "embedders_": State(
            "module", config=_embedders_config, build=_build_embedders, cast=False
        ),  # float32, as fit embeds float32 activations
        "history_": State("json"),
    }
    n_classes_: int
    n_train_: int
    train_targets_: torch.Tensor
    layer_weights_: torch.Tensor
    weight_fit_: dict[str, Any]
    spilled_to_disk_: bool
    layer_tensors_: dict[str, torch.Tensor]
    embedders_: nn.ModuleList
    history_: dict[str, dict[str, list[float]]]
    _format = "whynet.clusters"
    _format_version = 2  # 1: the surrogate's own file layout before the core persistence

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        n_clusters: int = 15,
        algorithm: str = "idec",
        embed_dim: int = 20,
        layer_weights: Sequence[float] | str | None = "fit",
        posterior: str = "model",
        batch_size: int = 256,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        *,
        alpha: float = 1.0,
        gamma: float = 0.1,
        pretrain_epochs: int = 10,
        max_iter: int = 2000,
        update_interval: int = 140,
        tol: float = 0.001,
        max_fit_points: int | None = 20000,
        smoothing: float = 1.0,
        assignment: str = "soft",
        lr: float = 1e-3,
        n_init: int = 20,
        memory_limit: int = 1 << 30,
        weight_holdout: float = 0.1,
        restart_selection: str = "inertia",
        output: OutputSpec = None,
        pad_id: int | None = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, output=output)
        self.pad_id = pad_id
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise TypeError("layers must be a non-empty list of dotted layer names")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers has duplicates: {layers}")
        self.layers = layers
        self.n_clusters = n_clusters
        self.algorithm = algorithm
        self.embed_dim = embed_dim
        self.layer_weights = layer_weights
        self.posterior = posterior
        self.seed = seed
        self.cache_dir = cache_dir
        self.alpha = alpha
        self.gamma = gamma
        self.pretrain_epochs = pretrain_epochs
        self.max_iter = max_iter
        self.update_interval = update_interval
        self.tol = tol
        self.max_fit_points = max_fit_points
        self.smoothing = smoothing
        self.assignment = assignment
        self.lr = lr
        self.n_init = n_init
        self.memory_limit = memory_limit
        self.weight_holdout = weight_holdout
        self.restart_selection = restart_selection
        self._check_params()
        if isinstance(layer_weights, str):
            if layer_weights != "fit":
                raise ValueError(
                    f'layer_weights must be "fit", a sequence of floats or None, '
                    f"got {layer_weights!r}"
                )
        elif layer_weights is not None:
            # a list of floats, so that the setting can be saved (a tensor is not JSON)
            self.layer_weights = check_weights(layer_weights, len(layers)).tolist()
        if max_fit_points is not None and max_fit_points < n_clusters:
            raise ValueError(f"max_fit_points={max_fit_points} is below n_clusters={n_clusters}")
        # a str, so that the setting can be saved (a Path is not JSON)
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)

    def __repr__(self) -> str:
        return (
            f"ClusterSurrogate(layers={self.layers}, n_clusters={self.n_clusters}, "
            f"algorithm={self.algorithm!r})"
        )

    def _clusterer(self, li: int) -> LayerClusterer:
        """The (unfitted) clusterer of layer ``li`` with this surrogate's settings."""
        idec = IDECSettings(
            embed_dim=self.embed_dim,
            alpha=float(self.alpha),
            gamma=float(self.gamma),
            pretrain_epochs=self.pretrain_epochs,
            max_iter=self.max_iter,
            update_interval=self.update_interval,
            tol=float(self.tol),
            batch_size=self.batch_size,
            lr=float(self.lr),
            n_init=self.n_init,
        )
        return LayerClusterer(
            self.layers[li],
            self.n_clusters,
            self.algorithm,
            self.embed_dim,
            seed=self.seed + li,
            idec=idec,
            smoothing=float(self.smoothing),
            assignment=self.assignment,
            restart_selection=self.restart_selection,
            max_fit_points=self.max_fit_points,
            progress=self.progress,
        )

    # ------------------------------------------------------------------ fitting
    def fit(
        self, train_data: Any, labels: torch.Tensor | None = None, *, init: Inits = None
    ) -> ClusterSurrogate:
        """Cluster the activations of ``train_data`` at every layer and build the posteriors.

        Everything is built in locals and assigned at the end (a ``fit`` that raises leaves
        the surrogate unfitted, even one that was fitted before).

        Parameters
        ----------
        train_data : DataLoader, Dataset or torch.Tensor
            Training inputs (walked once with the model; any form :func:`iter_batches` takes).
        labels : torch.Tensor, optional
            Labels for tensor data; required (here or in the data) when ``posterior="labels"``.
        init : mapping or sequence of torch.Tensor, optional
            Initial centres ``(n_clusters, embedding dim)`` per layer (by name, or in layer
            order) instead of k-means restarts: Lloyd's iterations from them in float64 on the
            k-means path (what ``whynet.scale.fit_clusters`` runs shard by shard), IDEC's
            starting centres otherwise.
        """
        self._reset_fitted()
        for name in self.layers:
            resolve_layer(self.model, name)  # unknown names fail before any work
        inits = layer_inits(self, init)
        device = model_device(self.model)
        store = ActivationStore(self.memory_limit, self.cache_dir)
        moments = {name: Moments() for name in self.layers}
        targets: list[torch.Tensor] = []
        n_classes = 0
        try:
            for b in run_model(
                self.model,
                train_data,
                labels,
                layers=self.layers,
                batch_size=self.batch_size,
                need_labels=self.posterior == "labels",
                device=device,
                progress=self.progress,
                desc="clusters: activations",
                output=self.output,
            ):
                feats = {
                    name: reduce_activation(
                        b.acts[name], b.lengths[name], b.inputs, name, self.pad_id
                    )
                    for name in self.layers
                }
                n_classes = check_logits(b.output)
                t = b.output.argmax(1) if self.posterior == "model" else b.labels.long()  # type: ignore[union-attr]
                check_classes(t, n_classes, name="label")
                targets.append(t.cpu())
                for name, a in feats.items():
                    store.append(name, a)
                    moments[name].update(a)
            n = sum(len(t) for t in targets)
            check_size(self, n)
            arrays = store.arrays()
            target = torch.cat(targets)
            holdout, pool, sample = fit_rows(self, n)
            clusterers = [
                self._clusterer(li).fit(
                    arrays[name],
                    target,
                    n_classes=n_classes,
                    moments=moments[name],
                    sample=sample,
                    holdout=holdout,
                    pool=pool,
                    device=device,
                    init=inits[li],
                )
                for li, name in enumerate(self.layers)
            ]
            del arrays
            spilled = store.on_disk
        finally:
            store.close()
        return finish(self, clusterers, target, holdout, n_classes, spilled)

    def _split_holdout(
        self, n: int, gen: np.random.Generator
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        return split_rows(self, n, gen)  # :func:`whynet.clusters.fitting.split_rows`

    def _posterior(self, counts: torch.Tensor) -> torch.Tensor:
        """H[k, y] with this surrogate's smoothing (see ``layer.posterior_table``)."""
        return posterior_table(counts, float(self.smoothing))

    # ------------------------------------------------------------------ declared state
    def _set_fitted(self, **state: Any) -> None:
        """Assign the declared state (from ``fit`` or ``load``) and rebuild the per-layer
        clusterers and the similar-sample index from it, all or nothing."""
        clusterers = [self._clusterer(li) for li in range(len(self.layers))]
        try:
            unpack_state(clusterers, state, model_device(self.model))
        except KeyError as e:
            raise ValueError(f"the fitted state lacks {e} for layers {self.layers}") from None
        index = WeightedIndex([c.embeddings_ for c in clusterers])
        super()._set_fitted(**state)
        self._clusterers, self._index = clusterers, index

    def _reset_fitted(self) -> None:
        super()._reset_fitted()
        vars(self).pop("_clusterers", None)
        vars(self).pop("_index", None)

    def clusterer(self, layer: str) -> LayerClusterer:
        """The fitted :class:`~whynet.clusters.layer.LayerClusterer` of ``layer``."""
        self.check_is_fitted()
        for c in self._clusterers:
            if c.name == layer:
                return c
        raise ValueError(f"layer {layer!r} is not one of the fitted layers {self.layers}")

    # ------------------------------------------------------------------ the explain template
    def _n_outputs(self, x: torch.Tensor) -> int:
        return self.n_classes_  # known from fit: no forward needed to range-check a target

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, torch.Tensor | None]:
        """Surrogate probabilities as values; per-layer clusters and the 10 most similar
        training samples as extras; ``target`` = the surrogate's class unless given."""
        ((zs, _, _),) = list(self._walk(x, progress=False))  # one chunk = one batch
        values = self._combine(zs, self.layer_weights_).cpu()
        idx, dist = self._index.search(
            [z.cpu() for z in zs], self.layer_weights_, min(10, self.n_train_)
        )
        return {
            "values": values,
            "target": target.classes_for(values),
            "clusters": torch.stack([c.assign(z).cpu() for z, c in zip(zs, self._clusterers)], 1),
            "similar": idx,
            "similar_distances": dist,
        }

    def _meta(self) -> dict[str, Any]:
        return {"layers": self.layers, "layer_weights": self.layer_weights_.tolist()}
