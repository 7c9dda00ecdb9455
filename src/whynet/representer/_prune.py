"""Exact pruning of the top-points scan: read the training points that can matter (issue 17).

A representer value is bounded by its coefficient: ``|v_i| = |alpha_ic| |1 + f_i . f_t| <=
|alpha_ic| + |alpha_ic| ||f_i|| ||f_t||`` (Cauchy-Schwarz on Yeh et al. 2018, Thm. 3.1). Once
per fit and class (lazily, on the first query of that class) the training points are ordered by
decreasing ``|alpha_ic| (1 + ||f_i|| r)`` (``r`` the median row norm: any ``r`` is exact, this
one orders well for test points like the training ones), and for every ``CHUNK`` rows of that
order the suffix maxima of ``|alpha_ic|`` and ``|alpha_ic| ||f_i||`` are kept: everything from
a chunk on is bounded by ``A_rest + N_rest ||f_t||`` for *any* test point. The scan reads blocks
in that order (growing from ``FIRST`` rows), keeps ``K`` candidates per side in float64, and
stops for a query once the k-th largest value is above the bound of what is left and of what
was dropped, and the k-th smallest below its negative: exact by construction (rounding of the
values and of the bound included, :func:`whynet.representer._certify.slack64`). A query that
does not stop within ``limit`` rows is left to the next stage.
"""

from __future__ import annotations

from typing import Any

import torch

from whynet.representer import _scoring as sc
from whynet.representer._topk import merge_top, ordered

#: rows per chunk of the order (the granularity of the suffix bounds)
CHUNK = 256
#: rows of the first block (then doubling, up to a cache-sized tile)
FIRST = 512
#: bytes of float64 rows kept per class for the first blocks of the scan
KEEP_BYTES = 4 << 20
#: most candidates per side the pruned scan keeps (beyond: the full scan)
MAX_K = 256
#: rows the pruned scan reads at most: ``max(LIMIT_MIN, n // LIMIT_DIV)`` (it gathers rows in
#: float64, so reading much more than this costs more than the float32 full scan)
LIMIT_MIN, LIMIT_DIV = 4096, 16


def order(rp: Any, p: dict[Any, Any], c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(perm (n,), suffix max |alpha| per chunk, suffix max |alpha| ||f|| per chunk)``."""
    key = ("order", c)
    if key not in p:
        alpha_t = sc.alpha_t(rp)
        a = alpha_t[c].abs()
        an = a * p["norms"]
        perm = (a + an * p["norms"].median()).argsort(descending=True, stable=True)
        n = perm.numel()
        pad = (-n) % CHUNK

        def suffix_max(x: torch.Tensor) -> torch.Tensor:
            per = torch.nn.functional.pad(x[perm], (0, pad)).reshape(-1, CHUNK).amax(1)
            return per.flip(0).cummax(0).values.flip(0)

        up = 1 + 1e-12  # the products above round: keep an upper bound
        p[key] = (perm.to(rp.features_.device), suffix_max(a) * up, suffix_max(an) * up)
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = p[key]
    return out


def _rows(
    rp: Any, p: dict[Any, Any], c: int, pos: int, size: int, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(idx, rows float64, alpha)`` of the order's rows ``pos : pos + size`` (in storage order:
    sequential reads). The first blocks of each class (FIRST, 2 FIRST, ... rows, up to
    ``KEEP_BYTES``) are kept: most queries stop within them."""
    key = ("rows", c, pos, size)
    if key in p:
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = p[key]
        return out
    perm = order(rp, p, c)[0]
    idx = perm[pos : pos + size].sort().values
    fb = rp.features_[idx].to(dev, torch.float64)
    idx = idx.to(dev)
    out = (idx, fb, sc.alpha_t(rp)[c][idx])
    if pos + FIRST == size and (pos + size) * fb.shape[1] * 8 <= KEEP_BYTES:  # the doubling run
        p[key] = out
    return out


def limit(n: int) -> int:
    return max(LIMIT_MIN, n // LIMIT_DIV)


def scan(
    rp: Any, p: dict[Any, Any], q64: torch.Tensor, tnorm: torch.Tensor, c: int, k: int, kk: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Pruned stage for queries ``q64`` (b, D) of class ``c``: ``(ok (b,), (hi_i, hi_v, lo_i,
    lo_v))`` valid where ``ok``; ``STATS["pruned_rows"]`` counts the rows read per query."""
    from whynet.representer._certify import STATS, magnitude, slack64

    perm, suf_a, suf_n = order(rp, p, c)
    n, b, dev = perm.numel(), q64.shape[0], q64.device
    cls = torch.full((b,), c, device=dev)
    slack = slack64(magnitude(p, cls, tnorm), tnorm, q64.shape[1])
    ok = torch.zeros(b, dtype=torch.bool, device=dev)
    act = torch.arange(b, device=dev)
    pos, size, stop = 0, FIRST, min(n, limit(n))
    hv = hi = lv = lo = torch.empty(0)
    while act.numel() and pos < stop:
        idx, fb, ac = _rows(rp, p, c, pos, size, dev)
        if pos == 0:  # every query: no indexing by the active ones
            v = torch.addcmul(ac, ac, q64 @ fb.T)  # sc.terms' formula, alpha broadcast
            hv, hi = merge_top(None, v, idx, kk, True)
            lv, lo = merge_top(None, v, idx, kk, False)
        else:
            v = torch.addcmul(ac, ac, q64[act] @ fb.T)
            h = merge_top((hv[act], hi[act]), v, idx, kk, True)
            m = merge_top((lv[act], lo[act]), v, idx, kk, False)
            hv[act], hi[act], lv[act], lo[act] = h[0], h[1], m[0], m[1]
        STATS["pruned_rows"] += int(idx.numel()) * int(act.numel())
        pos += idx.numel()
        size = min(2 * size, max(FIRST, sc.TOP_BLOCK_ELEMS // max(1, int(act.numel()))))
        if pos >= n:
            rest = torch.full((act.numel(),), -torch.inf, dtype=torch.float64, device=dev)
        else:
            j = pos // CHUNK
            rest = suf_a[j] + suf_n[j] * tnorm[act] + slack[act]
        # what was dropped (beyond the kk kept) is at most the kk-th: strict, so equal values
        # at the k-th place are all kept and ordered by index
        done = (hv[act, k - 1] > torch.maximum(rest, hv[act, kk - 1])) & (
            lv[act, k - 1] < torch.minimum(-rest, lv[act, kk - 1])
        )
        ok[act[done]] = True
        act = act[~done]
    hi_i, hi_v = ordered(hv, hi, k, True)
    lo_i, lo_v = ordered(lv, lo, k, False)
    return ok, (hi_i, hi_v, lo_i, lo_v)
