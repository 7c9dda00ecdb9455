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
