"""Representer points (Yeh et al. 2018): exact identities on tiny float64 models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import hook_count
from whynet.representer import (
    RepresenterPoints,
    alpha_from,
    augment,
    gradient,
    objective,
    solve,
    solve_lbfgs,
)

L2 = 0.003
FAST = 0.03  # lambda for fits that must converge tightly: 10x fewer steps on a loaded machine


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(d_in: int = 5, hidden: int = 8, classes: int = 3) -> nn.Module:
    """MLP with BatchNorm and Dropout (both must be in eval mode while extracting features)."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.BatchNorm1d(hidden),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Linear(hidden, classes),
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()
    return model


def data(n: int = 120, d_in: int = 5, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d_in, generator=g, dtype=torch.float64),
        torch.randint(0, classes, (n,), generator=g),
    )


def fitted(targets: str = "model", **kw) -> tuple[RepresenterPoints, torch.Tensor, torch.Tensor]:
    x, y = data()
    kw.setdefault("tol", 1e-10)
    kw.setdefault("max_iter", 20000)
    kw.setdefault("l2", FAST)
    rp = RepresenterPoints(make_model(), head="4", targets=targets, **kw).fit(x, y)
    return rp, x, y


@pytest.fixture(scope="module")
def rp_model() -> tuple[RepresenterPoints, torch.Tensor, torch.Tensor]:
    return fitted("model")


@pytest.fixture(scope="module")
def rp_labels() -> tuple[RepresenterPoints, torch.Tensor, torch.Tensor]:
    return fitted("labels")


# ---- the functional core ---------------------------------------------------------------------


@pytest.mark.parametrize("soft", [True, False])
def test_residual_identity_for_any_weight(soft: bool) -> None:
    """W - F^T alpha == grad J(W) / (2 lambda) at arbitrary W: no convergence needed."""
    g = torch.Generator().manual_seed(3)
    f = augment(torch.randn(50, 7, generator=g, dtype=torch.float64))
    if soft:
        t = torch.softmax(torch.randn(50, 4, generator=g, dtype=torch.float64), 1)
    else:
        t = nn.functional.one_hot(torch.randint(0, 4, (50,), generator=g), 4).double()
    for _ in range(3):
        w = torch.randn(4, 8, generator=g, dtype=torch.float64) * 3
        alpha = alpha_from(f @ w.T, t, L2)
        lhs = w - alpha.T @ f
        rhs = gradient(f, w, t, L2) / (2 * L2)
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-10)


def test_gradient_matches_autograd() -> None:
    """Independent reference: autograd of the objective written out from Eq. 2."""
    g = torch.Generator().manual_seed(4)
    f = augment(torch.randn(30, 6, generator=g, dtype=torch.float64))
    t = torch.softmax(torch.randn(30, 3, generator=g, dtype=torch.float64), 1)
    w = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(f @ w.T, 1)
    j = -(t * logp).sum(1).mean() + L2 * (w**2).sum()
    j.backward()
    torch.testing.assert_close(gradient(f, w.detach(), t, L2), w.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(objective(f @ w.detach().T, w.detach(), t, L2), j.detach())


def test_solver_decreases_and_keeps_best() -> None:
    g = torch.Generator().manual_seed(5)
    f = augment(torch.randn(80, 4, generator=g, dtype=torch.float64))
    t = torch.softmax(torch.randn(80, 3, generator=g, dtype=torch.float64) * 2, 1)
    w0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    res = solve(f, w0, t, FAST, max_iter=5000, tol=1e-9)
    assert res.converged and res.grad_mean < 1e-9 * res.grad_mean0
    assert res.objective < float(objective(f @ w0.T, w0, t, FAST))
    torch.testing.assert_close(res.grad_mean, float(gradient(f, res.weight, t, FAST).abs().mean()))
    few = solve(f, w0, t, L2, max_iter=3, tol=1e-9)
    assert few.n_iter == 3 and not few.converged
    with pytest.raises(ValueError, match="l2"):
        solve(f, w0, t, 0.0)


def test_lbfgs_reaches_the_same_minimiser() -> None:
    """The objective is strongly convex: both solvers must land on one W (and one alpha)."""
    g = torch.Generator().manual_seed(6)
    f = augment(torch.relu(torch.randn(150, 6, generator=g, dtype=torch.float64)) * 3)
    t = nn.functional.one_hot(torch.randint(0, 4, (150,), generator=g), 4).double()
    w0 = torch.randn(4, 7, generator=g, dtype=torch.float64)
    gd = solve(f, w0, t, FAST, max_iter=20000, tol=1e-11)
    lb = solve_lbfgs(f, w0, t, FAST, max_iter=2000, tol=1e-11)
    assert gd.converged and lb.converged and lb.n_iter < gd.n_iter
    torch.testing.assert_close(lb.weight, gd.weight, rtol=0, atol=1e-8)
    torch.testing.assert_close(
        alpha_from(lb.phi, t, FAST), alpha_from(gd.phi, t, FAST), rtol=0, atol=1e-9
    )


def test_explainer_lbfgs_decomposition() -> None:
    x, y = data()
    rp = RepresenterPoints(make_model(), head="4", solver="lbfgs", tol=1e-10).fit(x, y)
    assert rp.converged_
    e = rp.explain(x[:9])
    torch.testing.assert_close(e.values.sum(1), e.extras["logits"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="solver"):
        RepresenterPoints(make_model(), solver="adam")


# ---- the explainer ---------------------------------------------------------------------------


def test_explainer_residual_identity_without_fit_convergence() -> None:
    x, y = data()
    rp = RepresenterPoints(make_model(), head="4", max_iter=0).fit(x, y)
    assert rp.n_iter_ == 0 and not rp.converged_
    f = augment(rp.features_, torch.float64)
    t = torch.softmax(rp.model.eval()(x), 1)
    torch.testing.assert_close(
        rp.weight_ - rp.alpha_.T @ f, gradient(f, rp.weight_, t, L2) / (2 * L2), rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("which", ["rp_model", "rp_labels"])
def test_decomposition_reproduces_logits(which: str, request: pytest.FixtureRequest) -> None:
    rp, x, _ = request.getfixturevalue(which)
    assert rp.converged_
    xt, _ = data(n=17, seed=9)
    for inputs in (x[:20], xt):
        for target in ("predicted", 1, torch.arange(len(inputs)) % 3):
            e = rp.explain(inputs, target=target)
            assert e.values.shape == (len(inputs), 120) and e.values.dtype == torch.float64
            logits = rp.logits(inputs).gather(1, e.target[:, None])[:, 0]
            torch.testing.assert_close(e.values.sum(1), logits, rtol=0, atol=1e-6)
            torch.testing.assert_close(e.extras["logits"], logits)


def test_predicted_target_is_model_argmax(rp_model) -> None:
    rp, x, _ = rp_model
    e = rp.explain(x[:10])
    with torch.no_grad():
        assert torch.equal(e.target, rp.model.eval()(x[:10]).argmax(1))


@pytest.mark.parametrize("which", ["rp_model", "rp_labels"])
def test_alpha_rows_sum_to_zero(which: str, request: pytest.FixtureRequest) -> None:
    rp, _, _ = request.getfixturevalue(which)
    assert rp.alpha_.shape == (120, 3)
    assert float(rp.alpha_.sum(1).abs().max()) < 1e-12
    assert float(rp.alpha_.abs().max()) > 1e-3  # not trivially zero


def test_hard_labels_sign_pattern(rp_labels) -> None:
    rp, _, y = rp_labels
    own = rp.alpha_.gather(1, y[:, None])[:, 0]
    others = rp.alpha_.clone().scatter_(1, y[:, None], 0.0)
    assert bool((own >= 0).all()) and bool((others <= 0).all())
    torch.testing.assert_close(rp.global_importance(), own.abs())
    rank = rp.mislabel_ranking()
    assert torch.equal(rank.sort().values, torch.arange(120))
    gi = rp.global_importance()[rank]
    assert bool((gi[:-1] >= gi[1:]).all())


def test_independent_of_loader_order_and_batch_size() -> None:
    x, y = data()
    kw = {"head": "4", "targets": "labels", "tol": 1e-10, "max_iter": 20000, "l2": FAST}
    a = RepresenterPoints(make_model(), batch_size=7, **kw).fit(
        DataLoader(TensorDataset(x, y), batch_size=7)
    )
    b = RepresenterPoints(make_model(), batch_size=64, **kw).fit(TensorDataset(x, y))
    torch.testing.assert_close(a.alpha_, b.alpha_, rtol=0, atol=1e-10)
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(2))
    c = RepresenterPoints(make_model(), **kw).fit(x[perm], y[perm])
    torch.testing.assert_close(c.alpha_, a.alpha_[perm], rtol=0, atol=1e-10)
    torch.testing.assert_close(c.weight_, a.weight_, rtol=0, atol=1e-10)


def test_blocked_values_and_top(rp_model) -> None:
    rp, x, _ = rp_model
    xt, _ = data(n=6, seed=11)
    full = rp.explain(xt).values
    small = RepresenterPoints(rp.model, head="4", block_size=7, batch_size=4)
    for k, v in vars(rp).items():
        if k.endswith("_"):
            setattr(small, k, v)
    torch.testing.assert_close(small.explain(xt).values, full, rtol=0, atol=1e-14)
    top = small.top(xt, k=5)
    ref_hi = full.topk(5, dim=1)
    ref_lo = full.topk(5, dim=1, largest=False)
    torch.testing.assert_close(top.excitatory_values, ref_hi.values)
    torch.testing.assert_close(top.inhibitory_values, ref_lo.values)
    torch.testing.assert_close(full.gather(1, top.excitatory), top.excitatory_values)
    torch.testing.assert_close(full.gather(1, top.inhibitory), top.inhibitory_values)
    with pytest.raises(ValueError, match="k must be"):
        rp.top(xt, k=0)


def test_float32_kernel_close(rp_model) -> None:
    rp, _, _ = rp_model
    xt, _ = data(n=5, seed=12)
    fast = RepresenterPoints(rp.model, head="4", kernel_dtype=torch.float32)
    for k, v in vars(rp).items():
        if k.endswith("_"):
            setattr(fast, k, v)
    torch.testing.assert_close(fast.explain(xt).values, rp.explain(xt).values, rtol=1e-5, atol=1e-8)


def test_model_state_restored_and_no_hooks(rp_model) -> None:
    model = make_model()
    flags = [p.requires_grad for p in model.parameters()]
    x, y = data()
    rp = RepresenterPoints(model, head="4", max_iter=5).fit(x, y)
    rp.explain(x[:3])
    rp.top(x[:3], 2)
    assert model.training and model[3].training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert hook_count(model) == 0


def test_save_load_round_trip(rp_labels, tmp_path) -> None:
    rp, x, _ = rp_labels
    path = rp.save(tmp_path / "rp.safetensors")
    back = RepresenterPoints.load(path, rp.model)
    for name in ("alpha_", "weight_", "features_", "labels_"):
        assert torch.equal(getattr(back, name), getattr(rp, name)), name
    assert (back.converged_, back.n_iter_, back.targets, back.l2) == (
        rp.converged_,
        rp.n_iter_,
        "labels",
        FAST,
    )
    assert torch.equal(back.explain(x[:4]).values, rp.explain(x[:4]).values)
    other = make_model()
    with torch.no_grad():
        other[0].weight.add_(0.1)
    with pytest.raises(ValueError, match="different weights"):
        RepresenterPoints.load(path, other)
    RepresenterPoints.load(path, other, strict=False)
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError):
        RepresenterPoints.load(tmp_path / "bad.safetensors", rp.model)


def test_feature_cache_reused_and_corruption_detected(tmp_path) -> None:
    x, y = data()
    model = make_model()
    a = RepresenterPoints(model, head="4", max_iter=50, cache_dir=tmp_path).fit(x, y)
    first = sorted(tmp_path.glob("features-*.npy"))
    assert len(first) == 1 and len(list(tmp_path.glob("*.npy"))) == 3  # features, outputs, labels
    # reuse: the model's forward is not needed a second time
    calls: list[int] = []
    handle = model[0].register_forward_hook(lambda *args: calls.append(1))
    b = RepresenterPoints(model, head="4", max_iter=50, cache_dir=tmp_path).fit(x, y)
    assert calls == [] and torch.equal(a.alpha_, b.alpha_)
    # another data set -> another cache entry
    RepresenterPoints(model, head="4", max_iter=1, cache_dir=tmp_path).fit(x[:60], y[:60])
    handle.remove()
    assert calls and len(list(tmp_path.glob("features-*.npy"))) == 2
    raw = bytearray(first[0].read_bytes())
    raw[-3] ^= 0xFF
    first[0].write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        RepresenterPoints(model, head="4", cache_dir=tmp_path).fit(x, y)


class NaNAfter(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > 1.5, torch.nan, x)


def test_bad_inputs() -> None:
    x, y = data()
    with pytest.raises(TypeError, match="nn.Linear"):
        RepresenterPoints(make_model(), head="2").fit(x, y)
    with pytest.raises(ValueError, match="unknown layer"):
        RepresenterPoints(make_model(), head="nope").fit(x, y)
    with pytest.raises(ValueError, match="labels"):
        RepresenterPoints(make_model(), head="4", targets="labels").fit(x)
    with pytest.raises(ValueError, match="labels"):
        RepresenterPoints(make_model(), head="4", targets="labels").fit(DataLoader(x, 16))
    bad = nn.Sequential(nn.Linear(5, 4), NaNAfter(), nn.Linear(4, 2)).double()
    with pytest.raises(ValueError, match="not finite"):
        RepresenterPoints(bad, head="2").fit(x, y % 2)  # labels of its 2 classes
    with pytest.raises(ValueError, match="targets"):
        RepresenterPoints(make_model(), targets="soft")
    with pytest.raises(ValueError, match="l2"):
        RepresenterPoints(make_model(), l2=0)
    with pytest.raises(TypeError, match="dtype"):
        RepresenterPoints(make_model(), dtype=torch.float16)
    rp = RepresenterPoints(make_model(), head="4", max_iter=2)
    with pytest.raises(ValueError, match="not fitted"):
        rp.explain(x[:2])
    rp.fit(x)
    with pytest.raises(ValueError, match="labels"):
        rp.global_importance()
    with pytest.raises(ValueError, match="out of range"):
        rp.explain(x[:2], target=7)
    with pytest.raises(ValueError, match="columns"):
        rp.fit_features(torch.randn(10, 3))


def test_registry_entry() -> None:
    from whynet.registry import get_explainer

    assert get_explainer("representer") is RepresenterPoints
    import whynet

    assert whynet.RepresenterPoints is RepresenterPoints


class HeadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head(x))


def test_head_errors_through_the_pipeline() -> None:
    x, y = data()
    with pytest.raises(ValueError, match="ran 2 times"):
        RepresenterPoints(HeadTwice().double(), head="head").fit(x, y)
    seq = nn.Sequential(nn.Unflatten(1, (1, 5)), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match=r"flat \(batch, features\)"):
        RepresenterPoints(seq, head="1").fit(x, y)


def test_failed_fit_leaves_it_unfitted() -> None:
    from whynet.core import NotFittedError

    x, y = data()
    rp = RepresenterPoints(make_model(), head="4", max_iter=2).fit(x, y)
    with pytest.raises(ValueError, match="empty"):
        rp.fit(x[:0])
    with pytest.raises(NotFittedError):
        rp.explain(x[:2])
    assert not hasattr(rp, "alpha_")


def test_default_target_is_predicted_and_top_follows_the_policy(rp_model) -> None:
    rp, x, _ = rp_model
    a, b = rp.explain(x[:5]), rp.explain(x[:5], target="predicted")
    assert torch.equal(a.values, b.values) and torch.equal(a.target, b.target)
    assert a.layer == "4" and a.meta["n_train"] == 120 and a.params["head"] == "4"
    top = rp.top(x[:5], k=3, target=1)
    ref = rp.explain(x[:5], target=1).values.topk(3, dim=1)
    torch.testing.assert_close(top.excitatory_values, ref.values)
    with pytest.raises(ValueError, match="out of range"):
        rp.top(x[:5], k=3, target=3)
