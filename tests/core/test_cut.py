"""The cut (core/cut.py): the rest of a network above a layer, refused where it is not a clean
chain, and the gradient utility run from points through it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet.core import Class, frozen_eval, intervene, qoi_gradients
from whynet.core.cut import NoCut, check_cut, cut_for, find_cut


def seq() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(5, 6), nn.ReLU()),
        nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 4)),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).double()


class Chain(nn.Module):
    """Not a Sequential, but its forward is a chain (a function call in it included)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
        self.mid = nn.Conv2d(3, 2, 3, padding=1)
        self.head = nn.Linear(2 * 16, 3)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.body(x)) * self.scale  # a constant attribute read after the cut
        return self.head(torch.flatten(h, 1))


class Residual(nn.Module):
    """``head(b(a(x)) + a(x))``: cutting at ``a`` is fine, at ``b`` it is not (a skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(self.b(h) + h)


class Branchy(nn.Module):
    """Data-dependent control flow: not traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = h * 2
        return self.head(h)


class Blocks(nn.Module):
    """A ModuleList walked in a loop: the model's forward calls ``blocks.i`` directly."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3)])
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SizeView(nn.Module):
    """Reads the input's batch size after the layer: the points of a chunk have another."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x).view(x.size(0), -1))


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def full(model: nn.Module, layer: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), intervene(model, {layer: z}):
        return model(x)


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("layer", ["0", "0.1", "1.0", "1.1", "2"])
def test_sequential_cut_equals_the_full_forward_exactly(layer: str) -> None:
    m = seq().eval()
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen())
    cut = find_cut(m, layer)
    outs: list[torch.Tensor] = []
    with torch.no_grad():
        h = m.get_submodule(layer).register_forward_hook(lambda mod, a, o: outs.append(o))
        try:
            m(x)
        finally:
            h.remove()
    z = outs[0] * 0.3 + 0.1  # any point of the layer's space
    with torch.no_grad():
        assert torch.equal(cut(z), full(m, layer, x, z))
    assert all(not mod._forward_hooks for mod in m.modules())


def test_sequential_cut_lists_the_layers_above() -> None:
    cut = find_cut(seq(), "1.1")
    assert cut.modules == ("1.2", "2", "3")
    assert cut.runs("1.2") and cut.runs("3") and not cut.runs("1.1") and not cut.runs("0")


def test_traced_chain_with_a_function_and_a_parameter() -> None:
    m = Chain().double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=gen())
    for layer in ("body", "body.0", "mid"):
        cut = find_cut(m, layer)
        shape = {"body": (3, 3, 4, 4), "body.0": (3, 3, 4, 4), "mid": (3, 2, 4, 4)}[layer]
        z = torch.randn(shape, dtype=torch.float64, generator=gen(2))
        with torch.no_grad():
            assert torch.equal(cut(z), full(m, layer, x, z))
    assert find_cut(m, "body.0").modules == ("body.1", "mid", "head")


@pytest.mark.parametrize("layer", ["blocks.0", "blocks.1.0", "blocks.2"])
def test_a_module_list_walked_by_its_parent(layer: str) -> None:
    torch.manual_seed(0)
    m = Blocks().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen())
    z = torch.randn(3, 4, dtype=torch.float64, generator=gen(2))
    cut = find_cut(m, layer)
    with torch.no_grad():
        assert torch.equal(cut(z), full(m, layer, x, z))
    assert find_cut(m, "blocks.1.0").modules == ("blocks.1.1", "blocks.2", "head")


def test_a_skip_after_the_layer_is_fine_a_skip_around_it_is_refused() -> None:
    m = Residual().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen())
    z = torch.randn(3, 4, dtype=torch.float64, generator=gen(2))
    with torch.no_grad():
        assert torch.equal(find_cut(m, "a")(z), full(m, "a", x, z))
    with pytest.raises(NoCut, match="reads 'a', computed before 'b'"):
        find_cut(m, "b")


def test_untraceable_hooked_and_reused_parents_are_refused() -> None:
    with pytest.raises(NoCut, match="could not be traced"):
        find_cut(Branchy(), "a")
    with pytest.raises(NoCut, match="reads 'size', computed before 'a'"):
        find_cut(SizeView(), "a")
    m = seq()
    h = m[1].register_forward_hook(lambda *a: None)
    try:
        with pytest.raises(NoCut, match="forward hooks"):
            find_cut(m, "1.0")
    finally:
        h.remove()
    relu = nn.ReLU()
    with pytest.raises(NoCut, match="more than once"):
        find_cut(nn.Sequential(relu, nn.Linear(2, 2), relu), "0")


def test_check_refuses_a_rest_that_disagrees_and_a_tuple_output() -> None:
    m = nn.Sequential(nn.Linear(3, 3), Noisy(), nn.Linear(3, 2)).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(NoCut, match="disagrees"):
        check_cut(m, find_cut(m, "0"), x, z)
    cut, why = cut_for(m, "0", x, z)
    assert cut is None and why.startswith("full forward per point") and "disagrees" in why

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class First(nn.Module):
        def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return x[0]

    p = nn.Sequential(nn.Linear(3, 3), Pair(), First(), nn.Linear(3, 2)).double().eval()
    with pytest.raises(NoCut, match="returns a tuple"):
        check_cut(p, find_cut(p, "1"), x, z)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in p.modules())


def test_cut_for_refuses_layers_that_do_not_run_above() -> None:
    m = seq().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    z = torch.randn(3, 7, dtype=torch.float64)
    cut, why = cut_for(m, "1.1", x, z, reads=["3"])
    assert cut is not None and why.startswith("cut at '1.1'")
    cut, why = cut_for(m, "1.1", x, z, reads=["0"])
    assert cut is None and "'0' does not run above '1.1'" in why


@pytest.mark.parametrize("layer", ["1.1", "2"])
def test_gradients_through_the_cut_equal_the_full_forward(layer: str) -> None:
    m = seq()
    x = torch.randn(5, 5, dtype=torch.float64, generator=gen())
    z = torch.randn(5, 7, dtype=torch.float64, generator=gen(2))
    cut = find_cut(m, "1.1")
    with frozen_eval(m):
        a = qoi_gradients(m, x, Class(1), layer=layer, points=z, points_at="1.1", cut=cut)
        b = qoi_gradients(m, x, Class(1), layer=layer, points=z, points_at="1.1")
    assert torch.equal(a.grads, b.grads) and torch.equal(a.qoi, b.qoi)
    assert torch.equal(a.at, b.at) and torch.equal(a.output, b.output)
    with pytest.raises(ValueError, match="needs points at that layer"):
        qoi_gradients(m, x, Class(1), layer=None, points=z, points_at="1.1", cut=cut)
