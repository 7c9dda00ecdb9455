"""``LayerClusterer``: one layer's embedding, clusters and class table (Liu & Arik, 2020).

A layer's reduced activations a (see :mod:`whynet.clusters._acts`) are standardised per channel
or feature, embedded (IDEC autoencoder or PCA, :mod:`whynet.clusters.embedding`) and split into
K clusters with centres mu_k. Cluster k carries the class table H[k, y] of the training points
assigned to it (Laplace-smoothed counts of their targets). For an embedding z:

- q(z) is the Student-t soft assignment (DEC eq. 1) or its one-hot argmax;
- q(z)^T H is the layer's term of the surrogate (:class:`~whynet.clusters.ClusterSurrogate`).

The surrogate holds one clusterer per layer. Its fitted state is declared here
(:attr:`LayerClusterer._fitted_state`); the surrogate persists it through
:func:`pack_state` / :func:`unpack_state`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from whynet.clusters.embedding import (
    ConvAE,
    DenseAE,
    IDECSettings,
    PCAEmbed,
    build_embedder,
    embedder_config,
    encode_all,
    encode_rows,
    fit_idec,
    kmeans,
    soft_assign,
)
from whynet.clusters.lloyd import check_init, lloyd, lloyd_step
from whynet.core.state import FittedState, State


# ---------------------------------------------------------------- per-layer closed forms
@dataclass
class Moments:
    """Running per-channel (conv) or per-feature sums for standardisation, in float64."""

    sums: list[torch.Tensor] = field(default_factory=list)

    def update(self, a: torch.Tensor) -> None:
        self.add(*self.batch_sums(a))

    @staticmethod
    def batch_sums(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One batch's sums, squared sums and count, in float64: the same numbers to float64
        rounding whatever the thread count (a float32 reduction depends on how it is split),
        so a shard's moments on a one-thread worker equal those of a multi-thread process."""
        dims = (0, 2, 3) if a.dim() == 4 else (0,)
        per = a.shape[0] * (a.shape[2] * a.shape[3] if a.dim() == 4 else 1)
        a = a.double()
        return a.sum(dims).cpu(), (a * a).sum(dims).cpu(), float(per)

    def add(self, s: torch.Tensor, sq: torch.Tensor, per: float) -> None:
        """Accumulate one batch's :meth:`batch_sums` in float64 (batches added in data order
        give the same moments wherever each batch's sums were computed)."""
        if not self.sums:
            self.sums = [s.clone(), sq.clone(), torch.tensor(per, dtype=torch.float64)]
        else:
            self.sums[0] += s
            self.sums[1] += sq
            self.sums[2] += per

    def standardiser(self, shape: Sequence[int], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as float32 tensors that broadcast over activations of ``shape``."""
        mean, std = self.mean_std()
        view = (-1, 1, 1) if len(shape) == 3 else (-1,)
        return mean.float().view(view).to(device), std.float().view(view).to(device)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (a constant channel gets std 1), float64."""
        total, sq, count = self.sums
        mean = total / count
        std = (sq / count - mean.pow(2)).clamp_min(0).sqrt()
        return mean, torch.where(std < 1e-6, torch.ones_like(std), std)


def class_counts(assign: torch.Tensor, target: torch.Tensor, k: int, c: int) -> torch.Tensor:
    """``counts[cluster, class]``: how many points of each class fall in each cluster, float64."""
    counts = torch.zeros(k, c, dtype=torch.float64)
    counts.index_put_(
        (assign.cpu(), target.cpu()), torch.ones(len(assign), dtype=torch.float64), accumulate=True
    )
    return counts


def hard_assign(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Nearest centre per row (the argmax of the Student-t q for any a), in chunks."""
    c = centres.to(device=z.device, dtype=z.dtype)
    return (
        torch.cat([torch.cdist(z[i : i + 65536], c).argmin(1) for i in range(0, len(z), 65536)])
        if len(z)
        else torch.zeros(0, dtype=torch.long)
    )


def posterior_table(counts: torch.Tensor, smoothing: float) -> torch.Tensor:
    """H[k, y] = (n_ky + s) / (n_k + C s): Laplace smoothing; an empty cluster gets uniform
    (or, with s = 0, the overall class shares so that no row is 0/0)."""
    if smoothing > 0:
        sm = counts + smoothing
    else:
        prior = counts.sum(0) / counts.sum()
        sm = torch.where(counts.sum(1, keepdim=True) > 0, counts, prior.expand_as(counts))
    return sm / sm.sum(1, keepdim=True)


def soft_or_hard(z: torch.Tensor, centres: torch.Tensor, alpha: float, hard: bool) -> torch.Tensor:
    """q(z) in float64: DEC eq. 1, or its one-hot argmax (``hard``)."""
    q = soft_assign(z.double(), centres.double(), alpha)
    if hard:
        q = torch.nn.functional.one_hot(q.argmax(1), centres.shape[0]).double()
    return q


# ---------------------------------------------------------------- the clusterer
class LayerClusterer(FittedState):
    """Embedding, K clusters and class table of one layer's activations.

    Parameters
    ----------
    name : str
        The layer (dotted name); only used to name it in messages and histories.
    n_clusters, algorithm, embed_dim
        K; ``"idec"`` (autoencoder + IDEC) or ``"kmeans"`` (PCA + k-means); embedding size.
    seed : int
        Seeds the autoencoder's initialisation, the mini-batch order, PCA and k-means.
    idec : IDECSettings
        alpha (Student-t degrees of freedom, also of :meth:`q`), gamma, epochs, restarts...
    smoothing, assignment, restart_selection, max_fit_points
        As in :class:`~whynet.clusters.ClusterSurrogate` (which validates them).
    """

    _fitted_state: ClassVar[dict[str, State]] = {
        "embedder_": State("module", config=embedder_config, build=build_embedder),
        "mean_": State(),
        "std_": State(),
        "centres_": State(),
        "counts_": State(device=False),
        "embeddings_": State(device=False),
        "assign_": State(device=False),
        "history_": State("json"),
    }

    embedder_: nn.Module
    mean_: torch.Tensor
    std_: torch.Tensor
    centres_: torch.Tensor
    counts_: torch.Tensor
    embeddings_: torch.Tensor
    assign_: torch.Tensor
    history_: dict[str, list[float]]

    def __init__(
        self,
        name: str,
        n_clusters: int = 15,
        algorithm: str = "idec",
        embed_dim: int = 20,
        *,
        seed: int = 0,
        idec: IDECSettings | None = None,
        smoothing: float = 1.0,
        assignment: str = "soft",
        restart_selection: str = "inertia",
        max_fit_points: int | None = None,
        progress: bool | None = None,
    ) -> None:
        self.name = name
        self.n_clusters = n_clusters
        self.algorithm = algorithm
        self.embed_dim = embed_dim
        self.seed = seed
        self.idec = IDECSettings(embed_dim=embed_dim) if idec is None else idec
        self.smoothing = smoothing
        self.assignment = assignment
        self.restart_selection = restart_selection
        self.max_fit_points = max_fit_points
        self.progress = progress

    def __repr__(self) -> str:
        return (
            f"LayerClusterer({self.name!r}, n_clusters={self.n_clusters}, "
            f"algorithm={self.algorithm!r})"
        )

    # -- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        acts: np.ndarray,
        targets: torch.Tensor,
        *,
        n_classes: int,
        moments: Moments,
        sample: np.ndarray | None = None,
        holdout: np.ndarray | None = None,
        pool: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        init: torch.Tensor | None = None,
    ) -> LayerClusterer:
        """Embed and cluster ``acts`` (``(N, ...)`` float32, possibly memory-mapped) and count
        the ``targets`` (``(N,)`` int64) per cluster.

        ``moments``: the activations' running sums (streamed by the caller). ``sample``: rows
        the embedder and the clustering are fitted on (None = all; every row gets an embedding,
        an assignment and enters the table). ``holdout`` / ``pool``: with
        ``restart_selection="likelihood"``, the held-out rows that score the k-means restarts
        and the rows whose assignments give their tables. ``init``: initial centres
        ``(n_clusters, embedding dim)`` instead of k-means restarts: the k-means path runs
        Lloyd's iterations from them in float64 (:func:`whynet.clusters.lloyd.lloyd`, the steps
        ``whynet.scale`` sums over shards), IDEC starts its refinement from them.
        """
        self._reset_fitted()
        n, shape = len(acts), acts.shape[1:]
        mean_t, std_t = moments.standardiser(shape, device)

        def standardised(rows: Any) -> torch.Tensor:
            return torch.from_numpy(np.array(acts[rows])).to(device).sub_(mean_t).div_(std_t)

        sample = np.arange(n) if sample is None else sample
        select = self.restart_selection == "likelihood" and holdout is not None
        x_fit = standardised(sample)
        history: dict[str, list[float]] = {}
        centres: torch.Tensor | None = None
        embedder: nn.Module
        if self.algorithm == "idec":
            embedder = self._autoencoder(shape).to(device)
            start: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
            init_hist: dict[str, list[float]] = {}
            if init is not None:
                given = self.check_init(init, self.idec.embed_dim).float()

                def start(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
                    return given

            elif select:
                assert holdout is not None
                start, init_hist = self._idec_init(
                    standardised, holdout, sample, targets, n_classes
                )
            res = fit_idec(
                embedder,
                x_fit,
                self.n_clusters,
                self.idec,
                seed=self.seed,
                init=start,
                progress=self.progress,
            )
            centres, history = res.centres.to(device), res.history
            history.update(init_hist)
        else:
            embedder = PCAEmbed.fit(x_fit, self.embed_dim, seed=self.seed).to(device)
        del x_fit
        embedder.eval()
        emb = encode_rows(embedder, standardised, 0, n)
        if centres is None:
            centres, history = self.kmeans_centres(
                emb, targets, n_classes, sample, holdout, pool, init
            )
            centres = centres.to(device)
        assign = hard_assign(emb, centres)
        counts = class_counts(assign, targets, self.n_clusters, n_classes)
        return self.set_fit(embedder, mean_t, std_t, centres, counts, emb, assign, history)

    def kmeans_centres(
        self,
        emb: torch.Tensor,
        targets: torch.Tensor,
        n_classes: int,
        sample: np.ndarray,
        holdout: np.ndarray | None = None,
        pool: np.ndarray | None = None,
        init: torch.Tensor | None = None,
        step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """The k-means path's centres (and history) from every training point's embedding
        ``emb``: Lloyd from ``init`` over the rows ``sample`` (``step``: the summed Lloyd step
        over them computed elsewhere, e.g. over shards); else the restart whose held-out
        likelihood is best (``restart_selection="likelihood"``); else k-means restarts."""
        if init is not None:
            if step is None:
                z = emb[torch.from_numpy(sample)]

                def step(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    return lloyd_step(z, c)

            res = lloyd(step, self.check_init(init, emb.shape[1]))
            return res.centres, res.history
        z_fit = emb[torch.from_numpy(sample)].cpu().numpy()
        if self.restart_selection == "likelihood" and holdout is not None:
            assert pool is not None  # both or neither
            tab, ho = torch.from_numpy(pool), torch.from_numpy(holdout)
            return self._select_restart(
                z_fit, emb[tab].cpu(), targets[tab], emb[ho].cpu(), targets[ho], n_classes
            )
        centres = kmeans(
            z_fit,
            self.n_clusters,
            n_init=self.idec.n_init,
            seed=self.seed,
            max_points=self.max_fit_points,
        )
        return torch.from_numpy(centres), {}

    def set_fit(
        self,
        embedder: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        centres: torch.Tensor,
        counts: torch.Tensor,
        embeddings: torch.Tensor,
        assign: torch.Tensor,
        history: dict[str, list[float]],
    ) -> LayerClusterer:
        """Fit from computed parts (:meth:`fit`'s last step; ``whynet.scale`` computes the
        parts shard by shard): the standardisation, embedder, centres, class counts, every
        training point's embedding and hard assignment."""
        self._set_fitted(
            embedder_=embedder,
            mean_=mean,
            std_=std,
            centres_=centres,
            counts_=counts,
            embeddings_=embeddings.float().cpu(),
            assign_=assign.cpu(),
            history_=history,
        )
        return self

    def check_init(self, init: torch.Tensor, dim: int) -> torch.Tensor:
        return check_init(init, self.n_clusters, dim, f"layer {self.name!r}")

    def _autoencoder(self, shape: Sequence[int]) -> nn.Module:
        """Liu & Arik's embedding: conv 32/64/128 for feature maps, dense 256/128 otherwise;
        initialised from ``seed`` without touching the global generator."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if len(shape) == 3:
                return ConvAE(shape, self.embed_dim, radius=self.idec.radius)
            return DenseAE(shape[0], self.embed_dim, radius=self.idec.radius)

    def _idec_init(
        self,
        standardised: Callable[[Any], torch.Tensor],
        holdout: np.ndarray,
        sample: np.ndarray,
        targets: torch.Tensor,
        n_classes: int,
    ) -> tuple[Callable[[nn.Module, torch.Tensor], torch.Tensor], dict[str, list[float]]]:
        """IDEC's k-means initialisation by held-out likelihood: restarts on the pretrained
        embedding of the fitting sample (which also gives the tables), scored on the
        held-out training points."""
        hist: dict[str, list[float]] = {}

        def init(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
            z_ho = encode_all(ae, standardised(holdout)).cpu()
            ts = targets[torch.from_numpy(sample)]
            centres, h = self._select_restart(
                z.cpu().numpy(), z.cpu(), ts, z_ho, targets[torch.from_numpy(holdout)], n_classes
            )
            hist.update(h)
            return centres

        return init, hist

    def _select_restart(
        self,
        z_fit: np.ndarray,
        z_tab: torch.Tensor,
        t_tab: torch.Tensor,
        z_ho: torch.Tensor,
        t_ho: torch.Tensor,
        n_classes: int,
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
                    seed=self.seed + 1000 * r,
                    max_points=self.max_fit_points,
                )
            )
            counts = class_counts(hard_assign(z_tab, c), t_tab, self.n_clusters, n_classes)
            p = self.q(z_ho, centres=c) @ posterior_table(counts, self.smoothing)
            logliks.append(float(p[torch.arange(len(t_ho)), t_ho].clamp_min(1e-300).log().mean()))
            inertias.append(float(torch.cdist(zf, c).min(1).values.pow(2).sum()))
            cands.append(c)
        chosen = int(np.argmax(logliks))  # the first of equal maxima
        return cands[chosen], {
            "restart_loglik": logliks,
            "restart_inertia": inertias,
            "restart_chosen": [float(chosen)],
        }

    # -- inference -------------------------------------------------------------------------

    @property
    def posterior_(self) -> torch.Tensor:
        """H[k, y], ``(n_clusters, n_classes)`` float64, rows summing to 1."""
        return posterior_table(self.counts_, self.smoothing)

    @torch.no_grad()
    def transform(self, acts: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, embed_dim)`` of a batch of reduced activations."""
        self.check_is_fitted()
        fitted = tuple(getattr(self.embedder_, "in_shape", ()))
        if tuple(acts.shape[1:]) != fitted:
            raise ValueError(
                f"layer {self.name!r} gives activations of shape {tuple(acts.shape[1:])}, "
                f"but it was fitted on {fitted}"
            )
        return self.embedder_.encode((acts - self.mean_) / self.std_)  # type: ignore[operator]

    def q(
        self, z: torch.Tensor, hard: bool | None = None, centres: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cluster memberships q(z) ``(B, n_clusters)`` float64 (DEC eq. 1; one-hot with
        ``hard``, default this clusterer's ``assignment``)."""
        hard = self.assignment == "hard" if hard is None else hard
        return soft_or_hard(z, self.centres_ if centres is None else centres, self.idec.alpha, hard)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Hard cluster ``(B,)`` int64 of each embedding (nearest centre)."""
        return hard_assign(z, self.centres_)

    def proba(self, z: torch.Tensor, hard: bool | None = None) -> torch.Tensor:
        """The layer's surrogate term q(z)^T H ``(B, n_classes)`` float64."""
        return self.q(z, hard) @ self.posterior_.to(z.device)

    def concepts(self, k: int = 9) -> torch.Tensor:
        """Indices ``(n_clusters, k)`` of the training samples nearest each cluster centre in
        the embedding space (the cluster's "concept"), nearest first."""
        self.check_is_fitted()
        emb = self.embeddings_
        centres = self.centres_.float().to(emb.device)
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


# ---------------------------------------------------------------- flat state for the surrogate
_TENSORS = [a for a, s in LayerClusterer._fitted_state.items() if s.kind == "tensor"]


def pack_state(clusterers: Sequence[LayerClusterer]) -> dict[str, Any]:
    """The clusterers' declared state as flat entries of the surrogate's declared state
    (core's :class:`~whynet.core.state.State` kinds hold no nested fitted objects): each tensor
    under ``"<layer index>.<attribute>"`` in one dict, the embedders in one ``ModuleList``, the
    histories in one JSON dict by layer name."""
    tensors: dict[str, torch.Tensor] = {}
    for i, c in enumerate(clusterers):
        c.check_is_fitted()
        tensors.update({f"{i}.{a}": getattr(c, a) for a in _TENSORS})
    return {
        "layer_tensors_": tensors,
        "embedders_": nn.ModuleList([c.embedder_ for c in clusterers]),
        "history_": {c.name: c.history_ for c in clusterers},
    }


def unpack_state(
    clusterers: Sequence[LayerClusterer], state: dict[str, Any], device: torch.device | str
) -> None:
    """Fit unfitted ``clusterers`` from :func:`pack_state`'s entries; tensors declared on the
    device move to ``device``."""
    tensors, embedders = state["layer_tensors_"], state["embedders_"]
    if len(embedders) != len(clusterers):
        raise ValueError(f"the state holds {len(embedders)} embedders for {len(clusterers)} layers")
    for i, c in enumerate(clusterers):
        values: dict[str, Any] = {}
        for a in _TENSORS:
            t = tensors[f"{i}.{a}"]
            values[a] = t.to(device) if c._fitted_state[a].device else t
        c._set_fitted(embedder_=embedders[i], history_=state["history_"][c.name], **values)
