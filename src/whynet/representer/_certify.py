"""Exact top points at float32 cost: certified ranking, float64 values (issue 17).

The representer value of training point ``i`` for a test input ``t`` and class ``c`` is
``v_i = alpha_ic (1 + f_i . f_t)`` (Yeh et al. 2018, Thm. 3.1). :func:`top` returns the ``k``
largest and smallest values per query *exactly* (the indices of the float64 formula, its values
to float64 rounding, equal values by lower index) in three stages, each one certified, the next
one only for the queries the previous one could not certify:

1. :func:`whynet.representer._prune.scan`: training points in decreasing order of a bound on
   ``|v_i|``, float64 values, stopped once nothing left can enter the top (most queries).
2. :func:`scan32`: every training point ranked with float32 products straight from the
   float32 features, ``K = k + EXTRA`` candidates kept per side, rescored in float64. Rounding
   (Higham 2002, Eq. 3.5: ``|fl(x.y) - x.y| <= gamma_n sum_j |x_j y_j|``,
   ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``), with the test side rounded to float32 too and
   the coefficients scaled in float32, bounds the error of every ranked value by
   ``gamma_{D+4} |alpha_ic| (1 + ||f_i|| ||f_t||) <= gamma_{D+4} (A_c + N_c ||f_t||)``
   (:func:`magnitude`; ``A_c = max_i |alpha_ic|``, ``N_c = max_i |alpha_ic| ||f_i||``, made
   once per fit). The candidates hold the exact top-k when the K-th float32 score plus that
   bound is below the k-th rescored value (for the largest; mirrored for the smallest).
3. :func:`exact`: the float64 blocks of :func:`whynet.representer._scoring.blocks` (the
   fallback; a full sort of the query's values if even K candidates cannot separate ties).

``STATS`` counts the queries each stage settled and the rows the pruned scan read.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch

from whynet.representer import _prune as prune
from whynet.representer import _scoring as sc
from whynet.representer._topk import SUB, RunningTop, ordered, running_topk

#: candidates kept beyond ``k`` per side: room for the certificate's margin
EXTRA = 16
#: the float32 scan's first tile is this many tiles wide (its top-k sets the running k-th
#: that later tiles' sub-blocks are compared with)
FIRST_TILES = 4
#: queries per group (one class) at most: a class's rows are read once per group, and the
#: working memory is O(group x (k + a cache-sized block))
GROUP = 4096
#: float32 products stay finite (no overflow) while ``max ||f_i|| ||f_t||`` and the values'
#: bound are below this
FINITE32 = 1e30
U32, U64 = 2.0**-24, 2.0**-53
#: queries settled by each stage, rows read by the pruned scan
STATS: Counter[str] = Counter()


def gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``."""
    return n * u / (1 - n * u)


def applies(rp: Any) -> bool:
    """The exact float64 kernel (the default) of a representer fit (not RPS-LJE)."""
    return (
        rp.lje_hinv_ is None and sc.kernel_dtype(rp) == torch.float64 and rp.dtype == torch.float64
    )


def parts(rp: Any) -> dict[Any, Any]:
    """Fixed after fit (in :func:`whynet.representer._scoring.derived`): row norms, ``A_c``,
    ``N_c`` (inflated to upper bounds of their float64 rounding) and alpha^T in float32."""
    d = sc.derived(rp)
    if "norms" not in d:
        alpha_t = sc.alpha_t(rp)
        feats = rp.features_
        dim = feats.shape[1]
        up = 1 + 4 * (dim + 4) * U64
        norms = torch.empty(feats.shape[0], dtype=torch.float64, device=alpha_t.device)
        for a in range(0, feats.shape[0], sc.CONVERT_ROWS):  # no float64 copy of the whole
            fb = feats[a : a + sc.CONVERT_ROWS].to(alpha_t.device, torch.float64)
            norms[a : a + fb.shape[0]] = fb.norm(dim=1)
        norms *= up
        mag = alpha_t.abs()
        d["norms"] = norms
        d["amax"] = mag.amax(1) * up
        d["nmax"] = (mag * norms).amax(1) * up
        d["fmax"] = float(norms.max()) if norms.numel() else 0.0
        d["alpha32"] = alpha_t.float()
    return d


def magnitude(p: dict[Any, Any], classes: torch.Tensor, tnorm: torch.Tensor) -> torch.Tensor:
    """``A_c + N_c ||f_t||`` (B,): a bound on ``|v_i|`` over every training point."""
    return p["amax"][classes] + p["nmax"][classes] * tnorm


def slack64(mag: torch.Tensor, tnorm: torch.Tensor, dim: int) -> torch.Tensor:
    """Bound on the float64 rounding of a value (ours and the reference's, underflow too)."""
    return 2 * gamma(dim + 4, U64) * mag + 2.0**-1060 * (dim + 2 + math.sqrt(dim) * tnorm)


def err32(mag: torch.Tensor, tnorm: torch.Tensor, dim: int) -> torch.Tensor:
    """Bound on the error of a float32-ranked value (see the module docstring; underflow to
    subnormals adds at most ``2^-149`` per rounded operation)."""
    return gamma(dim + 4, U32) * mag + 2.0**-146 * (dim + 2 + math.sqrt(dim) * tnorm)


def exact_at(rp: Any, q64: torch.Tensor, c: int, idx: torch.Tensor) -> torch.Tensor:
    """float64 values (b, K) of class ``c`` at training indices ``idx`` (b, K) (same formula
    as :func:`whynet.representer._scoring.terms`)."""
    alpha_t = sc.alpha_t(rp)
    feats = rp.features_
    rows = feats[idx.reshape(-1).to(feats.device)].to(q64.device, torch.float64)
    k = torch.bmm(rows.reshape(*idx.shape, -1), q64[:, :, None])[..., 0]
    return sc.terms(k, alpha_t[c][idx], torch.float64)


def scan32(
    rp: Any, p: dict[Any, Any], q64: torch.Tensor, c: int, kk: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((values, idx) largest, (values, idx) smallest)`` (b, kk) of the float32 ranking.

    Blocks of about ``TOP_BLOCK_ELEMS / b`` training rows (the (b, nb) tile stays in cache),
    read from the float32 features as they are (a memory map too)."""
    feats, a32 = rp.features_, p["alpha32"][c]
    q32 = q64.float()
    n, b = feats.shape[0], q32.shape[0]
    rows = min(rp.block_size, max(sc.TOP_MIN_ROWS, sc.TOP_BLOCK_ELEMS // b))
    rows = max(SUB, rows // SUB * SUB)  # whole sub-blocks (RunningTop's fast path)
    run = RunningTop(kk)
    first = min(n, FIRST_TILES * rows)  # a wider first tile: a tighter running k-th early
    for s, e in [(0, first)] + [(a, a + rows) for a in range(first, n, rows)]:
        fb = feats[s:e].to(q32.device)
        ab = a32[s : s + fb.shape[0]]
        if b >= fb.shape[1]:  # [alpha_i f_i, alpha_i] . [f_t, 1]: scaling nb x D < the tile
            v = torch.addmm(ab, q32, (fb * ab[:, None]).T)
        else:
            v = torch.addcmul(ab, ab, q32 @ fb.T)
        run.add(v, torch.arange(s, s + fb.shape[0], device=q32.device))
    hi, lo = run.hi, run.lo
    assert hi is not None and lo is not None
    return hi, lo


def certified32(
    rp: Any, p: dict[Any, Any], q64: torch.Tensor, tnorm: torch.Tensor, c: int, k: int, kk: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Stage 2 for queries ``q64`` (b, D) of class ``c``: ``(ok (b,), (hi_i, hi_v, lo_i,
    lo_v))``, the results valid where ``ok`` (the certificate held)."""
    dim = q64.shape[1]
    cls = torch.full((q64.shape[0],), c, device=q64.device)
    mag = magnitude(p, cls, tnorm)
    (hs, hi), (ls, li) = scan32(rp, p, q64, c, kk)
    hv, lv = exact_at(rp, q64, c, hi), exact_at(rp, q64, c, li)
    hi_i, hi_v = ordered(hv, hi, k, True)
    lo_i, lo_v = ordered(lv, li, k, False)
    margin = err32(mag, tnorm, dim) + slack64(mag, tnorm, dim)
    ok = (hi_v[:, -1] > hs[:, -1].double() + margin) & (lo_v[:, -1] < ls[:, -1].double() - margin)
    # products that could overflow float32 rank nothing: such queries go to the exact stage
    ok &= (mag < FINITE32) & (p["fmax"] * tnorm < FINITE32)
    return ok, (hi_i, hi_v, lo_i, lo_v)


def exact(
    rp: Any, q64: torch.Tensor, c: int, k: int, kk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 3: the float64 blocks, ``kk`` candidates; a full stable sort where ``kk`` equal
    values at the k-th place leave the order open (ties beyond the candidates)."""
    n, b = rp.features_.shape[0], q64.shape[0]
    cls = torch.full((b,), c, device=q64.device)
    rows = max(sc.TOP_MIN_ROWS, sc.TOP_BLOCK_ELEMS // b)
    hi, hv, lo, lv = running_topk(sc.blocks(rp, q64, cls, rows), kk)
    hi_i, hi_v = ordered(hv, hi, k, True)
    lo_i, lo_v = ordered(lv, lo, k, False)
    if kk < n:
        tied = (hi_v[:, -1] <= hv[:, -1]) | (lo_v[:, -1] >= lv[:, -1])
        if bool(tied.any()):
            STATS["full_sort"] += int(tied.sum())
            r = tied.nonzero()[:, 0]
            v = sc.values(rp, q64[r], cls[r])
            idx = torch.arange(n, device=v.device).expand_as(v)
            hi_i[r], hi_v[r] = ordered(v, idx, k, True)
            lo_i[r], lo_v[r] = ordered(v, idx, k, False)
    return hi_i, hi_v, lo_i, lo_v


#: the stages in the order they are tried
STAGES = ("pruned", "float32", "exact")


def _stage(
    name: str,
    rp: Any,
    p: dict[Any, Any],
    q64: torch.Tensor,
    tnorm: torch.Tensor,
    c: int,
    k: int,
    kk: int,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if name == "pruned":
        return prune.scan(rp, p, q64, tnorm, c, k, kk)
    if name == "float32":
        return certified32(rp, p, q64, tnorm, c, k, kk)
    return torch.ones(q64.shape[0], dtype=torch.bool, device=q64.device), exact(rp, q64, c, k, kk)


def top(rp: Any, features: torch.Tensor, classes: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """``(hi_idx, hi_values, lo_idx, lo_values)`` (B, k), exact (see the module docstring).

    Queries are grouped by class (up to ``GROUP`` at a time): a class's coefficients are one row
    of alpha^T, so a block is read once for all the queries of that class (no (B, nb) gather of
    coefficients). Kernels this module does not certify (a float32 kernel, RPS-LJE) take the
    block path :func:`whynet.representer._scoring.top`."""
    if not applies(rp):
        return sc.top(rp, features, classes, k)
    p = parts(rp)
    alpha_t = sc.alpha_t(rp)
    dev = alpha_t.device
    n, dim = rp.features_.shape
    kk = min(n, k + EXTRA)
    q64_all = features.to(dev, torch.float64)
    b = q64_all.shape[0]
    tnorm_all = q64_all.norm(dim=1) * (1 + 4 * (dim + 4) * U64)
    out = (
        torch.empty(b, k, dtype=torch.long, device=dev),
        torch.empty(b, k, dtype=torch.float64, device=dev),
        torch.empty(b, k, dtype=torch.long, device=dev),
        torch.empty(b, k, dtype=torch.float64, device=dev),
    )
    classes = classes.to(dev)
    f32 = rp.features_.dtype == torch.float32
    for r0 in range(0, b, GROUP):
        chunk = classes[r0 : r0 + GROUP]
        for c in chunk.unique().tolist():
            rows = (chunk == c).nonzero()[:, 0] + r0
            q64, tnorm = q64_all[rows], tnorm_all[rows]
            for name in STAGES:
                if name != "exact" and (kk >= n or (name == "pruned" and kk > prune.MAX_K)):
                    continue
                if name == "float32" and not f32:
                    continue
                ok, res = _stage(name, rp, p, q64, tnorm, c, k, kk)
                sel = ok.nonzero()[:, 0]
                for o, v in zip(out, res, strict=True):
                    o[rows[sel]] = v[sel]
                STATS[name] += len(sel)
                if bool(ok.all()):
                    break
                keep = (~ok).nonzero()[:, 0]
                rows, q64, tnorm = rows[keep], q64[keep], tnorm[keep]
    return out
