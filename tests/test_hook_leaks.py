"""Every registered explainer leaves no hook behind and restores the model's mode.

Generated over ``whynet.registry``: a newly registered explainer without a recipe here fails
``test_every_explainer_has_a_recipe``. Three situations per explainer: a normal call, a bad
target, and a model that raises in the middle of its forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import TinyCNN, hook_count
from whynet.registry import get_explainer, list_explainers


class BoomCNN(TinyCNN):
    """The tiny CNN, able to raise after its first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.boom = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features[0](x)
        if self.boom:
            raise RuntimeError("boom mid-forward")
        h = self.features[1:](h)
        return self.head(self.pool(h).flatten(1))


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 16, 16, generator=g)


Recipe = Callable[[nn.Module], Any]  # model -> ready explainer (fitted where needed)


def _influence(m: nn.Module) -> Any:
    from whynet import LinearPath

    return get_explainer("influence")(m, layer="features.2", doi=LinearPath(steps=3), batch_size=8)


def _inversion(m: nn.Module) -> Any:
    return get_explainer("inversion")(
        m,
        inversion_layer="pool",
        basis_layer="features.3",
        stage1_steps=2,
        stage2_steps=2,
        batch_size=8,
    )


def _masks(m: nn.Module) -> Any:
    return get_explainer("masks")(m, modality="image", batch_size=8, progress=False).fit(
        data(), epochs=1
    )


def _representer(m: nn.Module) -> Any:
    return get_explainer("representer")(
        m, head="head", max_iter=5, batch_size=8, progress=False
    ).fit(data())


def _clusters(m: nn.Module) -> Any:
    return get_explainer("clusters")(
        m,
        layers=["features.1", "features.3"],
        n_clusters=2,
        method="kmeans",
        batch_size=8,
        progress=False,
    ).fit(data())


RECIPES: dict[str, Recipe] = {
    "influence": _influence,
    "inversion": _inversion,
    "masks": _masks,
    "representer": _representer,
    "clusters": _clusters,
}
# explainers whose output does not depend on a class target (bad targets cannot apply)
NO_TARGET = {"masks"}
# explainers whose explain() never runs the model (one pass of a trained explainer network)
NO_MODEL_IN_EXPLAIN = {"masks"}
FITTED = {"masks", "representer", "clusters"}


def test_every_explainer_has_a_recipe():
    assert set(list_explainers()) <= set(RECIPES), "add a recipe for each new explainer"


def prepared(name: str) -> tuple[Any, BoomCNN]:
    torch.manual_seed(0)
    model = BoomCNN()
    try:
        explainer = RECIPES[name](model)
    except ImportError as e:  # an optional extra missing
        pytest.skip(f"{name}: {e}")
    assert hook_count(model) == 0, f"{name}: hooks left after construction/fit"
    return explainer, model


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_no_hooks_after_normal_call_and_mode_restored(name):
    explainer, model = prepared(name)
    model.train()
    e = explainer.explain(data()[:4])
    assert e.values.shape[0] == 4
    assert hook_count(model) == 0
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("name", sorted(set(RECIPES) - NO_TARGET))
def test_no_hooks_after_bad_target(name):
    explainer, model = prepared(name)
    with pytest.raises((ValueError, TypeError)):
        explainer.explain(data()[:4], target=99)
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", sorted(set(RECIPES) - NO_MODEL_IN_EXPLAIN))
def test_no_hooks_after_model_raises(name):
    explainer, model = prepared(name)
    model.train()
    model.boom = True
    with pytest.raises(RuntimeError, match="boom mid-forward"):
        explainer.explain(data()[:4])
    assert hook_count(model) == 0
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FITTED))
def test_no_hooks_after_model_raises_during_fit(name):
    torch.manual_seed(0)
    model = BoomCNN()
    model.train()
    model.boom = True
    with pytest.raises(RuntimeError, match="boom mid-forward"):
        RECIPES[name](model)
    assert hook_count(model) == 0
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
