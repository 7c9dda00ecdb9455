"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent
and Efficient Evaluation Strategy for Attribution Methods", ICML 2022).

Removing pixels by a fixed baseline (deletion, :mod:`.faithfulness`) leaks the removal mask's
*shape* to the model: the score then drops because of the mask, not only because of the
information removed (the paper's "class information leakage"). ROAD replaces every
removed pixel by the weighted mean of its 8 neighbours (direct neighbours weight 1/6, diagonal
ones 1/12: the paper's "noisy linear imputation"), solved jointly for all removed pixels as one
sparse linear system (removed neighbours are unknowns themselves), and adds Gaussian noise
(std ``noise``) so that the imputed values do not reveal the mask either. The model is *not*
retrained (ROAD vs ROAR). Pixels are removed in MoRF order (most relevant first: a faithful map
makes the score drop fast) or LeRF order (least relevant first: the score should stay high).

After removing the fraction ``p`` of the ``H*W`` pixels, exactly ``round(p * H * W)`` pixels
(all channels) are imputed; ties in the saliency are broken by row-major pixel index
(:func:`whynet.metrics.saliency_ranks`), as for deletion/insertion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from whynet.core import as_logits, predict_logits
from whynet.core.validation import check_batch_size
from whynet.metrics._common import as_saliency, check_images, scores, targets_for
from whynet.metrics.auc import trapezoid
from whynet.metrics.faithfulness import saliency_ranks

Order = Literal["morf", "lerf"]
RoadScore = Literal["accuracy", "softmax", "logit"]

# (row offset, column offset, weight) of the 8 neighbours (Rong et al. 2022)
NEIGHBOURS = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)
DEFAULT_PERCENTAGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Impute the removed pixels of one image by the weighted mean of their neighbours.

    Solves, for every removed pixel ``i`` and every channel, ``sum_{j in N(i)} w_ij (v_i - v_j)
    = 0``, i.e. ``v_i = sum_j w_ij v_j / sum_j w_ij`` over the neighbours ``j`` inside the image
    (known neighbours contribute their value, removed ones are unknowns). Every connected group
    of removed pixels that is not the whole image touches a known pixel, so the system (an
    irreducibly diagonally dominant M-matrix) has one solution.

    Parameters
    ----------
    image : np.ndarray
        (C, H, W) image.
    removed : np.ndarray
        (H, W) bool, the pixels to impute (all channels).

    Returns
    -------
    np.ndarray
        (C, H, W) float64 copy of ``image`` with the removed pixels imputed (no noise).
    """
    c, h, w = image.shape
    if removed.shape != (h, w):
        raise ValueError(f"removed must have shape {(h, w)}, got {removed.shape}")
    out = image.astype(np.float64).reshape(c, h * w).copy()
    flat = removed.reshape(-1).astype(bool)
    n = int(flat.sum())
    if n == 0:
        return out.reshape(c, h, w)
    if n == h * w:
        raise ValueError("cannot impute an image with every pixel removed (nothing is known)")
    var = np.full(h * w, -1, dtype=np.int64)
    idx = np.flatnonzero(flat)
    var[idx] = np.arange(n)
    rr, cc = np.divmod(idx, w)
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    rows, cols, vals = [], [], []
    for dr, dc, wt in NEIGHBOURS:
        r2, c2 = rr + dr, cc + dc
        ok = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
        i = np.flatnonzero(ok)
        j = r2[ok] * w + c2[ok]
        diag[i] += wt  # only neighbours inside the image count (the weights renormalise)
        unknown = flat[j]
        rows.append(i[unknown])
        cols.append(var[j[unknown]])
        vals.append(np.full(int(unknown.sum()), -wt))
        known = ~unknown
        np.add.at(rhs, i[known], wt * out[:, j[known]].T)
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    a = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    sol = spla.splu(a).solve(rhs)
    out[:, idx] = np.asarray(sol).reshape(n, c).T
    return out.reshape(c, h, w)


def noisy_linear_imputation(
    inputs: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of a batch (Rong et al. 2022).

    Parameters
    ----------
    inputs : torch.Tensor
        (B, C, H, W) images.
    removed : torch.Tensor
        (B, H, W) bool masks of the pixels to replace (all channels).
    noise : float
        Standard deviation of the Gaussian noise added to every imputed value (0: none).
    generator : torch.Generator, optional
        Source of the noise (CPU); drawn image by image, so a batch equals its images alone
        when the generator is advanced the same way.

    Returns
    -------
    torch.Tensor
        Imputed images, dtype and device of ``inputs``.
    """
    x = check_images(inputs)
    if removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(
            f"removed must have shape {(x.shape[0], *x.shape[-2:])}, got {tuple(removed.shape)}"
        )
    _check_noise(noise)
    xs = x.detach().cpu().double().numpy()
    ms = removed.detach().cpu().bool().numpy()
    out = torch.empty(x.shape, dtype=torch.float64)
    for i in range(len(xs)):
        img = torch.from_numpy(linear_imputation(xs[i], ms[i]))
        if noise > 0:
            m = torch.from_numpy(ms[i])
            eps = torch.randn((x.shape[1], int(m.sum())), generator=generator, dtype=torch.float64)
            img[:, m] += noise * eps
        out[i] = img
    return out.to(device=x.device, dtype=x.dtype)


def _check_noise(noise: float) -> None:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a float >= 0, got {noise!r}")


def _check_percentages(percentages: Sequence[float]) -> torch.Tensor:
    p = torch.as_tensor(list(percentages), dtype=torch.float64)
    if p.dim() != 1 or len(p) == 0:
        raise ValueError("percentages must be a non-empty list of fractions")
    if bool(((p < 0) | (p >= 1)).any()):
        raise ValueError(
            f"percentages are fractions of the pixels in [0, 1), got {p.tolist()} "
            "(ROAD cannot impute an image with every pixel removed)"
        )
    return p


@torch.no_grad()
def road_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    target: Any = None,
    *,
    order: Order = "morf",
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    noise: float = 0.01,
    score: RoadScore = "accuracy",
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """The ROAD curve: the target's score after removing each fraction of pixels, (B, P) float64.

    Parameters
    ----------
    model : nn.Module
        The classifier (run in eval mode, parameters frozen, restored afterwards; not retrained).
    inputs : torch.Tensor
        (B, C, H, W) images in the model's input space.
    saliency : torch.Tensor or Explanation
        (B, H, W) maps (see :func:`whynet.metrics.as_saliency` for other shapes).
    target : None, int or (B,) tensor
        Class to score; ``None`` = the model's prediction on the unperturbed input.
    order : {"morf", "lerf"}
        Remove the most relevant pixels first (MoRF) or the least relevant first (LeRF).
    percentages : sequence of float
        Fractions of the pixels removed, each in [0, 1) (the paper: 10%, 20%, ..., 90%).
    noise : float
        Standard deviation of the imputation noise (the paper's reference code: 0.01).
    score : {"accuracy", "softmax", "logit"}
        ``"accuracy"`` (the paper): 1.0 where the argmax on the imputed image is the target, so
        the mean over images is the accuracy; or the target's probability / raw logit.
    seed : int
        Seeds the noise; images and percentages draw in order, so the result does not depend
        on ``batch_size``.
    batch_size : int
        Imputed images per forward pass.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    if score not in ("accuracy", "softmax", "logit"):
        raise ValueError(f"score must be 'accuracy', 'softmax' or 'logit', got {score!r}")
    x = check_images(inputs)
    check_batch_size(batch_size)
    _check_noise(noise)
    p = _check_percentages(percentages)
    b, _, h, w = x.shape
    sal = as_saliency(saliency, (h, w), n=b).to(x.device)
    classes = targets_for(model, x, target, batch_size)
    ranks = saliency_ranks(sal).cpu()
    counts = torch.round(p * h * w).long()
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty(b * len(p), dtype=torch.float64)
    pending: list[torch.Tensor] = []

    def flush(end: int) -> None:
        # score the pending imputed images, the rows ending at ``end`` of the flat B x P grid
        batch = torch.stack(pending).to(x.device)
        rows = torch.arange(end - len(pending), end) // len(p)
        logits = as_logits(predict_logits(model, batch, batch_size))
        cls = classes[rows.to(classes.device)]
        if score == "accuracy":
            val = (logits.argmax(-1) == cls.to(logits.device)).double()
        else:
            val = scores(logits, cls, score).double()
        out[end - len(pending) : end] = val.cpu()
        pending.clear()

    for i in range(b):
        for k, n_removed in enumerate(counts.tolist()):
            if order == "morf":
                removed = ranks[i] < n_removed
            else:
                removed = ranks[i] >= h * w - n_removed
            pending.append(noisy_linear_imputation(x[i : i + 1], removed[None], noise, gen)[0])
            if len(pending) == batch_size:
                flush(i * len(p) + k + 1)
    if pending:
        flush(b * len(p))
    return out.view(b, len(p))


def road_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    target: Any = None,
    *,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-image area under the ROAD curve over the removed fraction, (B,) float64.

    Trapezoid rule over ``percentages`` (sorted ascending), divided by their range so that a
    constant curve ``c`` has area ``c``. MoRF: lower is more faithful; LeRF: higher. Keyword
    arguments as :func:`road_curve` (``order``, ``noise``, ``score``, ``seed``, ``batch_size``).
    """
    p = _check_percentages(percentages)
    if len(p) < 2 or bool((p[1:] <= p[:-1]).any()):
        raise ValueError("road_auc needs at least 2 strictly increasing percentages")
    curve = road_curve(model, inputs, saliency, target, percentages=percentages, **kwargs)
    return trapezoid(curve, p) / float(p[-1] - p[0])
