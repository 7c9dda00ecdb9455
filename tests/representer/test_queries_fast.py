"""Fast top points are exact (issue 17): pruned scan, certified float32 ranking, fallbacks.

The reference is the straightforward float64 formula ``alpha[:, c] * (1 + F f_t)`` over the
whole matrix, ordered by a stable sort (equal values: lower index first). Every stage must give
its indices and its values to 1e-12 relative, whichever stage settled a query (``STATS``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from whynet.representer import RepresenterPoints
from whynet.representer import _certify as certify
from whynet.representer import _prune as prune
from whynet.representer import _scoring as scoring

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 16, 4


def explainer(features: torch.Tensor, alpha: torch.Tensor, **kw) -> RepresenterPoints:
    """An explainer whose fitted state is ``features`` (n, D) float32 and ``alpha`` (n, C)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, C)).double()
    rp = RepresenterPoints(model, head="2", **kw)
    rp._set_fitted(
        features_=features,
        alpha_=alpha,
        weight_=torch.randn(C, D + 1, dtype=torch.float64),
        labels_=None,
        converged_=True,
        grad_norm_=0.0,
        grad_norm0_=0.0,
        n_iter_=1,
        objective_=0.0,
    )
    return rp


def data(n: int, heavy: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and coefficients: ``heavy`` = a few large |alpha| (fitted heads look like
    this: pruning bites), else |alpha| all alike (nothing can be pruned)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, D, generator=g)
    a = torch.randn(n, C, generator=g, dtype=torch.float64)
    if heavy:
        a = a * torch.rand(n, C, generator=g, dtype=torch.float64) ** 12
    else:
        a = a.sign() * (1 + 0.01 * torch.rand(n, C, generator=g, dtype=torch.float64))
    return f, a


def reference(rp: RepresenterPoints, q: torch.Tensor, cls: torch.Tensor, k: int):
    """The whole (B, n) float64 matrix, stable-sorted both ways."""
    v = rp.alpha_.T[cls] * (1 + q.double() @ rp.features_.double().T)
    hi = v.sort(dim=1, descending=True, stable=True)
    lo = v.sort(dim=1, stable=True)
    return hi.indices[:, :k], hi.values[:, :k], lo.indices[:, :k], lo.values[:, :k]


def assert_exact(got, ref) -> None:
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])
    for a, b in ((got[1], ref[1]), (got[3], ref[3])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def queries(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, generator=g), torch.randint(0, C, (b,), generator=g)


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    """Blocks of a few rows so that small sets cross many block boundaries."""
    monkeypatch.setattr(prune, "CHUNK", 8)
    monkeypatch.setattr(prune, "FIRST", 24)
    monkeypatch.setattr(prune, "LIMIT_MIN", 200)
    monkeypatch.setattr(scoring, "TOP_BLOCK_ELEMS", 300)
    monkeypatch.setattr(scoring, "TOP_MIN_ROWS", 37)


def run(rp, q, cls, k):
    certify.STATS.clear()
    return certify.top(rp, q, cls, k), dict(certify.STATS)


@pytest.mark.parametrize("n", [1000, 1003])  # 1003: no block size divides it
def test_pruned_scan_is_exact_and_reads_few_rows(small_blocks, monkeypatch, n) -> None:
    monkeypatch.setattr(certify, "GROUP", 7)  # mixed classes, several groups
    rp = explainer(*data(n, heavy=True))
    q, cls = queries(40)
    got, stats = run(rp, q, cls, 5)
    assert_exact(got, reference(rp, q, cls, 5))
    assert stats["pruned"] == 40  # every query stopped early ...
    assert stats["pruned_rows"] < 0.5 * 40 * n  # ... after reading a fraction of the rows


def test_unprunable_data_go_to_the_float32_stage_and_stay_exact(small_blocks) -> None:
    rp = explainer(*data(1003, heavy=False))
    q, cls = queries(40, seed=2)
    got, stats = run(rp, q, cls, 5)
    assert_exact(got, reference(rp, q, cls, 5))
    assert stats.get("pruned", 0) < 40 and stats["float32"] > 0  # both scans' kinds ran
    # and the float32 stage alone (pruning off) gives the same, with b below and above D
    # (multiply-add over the tile vs rows scaled by alpha)
    for b in (1, 3, 40):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(prune, "MAX_K", 0)
            alone, st = run(rp, q[:b], cls[:b], 5)
        assert st["float32"] == b
        assert_exact(alone, reference(rp, q[:b], cls[:b], 5))


def test_pruned_equals_full_scan_where_pruning_bites(small_blocks, monkeypatch) -> None:
    rp = explainer(*data(1003, heavy=True))
    q, cls = queries(30, seed=3)
    pruned, st = run(rp, q, cls, 4)
    assert st["pruned"] == 30
    monkeypatch.setattr(prune, "MAX_K", 0)
    full, st = run(rp, q, cls, 4)
    assert st["float32"] == 30
    for a, b in zip(pruned, full, strict=True):
        assert torch.equal(a, b) if a.dtype == torch.long else torch.allclose(a, b, 1e-12, 0)


def test_near_ties_fail_the_certificate_and_fall_back(monkeypatch) -> None:
    """Rows one float32 ulp apart at the top: float32 products cannot order them (their
    difference is below the rounding bound), float64 can."""
    f, a = data(600, heavy=False, seed=4)
    base = torch.full((D,), 0.5)
    for i in range(40):  # each row differs from the next by one ulp in one coordinate
        f[10 * i] = base
        f[10 * i, i % D] = torch.nextafter(base[0], torch.tensor(2.0)) if i % 2 else base[0]
        f[10 * i, (i + 1) % D] += i * 2e-7
        a[10 * i] = 50.0
    rp = explainer(f, a)
    q = base[None].repeat(3, 1) + torch.randn(3, D) * 1e-3
    cls = torch.tensor([0, 1, 2])
    monkeypatch.setattr(prune, "MAX_K", 0)  # the float32 stage first
    got, st = run(rp, q, cls, 5)
    assert_exact(got, reference(rp, q, cls, 5))
    assert st["exact"] > 0  # the certificate failed: the float64 fallback ran


def test_exact_ties_are_ordered_by_index() -> None:
    """30 duplicates at the top: more equal values than candidates (k + EXTRA) -> full sort."""
    f, a = data(500, heavy=True, seed=5)
    f[100:130] = f[7]
    a[100:130] = a[7] = 3.0
    rp = explainer(f, a)
    q = f[7:8].clone()
    cls = torch.tensor([1])
    got, st = run(rp, q, cls, 5)
    ref = reference(rp, q, cls, 5)
    assert_exact(got, ref)
    assert ref[0][0].tolist() == [7, 100, 101, 102, 103]
    assert st["full_sort"] == 1


@pytest.mark.parametrize("k", [1, 499, 500])  # k + EXTRA >= n: every point is a candidate
def test_k_up_to_n(k) -> None:
    rp = explainer(*data(500, heavy=True, seed=6))
    q, cls = queries(3, seed=7)
    assert_exact(run(rp, q, cls, k)[0], reference(rp, q, cls, k))


def test_memory_mapped_features(small_blocks, tmp_path) -> None:
    f, a = data(1003, heavy=True, seed=8)
    path = tmp_path / "f.npy"
    np.save(path, f.numpy())
    rp = explainer(torch.from_numpy(np.load(path, mmap_mode="c")), a, block_size=100)
    q, cls = queries(20, seed=9)
    got, _ = run(rp, q, cls, 5)
    assert_exact(got, reference(rp, q, cls, 5))
    with pytest.MonkeyPatch.context() as m:  # the float32 scan of the map, block by block
        m.setattr(prune, "MAX_K", 0)
        got, st = run(rp, q, cls, 5)
    assert st["float32"] == 20
    assert_exact(got, reference(rp, q, cls, 5))


def test_top_with_target_and_float64_test_features() -> None:
    """Through the public ``top``: given targets, and float64 test features (rounded to
    float32 for the ranking, the rounding included in the bound)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, C)).double()
    x = torch.randn(400, D, dtype=torch.float64)
    rp = RepresenterPoints(model, head="2", l2=0.03, tol=1e-10, max_iter=5000).fit(
        x, torch.randint(0, C, (400,))
    )
    xt = torch.randn(9, D, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 0])
    got = rp.top(xt, k=6, target=target)
    f, _ = rp._forward(xt)
    assert_exact(tuple(got), reference(rp, f, target, 6))
    q64 = torch.randn(5, D, dtype=torch.float64) * 3
    cls = torch.tensor([0, 1, 2, 3, 0])
    with pytest.MonkeyPatch.context() as m:
        m.setattr(prune, "MAX_K", 0)
        got64, st = run(rp, q64, cls, 4)
    assert st["float32"] + st.get("exact", 0) == 5
    v = rp.alpha_.T[cls] * (1 + q64 @ rp.features_.double().T)
    hi = v.sort(dim=1, descending=True, stable=True)
    assert torch.equal(got64[0], hi.indices[:, :4])


def test_derived_state_follows_refit_in_place_change_and_load(tmp_path) -> None:
    rp = explainer(*data(700, heavy=True, seed=10))
    q, cls = queries(6, seed=11)
    assert_exact(run(rp, q, cls, 5)[0], reference(rp, q, cls, 5))
    first = rp._kcache[3]
    assert "norms" in first and any(isinstance(key, tuple) for key in first)
    # top reads the float32 features as they are: no float64 copy of the matrix was made
    assert not any(isinstance(key, tuple) and key[0] == "whole" for key in first)
    f2, a2 = data(700, heavy=True, seed=12)  # a refit: new features and coefficients
    rp._set_fitted(**{**{k: getattr(rp, k) for k in rp._fitted_state}, "features_": f2})
    rp.alpha_ = a2
    assert_exact(run(rp, q, cls, 5)[0], reference(rp, q, cls, 5))
    assert rp._kcache[3] is not first
    rp.alpha_.mul_(-1)  # in place: the version counter moves, the order is made again
    assert_exact(run(rp, q, cls, 5)[0], reference(rp, q, cls, 5))
    back = RepresenterPoints.load(rp.save(tmp_path / "rp.safetensors"), rp.model)
    assert "_kcache" not in vars(back)
    assert_exact(run(back, q, cls, 5)[0], reference(rp, q, cls, 5))
