"""RPS-LJE (Sui, Wu, Sanner 2021): the exact per-point decomposition, against brute force."""

from __future__ import annotations

import pytest
import torch

from tests.representer.test_representer import data, make_model
from whynet.representer import RepresenterPoints, augment
from whynet.representer import _lje as lje

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(**kw) -> tuple[RepresenterPoints, torch.Tensor, torch.Tensor]:
    x, y = data()
    rp = RepresenterPoints(make_model(), head="4", solver="lje", targets="labels", **kw)
    return rp.fit(x, y), x, y


def _brute_force(rp: RepresenterPoints, y: torch.Tensor, step: float, damping: float):
    """Theta_0, the per-point W_i (n, C, D+1) with an autograd Hessian (independent of lje)."""
    fa = augment(rp.features_, torch.float64)
    n, d1 = fa.shape
    w_star = torch.cat([rp.model[4].weight, rp.model[4].bias[:, None]], 1).detach()

    def loss(w_flat: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(fa @ w_flat.reshape(-1, d1).T, y)

    g = torch.autograd.functional.jacobian(loss, w_star.reshape(-1))
    w0 = w_star + step * g.reshape(w_star.shape)
    h = torch.autograd.functional.hessian(loss, w0.reshape(-1))
    h = h + damping * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    r = torch.softmax(fa @ w0.T, 1) - torch.nn.functional.one_hot(y, w0.shape[0])
    gi = (r[:, :, None] * fa[:, None, :]).reshape(n, -1)  # per-point gradients g_i
    hg = torch.linalg.solve(h, gi.T).T.reshape(n, *w0.shape)
    return w0, (w0[None] - hg) / n


def test_values_sum_to_the_expanded_heads_logits_exactly() -> None:
    rp, x, _ = _fit()
    xt, _ = data(n=17, seed=9)
    for inputs in (x[:20], xt):
        e = rp.explain(inputs, target=torch.arange(len(inputs)) % 3)
        torch.testing.assert_close(e.values.sum(1), e.extras["logits"], rtol=0, atol=1e-10)
    assert rp.converged_ and rp.lje_hinv_ is not None


def test_per_point_values_match_a_brute_force_hessian() -> None:
    rp, x, y = _fit(lje_step=0.05, lje_damping=1e-3)
    w0, wi = _brute_force(rp, y, 0.05, 1e-3)
    torch.testing.assert_close(rp.lje_weight0_, w0, rtol=0, atol=1e-12)
    torch.testing.assert_close(rp.weight_, wi.sum(0), rtol=0, atol=1e-9)
    xt, _ = data(n=9, seed=4)
    cls = torch.arange(9) % 3
    e = rp.explain(xt, target=cls)
    ft = augment(rp._forward(xt)[0], torch.float64)
    ref = torch.einsum("nkd,bd->bnk", wi, ft)[torch.arange(9), :, cls]  # (W_i f_t)_c
    torch.testing.assert_close(e.values, ref, rtol=0, atol=1e-9)
    fa = augment(rp.features_, torch.float64)
    own = torch.einsum("nkd,nd->nk", wi, fa).gather(1, y[:, None])[:, 0].abs()
    torch.testing.assert_close(rp.global_importance(), own, rtol=0, atol=1e-9)
    top = rp.top(xt, k=3, target=cls)
    torch.testing.assert_close(top.excitatory_values, ref.topk(3, dim=1).values)


def test_expansion_returns_to_a_stationary_head() -> None:
    """At a stationary, locally quadratic point Theta_LJE = Theta*: logits of the model."""
    x, y = data()
    model = make_model()
    feats = RepresenterPoints(model, head="4").fit(x, y).features_.double()
    head = model[4]
    opt = torch.optim.LBFGS(
        head.parameters(), max_iter=500, tolerance_grad=1e-13, tolerance_change=0, history_size=50
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), y)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    rp = RepresenterPoints(model, head="4", solver="lje", targets="labels", lje_damping=1e-9)
    rp.fit(x, y)
    assert rp.grad_norm0_ < 1e-8
    with torch.no_grad():
        torch.testing.assert_close(rp.logits(x), model.eval()(x), rtol=0, atol=1e-6)


def test_save_load_and_refusals(tmp_path) -> None:
    rp, x, _ = _fit()
    rp.save(tmp_path / "lje.safetensors")
    back = RepresenterPoints.load(tmp_path / "lje.safetensors", rp.model)
    assert back.solver == "lje" and back.lje_step == rp.lje_step
    torch.testing.assert_close(back.explain(x[:5]).values, rp.explain(x[:5]).values)
    with pytest.raises(ValueError, match="targets='labels'"):
        RepresenterPoints(make_model(), head="4", solver="lje")
    with pytest.raises(ValueError, match="lje_damping"):
        RepresenterPoints(make_model(), head="4", solver="lje", targets="labels", lje_damping=0)
    big = torch.zeros(4, 10_000, dtype=torch.float64)
    with pytest.raises(ValueError, match="limit is 8192 parameters"):
        lje.fit(
            big, torch.zeros(3, 10_000, dtype=torch.float64), torch.eye(3)[[0, 1, 2, 0]], 0.0, 1.0
        )


def test_blocks_of_training_points_give_the_same_values() -> None:
    rp, x, _ = _fit()
    small, _, _ = _fit(block_size=7, batch_size=4)
    xt, _ = data(n=11, seed=5)
    torch.testing.assert_close(small.explain(xt).values, rp.explain(xt).values, rtol=0, atol=1e-12)
    top, top_small = rp.top(xt, k=4), small.top(xt, k=4)
    assert torch.equal(top.excitatory, top_small.excitatory)
