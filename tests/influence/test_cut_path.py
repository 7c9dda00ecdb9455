"""Issue 17: points in a layer's space run only the layers above it (the core's cut), with the
same numbers as the full forward; where the model cannot be cut the fallback runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet.core import Channel, Class, Gaussian, LinearPath, Mixture, Point
from whynet.influence import InternalInfluence


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)),
        nn.Flatten(),
        nn.Linear(4 * 36, 3),
    ).double()


class Skip(nn.Module):
    """``head(flatten(b(a(x)) + a(x)))``: the output of ``b`` feeds the sum with a value from
    before it, so ``b`` cannot be cut at; ``a`` can."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh())
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(torch.flatten(self.b(h) + h, 1))


def x6() -> torch.Tensor:
    return torch.randn(5, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def both(model: nn.Module, layer: str | None, **kw: object) -> tuple:
    a = InternalInfluence(model, layer, batch_size=7, **kw).explain(x6())  # type: ignore[arg-type]
    slow = InternalInfluence(model, layer, batch_size=7, **kw)  # type: ignore[arg-type]
    slow._use_cut = False
    return a, slow.explain(x6())


DOIS = {
    "path": lambda at: LinearPath(0.0, steps=6, at=at),
    "path-batch-baseline": lambda at: LinearPath(
        torch.randn(5, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
        steps=4,
        at=at,
    ),
    "point": lambda at: Point(at=at),
    "gaussian": lambda at: Gaussian(0.1, samples=3, at=at),
    "mixture": lambda at: Mixture([(1.0, Point(at=at)), (2.0, LinearPath(0.5, 3, at=at))]),
}


@pytest.mark.parametrize("doi", list(DOIS))
@pytest.mark.parametrize("mult", [False, True])
@pytest.mark.parametrize("qoi", [None, "per-input", "channel"])
def test_cut_equals_the_full_forward_exactly(doi: str, mult: bool, qoi: str | None) -> None:
    m = cnn()
    q = {
        None: None,
        "per-input": Class(torch.tensor([0, 1, 2, 0, 1])),
        "channel": Channel("1.0", 2),
    }[qoi]
    a, b = both(m, "0", doi=DOIS[doi]("0"), multiply_activation=mult, qoi=q)
    assert torch.equal(a.values, b.values) and torch.equal(a.extras["qoi"], b.extras["qoi"])
    assert a.meta["path"].startswith("cut at '0'")
    assert b.meta["path"].startswith("full forward per point")


def test_gradient_read_above_the_points() -> None:
    m = cnn()
    a, b = both(m, "1", doi=LinearPath(0.0, 5, at="0.2"), multiply_activation=True)
    assert torch.equal(a.values, b.values)
    assert a.meta["path"] == "cut at '0.2': only 1 -> 2 -> 3 run per point"


def test_the_layers_below_run_once_per_input_not_per_step() -> None:
    m = cnn()
    rows: list[int] = []
    first = m[0][0]
    h = first.register_forward_hook(lambda mod, a, out: rows.append(len(a[0])))
    try:
        InternalInfluence(m, "1", doi=LinearPath(0.0, steps=32, at="1"), batch_size=8).explain(x6())
    finally:
        h.remove()
    # one capture forward of the 5 inputs, plus the cut's check on 2 of them
    assert sum(rows) == 5 + 2


def test_a_residual_around_the_layer_falls_back_with_equal_values() -> None:
    m = Skip().double()
    a, b = both(m, "b", doi=LinearPath(0.0, steps=5, at="b"), multiply_activation=True)
    assert torch.equal(a.values, b.values)
    assert "reads 'a', computed before 'b'" in a.meta["path"]
    assert a.meta["path"].startswith("full forward per point")
    c, d = both(m, "a", doi=LinearPath(0.0, steps=5, at="a"), multiply_activation=True)
    assert torch.equal(c.values, d.values) and c.meta["path"].startswith("cut at 'a'")
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_completeness_through_the_cut() -> None:
    m = Skip().double()
    x = x6()
    e = InternalInfluence(
        m, "a", qoi=Class(1), doi=LinearPath(0.0, 64, at="a"), multiply_activation=True
    ).explain(x)
    with torch.no_grad():
        h = m.a(x)
        q1 = m.head(torch.flatten(m.b(h) + h, 1))[:, 1]
        z0 = torch.zeros_like(h)
        q0 = m.head(torch.flatten(m.b(z0) + z0, 1))[:, 1]
    assert torch.allclose(e.values.flatten(1).sum(1), q1 - q0, atol=1e-10)


def test_model_state_and_hooks_restored_and_dataset_meta() -> None:
    m = cnn().train()
    m[3].weight.requires_grad_(False)
    e = InternalInfluence(m, "0", doi=LinearPath(0.0, 4, at="0"), batch_size=2)
    e.explain(x6())
    assert m.training and all(mod.training for mod in m.modules())
    assert not m[3].weight.requires_grad and m[0][0].weight.requires_grad
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    stats = m[0][1].running_mean.clone()
    d = e.explain_dataset(x6())
    assert torch.equal(m[0][1].running_mean, stats)  # its gradient passes ran in eval mode too
    assert d.meta["path"].startswith("cut at '0'")
    slow = InternalInfluence(m, "0", doi=LinearPath(0.0, 4, at="0"), batch_size=2)
    slow._use_cut = False
    assert torch.equal(d.values, slow.explain_dataset(x6()).values)
    assert "path" not in InternalInfluence(m, "0").explain(x6()).meta  # input space: no cut


def test_an_error_inside_the_rest_leaves_no_hooks() -> None:
    m = cnn()
    e = InternalInfluence(m, "0", doi=LinearPath(torch.zeros(2, 2), 4, at="0"))
    with pytest.raises(ValueError, match="baseline"):
        e.explain(x6())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
