"""Issue 17: exact by default, unconverged fits warn, the fast explain path equals the formula."""

from __future__ import annotations

import pytest
import torch

from tests.representer.test_representer import data, make_model
from whynet.representer import RepresenterPoints, augment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decomposition_exact_at_the_defaults() -> None:
    x, y = data()
    rp = RepresenterPoints(make_model(), head="4").fit(x, y)  # l2=0.003, tol=None, lbfgs
    assert rp.converged_ and rp.solver == "lbfgs"
    xt, _ = data(n=17, seed=9)
    for inputs in (x[:20], xt):
        e = rp.explain(inputs)
        torch.testing.assert_close(e.values.sum(1), e.extras["logits"], rtol=0, atol=1e-6)


def test_unconverged_fit_warns_and_records() -> None:
    x, y = data()
    for solver in ("lbfgs", "gd"):
        with pytest.warns(UserWarning, match=r"unconverged.*residual.*max_iter"):
            rp = RepresenterPoints(make_model(), head="4", max_iter=1, solver=solver).fit(x, y)
        assert not rp.converged_


def test_gd_reproduces_the_papers_rule() -> None:
    """solver="gd" with tol=None stops at the authors' mean|grad| / 200."""
    x, y = data()
    rp = RepresenterPoints(make_model(), head="4", solver="gd").fit(x, y)
    assert rp.converged_ and rp.grad_norm_ < rp.grad_norm0_ / 200


def test_values_equal_the_formula_and_batching() -> None:
    x, y = data()
    rp = RepresenterPoints(make_model(), head="4", batch_size=5).fit(x, y)
    xt, _ = data(n=13, seed=3)
    e = rp.explain(xt, target=torch.arange(13) % 3)
    f, _ = rp._forward(xt)
    k = augment(f, torch.float64) @ augment(rp.features_, torch.float64).T
    ref = rp.alpha_.T[e.target] * k
    torch.testing.assert_close(e.values, ref, rtol=0, atol=1e-14)
    # queries in one product, in chunks, or one by one: the same numbers
    one = torch.cat([rp.values_features(f[i : i + 1], e.target[i : i + 1]) for i in range(13)])
    torch.testing.assert_close(rp.values_features(f, e.target), one, rtol=0, atol=1e-14)
    # a refit replaces what was precomputed from the first fit
    rp.fit(x[:60], y[:60])
    assert rp.values_features(f, e.target).shape == (13, 60)


def test_kernel_dtype_coarser_than_the_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match=r"kernel_dtype=torch.float32 rounds.*tol=1e-10"):
        RepresenterPoints(make_model(), head="4", tol=1e-10, kernel_dtype=torch.float32)
    RepresenterPoints(make_model(), head="4", tol=1e-5, kernel_dtype=torch.float32)
