"""Every registered explainer leaves no hook behind and restores the model's mode.

Generated over ``whynet.registry``: a newly registered explainer without a recipe in
``tests/test_contract.py`` (the one table of recipes) fails
``test_every_explainer_has_a_recipe``. Three situations per explainer: a normal call, a bad
target, and a model that raises in the middle of its forward pass.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.conftest import hook_count
from tests.test_contract import RECIPES, BoomCNN, data
from whynet.registry import list_explainers, registered

# capabilities from the registry: fitted methods, and methods that explain only what they were
# trained on (their output does not depend on a class target, and their explain() runs one
# pass of a trained explainer network, not the model)
FITTED = {info.name for info in registered() if info.fitted}
NO_TARGET = {info.name for info in registered() if info.targets == "trained"}
NO_MODEL_IN_EXPLAIN = NO_TARGET


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
