"""LDS and noisy-label AUC on problems with known answers (linear models, hand rankings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whynet.metrics import lds, noisy_label_auc, random_subsets, roc_auc, spearman


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 30), generator=gen).double()  # many ties
    b = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    got = spearman(a, b)
    for k in range(4):
        assert got[k].item() == pytest.approx(stats.spearmanr(a[k], b[k]).statistic, abs=1e-12)
    assert torch.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_random_subsets_exact_size_and_seeded() -> None:
    m = random_subsets(101, 7, fraction=0.5, seed=3)
    assert m.shape == (7, 101) and m.dtype == torch.bool
    assert (m.sum(1) == 50).all()  # round(50.5) = 50 (banker's), exactly that many
    assert torch.equal(m, random_subsets(101, 7, fraction=0.5, seed=3))
    assert torch.equal(m[:3], random_subsets(101, 3, fraction=0.5, seed=3))  # extendable
    assert not torch.equal(m, random_subsets(101, 7, fraction=0.5, seed=4))


def test_lds_is_one_for_an_exactly_additive_output_and_chance_for_noise() -> None:
    gen = torch.Generator().manual_seed(1)
    tau = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    subsets = random_subsets(40, 60, seed=0)
    outputs = subsets.double() @ tau.T + 2.0  # an additive datamodel: LDS must be 1
    assert torch.allclose(lds(tau, subsets, outputs), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(lds(-tau, subsets, outputs), -torch.ones(6, dtype=torch.float64))
    noise = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    assert lds(noise, subsets, outputs).abs().mean() < 0.25


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    d = x.shape[1]
    return torch.linalg.solve(x.T @ x + lam * torch.eye(d, dtype=x.dtype), x.T @ y)


def test_lds_near_one_for_exact_leave_one_out_on_linear_regression() -> None:
    """Ridge regression: tau(t, i) = f_t(all) - f_t(all minus i), computed exactly."""
    gen = torch.Generator().manual_seed(2)
    n, d, n_test = 120, 4, 10
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(d, generator=gen, dtype=torch.float64)
    y = y + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    xt = torch.randn(n_test, d, generator=gen, dtype=torch.float64)
    theta = _ridge(x, y, 1.0)
    keep = ~torch.eye(n, dtype=torch.bool)
    loo = torch.stack([_ridge(x[keep[i]], y[keep[i]], 1.0) for i in range(n)])  # (n, d)
    tau = (xt @ theta)[:, None] - xt @ loo.T  # (n_test, n)
    subsets = random_subsets(n, 50, seed=0)
    outputs = torch.stack([xt @ _ridge(x[s], y[s], 1.0) for s in subsets])  # (M, n_test)
    score = lds(tau, subsets, outputs)
    assert score.shape == (n_test,)
    assert score.mean() > 0.9
    # a random attribution of the same scale scores near zero
    rnd = tau[:, torch.randperm(n, generator=gen)]
    assert lds(rnd, subsets, outputs).mean().abs() < 0.3


def test_lds_shape_errors() -> None:
    with pytest.raises(ValueError, match="training points"):
        lds(torch.zeros(2, 5), torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="subsets, test points"):
        lds(torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.bool), torch.zeros(2, 3))


def test_noisy_label_auc_known_rankings() -> None:
    flipped = torch.tensor([False, True, False, True, False])
    assert noisy_label_auc(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3]), flipped).item() == 1.0
    assert noisy_label_auc(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7]), flipped).item() == 0.0
    # positives at 0.5 and 0.2; negatives 0.5, 0.1, 0.3: pairs won 1/2 + 1 + 1 + 0 + 1 + 0
    got = noisy_label_auc(torch.tensor([0.5, 0.5, 0.1, 0.2, 0.3]), flipped).item()
    assert got == pytest.approx(3.5 / 6)


def test_roc_auc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    pos = rng.random(300) < 0.1
    s = np.round(rng.normal(size=300) + 1.5 * pos, 1)  # with ties
    assert roc_auc(torch.from_numpy(s), torch.from_numpy(pos)).item() == pytest.approx(
        metrics.roc_auc_score(pos, s), abs=1e-12
    )
    with pytest.raises(ValueError, match="one positive"):
        roc_auc(torch.zeros(3), torch.zeros(3, dtype=torch.bool))
