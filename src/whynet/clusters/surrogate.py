"""``ClusterSurrogate``: distil a network into clusters of its activations (Liu & Arik, 2020).

Each chosen layer l is embedded (IDEC autoencoder or PCA) and clustered into K clusters; each
cluster k carries the class distribution H_l[k, y] of the training points assigned to it (the
model's predictions or the true labels, Laplace-smoothed). The surrogate predicts

    p(y | x) = sum_l w_l q_l(x)^T H_l[:, y] / sum_l w_l

with q_l(x) the Student-t soft assignment of x's layer-l embedding (DEC eq. 1). The same
embeddings give similar training samples (weighted per-layer distances) and concepts (training
samples nearest each cluster centre).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from whynet.clusters._acts import ActivationStore, stream_activations
from whynet.clusters.embedding import (
    ConvAE,
    DenseAE,
    IDECSettings,
    PCAEmbed,
    build_autoencoder,
    encode_all,
    fit_idec,
    kmeans,
    soft_assign,
)
from whynet.clusters.index import WeightedIndex
from whynet.core import (
    Explainer,
    Explanation,
    FittedMixin,
    check_classes,
    load_tensors,
    model_device,
    resolve_layer,
    save_tensors,
)
from whynet.core.explainer import resolve_targets

FORMAT = "whynet.clusters"
FORMAT_VERSION = 1
_METHODS = ("idec", "kmeans")
_POSTERIORS = ("model", "labels")
_ASSIGNMENTS = ("soft", "hard")
_SELECTIONS = ("inertia", "likelihood")


def _check_weights(weights: Any, n: int, name: str = "layer_weights") -> torch.Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != n:
        raise ValueError(f"{name} has {w.numel()} entries for {n} layers")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {w.tolist()}")
    if float(w.sum()) <= 0:
        raise ValueError(f"{name} must not all be zero")
    return w


class ClusterSurrogate(FittedMixin, Explainer):
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
    method : {"idec", "kmeans"}
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
    """

    method: ClassVar[str] = "clusters"  # registry name; the instance attribute is the algorithm

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        n_clusters: int = 15,
        method: str = "idec",
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
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress)
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise TypeError("layers must be a non-empty list of dotted layer names")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers has duplicates: {layers}")
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive int, got {n_clusters!r}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if posterior not in _POSTERIORS:
            raise ValueError(f"posterior must be one of {_POSTERIORS}, got {posterior!r}")
        if assignment not in _ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {_ASSIGNMENTS}, got {assignment!r}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if alpha <= 0 or smoothing < 0:
            raise ValueError("alpha must be > 0 and smoothing >= 0")
        if max_fit_points is not None and max_fit_points < n_clusters:
            raise ValueError(f"max_fit_points={max_fit_points} is below n_clusters={n_clusters}")
        self.layers = layers
        self.n_clusters = n_clusters
        self.method = method  # type: ignore[misc]
        self.embed_dim = int(embed_dim)
        if isinstance(layer_weights, str):
            if layer_weights != "fit":
                raise ValueError(
                    f'layer_weights must be "fit", a sequence of floats or None, '
                    f"got {layer_weights!r}"
                )
            self.layer_weights: torch.Tensor | str = "fit"
        else:
            self.layer_weights = _check_weights(layer_weights, len(layers))
        if not 0 < weight_holdout <= 0.5:
            raise ValueError(f"weight_holdout must be in (0, 0.5], got {weight_holdout}")
        self.weight_holdout = float(weight_holdout)
        if restart_selection not in _SELECTIONS:
            raise ValueError(
                f"restart_selection must be one of {_SELECTIONS}, got {restart_selection!r}"
            )
        self.restart_selection = restart_selection
        self.posterior = posterior
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self.idec = IDECSettings(
            embed_dim=int(embed_dim),
            alpha=float(alpha),
            gamma=float(gamma),
            pretrain_epochs=int(pretrain_epochs),
            max_iter=int(max_iter),
            update_interval=int(update_interval),
            tol=float(tol),
            batch_size=batch_size,
            lr=float(lr),
            n_init=int(n_init),
        )
        self.max_fit_points = max_fit_points
        self.smoothing = float(smoothing)
        self.assignment = assignment
        self.memory_limit = int(memory_limit)

    def __repr__(self) -> str:
        return (
            f"ClusterSurrogate(layers={self.layers}, n_clusters={self.n_clusters}, "
            f"method={self.method!r})"
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, train_data: Any, labels: torch.Tensor | None = None) -> ClusterSurrogate:
        """Cluster the activations of ``train_data`` at every layer and build the posteriors.

        Parameters
        ----------
        train_data : DataLoader, Dataset or torch.Tensor
            Training inputs (walked once with the model; any form :func:`iter_batches` takes).
        labels : torch.Tensor, optional
            Labels for tensor data; required (here or in the data) when ``posterior="labels"``.
        """
        for name in self.layers:
            resolve_layer(self.model, name)  # unknown names fail before any work
        device = model_device(self.model)
        store = ActivationStore(self.memory_limit, self.cache_dir)
        stats: dict[str, list[torch.Tensor]] = {}
        targets: list[torch.Tensor] = []
        try:
            for feats, logits, y in stream_activations(
                self.model,
                self.layers,
                train_data,
                labels,
                batch_size=self.batch_size,
                need_labels=self.posterior == "labels",
                device=device,
                show_progress=self.progress,
                desc="clusters: activations",
            ):
                if logits.dim() != 2 or logits.shape[1] < 2:
                    raise ValueError(
                        "the model must output (B, n_classes) class scores with "
                        f"n_classes >= 2; got shape {tuple(logits.shape)}"
                    )
                self.n_classes_ = int(logits.shape[1])
                t = logits.argmax(1) if self.posterior == "model" else y.long()  # type: ignore[union-attr]
                check_classes(t, self.n_classes_, name="label")
                targets.append(t.cpu())
                for name, a in feats.items():
                    store.append(name, a)
                    _accumulate(stats, name, a)
            n = sum(len(t) for t in targets)
            self._check_size(n)
            arrays = store.arrays()
            target = torch.cat(targets)
            gen = np.random.default_rng(self.seed)
            holdout, pool = self._split_holdout(n, gen)
            fit_idx = pool  # None = every training point
            size = n if pool is None else len(pool)
            if self.max_fit_points is not None and size > self.max_fit_points:
                choose_from = n if pool is None else pool
                fit_idx = np.sort(gen.choice(choose_from, self.max_fit_points, replace=False))
            self.layer_state_: list[dict[str, Any]] = []
            self.history_: dict[str, dict[str, list[float]]] = {}
            for li, name in enumerate(self.layers):
                state = self._fit_layer(
                    li, name, arrays[name], stats[name], fit_idx, target, device, holdout, pool
                )
                self.layer_state_.append(state)
            del arrays
            spilled = store.on_disk
        finally:
            store.close()
        self.n_train_ = n
        self.train_targets_ = target
        self.spilled_to_disk_ = spilled
        if not isinstance(self.layer_weights, str):
            self.layer_weights_ = self.layer_weights.clone()
            self.weight_fit_: dict[str, Any] = {}
        else:
            assert holdout is not None
            self._fit_weights(holdout)
        self._build_index()
        return self

    def _split_holdout(
        self, n: int, gen: np.random.Generator
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Held-out training points for ``layer_weights="fit"`` / likelihood restart selection
        and the pool of the rest (which the clustering may be fitted on); (None, None) when
        neither is asked for."""
        select = self.restart_selection == "likelihood"
        if not isinstance(self.layer_weights, str) and not select:
            return None, None
        n_out = max(1, round(self.weight_holdout * n))
        if n - n_out < self.n_clusters:
            raise ValueError(
                f"the weight/restart fit holds out {n_out} of {n} training points, leaving fewer "
                f"than n_clusters={self.n_clusters}; pass more data or fixed layer_weights"
            )
        holdout = np.sort(gen.choice(n, n_out, replace=False))
        keep = np.ones(n, dtype=bool)
        keep[holdout] = False
        return holdout, np.flatnonzero(keep)

    def _fit_weights(self, holdout: np.ndarray) -> None:
        """Learn w_l on the held-out training points: tables from the other training points,
        q_l of the held-out embeddings, EM on the mixture log-likelihood of their targets."""
        ho = torch.from_numpy(holdout)
        t = self.train_targets_[ho]
        parts, single = [], []
        for s in self.layer_state_:
            out = _class_counts(s["assign"][ho], t, self.n_clusters, self.n_classes_)
            table = self._posterior(s["counts"] - out)
            p = (
                self._q(s["embeddings"][ho].to(s["centres"].device), s)
                @ table.to(s["centres"].device)
            ).cpu()
            parts.append(p[torch.arange(len(t)), t])
            single.append(p)
        w, info = fit_mixture_weights(torch.stack(parts))
        self.layer_weights_ = w

        def agree(p: torch.Tensor) -> float:
            return float((p.argmax(1) == t).double().mean())

        equal = sum(single) / len(single)
        fitted = sum(float(wi) * p for wi, p in zip(w, single))
        self.weight_fit_ = {
            "n_holdout": len(holdout),
            **info,
            "holdout_fidelity_equal": agree(equal),  # type: ignore[arg-type]
            "holdout_fidelity_fitted": agree(fitted),  # type: ignore[arg-type]
            "holdout_fidelity_per_layer": [agree(p) for p in single],
        }

    def _check_size(self, n: int) -> None:
        if n == 0:
            raise ValueError("train_data is empty")
        if self.n_clusters > n:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than the number of training points ({n})"
            )
        if n < self.batch_size:
            raise ValueError(
                f"train_data has {n} points, fewer than one batch "
                f"(batch_size={self.batch_size}); pass a smaller batch_size or more "
                "data"
            )

    def _fit_layer(
        self,
        li: int,
        name: str,
        arr: np.ndarray,
        st: list[torch.Tensor],
        fit_idx: np.ndarray | None,
        target: torch.Tensor,
        device: torch.device,
        holdout: np.ndarray | None = None,
        pool: np.ndarray | None = None,
    ) -> dict[str, Any]:
        n = len(arr)
        total, sq, count = st
        mean = total / count
        std = (sq / count - mean.pow(2)).clamp_min(0).sqrt()
        std = torch.where(std < 1e-6, torch.ones_like(std), std)
        shape = arr.shape[1:]
        view = (-1, 1, 1) if len(shape) == 3 else (-1,)
        mean_t = mean.float().view(view).to(device)
        std_t = std.float().view(view).to(device)
        sample = np.arange(n) if fit_idx is None else fit_idx
        x_fit = torch.from_numpy(np.array(arr[sample])).to(device).sub_(mean_t).div_(std_t)
        torch.manual_seed(self.seed + li)
        history: dict[str, list[float]] = {}
        embedder: nn.Module
        if self.method == "idec":
            ae: nn.Module
            if len(shape) == 3:
                ae = ConvAE(shape, self.embed_dim, radius=self.idec.radius)
                config = {
                    "kind": "conv",
                    "in_shape": list(shape),
                    "embed_dim": self.embed_dim,
                    "widths": [32, 64, 128],
                    "kernels": [3, 3, 3],
                    "radius": self.idec.radius,
                }
            else:
                ae = DenseAE(shape[0], self.embed_dim, radius=self.idec.radius)
                config = {
                    "kind": "dense",
                    "in_shape": list(shape),
                    "embed_dim": self.embed_dim,
                    "hidden": [256, 128],
                    "radius": self.idec.radius,
                }
            ae = ae.to(device)
            init = None
            init_hist: dict[str, list[float]] = {}
            if self.restart_selection == "likelihood" and holdout is not None:
                init, init_hist = self._idec_init(arr, holdout, sample, target, mean_t, std_t, li)
            res = fit_idec(ae, x_fit, self.n_clusters, self.idec, seed=self.seed + li, init=init)
            embedder, centres, history = ae, res.centres.to(device), res.history
            history.update(init_hist)
        else:
            embedder = PCAEmbed.fit(x_fit, self.embed_dim, seed=self.seed + li).to(device)
            config = {"kind": "pca", "in_shape": list(shape)}
            centres = None
        del x_fit
        embedder.eval()
        emb = torch.cat(
            [
                encode_all(
                    embedder,
                    torch.from_numpy(np.array(arr[i : i + 4096]))
                    .to(device)
                    .sub_(mean_t)
                    .div_(std_t),
                )
                for i in range(0, n, 4096)
            ]
        )
        if centres is None:
            z_fit = emb[torch.from_numpy(sample)].cpu().numpy()
            if self.restart_selection == "likelihood" and holdout is not None:
                assert pool is not None  # _split_holdout returns both or neither
                tab, ho = torch.from_numpy(pool), torch.from_numpy(holdout)
                centres, history = self._select_restart(
                    z_fit, emb[tab].cpu(), target[tab], emb[ho].cpu(), target[ho], li
                )
                centres = centres.to(device)
            else:
                centres = torch.from_numpy(
                    kmeans(
                        z_fit,
                        self.n_clusters,
                        n_init=self.idec.n_init,
                        seed=self.seed + li,
                        max_points=self.max_fit_points,
                    )
                ).to(device)
        assign = _hard_assign(emb, centres)
        counts = _class_counts(assign, target, self.n_clusters, self.n_classes_)
        self.history_[name] = history
        return {
            "name": name,
            "config": config,
            "embedder": embedder,
            "mean": mean_t,
            "std": std_t,
            "centres": centres,
            "counts": counts,
            "posterior": self._posterior(counts),
            "embeddings": emb.float(),
            "assign": assign.cpu(),
        }

    def _idec_init(
        self,
        arr: np.ndarray,
        holdout: np.ndarray,
        sample: np.ndarray,
        target: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        li: int,
    ) -> tuple[Callable[[nn.Module, torch.Tensor], torch.Tensor], dict[str, list[float]]]:
        """IDEC's k-means initialisation by held-out likelihood: restarts on the pretrained
        embedding of the fitting sample (which also gives the tables), scored on the
        held-out training points."""

        def init(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
            x_ho = torch.from_numpy(np.array(arr[holdout])).to(mean.device).sub_(mean).div_(std)
            z_ho = encode_all(ae, x_ho).cpu()
            ts = target[torch.from_numpy(sample)]
            centres, h = self._select_restart(
                z.cpu().numpy(), z.cpu(), ts, z_ho, target[torch.from_numpy(holdout)], li
            )
            hist.update(h)
            return centres

        hist: dict[str, list[float]] = {}
        return init, hist

    def _select_restart(
        self,
        z_fit: np.ndarray,
        z_tab: torch.Tensor,
        t_tab: torch.Tensor,
        z_ho: torch.Tensor,
        t_ho: torch.Tensor,
        li: int,
    ) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """k-means restarts one by one on ``z_fit``; keep the centres whose layer term q^T H
        (H from the hard assignments of ``z_tab`` with targets ``t_tab``) gives the held-out
        training points ``z_ho`` their targets ``t_ho`` with the highest mean log-likelihood."""
        z_ho = z_ho.double()
        zf = torch.from_numpy(z_fit)
        cands, logliks, inertias = [], [], []
        for r in range(self.idec.n_init):
            c = torch.from_numpy(
                kmeans(
                    z_fit,
                    self.n_clusters,
                    n_init=1,
                    seed=self.seed + li + 1000 * r,
                    max_points=self.max_fit_points,
                )
            )
            counts = _class_counts(_hard_assign(z_tab, c), t_tab, self.n_clusters, self.n_classes_)
            p = self._q(z_ho, {"centres": c}) @ self._posterior(counts)
            logliks.append(float(p[torch.arange(len(t_ho)), t_ho].clamp_min(1e-300).log().mean()))
            inertias.append(float(torch.cdist(zf, c).min(1).values.pow(2).sum()))
            cands.append(c)
        chosen = int(np.argmax(logliks))  # the first of equal maxima, as the old running best
        return cands[chosen], {
            "restart_loglik": logliks,
            "restart_inertia": inertias,
            "restart_chosen": [float(chosen)],
        }

    def _posterior(self, counts: torch.Tensor) -> torch.Tensor:
        """H[k, y] = (n_ky + s) / (n_k + C s): Laplace smoothing; an empty cluster gets uniform
        (or, with s = 0, the overall class shares so that no row is 0/0)."""
        if self.smoothing > 0:
            sm = counts + self.smoothing
        else:
            prior = counts.sum(0) / counts.sum()
            sm = torch.where(counts.sum(1, keepdim=True) > 0, counts, prior.expand_as(counts))
        return sm / sm.sum(1, keepdim=True)

    def _build_index(self) -> None:
        self._index = WeightedIndex([s["embeddings"] for s in self.layer_state_])

    # ------------------------------------------------------------------ read-only views
    @property
    def posteriors_(self) -> dict[str, torch.Tensor]:
        """H_l per layer, ``(n_clusters, n_classes)`` float64, rows summing to 1."""
        self.check_is_fitted()
        return {s["name"]: s["posterior"] for s in self.layer_state_}

    @property
    def centres_(self) -> dict[str, torch.Tensor]:
        """Cluster centres in each layer's embedding space, ``(n_clusters, embed_dim)``."""
        self.check_is_fitted()
        return {s["name"]: s["centres"] for s in self.layer_state_}

    @property
    def train_embeddings_(self) -> dict[str, torch.Tensor]:
        """Embeddings of the training points per layer, ``(n_train, embed_dim)`` float32."""
        self.check_is_fitted()
        return {s["name"]: s["embeddings"] for s in self.layer_state_}

    @property
    def train_assignments_(self) -> dict[str, torch.Tensor]:
        """Hard cluster of each training point per layer, ``(n_train,)`` int64."""
        self.check_is_fitted()
        return {s["name"]: s["assign"] for s in self.layer_state_}

    # ------------------------------------------------------------------ inference
    def _state(self, layer: str) -> dict[str, Any]:
        for s in self.layer_state_:
            if s["name"] == layer:
                return s
        raise ValueError(f"layer {layer!r} is not one of the fitted layers {self.layers}")

    @torch.no_grad()
    def _embed_batch(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for s in self.layer_state_:
            a = feats[s["name"]]
            if tuple(a.shape[1:]) != tuple(s["config"]["in_shape"]):
                raise ValueError(
                    f"layer {s['name']!r} gives activations of shape "
                    f"{tuple(a.shape[1:])}, but it was fitted on "
                    f"{tuple(s['config']['in_shape'])}"
                )
            out.append(s["embedder"].encode((a - s["mean"]) / s["std"]))
        return out

    def _q(self, z: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
        q = soft_assign(z.double(), s["centres"].double(), self.idec.alpha)
        if self.assignment == "hard":
            q = torch.nn.functional.one_hot(q.argmax(1), self.n_clusters).double()
        return q

    def _walk(
        self, data: Any, labels: torch.Tensor | None = None, need_labels: bool = False
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
        """Per batch: per-layer embeddings, the model's logits and the labels (if any)."""
        self.check_is_fitted()
        for feats, logits, y in stream_activations(
            self.model,
            self.layers,
            data,
            labels,
            batch_size=self.batch_size,
            need_labels=need_labels,
            device=model_device(self.model),
            show_progress=self.progress,
            desc="clusters",
        ):
            yield self._embed_batch(feats), logits, y

    def _combine(self, zs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """p(y|x) = sum_l w_l q_l(x)^T H_l / sum_l w_l (Liu & Arik; normalised by the weight
        sum, not the number of layers, so that rows sum to 1 for any weights)."""
        p = torch.zeros(zs[0].shape[0], self.n_classes_, dtype=torch.float64, device=zs[0].device)
        for w, z, s in zip(weights.tolist(), zs, self.layer_state_):
            if w:
                p += w * (self._q(z, s) @ s["posterior"].to(z.device))
        return p / float(weights.sum())

    def _data_of(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() == 0:
            raise ValueError("inputs must be a batch (first dimension = inputs)")
        return x

    def predict_proba(self, x: Any, layer_weights: Sequence[float] | None = None) -> torch.Tensor:
        """Surrogate class probabilities ``(B, n_classes)`` float64 (rows sum to 1).

        ``x`` is a tensor of inputs (or any data form); ``layer_weights`` overrides w_l.
        """
        self.check_is_fitted()
        w = (
            self.layer_weights_
            if layer_weights is None
            else _check_weights(layer_weights, len(self.layers))
        )
        return torch.cat([self._combine(zs, w).cpu() for zs, _, _ in self._walk(self._data_of(x))])

    def predict(self, x: Any, layer_weights: Sequence[float] | None = None) -> torch.Tensor:
        """Surrogate class ``(B,)``: argmax of :meth:`predict_proba`."""
        return self.predict_proba(x, layer_weights).argmax(1)

    def embed(self, x: Any) -> dict[str, torch.Tensor]:
        """Per-layer embeddings of ``x`` (``(B, embed_dim)`` each)."""
        parts = [zs for zs, _, _ in self._walk(self._data_of(x))]
        return {n: torch.cat([p[i] for p in parts]).cpu() for i, n in enumerate(self.layers)}

    def assign(self, x: Any) -> dict[str, torch.Tensor]:
        """Per-layer hard cluster of each input (``(B,)`` int64)."""
        return {
            n: _hard_assign(z, self._state(n)["centres"].cpu()) for n, z in self.embed(x).items()
        }

    def fidelity(self, data: Any, labels: torch.Tensor | None = None) -> float:
        """Share of inputs where the surrogate's class equals the model's argmax."""
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
                (self._q(z, s) @ s["posterior"].to(z.device)).cpu()
                for z, s in zip(zs, self.layer_state_)
            ]
            outs.append(self._combine(zs, self.layer_weights_).cpu())
            for i, p in enumerate(outs):
                agree[i] += float((p.argmax(1) == pred).sum())
                if y is not None:
                    correct[i] += float((p.argmax(1) == y.cpu()).sum())
            for i, (z, s) in enumerate(zip(zs, self.layer_state_)):
                k = _hard_assign(z, s["centres"])
                joint[i] += _class_counts(k, pred, self.n_clusters, self.n_classes_)
            have_labels &= y is not None
            total += len(pred)
        report: dict[str, dict[str, float]] = {}
        for i, name in enumerate([*self.layers, "combined"]):
            row = {"fidelity": float(agree[i] / total)}
            if have_labels:
                row["accuracy"] = float(correct[i] / total)
            if i < n_layers:
                row["purity"] = float(joint[i].max(1).values.sum() / total)
                c = self.layer_state_[i]["counts"]
                row["train_purity"] = float(c.max(1).values.sum() / c.sum())
                row["clusters_used"] = int((c.sum(1) > 0).sum())
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
        w = (
            self.layer_weights_
            if layer_weights is None
            else _check_weights(layer_weights, len(self.layers))
        )
        emb = self.embed(x)
        return self._index.search([emb[n] for n in self.layers], w, k)

    def concepts(self, layer: str, k: int = 9) -> torch.Tensor:
        """Indices ``(n_clusters, k)`` of the training samples nearest each cluster centre of
        ``layer`` in its embedding space (the cluster's "concept"), nearest first."""
        self.check_is_fitted()
        s = self._state(layer)
        emb, centres = s["embeddings"], s["centres"].float().to(s["embeddings"].device)
        k = min(int(k), len(emb))
        best_d = torch.full((len(centres), 0), float("inf"))
        best_i = torch.zeros((len(centres), 0), dtype=torch.long)
        for start in range(0, len(emb), 65536):
            d = torch.cdist(centres, emb[start : start + 65536]).cpu()
            d_all = torch.cat([best_d, d], 1)
            i_all = torch.cat([best_i, torch.arange(start, start + d.shape[1]).expand_as(d)], 1)
            best_d, pos = d_all.topk(min(k, d_all.shape[1]), dim=1, largest=False)
            best_i = i_all.gather(1, pos)
        return best_i

    def explain(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        """Surrogate probabilities as values; per-layer clusters and 10 similar training
        samples in ``extras``; ``target`` = the surrogate's class unless given."""
        self.check_is_fitted()
        proba, clusters, embs = [], [], []
        for zs, _, _ in self._walk(inputs):
            proba.append(self._combine(zs, self.layer_weights_).cpu())
            clusters.append(
                torch.stack(
                    [_hard_assign(z, s["centres"]).cpu() for z, s in zip(zs, self.layer_state_)], 1
                )
            )
            embs.append([z.cpu() for z in zs])
        values = torch.cat(proba)
        emb = [torch.cat([e[i] for e in embs]) for i in range(len(self.layers))]
        idx, dist = self._index.search(emb, self.layer_weights_, min(10, self.n_train_))
        return Explanation(
            values=values,
            target=resolve_targets(values, target),
            method=type(self).method,
            params={
                "layers": self.layers,
                "n_clusters": self.n_clusters,
                "algorithm": self.method,
                "layer_weights": self.layer_weights_.tolist(),
            },
            extras={"clusters": torch.cat(clusters), "similar": idx, "similar_distances": dist},
            meta={"layers": self.layers},
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted surrogate (embedder weights, centres, tables, training embeddings)
        to one safetensors file with JSON settings; no pickle."""
        self.check_is_fitted()
        tensors: dict[str, torch.Tensor] = {"train_targets": self.train_targets_}
        layers_meta = []
        for i, s in enumerate(self.layer_state_):
            for key in ("mean", "std", "centres", "counts", "embeddings", "assign"):
                tensors[f"layer{i}.{key}"] = s[key]
            for key, v in s["embedder"].state_dict().items():
                tensors[f"layer{i}.embedder.{key}"] = v
            layers_meta.append({"name": s["name"], "config": s["config"]})
        meta = {
            "layers": layers_meta,
            "n_clusters": self.n_clusters,
            "method": self.method,
            "embed_dim": self.embed_dim,
            "layer_weights": self.layer_weights_.tolist(),
            "layer_weights_param": (
                self.layer_weights
                if isinstance(self.layer_weights, str)
                else self.layer_weights.tolist()
            ),
            "weight_holdout": self.weight_holdout,
            "restart_selection": self.restart_selection,
            "weight_fit": self.weight_fit_,
            "posterior": self.posterior,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "idec": asdict(self.idec),
            "max_fit_points": self.max_fit_points,
            "smoothing": self.smoothing,
            "assignment": self.assignment,
            "n_classes": self.n_classes_,
            "n_train": self.n_train_,
            "history": self.history_,
        }
        return save_tensors(path, tensors, meta, FORMAT, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module) -> ClusterSurrogate:
        """Read a file written by :meth:`save` and attach it to ``model``."""
        tensors, meta = load_tensors(path, FORMAT, FORMAT_VERSION)
        idec = meta["idec"]
        self = cls(
            model,
            [lm["name"] for lm in meta["layers"]],
            meta["n_clusters"],
            meta["method"],
            meta["embed_dim"],
            meta.get("layer_weights_param", meta["layer_weights"]),
            meta["posterior"],
            meta["batch_size"],
            meta["seed"],
            alpha=idec["alpha"],
            gamma=idec["gamma"],
            pretrain_epochs=idec["pretrain_epochs"],
            max_iter=idec["max_iter"],
            update_interval=idec["update_interval"],
            tol=idec["tol"],
            max_fit_points=meta["max_fit_points"],
            smoothing=meta["smoothing"],
            assignment=meta["assignment"],
            lr=idec["lr"],
            n_init=idec["n_init"],
            weight_holdout=meta.get("weight_holdout", 0.1),
            restart_selection=meta.get("restart_selection", "inertia"),
        )
        device = model_device(model)
        self.layer_weights_ = torch.tensor(meta["layer_weights"], dtype=torch.float64)
        self.weight_fit_ = meta.get("weight_fit", {})
        self.n_classes_ = int(meta["n_classes"])
        self.n_train_ = int(meta["n_train"])
        self.history_ = meta["history"]
        self.train_targets_ = tensors["train_targets"]
        self.spilled_to_disk_ = False
        self.layer_state_ = []
        for i, lm in enumerate(meta["layers"]):
            config = lm["config"]
            prefix = f"layer{i}.embedder."
            weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if config["kind"] == "pca":
                embedder: nn.Module = PCAEmbed(weights["mean"], weights["components"])
            else:
                embedder = build_autoencoder(config)
                embedder.load_state_dict(weights)
            embedder = embedder.to(device).eval()
            s: dict[str, Any] = {
                k: tensors[f"layer{i}.{k}"]
                for k in ("mean", "std", "centres", "counts", "embeddings", "assign")
            }
            for k in ("mean", "std", "centres"):
                s[k] = s[k].to(device)
            s.update(
                name=lm["name"],
                config=config,
                embedder=embedder,
                posterior=self._posterior(s["counts"]),
            )
            self.layer_state_.append(s)
        self._build_index()
        return self


def fit_mixture_weights(
    likelihoods: torch.Tensor, max_iter: int = 1000, tol: float = 1e-9
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mixture weights w (w >= 0, sum 1) maximising ``mean_i log sum_l w_l P[l, i]``.

    ``likelihoods`` is ``(L, m)``: the probability layer l's term gives the target of held-out
    point i. The objective is concave in w; the EM fixed point w_l <- mean_i (w_l P[l, i] /
    sum_l' w_l' P[l', i]) increases it monotonically from equal weights and stops when no
    weight moves by more than ``tol``. Returns the float64 weights and ``{"em_steps",
    "log_likelihood", "log_likelihood_equal"}`` (no key says "ratio": the
    benchmark table picks those up).
    """
    if likelihoods.dim() != 2 or likelihoods.shape[0] < 1 or likelihoods.shape[1] < 1:
        raise ValueError(
            "likelihoods must be (n_layers, n_points) with both >= 1, got shape "
            f"{tuple(likelihoods.shape)}"
        )
    if not bool(torch.isfinite(likelihoods).all()) or bool((likelihoods < 0).any()):
        raise ValueError("likelihoods must be finite and >= 0 (probabilities of the targets)")
    p = likelihoods.double().clamp_min(1e-300)
    n_layers = p.shape[0]
    w = torch.full((n_layers,), 1.0 / n_layers, dtype=torch.float64)

    def loglik(v: torch.Tensor) -> float:
        return float(torch.log((v[:, None] * p).sum(0)).mean())

    start = loglik(w)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        r = w[:, None] * p
        new = (r / r.sum(0, keepdim=True)).mean(1)
        new = new / new.sum()
        done = float((new - w).abs().max()) < tol
        w = new
        if done:
            break
    return w, {
        "em_steps": iterations,
        "log_likelihood": loglik(w),
        "log_likelihood_equal": start,
    }


def _accumulate(stats: dict[str, list[torch.Tensor]], name: str, a: torch.Tensor) -> None:
    """Running per-channel (conv) or per-feature sums for standardisation, in float64."""
    dims = (0, 2, 3) if a.dim() == 4 else (0,)
    per = a.shape[0] * (a.shape[2] * a.shape[3] if a.dim() == 4 else 1)
    # per-batch sums in float32 (cheap), accumulated across batches in float64
    s, sq = a.sum(dims).double().cpu(), (a * a).sum(dims).double().cpu()
    if name not in stats:
        stats[name] = [s, sq, torch.tensor(float(per), dtype=torch.float64)]
    else:
        stats[name][0] += s
        stats[name][1] += sq
        stats[name][2] += per


def _class_counts(assign: torch.Tensor, target: torch.Tensor, k: int, c: int) -> torch.Tensor:
    """``counts[cluster, class]``: how many points of each class fall in each cluster, float64."""
    counts = torch.zeros(k, c, dtype=torch.float64)
    counts.index_put_(
        (assign.cpu(), target.cpu()), torch.ones(len(assign), dtype=torch.float64), accumulate=True
    )
    return counts


def _hard_assign(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Nearest centre per row (the argmax of the Student-t q for any a), in chunks."""
    c = centres.to(device=z.device, dtype=z.dtype)
    return (
        torch.cat([torch.cdist(z[i : i + 65536], c).argmin(1) for i in range(0, len(z), 65536)])
        if len(z)
        else torch.zeros(0, dtype=torch.long)
    )
