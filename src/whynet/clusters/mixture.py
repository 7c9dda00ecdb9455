"""The surrogate's layer weights w_l (Liu & Arik 2020: p(y | x) = sum_l w_l q_l(x)^T H_l /
sum_l w_l): checks of given weights, the held-out split and the EM fit of learned ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from whynet.clusters.layer import LayerClusterer, class_counts, posterior_table


def check_weights(weights: Any, n: int, name: str = "layer_weights") -> torch.Tensor:
    """Given weights as float64 ``(n,)``: finite, >= 0, not all zero; None = all ones."""
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


def split_holdout(
    n: int, share: float, n_clusters: int, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``share`` of ``n`` training points held out (sorted) and the rest (the pool the
    clustering may be fitted on), drawn from ``gen``."""
    n_out = max(1, round(share * n))
    if n - n_out < n_clusters:
        raise ValueError(
            f"the weight/restart fit holds out {n_out} of {n} training points, leaving fewer "
            f"than n_clusters={n_clusters}; pass more data or fixed layer_weights"
        )
    holdout = np.sort(gen.choice(n, n_out, replace=False))
    keep = np.ones(n, dtype=bool)
    keep[holdout] = False
    return holdout, np.flatnonzero(keep)


def fit_layer_weights(
    clusterers: Sequence[LayerClusterer],
    target: torch.Tensor,
    holdout: np.ndarray,
    n_classes: int,
    *,
    hard: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Learn w_l on the held-out training points: tables from the other training points,
    q_l of the held-out embeddings (one-hot with ``hard``), EM on the mixture log-likelihood
    of their targets (:func:`fit_mixture_weights`). Returns the weights and a summary."""
    ho = torch.from_numpy(holdout)
    t = target[ho]
    parts, single = [], []
    for c in clusterers:
        out = class_counts(c.assign_[ho], t, c.n_clusters, n_classes)
        table = posterior_table(c.counts_ - out, c.smoothing)
        dev = c.centres_.device
        p = (c.q(c.embeddings_[ho].to(dev), hard=hard) @ table.to(dev)).cpu()
        parts.append(p[torch.arange(len(t)), t])
        single.append(p)
    w, info = fit_mixture_weights(torch.stack(parts))

    def agree(p: torch.Tensor) -> float:
        return float((p.argmax(1) == t).double().mean())

    equal = sum(single) / len(single)
    fitted = sum(float(wi) * p for wi, p in zip(w, single))
    return w, {
        "n_holdout": len(holdout),
        **info,
        "holdout_fidelity_equal": agree(equal),  # type: ignore[arg-type]
        "holdout_fidelity_fitted": agree(fitted),  # type: ignore[arg-type]
        "holdout_fidelity_per_layer": [agree(p) for p in single],
    }
