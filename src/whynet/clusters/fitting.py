"""The steps of :meth:`ClusterSurrogate.fit` around the per-layer clusterers, shared with the
sharded fit of ``whynet.scale`` (same draws, same checks, same last step, hence the same
surrogate from the same activations).

- :func:`fit_rows`: the held-out points of the layer-weight / restart fit and the clustering's
  fitting sample, drawn from ``seed`` (Liu & Arik 2020 fit on a sample; the weights on held-out
  training points);
- :func:`layer_inits`: given initial centres per layer;
- :func:`finish`: the layer weights w_l (learned or given) and the fitted state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from whynet.clusters.layer import LayerClusterer, pack_state
from whynet.clusters.mixture import check_weights, fit_layer_weights, split_holdout

if TYPE_CHECKING:
    from whynet.clusters.surrogate import ClusterSurrogate

#: what ``init`` of a fit may be: centres per layer name, or one per layer in order
Inits = Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None


def check_logits(logits: torch.Tensor) -> int:
    """The number of classes of ``(B, n_classes)`` class scores (n_classes >= 2)."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            "the model must output (B, n_classes) class scores with "
            f"n_classes >= 2; got shape {tuple(logits.shape)}"
        )
    return int(logits.shape[1])


def check_size(s: ClusterSurrogate, n: int) -> None:
    if n == 0:
        raise ValueError("train_data is empty")
    if s.n_clusters > n:
        raise ValueError(
            f"n_clusters={s.n_clusters} is larger than the number of training points ({n})"
        )
    if n < s.batch_size:
        raise ValueError(
            f"train_data has {n} points, fewer than one batch (batch_size={s.batch_size}); pass "
            "a smaller batch_size or more data"
        )


def split_rows(
    s: ClusterSurrogate, n: int, gen: np.random.Generator
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Held-out training points for ``layer_weights="fit"`` / likelihood restart selection
    and the pool of the rest (which the clustering may be fitted on); (None, None) when
    neither is asked for."""
    select = s.restart_selection == "likelihood"
    if not isinstance(s.layer_weights, str) and not select:
        return None, None
    return split_holdout(n, s.weight_holdout, s.n_clusters, gen)


def fit_rows(
    s: ClusterSurrogate, n: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """``(holdout, pool, sample)`` of ``n`` training points, drawn from ``s.seed``: the
    held-out rows and the rest (:func:`split_rows`), and the sorted rows the embedder and the
    clustering are fitted on (at most ``max_fit_points`` of the pool; None = every point)."""
    gen = np.random.default_rng(s.seed)
    holdout, pool = split_rows(s, n, gen)
    sample = pool
    size = n if pool is None else len(pool)
    if s.max_fit_points is not None and size > s.max_fit_points:
        choose_from = n if pool is None else pool
        sample = np.sort(gen.choice(choose_from, s.max_fit_points, replace=False))
    return holdout, pool, sample


def layer_inits(s: ClusterSurrogate, init: Inits) -> list[torch.Tensor | None]:
    """Initial centres per layer (None: k-means restarts) from a mapping by layer name or a
    sequence in layer order; refused with likelihood restart selection (nothing to select)."""
    if init is None:
        return [None] * len(s.layers)
    if s.restart_selection == "likelihood":
        raise ValueError(
            "init= gives the initial centres, restart_selection='likelihood' picks them among "
            "restarts: pass one of the two"
        )
    if isinstance(init, Mapping):
        unknown = sorted(set(init) - set(s.layers))
        if unknown or set(init) != set(s.layers):
            raise ValueError(
                f"init must give centres for every layer {s.layers}, got {sorted(init)}"
            )
        return [init[name] for name in s.layers]
    if isinstance(init, torch.Tensor) or len(init) != len(s.layers):
        raise ValueError(f"init must hold one (n_clusters, dim) tensor per layer {s.layers}")
    return list(init)


def finish(
    s: ClusterSurrogate,
    clusterers: Sequence[LayerClusterer],
    target: torch.Tensor,
    holdout: np.ndarray | None,
    n_classes: int,
    spilled: bool,
) -> ClusterSurrogate:
    """The layer weights (learned on ``holdout`` or given) and the surrogate's fitted state."""
    weights: torch.Tensor
    weight_fit: dict[str, Any]
    if isinstance(s.layer_weights, str):
        assert holdout is not None
        weights, weight_fit = fit_layer_weights(
            clusterers, target, holdout, n_classes, hard=s.assignment == "hard"
        )
    else:
        weights, weight_fit = check_weights(s.layer_weights, len(s.layers)), {}
    s._set_fitted(
        n_classes_=n_classes,
        n_train_=len(target),
        train_targets_=target,
        layer_weights_=weights,
        weight_fit_=weight_fit,
        spilled_to_disk_=spilled,
        **pack_state(clusterers),
    )
    return s
