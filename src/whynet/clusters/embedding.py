"""Per-layer embeddings and clustering: IDEC on a small autoencoder, or PCA + k-means.

References
----------
Liu & Arik, "Explaining Deep Neural Networks using Unsupervised Clustering" (2020): cluster each
layer's activations with IDEC on an autoencoder embedding (conv 32/64/128 stride 2, dense 20,
L2-normalised to radius 8).
Xie, Girshick & Farhadi, "Unsupervised Deep Embedding for Clustering Analysis" (DEC, 2016):
Student-t soft assignment (eq. 1) and target distribution (eq. 3), KL loss (eq. 2).
Guo, Gao, Liu & Yin, "Improved Deep Embedded Clustering with Local Structure Preservation"
(IDEC, 2017): loss L = L_rec + gamma * L_KL (eq. 3), target update every T iterations, stop when
fewer than ``tol`` of the assignments change between updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from whynet.core.training import train


# ---------------------------------------------------------------- DEC/IDEC closed forms
def soft_assign(z: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student-t soft assignment, DEC eq. 1.

    q_ik = (1 + ||z_i - mu_k||^2 / a)^(-(a+1)/2) / sum_k' (...), computed as a softmax of the
    log-kernel so that far points do not underflow to 0/0.
    """
    d2 = torch.cdist(z, centres.to(z.dtype)).pow(2)
    return torch.softmax(-(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha), dim=1)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC eq. 3: p_ik = (q_ik^2 / f_k) / sum_k' (q_ik'^2 / f_k'), f_k = sum_i q_ik."""
    w = q.pow(2) / q.sum(dim=0).clamp_min(1e-12)
    return w / w.sum(dim=1, keepdim=True)


def kl_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) averaged over the batch (DEC eq. 2)."""
    return (p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12)))).sum(1).mean()


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    n_init: int = 10,
    seed: int = 0,
    max_iter: int = 300,
    max_points: int | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """k-means centres ``(k, d)`` float32: faiss when installed (fast at 1M points), else sklearn.

    ``max_points``: fit on a seeded random sample of at most this many rows (the centres of a
    few well-populated clusters need no million points). ``backend``: "auto", "faiss",
    "sklearn".
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if max_points is not None and len(x) > max_points:
        pick = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x = np.ascontiguousarray(x[np.sort(pick)])
    if backend in ("auto", "faiss"):
        try:
            import faiss
        except ImportError:
            if backend == "faiss":
                raise
        else:
            km = faiss.Kmeans(
                x.shape[1],
                k,
                niter=max(max_iter // 10, 20),
                nredo=n_init,
                seed=seed + 1,
                verbose=False,
                spherical=False,
                max_points_per_centroid=-(-len(x) // k) + 1,
            )
            km.train(x)
            return np.asarray(km.centroids, dtype=np.float32)
    from sklearn.cluster import KMeans

    km2 = KMeans(n_clusters=k, n_init=n_init, random_state=seed, max_iter=max_iter).fit(x)
    return np.asarray(km2.cluster_centers_, dtype=np.float32)


# ---------------------------------------------------------------- autoencoders
class ConvAE(nn.Module):
    """Convolutional autoencoder of a ``(C, H, W)`` activation map (Liu & Arik's embedding).

    Encoder: conv ``widths`` (default 32/64/128), stride 2, 3x3 kernels with 'same'-style
    padding, ReLU; dense to ``embed_dim``; L2-normalised to ``radius``. The decoder mirrors it
    with transposed convolutions whose output padding restores the exact input size.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        embed_dim: int = 20,
        widths: Sequence[int] = (32, 64, 128),
        kernels: Sequence[int] = (3, 3, 3),
        radius: float = 8.0,
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        self.in_shape = (c, h, w)
        self.embed_dim = int(embed_dim)
        self.widths = [int(v) for v in widths]
        self.kernels = [int(v) for v in kernels]
        self.radius = float(radius)
        enc: list[nn.Module] = []
        shapes = [(c, h, w)]
        for width, k in zip(widths, kernels):
            enc += [nn.Conv2d(shapes[-1][0], width, k, stride=2, padding=k // 2), nn.ReLU()]
            hh, ww = shapes[-1][1:]
            pad = k // 2
            shapes.append((width, (hh + 2 * pad - k) // 2 + 1, (ww + 2 * pad - k) // 2 + 1))
        self.encoder = nn.Sequential(*enc)
        self.code_shape = shapes[-1]
        flat = int(np.prod(self.code_shape))
        self.to_embed = nn.Linear(flat, embed_dim)
        self.from_embed = nn.Linear(embed_dim, flat)
        dec: list[nn.Module] = []
        for i in range(len(widths), 0, -1):
            k = kernels[i - 1]
            (c_in, h_in, w_in), (c_out, h_out, w_out) = shapes[i], shapes[i - 1]
            pad = k // 2
            op_h = h_out - ((h_in - 1) * 2 - 2 * pad + k)
            op_w = w_out - ((w_in - 1) * 2 - 2 * pad + k)
            dec.append(
                nn.ConvTranspose2d(
                    c_in, c_out, k, stride=2, padding=pad, output_padding=(op_h, op_w)
                )
            )
            if i > 1:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.to_embed(self.encoder(x).flatten(1))
        return self.radius * F.normalize(h, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.from_embed(z)).view(-1, *self.code_shape)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)


class DenseAE(nn.Module):
    """Fully connected autoencoder of flat (or token-pooled) activations, same embedding rule."""

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 20,
        hidden: Sequence[int] = (256, 128),
        radius: float = 8.0,
    ) -> None:
        super().__init__()
        self.in_shape = (int(in_dim),)
        self.embed_dim = int(embed_dim)
        self.hidden = [int(v) for v in hidden]
        self.radius = float(radius)
        dims = [int(in_dim), *hidden]
        enc: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(dims[-1], embed_dim))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        back = [embed_dim, *reversed(dims)]
        for j, (a, b) in enumerate(zip(back[:-1], back[1:])):
            dec.append(nn.Linear(a, b))
            if j < len(back) - 2:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.radius * F.normalize(self.encoder(x), dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)


def build_autoencoder(config: dict[str, Any]) -> nn.Module:
    """An autoencoder from its JSON config (:func:`embedder_config`)."""
    if config["kind"] == "conv":
        return ConvAE(
            config["in_shape"],
            config["embed_dim"],
            config["widths"],
            config["kernels"],
            config["radius"],
        )
    if config["kind"] == "dense":
        return DenseAE(
            config["in_shape"][0], config["embed_dim"], config["hidden"], config["radius"]
        )
    raise ValueError(f"unknown autoencoder kind {config['kind']!r}")


def embedder_config(module: nn.Module) -> dict[str, Any]:
    """The JSON config that rebuilds an (untrained) embedder of the same architecture."""
    if isinstance(module, ConvAE):
        return {
            "kind": "conv",
            "in_shape": list(module.in_shape),
            "embed_dim": module.embed_dim,
            "widths": module.widths,
            "kernels": module.kernels,
            "radius": module.radius,
        }
    if isinstance(module, DenseAE):
        return {
            "kind": "dense",
            "in_shape": list(module.in_shape),
            "embed_dim": module.embed_dim,
            "hidden": module.hidden,
            "radius": module.radius,
        }
    if isinstance(module, PCAEmbed):
        return {
            "kind": "pca",
            "in_shape": list(module.in_shape),
            "dim": int(module.components.shape[1]),
        }
    raise TypeError(f"not a clustering embedder: {type(module).__name__}")


def build_embedder(config: dict[str, Any]) -> nn.Module:
    """An embedder from :func:`embedder_config` (weights/buffers loaded afterwards)."""
    if config["kind"] == "pca":
        shape = [int(v) for v in config["in_shape"]]
        flat = int(np.prod(shape))
        return PCAEmbed(torch.zeros(shape), torch.zeros(flat, int(config["dim"])))
    return build_autoencoder(config)


# ---------------------------------------------------------------- IDEC training
@dataclass
class IDECSettings:
    """Hyperparameters of IDEC (defaults: Liu & Arik's fork where known, else IDEC's)."""

    embed_dim: int = 20
    radius: float = 8.0
    alpha: float = 1.0
    gamma: float = 0.1
    pretrain_epochs: int = 10
    max_iter: int = 2000
    update_interval: int = 140
    tol: float = 0.001
    batch_size: int = 256
    lr: float = 1e-3
    n_init: int = 20


@dataclass
class IDECResult:
    centres: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def encode_all(ae: Any, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings of every row of ``x`` (already standardised), in chunks."""
    return torch.cat([ae.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def encode_rows(
    embedder: Any, standardised: Callable[[Any], torch.Tensor], start: int, stop: int
) -> torch.Tensor:
    """Embeddings of rows ``[start, stop)`` (``standardised(slice)`` gives them), in chunks at
    global multiples of 4096 rows and products of 1024 rows (:func:`encode_all`): the products
    of the one-process fit, so a shard whose rows start at a multiple of 1024 gets bitwise the
    same embeddings (BLAS may round a product of a few rows differently)."""
    edges = [start, *range((start // 4096 + 1) * 4096, stop, 4096), stop]
    return torch.cat(
        [encode_all(embedder, standardised(slice(a, b))) for a, b in zip(edges[:-1], edges[1:])]
    )


def fit_idec(
    ae: nn.Module,
    x: torch.Tensor,
    n_clusters: int,
    s: IDECSettings,
    seed: int = 0,
    init: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> IDECResult:
    """Pretrain ``ae`` on ``x``, initialise centres by k-means, then refine with IDEC.

    Both phases run in :func:`whynet.core.training.train`. Pretraining: ``pretrain_epochs``
    epochs of ``MSE(x, decode(encode(x)))``. Clustering (one pass of at most ``max_iter``
    mini-batches): loss ``MSE(x, decode(z)) + gamma * KL(P || Q)`` (IDEC eq. 3); P recomputed
    from Q on all of ``x`` every ``update_interval`` iterations (DEC eq. 3); stop when fewer
    than ``tol`` of the hard assignments changed since the previous update.
    ``init(ae, z)``, when given, returns the initial centres from the pretrained autoencoder and
    the embedding ``z`` of ``x`` (default: k-means with ``n_init`` restarts by inertia).
    """
    # one generator for the mini-batch order of both phases (the order depends on seed only)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"pretrain_loss": [], "loss": [], "delta": [], "kl": []}

    def reconstruction(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], int]:
        xb = x[idx]
        loss = F.mse_loss(ae(xb)[1], xb)
        return loss, {"loss": float(loss.detach())}, len(idx)

    if s.pretrain_epochs > 0:
        done = train(
            ae,
            lambda epoch, _: _batches(len(x), s.batch_size, gen),
            reconstruction,
            epochs=s.pretrain_epochs,
            lr=s.lr,
            seed=seed,
            progress=progress,
            desc="IDEC pretraining",
        )
        hist["pretrain_loss"] = [r["loss"] for r in done.history]
    ae.eval()
    z = encode_all(ae, x)
    start = (
        torch.from_numpy(kmeans(z.numpy(), n_clusters, n_init=s.n_init, seed=seed))
        if init is None
        else init(ae, z).float()
    )
    centres = nn.Parameter(start)
    if s.max_iter <= 0:
        return IDECResult(centres.detach().clone(), hist)
    p_all = torch.empty(0)

    def iterations(epoch: int, _: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:
        """Mini-batches of the clustering phase, with the target update (and the stopping
        test) every ``update_interval`` iterations before the batch is handed out."""
        nonlocal p_all
        previous: torch.Tensor | None = None
        order: list[torch.Tensor] = []
        for it in range(s.max_iter):
            if it % s.update_interval == 0:
                ae.eval()
                with torch.no_grad():
                    q_all = soft_assign(encode_all(ae, x), centres, s.alpha)
                p_all = target_distribution(q_all)
                assign = q_all.argmax(1)
                if previous is not None:
                    delta = float((assign != previous).float().mean())
                    hist["delta"].append(delta)
                    if delta < s.tol:
                        return
                previous = assign
                ae.train()
            if not order:
                order = _batches(len(x), s.batch_size, gen)
            yield it, order.pop()

    def idec_loss(batch: tuple[int, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], int]:
        it, idx = batch
        xb = x[idx]
        zb, rec = ae(xb)
        kl = kl_loss(p_all[idx], soft_assign(zb, centres, s.alpha))
        loss = F.mse_loss(rec, xb) + s.gamma * kl
        stats = {"loss": float(loss.detach()), "kl": float(kl.detach())}
        if it % s.update_interval == 0:
            hist["loss"].append(stats["loss"])
            hist["kl"].append(stats["kl"])
        return loss, stats, len(idx)

    train(
        ae,
        iterations,
        idec_loss,
        epochs=1,
        optimizer=torch.optim.Adam([*ae.parameters(), centres], lr=s.lr),
        seed=seed,
        progress=progress,
        desc="IDEC clustering",
    )
    return IDECResult(centres.detach().clone(), hist)


# ---------------------------------------------------------------- the k-means fast path
class PCAEmbed(nn.Module):
    """Linear embedding ``z = (x - mean) @ components`` fitted by randomised SVD on a sample."""

    mean: torch.Tensor
    components: torch.Tensor

    def __init__(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)
        self.in_shape = tuple(int(v) for v in mean.shape)

    @classmethod
    def fit(cls, x: torch.Tensor, dim: int, seed: int = 0) -> PCAEmbed:
        flat = x.flatten(1).float()
        mean = flat.mean(0, dtype=torch.float64).float()
        dim = min(dim, flat.shape[0], flat.shape[1])
        with torch.random.fork_rng():  # svd_lowrank draws its sketch from the global generator
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(flat - mean, q=min(dim + 10, *flat.shape), niter=4)
        return cls(mean.view(x.shape[1:]), v[:, :dim].float().contiguous())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # the product in float64, rounded to x's dtype: the same embedding whatever the
        # thread count or the number of rows per product (float32 BLAS rounds those apart),
        # so shards embedded on workers equal the one-process embedding
        z = (x - self.mean).flatten(1).double() @ self.components.double()
        return z.to(x.dtype)
