"""Representer values and top points of test inputs, block by block (Yeh et al. 2018, Thm. 3.1).

The value of training point ``i`` for test input ``t`` and class ``c`` is
``alpha_ic ([f_i, 1] . [f_t, 1]) = alpha_ic + alpha_ic (f_i . f_t)``. What is fixed after fit is
made once (:func:`kernel_parts`): ``alpha^T`` (C, n) contiguous and, when the training features
fit in one block, their copy in the kernel dtype. A query batch is one product with a block of
training features, one fused multiply-add with the block's coefficients and, for :func:`top`, a
top-k of the block merged into a running top-k (:func:`whynet.representer._topk.running_topk`).
Every path computes each value with the same operations (:func:`terms`), so blocked and
unblocked scoring give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from whynet.representer import _lje as lje
from whynet.representer._topk import running_topk

#: values (queries x training points) per block of :func:`top`: its (B, nb) arrays stay in the
#: cache instead of one (B, n) matrix per pass
TOP_BLOCK_ELEMS = 1 << 18
#: fewest training points per block of :func:`top` (keeps the products large enough)
TOP_MIN_ROWS = 2048
#: most training points per block converted to the kernel dtype (memory-mapped float32 read by
#: a float64 kernel): the converted copy stays in cache and its buffer is reused
CONVERT_ROWS = 8192


def kernel_dtype(rp: Any) -> torch.dtype:
    return rp.kernel_dtype or rp.dtype


def derived(rp: Any) -> dict[Any, Any]:
    """What is derived from the fitted ``features_`` and ``alpha_`` (filled lazily, once).

    Kept in ``rp._kcache`` with the tensors themselves and their in-place version counters:
    a refit, a load or an in-place change of either starts a fresh dict (nothing stale is used);
    a loaded explainer recomputes it on its first query.
    """
    feats, alpha = rp.features_, rp.alpha_
    key = (id(feats), id(alpha), feats._version, alpha._version)
    got = vars(rp).get("_kcache")
    if got is None or got[0] != key or got[1] is not feats or got[2] is not alpha:
        got = (key, feats, alpha, {})
        rp._kcache = got
    out: dict[Any, Any] = got[3]
    return out


def kernel_parts(rp: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(whole, alpha^T)``, made once per fit and kernel dtype.

    ``alpha^T`` (C, n) contiguous: a class's coefficients are one row. ``whole``: the training
    features (n, D) in the kernel dtype on the coefficients' device when they fit in one
    ``block_size`` block (no conversion per query); ``None`` (memory-mapped or larger than
    ``block_size``): converted block by block.
    """
    kdt = kernel_dtype(rp)
    feats, alpha = rp.features_, rp.alpha_
    d = derived(rp)
    key = ("whole", kdt, rp.block_size)
    if key not in d:
        small = feats.shape[0] <= rp.block_size
        d[key] = feats.to(alpha.device, kdt).contiguous() if small else None
    return d[key], alpha_t(rp)


def alpha_t(rp: Any) -> torch.Tensor:
    """``alpha^T`` (C, n) contiguous, made once per fit (no copy of the features)."""
    d = derived(rp)
    if "alpha_t" not in d:
        d["alpha_t"] = rp.alpha_.T.contiguous()
    out: torch.Tensor = d["alpha_t"]
    return out


def terms(k: torch.Tensor, coef: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``alpha + alpha * (f_i . f_t)`` in ``dtype``, written over ``coef`` (a fresh gather)."""
    return coef.addcmul_(coef, k.to(dtype))


def blocks(
    rp: Any, test: torch.Tensor, classes: torch.Tensor, rows: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, values (B, nb))`` over blocks of at most ``rows`` training points (default
    ``block_size``): one product ``F_block f_t`` and one fused multiply-add per block."""
    if rp.lje_hinv_ is not None:  # RPS-LJE: (W_i f_t)_c, block by block
        yield from lje.blocks(rp, test, classes)
        return
    kdt = kernel_dtype(rp)
    whole, alpha_t = kernel_parts(rp)
    ft = test.to(alpha_t.device, kdt)
    n = rp.features_.shape[0]
    rows = min(rows or rp.block_size, rp.block_size)
    src = rp.features_ if whole is None else whole
    if src.dtype != kdt or src.device != alpha_t.device:
        rows = min(rows, CONVERT_ROWS)
    for a in range(0, n, rows):
        fb = src[a : a + rows].to(alpha_t.device, kdt)
        coef = alpha_t[:, a : a + fb.shape[0]][classes]  # (B, nb), a fresh copy
        yield a, terms(ft @ fb.T, coef, rp.dtype)


def values(rp: Any, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Representer values (B, n): ``batch_size`` queries at a time, one product per block."""
    b, n = features.shape[0], rp.features_.shape[0]
    if b <= rp.batch_size and n <= rp.block_size:  # the common case: one product
        return next(blocks(rp, features, classes))[1]
    out = torch.empty(b, n, dtype=rp.dtype, device=rp.alpha_.device)
    for i in range(0, b, rp.batch_size):
        r = slice(i, i + rp.batch_size)
        for a, v in blocks(rp, features[r], classes[r]):
            out[r, a : a + v.shape[1]] = v
    return out


def top(rp: Any, features: torch.Tensor, classes: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """``(hi_idx, hi_values, lo_idx, lo_values)`` (B, k) without the (B, n) matrix.

    Queries go ``batch_size`` at a time; training points in blocks of about
    ``TOP_BLOCK_ELEMS / B`` (at least ``TOP_MIN_ROWS``, at most ``block_size``), each reduced to
    its top-k at once, so the pass over a block's values happens while they are in cache.
    """
    bs = rp.batch_size
    parts = []
    for r in range(0, features.shape[0], bs):
        f, c = features[r : r + bs], classes[r : r + bs]
        rows = max(TOP_MIN_ROWS, TOP_BLOCK_ELEMS // f.shape[0])
        parts.append(running_topk(blocks(rp, f, c, rows), k))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(4))
