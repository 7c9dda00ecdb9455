"""Issue 17: a Point DoI costs one forward + one partial backward, with the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet.core import Class, Comparative, Point
from whynet.influence import InternalInfluence


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).double()


@pytest.mark.parametrize("layer", [None, "1"])
@pytest.mark.parametrize("mult", [False, True])
@pytest.mark.parametrize("qoi", [None, "class", "per-input", "comparative"])
def test_point_fast_path_equals_the_general_path(layer, mult, qoi) -> None:
    m = model()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q = {
        None: None,
        "class": Class(2),
        "per-input": Class(torch.tensor([0, 1, 2, 0, 1])),
        "comparative": Comparative(0, 1),
    }[qoi]
    kw = {"qoi": q, "doi": Point(), "multiply_activation": mult}
    fast = InternalInfluence(m, layer, batch_size=64, **kw).explain(x)
    slow = InternalInfluence(m, layer, batch_size=64, **kw)
    slow._point_fast = False  # the general path: a no-grad forward, then the DoI's chunks
    ref = slow.explain(x)
    assert torch.equal(fast.values, ref.values)
    assert torch.equal(fast.extras["qoi"], ref.extras["qoi"])
    assert (fast.target is None and ref.target is None) or torch.equal(fast.target, ref.target)


def test_point_runs_one_forward_per_input() -> None:
    m = model()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    rows: list[int] = []
    h = m[0].register_forward_hook(lambda mod, a, out: rows.append(len(a[0])))
    try:
        InternalInfluence(m, "1", doi=Point(), batch_size=64).explain(x)
    finally:
        h.remove()
    assert sum(rows) == len(x)  # the predicted-class default needs no separate forward
