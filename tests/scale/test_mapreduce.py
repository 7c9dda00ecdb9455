"""Representer points by map/reduce L-BFGS (each objective and gradient summed over shards):
alpha equals the gathered in-memory fit to 1e-10 in float64."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TinyCNN
from whynet import scale
from whynet.representer import RepresenterPoints

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def problem(tmp_path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cnn = TinyCNN().double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=g)
    st = scale.extract(cnn, x, y, store=tmp_path / "s", head="head", shard_rows=32, batch_size=16)
    return cnn, x, y, st


@pytest.mark.parametrize("kw", [{}, {"targets": "labels"}, {"tol": 1e-3, "l2": 0.01}])
@pytest.mark.parametrize("precondition", ["hessian", "hessian-strided", "kronecker"])
def test_mapreduce_alpha_equals_the_gathered_fit(problem, kw, precondition, monkeypatch):
    """Same preconditioner both ways: the Hessian of every row, of every 4th row (rows picked
    shard by shard), or the Kronecker model (from moments summed over the shards)."""
    from whynet.representer import _solver

    if precondition == "hessian-strided":
        monkeypatch.setattr(_solver, "HESSIAN_ROWS", 24)
    elif precondition == "kronecker":
        monkeypatch.setattr(_solver, "HESSIAN_MAX_DIM", 1)
    cnn, x, y, st = problem
    gathered = RepresenterPoints(cnn, "head", batch_size=16, progress=False, **kw).fit(x, labels=y)
    mr = scale.fit_representer(
        RepresenterPoints(cnn, "head", batch_size=16, progress=False, **kw), st, mapreduce=True
    )
    assert mr.n_iter_ == gathered.n_iter_ > 0 and mr.converged_
    torch.testing.assert_close(mr.alpha_, gathered.alpha_, atol=1e-10, rtol=0)
    torch.testing.assert_close(mr.weight_, gathered.weight_, atol=1e-10, rtol=0)
    assert torch.equal(mr.features_, gathered.features_) and torch.equal(mr.labels_, y)
    e_mr, e_g = mr.explain(x[:4]), gathered.explain(x[:4])
    torch.testing.assert_close(e_mr.values, e_g.values, atol=1e-10, rtol=0)


def test_one_switch_and_bad_input(problem, tmp_path):
    cnn, x, y, st = problem
    one = RepresenterPoints(cnn, "head", batch_size=16, progress=False).fit(x, labels=y)
    via = scale.fit(
        RepresenterPoints(cnn, "head", batch_size=16, progress=False),
        x,
        y,
        store=tmp_path / "s2",
        shard_rows=32,
        mapreduce=True,
    )
    torch.testing.assert_close(via.alpha_, one.alpha_, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        scale.fit_representer(
            RepresenterPoints(cnn, "head", solver="gd", progress=False), st, mapreduce=True
        )
    with pytest.raises(TypeError, match="no fit parameters"):
        scale.fit(
            RepresenterPoints(cnn, "head", batch_size=16), x, y, store=tmp_path / "s3", epochs=2
        )


def test_each_shard_is_read_once_per_process_and_the_fit_is_unchanged(problem, monkeypatch):
    """The converted shards are kept between oracle passes: every shard is read (and its
    checksum verified) once per fit, and alpha is bitwise the uncached fit's."""
    from whynet.scale import mapreduce
    from whynet.scale.store import ShardedStore

    cnn, _, _, st = problem
    reads: list[int] = []
    real = ShardedStore.read_shard

    def counted(self, index):  # type: ignore[no-untyped-def]
        reads.append(index)
        return real(self, index)

    monkeypatch.setattr(ShardedStore, "read_shard", counted)

    def fit() -> RepresenterPoints:
        mapreduce._PROBLEMS.clear()
        rp = RepresenterPoints(cnn, "head", batch_size=16, progress=False)
        return scale.fit_representer(rp, st, mapreduce=True)

    monkeypatch.setenv("WHYNET_SCALE_CACHE_MB", "0")
    plain = fit()
    uncached = len(reads)
    reads.clear()
    monkeypatch.setenv("WHYNET_SCALE_CACHE_MB", "64")
    cached = fit()
    # per shard: one read for the oracle passes (moments included), plus the fit's own
    # gathers of features and outputs; uncached, one read per pass
    per_shard = {i: reads.count(i) for i in range(st.n_shards)}
    assert set(per_shard.values()) == {3} and len(reads) == 3 * st.n_shards
    assert uncached > len(reads) + 5 * st.n_shards  # many passes, each reading every shard
    assert torch.equal(cached.alpha_, plain.alpha_) and torch.equal(cached.weight_, plain.weight_)
    monkeypatch.setenv("WHYNET_SCALE_CACHE_MB", str(1.5 * 33 * 10 * 8 / 2**20))  # ~1 shard
    reads.clear()
    small = fit()
    kept = {i: reads.count(i) for i in range(st.n_shards)}
    assert kept[0] == 3 and all(kept[i] > 3 for i in range(1, st.n_shards))  # only shard 0 kept
    assert torch.equal(small.alpha_, plain.alpha_)
    assert mapreduce._PROBLEMS == {}  # the local engine's kept shards end with the fit
