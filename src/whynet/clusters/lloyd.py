"""Lloyd's k-means from given initial centres, in float64, over one array or over shards.

Lloyd (1982): assign every point to its nearest centre, move each centre to the mean of its
points, repeat until no centre moves (the assignment is then a fixed point). One step needs only
per-cluster sums and counts, which add over any split of the points; so the same driver
(:func:`lloyd`) runs over one array (:func:`lloyd_step` of it) or over the shards of a store
(``whynet.scale``: the steps of every shard summed in shard order), and with the same initial
centres both give the same centres (to float64 rounding of the sums).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def nearest_centre(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre and squared distance per row, ``||x||^2 - 2 x.c + ||c||^2`` in float64."""
    x, centres = x.double(), centres.double()
    d2 = (x * x).sum(1, keepdim=True) - 2.0 * x @ centres.T + (centres * centres).sum(1)[None]
    best = d2.min(1)
    return best.indices, best.values.clamp_min(0.0)


def lloyd_step(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums ``(k, d)`` and counts ``(k,)`` (float64) of the rows of ``x`` assigned
    to their nearest centre: the part of one Lloyd step that adds over shards."""
    x = x.flatten(1).double()
    assign, _ = nearest_centre(x, centres)
    sums = torch.zeros_like(centres, dtype=torch.float64).index_add_(0, assign, x)
    return sums, torch.bincount(assign, minlength=centres.shape[0]).double()


@dataclass
class LloydResult:
    centres: torch.Tensor  # (k, d) float64
    n_iter: int
    converged: bool

    @property
    def history(self) -> dict[str, list[float]]:
        """What a clusterer records of the fit (``history_``)."""
        return {"lloyd_iter": [float(self.n_iter)], "lloyd_converged": [float(self.converged)]}


def lloyd(
    step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    init: torch.Tensor,
    max_iter: int = 300,
) -> LloydResult:
    """Lloyd iterations from ``init`` ``(k, d)``: ``step(centres)`` returns the summed
    per-cluster sums and counts of all points; the new centre is their mean (an empty cluster
    keeps its centre). Stops when no centre moves or after ``max_iter`` steps."""
    c = init.double().flatten(1).clone()
    n_iter, converged = 0, False
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        sums, counts = step(c)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        moved = bool((new != c).any())
        c = new
        if not moved:
            converged = True
            break
    return LloydResult(c, n_iter, converged)


def check_init(init: torch.Tensor, k: int, d: int, where: str) -> torch.Tensor:
    """Initial centres as float64 ``(k, d)``, or a ValueError naming the expected shape."""
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"initial centres of {where} must be a tensor, got {type(init).__name__}")
    if tuple(init.shape) != (k, d):
        raise ValueError(
            f"initial centres of {where} have shape {tuple(init.shape)}; expected "
            f"(n_clusters, embedding dim) = ({k}, {d})"
        )
    if not bool(torch.isfinite(init).all()):
        raise ValueError(f"initial centres of {where} must be finite")
    return init.detach().double().cpu()
