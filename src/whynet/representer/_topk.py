"""A running top-k over blocks of representer values (Yeh et al. 2018, Sec. 4.3 "top points")."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _merge(
    run: tuple[torch.Tensor, torch.Tensor] | None,
    values: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    largest: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if run is None:
        return values, idx
    cand_v, cand_i = torch.cat([run[0], values], 1), torch.cat([run[1], idx], 1)
    m = cand_v.topk(min(k, cand_v.shape[1]), dim=1, largest=largest)
    return m.values, cand_i.gather(1, m.indices)


def running_topk(
    blocks: Iterable[tuple[int, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hi_idx, hi_values, lo_idx, lo_values)`` (B, k) over ``(start, values (B, nb))`` blocks.

    Each block's own top-k (largest and smallest) is merged with the running one: a (B, 2k)
    merge per block, never a copy of the block, so memory stays O(B x block).
    """
    hi: tuple[torch.Tensor, torch.Tensor] | None = None
    lo: tuple[torch.Tensor, torch.Tensor] | None = None
    for a, v in blocks:
        kk = min(k, v.shape[1])
        t = v.topk(kk, dim=1)
        hi = _merge(hi, t.values, t.indices + a, k, True)
        t = v.topk(kk, dim=1, largest=False)
        lo = _merge(lo, t.values, t.indices + a, k, False)
    if hi is None or lo is None:
        raise ValueError("no training points")
    return hi[1], hi[0], lo[1], lo[0]


def ordered(
    values: torch.Tensor, idx: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of each row's candidates ``(idx (B, K), values (B, K))``, deterministic.

    By value (largest or smallest first), equal values by lower training index: the order of a
    stable sort of the whole row, whatever order the candidates came in.
    """
    by_idx = idx.argsort(dim=1)
    v, i = values.gather(1, by_idx), idx.gather(1, by_idx)
    s = v.sort(dim=1, descending=largest, stable=True)
    return i.gather(1, s.indices[:, :k]), s.values[:, :k]


def merge_top(
    run: tuple[torch.Tensor, torch.Tensor] | None,
    values: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    largest: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, idx)``: the ``k`` extreme of a running set and a block's values (B, nb) at
    training indices ``idx`` (nb,)."""
    t = values.topk(min(k, values.shape[1]), dim=1, largest=largest)
    return _merge(run, t.values, idx[t.indices], k, largest)
