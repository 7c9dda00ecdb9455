"""Training-data attribution quality: the linear datamodeling score and noisy-label detection.

- :func:`lds`: linear datamodeling score (Park et al., "TRAK", ICML 2023, Sec. 2; the benchmark
  of dattri, Deng et al., NeurIPS 2024). For ``M`` random training subsets ``S_m`` and a test
  point ``t``, the attribution predicts the output of the model retrained on ``S_m`` as
  ``g_t(S_m) = sum_{i in S_m} tau(t, i)``; LDS(t) is the Spearman rank correlation over the
  ``M`` subsets between ``g_t(S_m)`` and the retrained model's actual output ``f_t(S_m)``.
- :func:`noisy_label_auc`: ROC-AUC of a per-training-point score (self-influence, global
  importance) for finding the training points whose label was flipped.
- :func:`random_subsets`: seeded ``M`` subsets of exactly ``round(fraction * n)`` points.
- :func:`spearman`, :func:`roc_auc`: the rank statistics behind them (ties get average ranks).

All values are float64 tensors; LDS is one value per test point (aggregate with
``nanmean``: a test point whose retrained outputs are all equal has no rank correlation).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["lds", "noisy_label_auc", "random_subsets", "roc_auc", "spearman"]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..K along the last dimension, ties sharing their average rank."""
    x = x.to(torch.float64)
    order = torch.argsort(x, dim=-1, stable=True)
    srt = torch.gather(x, -1, order)
    k = x.shape[-1]
    pos = torch.arange(1, k + 1, dtype=torch.float64, device=x.device).expand_as(x)
    # a tie group is a run of equal sorted values: give each member the mean position
    new = torch.ones_like(srt, dtype=torch.bool)
    new[..., 1:] = srt[..., 1:] != srt[..., :-1]
    group = torch.cumsum(new.long(), dim=-1) - 1
    total = torch.zeros_like(srt).scatter_add_(-1, group, pos)
    count = torch.zeros_like(srt).scatter_add_(-1, group, torch.ones_like(srt))
    mean = torch.gather(total / count.clamp_min(1), -1, group)
    return torch.empty_like(mean).scatter_(-1, order, mean)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho along the last dimension (Pearson correlation of average ranks).

    NaN where either side is constant (no ranking to correlate).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] < 2:
        raise ValueError(f"need at least 2 values to rank, got {a.shape[-1]}")
    ra, rb = _ranks(a), _ranks(b)
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    num = (ra * rb).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan)


def random_subsets(
    n_train: int, n_subsets: int, fraction: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """``(n_subsets, n_train)`` bool masks, each with exactly ``round(fraction * n_train)`` True.

    Subset ``m`` is drawn by ``numpy.random.default_rng([seed, m])``: adding subsets keeps the
    earlier ones (so a retraining run can be extended and each subset is reproducible alone).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if n_train < 1 or n_subsets < 1:
        raise ValueError(f"need n_train >= 1 and n_subsets >= 1, got {n_train}, {n_subsets}")
    size = int(round(fraction * n_train))
    masks = torch.zeros(n_subsets, n_train, dtype=torch.bool)
    for m in range(n_subsets):
        idx = np.random.default_rng([seed, m]).choice(n_train, size=size, replace=False)
        masks[m, torch.as_tensor(idx, dtype=torch.long)] = True
    return masks


def lds(scores: torch.Tensor, subsets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Linear datamodeling score per test point (Park et al. 2023, Eq. 5).

    Parameters
    ----------
    scores : (n_test, n_train)
        ``tau(t, i)``: attribution of training point ``i`` to the output of test point ``t``,
        positive = raises the output (the same output as ``outputs``).
    subsets : (M, n_train) bool or 0/1
        The training subsets the ``M`` models were retrained on.
    outputs : (M, n_test)
        The retrained models' outputs on the test points (e.g. the correct-class margin).

    Returns
    -------
    (n_test,) float64: Spearman correlation over the ``M`` subsets between the predicted
    ``sum_{i in S_m} tau(t, i)`` and ``outputs[m, t]``; NaN where either is constant.
    """
    scores = torch.as_tensor(scores).to(torch.float64)
    subsets = torch.as_tensor(subsets).to(torch.float64)
    outputs = torch.as_tensor(outputs).to(torch.float64)
    if scores.ndim != 2 or subsets.ndim != 2 or outputs.ndim != 2:
        raise ValueError("scores, subsets and outputs must be 2-D")
    m, n = subsets.shape
    if scores.shape[1] != n:
        raise ValueError(f"scores cover {scores.shape[1]} training points, subsets {n}")
    if outputs.shape != (m, scores.shape[0]):
        raise ValueError(
            f"outputs have shape {tuple(outputs.shape)}, expected ({m}, {scores.shape[0]}) "
            "= (subsets, test points)"
        )
    predicted = subsets @ scores.T  # (M, n_test)
    return spearman(predicted.T, outputs.T)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of ``scores`` for the ``positive`` items (Mann-Whitney U / (n+ n-), ties = 1/2)."""
    s = torch.as_tensor(scores).to(torch.float64).reshape(-1)
    pos = torch.as_tensor(positive).to(torch.bool).reshape(-1)
    if s.shape != pos.shape:
        raise ValueError(f"{s.numel()} scores for {pos.numel()} labels")
    n_pos = int(pos.sum())
    n_neg = s.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative item")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores must be finite")
    r = _ranks(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def noisy_label_auc(scores: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of detecting the flipped training labels by ``scores`` (higher = more suspect).

    ``scores`` (n_train,): self-influence or the method's own importance; ``flipped`` (n_train,)
    bool, e.g. :func:`whynet.data.noise.with_noisy_labels`'s ``flipped``. 1 = every flipped point
    ranks above every clean one, 0.5 = chance.
    """
    return roc_auc(scores, flipped)
