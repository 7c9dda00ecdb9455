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


#: values per sub-block whose maximum (minimum) is compared with the running k-th: only the
#: sub-blocks that beat it are selected from (a max over a sub-block costs far less than top-k)
SUB = 64


class RunningTop:
    """The ``k`` largest and smallest values (and training indices) of rows fed in tiles.

    The first tile (and a tile whose width is not a multiple of ``SUB``) goes through top-k;
    after it, a tile is reduced to its sub-block maxima and minima, and only the sub-blocks
    beyond a row's running k-th value are merged (padded per row to the most such sub-blocks
    of any row). The result is the running top-k of all values: a sub-block whose maximum is
    not above the k-th holds nothing that could enter.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.hi: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lo: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, values: torch.Tensor, idx: torch.Tensor) -> None:
        """Feed a tile ``values`` (B, nb) at training indices ``idx`` (nb,)."""
        b, nb = values.shape
        if self.hi is None or self.lo is None or nb % SUB or self.hi[0].shape[1] < self.k:
            self.hi = merge_top(self.hi, values, idx, self.k, True)
            self.lo = merge_top(self.lo, values, idx, self.k, False)
            return
        sub = values.reshape(b, nb // SUB, SUB)
        self.hi = self._hot(sub, idx, sub.amax(2) > self.hi[0][:, -1:], True, self.hi)
        self.lo = self._hot(sub, idx, sub.amin(2) < self.lo[0][:, -1:], False, self.lo)

    def _hot(
        self,
        sub: torch.Tensor,
        idx: torch.Tensor,
        hot: torch.Tensor,
        largest: bool,
        run: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        counts = hot.sum(1)
        rows = counts.nonzero()[:, 0]
        if rows.numel() == 0:
            return run
        rj = hot[rows].nonzero()  # row-major: each row's sub-blocks in a run
        r, j = rj[:, 0], rj[:, 1]
        c = counts[rows]
        slot = torch.arange(r.numel(), device=r.device) - (c.cumsum(0) - c)[r]
        m, nr = int(c.max()), rows.numel()
        fill = -torch.inf if largest else torch.inf
        pv = torch.full((nr, m, SUB), fill, dtype=sub.dtype, device=sub.device)
        pi = torch.zeros((nr, m, SUB), dtype=torch.long, device=sub.device)
        pv[r, slot] = sub[rows[r], j]
        pi[r, slot] = idx.reshape(-1, SUB)[j]
        cand_v = torch.cat([run[0][rows], pv.reshape(nr, -1)], 1)
        cand_i = torch.cat([run[1][rows], pi.reshape(nr, -1)], 1)
        t = cand_v.topk(self.k, dim=1, largest=largest)
        v, i = run[0].clone(), run[1].clone()
        v[rows], i[rows] = t.values, cand_i.gather(1, t.indices)
        return v, i
