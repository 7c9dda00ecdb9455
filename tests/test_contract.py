"""The contract every registered explainer keeps, generated over ``whynet.registry``.

scikit-learn's ``check_estimator`` is the model: one table of recipes (how to build, and where
needed fit, each method on a tiny CNN), and the same checks for every registered method:

- the model is untouched by construction, ``fit`` and ``explain``: no hooks left, every
  module's train/eval mode and every parameter's ``requires_grad`` restored, parameters and
  buffers (BatchNorm running statistics included) bit-identical, no ``.grad`` left behind;
- fitted methods: ``NotFittedError`` before ``fit`` and after a ``fit`` that fails (the model
  raises on its first, a middle or its last forward pass of a clean fit), ``save``/``load``
  round trip and a refit with the same settings give the same explanation;
- the explanation does not depend on ``batch_size``; ``get_params()`` is the constructor's
  signature; ``Explanation.method`` is the registry name; a bad class (99) raises ``ValueError``
  or ``TypeError`` and, for methods that explain a class or a QoI, a float target ``TypeError``.

A registered method without a recipe here fails :func:`test_every_registered_method_has_a_recipe`.
The recipes are also the hook-leak test's (``tests/test_hook_leaks.py`` imports them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import TinyCNN, hook_count
from whynet.core import NotFittedError
from whynet.registry import get_explainer, method_info, registered

pytestmark = pytest.mark.usefixtures("one_thread")


class BoomCNN(TinyCNN):
    """The tiny CNN, able to raise after its first layer: always (``boom``) or from its
    ``boom_at``-th forward call on (counted in ``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.boom = False
        self.boom_at: int | None = None
        self.calls = 0

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.features[0](x)
        if self.boom or (self.boom_at is not None and self.calls >= self.boom_at):
            raise RuntimeError("boom mid-forward")
        return self.features[1:](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self._trunk(x)).flatten(1))


class NormCNN(BoomCNN):
    """BoomCNN with a BatchNorm after the features (running statistics set away from their
    defaults), so that a forward pass in train mode would change a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(6)
        g = torch.Generator().manual_seed(1)
        self.norm.running_mean.copy_(torch.randn(6, generator=g) * 0.1)
        self.norm.running_var.copy_(torch.rand(6, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.norm(self._trunk(x))).flatten(1))


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 16, 16, generator=g)


@dataclass(frozen=True)
class Recipe:
    """How to get a method ready on a model: ``make`` stores the settings (an unfitted
    explainer), ``fit`` (fitted methods only) fits it. Calling the recipe does both."""

    make: Callable[[nn.Module], Any]
    fit: Callable[[Any], Any] | None = None

    def __call__(self, model: nn.Module) -> Any:
        explainer = self.make(model)
        return explainer if self.fit is None else self.fit(explainer)


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


def _gradcam(m: nn.Module) -> Any:
    return get_explainer("gradcam")(m, layer="features.3", batch_size=8)


def _masks(m: nn.Module) -> Any:
    return get_explainer("masks")(m, modality="image", batch_size=8, progress=False)


def _representer(m: nn.Module) -> Any:
    return get_explainer("representer")(m, head="head", max_iter=5, batch_size=8, progress=False)


def _clusters(m: nn.Module) -> Any:
    return get_explainer("clusters")(
        m,
        layers=["features.1", "features.3"],
        n_clusters=2,
        algorithm="kmeans",
        batch_size=8,
        progress=False,
    )


#: registry name -> recipe (one table for the contract suite and the hook-leak test)
RECIPES: dict[str, Recipe] = {
    "influence": Recipe(_influence),
    "inversion": Recipe(_inversion),
    "gradcam": Recipe(_gradcam),
    "masks": Recipe(_masks, fit=lambda e: e.fit(data(), epochs=1)),
    "representer": Recipe(_representer, fit=lambda e: e.fit(data())),
    "clusters": Recipe(_clusters, fit=lambda e: e.fit(data())),
}

NAMES = [info.name for info in registered()]
FITTED = [info.name for info in registered() if info.fitted]
#: methods that explain any class (or a QoI): float targets must be refused
CLASS_TARGETS = [info.name for info in registered() if info.targets in ("class", "qoi")]


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        pytest.fail(f"{name}: no recipe in tests/test_contract.py RECIPES")
    return RECIPES[name]


def fresh_model() -> NormCNN:
    """A NormCNN in a mixed state: train mode except one module, one frozen parameter."""
    torch.manual_seed(0)
    model = NormCNN()
    model.train()
    model.features[1].eval()
    model.head.bias.requires_grad_(False)
    return model


def _extras(name: str, build: Callable[[], Any]) -> Any:
    """Run ``build``; a missing optional third-party extra skips, a broken whynet import fails."""
    try:
        return build()
    except ImportError as e:
        if e.name and not e.name.startswith("whynet"):
            pytest.skip(f"{name}: optional extra missing: {e}")
        raise


def ready(name: str, model: nn.Module) -> Any:
    """The method built and (where needed) fitted on ``model`` by its recipe."""
    return _extras(name, lambda: recipe(name)(model))


def unfitted(name: str, model: nn.Module) -> Any:
    """The method with its recipe's settings, not fitted."""
    return _extras(name, lambda: recipe(name).make(model))


def inputs(n: int = 6) -> torch.Tensor:
    return data()[:n]


Snapshot = tuple[dict[str, bool], dict[str, bool], dict[str, torch.Tensor]]


def snapshot(model: nn.Module) -> Snapshot:
    return (
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: t.detach().clone() for n, t in model.state_dict().items()},
    )


def assert_untouched(model: nn.Module, before: Snapshot, when: str) -> None:
    modes, grads, tensors = before
    assert hook_count(model) == 0, f"hooks left {when}"
    now = {n: m.training for n, m in model.named_modules()}
    assert now == modes, (
        f"module modes changed {when}: {sorted(k for k in now if now[k] != modes[k])}"
    )
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    assert req == grads, f"requires_grad changed {when}"
    for n, t in model.state_dict().items():
        assert t.dtype == tensors[n].dtype and torch.equal(t, tensors[n]), f"{n} changed {when}"
    left = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not left, f".grad left on {left} {when}"


def assert_same(a: Any, b: Any, what: str, rtol: float = 0.0) -> None:
    """Two Explanations agree in values and explained target (exactly, or to ``rtol``)."""
    atol = rtol * float(b.values.abs().max()) if rtol else 0.0
    torch.testing.assert_close(
        a.values, b.values, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )
    if a.target is None or b.target is None:
        assert a.target is None and b.target is None, f"{what}: target given by one only"
    else:
        assert torch.equal(a.target, b.target), f"{what}: targets differ"


# ---- the registry is covered --------------------------------------------------------------


def test_every_registered_method_has_a_recipe() -> None:
    missing = sorted(set(NAMES) - set(RECIPES))
    assert not missing, f"add a recipe to tests/test_contract.py for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_recipe_fits_exactly_the_fitted_methods(name: str) -> None:
    assert (recipe(name).fit is not None) == method_info(name).fitted


# ---- every method --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_model_untouched_by_fit_and_explain(name: str) -> None:
    model = fresh_model()
    before = snapshot(model)
    explainer = ready(name, model)
    assert_untouched(model, before, "after construction/fit")
    e = explainer.explain(inputs(4))
    assert e.values.shape[0] == 4
    assert_untouched(model, before, "after explain")


@pytest.mark.parametrize("name", NAMES)
def test_result_independent_of_batch_size(name: str) -> None:
    explainer = ready(name, fresh_model())
    x = inputs(6)
    explainer.batch_size = 8
    whole = explainer.explain(x)
    explainer.batch_size = 2
    chunked = explainer.explain(x)
    assert_same(chunked, whole, f"{name}: batch_size 2 vs 8", rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_get_params_is_the_constructor_signature(name: str) -> None:
    explainer = unfitted(name, fresh_model())
    signature = inspect.signature(type(explainer).__init__).parameters
    kinds = {p.kind for p in signature.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{name}: **kwargs in the constructor"
    assert inspect.Parameter.VAR_POSITIONAL not in kinds, f"{name}: *args in the constructor"
    assert set(explainer.get_params()) == set(signature) - {"self", "model"}


@pytest.mark.parametrize("name", NAMES)
def test_explanation_method_is_the_registry_name(name: str) -> None:
    explainer = ready(name, fresh_model())
    method = explainer.explain(inputs(2)).method
    assert method == name, f"Explanation.method is {method!r}, registered as {name!r}"


@pytest.mark.parametrize("name", NAMES)
def test_bad_class_target_is_refused(name: str) -> None:
    model = fresh_model()
    explainer = ready(name, model)
    with pytest.raises((ValueError, TypeError)):
        explainer.explain(inputs(4), target=99)
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", CLASS_TARGETS)
def test_float_target_is_refused(name: str) -> None:
    explainer = ready(name, fresh_model())
    with pytest.raises(TypeError):
        explainer.explain(inputs(4), target=torch.tensor([0.5, 0.5, 0.5, 0.5]))


# ---- fitted methods ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FITTED)
def test_not_fitted_before_fit(name: str) -> None:
    explainer = unfitted(name, fresh_model())
    with pytest.raises(NotFittedError):
        explainer.explain(inputs(2))
    with pytest.raises(NotFittedError):
        explainer.check_is_fitted()


def forwards_of_a_clean_fit(name: str) -> int:
    model = fresh_model()
    ready(name, model)
    return model.calls


@pytest.mark.parametrize("name", FITTED)
def test_failed_fit_leaves_the_explainer_unfitted(name: str) -> None:
    n = forwards_of_a_clean_fit(name)
    assert n >= 1, f"{name}: fit never ran the model"
    for at in sorted({1, n // 2 + 1, n}):
        model = fresh_model()
        before = snapshot(model)
        explainer = unfitted(name, model)  # a fresh explainer for every failure
        fit = recipe(name).fit
        assert fit is not None
        model.boom_at = at
        with pytest.raises(RuntimeError, match="boom mid-forward"):
            fit(explainer)
        model.boom_at = None
        assert_untouched(model, before, f"after a fit that failed at forward {at} of {n}")
        with pytest.raises(NotFittedError):
            explainer.explain(inputs(2))
        with pytest.raises(NotFittedError):
            explainer.check_is_fitted()


@pytest.mark.parametrize("name", FITTED)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model = fresh_model()
    explainer = ready(name, model)
    x = inputs(4)
    before = explainer.explain(x)
    path = tmp_path / f"{name}.safetensors"
    explainer.save(path)
    loaded = type(explainer).load(path, model)
    assert_same(loaded.explain(x), before, f"{name}: loaded vs fitted")
    assert loaded.params() == explainer.params()


@pytest.mark.parametrize("name", FITTED)
def test_refit_gives_the_same_result(name: str) -> None:
    model = fresh_model()
    explainer = ready(name, model)
    x = inputs(4)
    first = explainer.explain(x)
    fit = recipe(name).fit
    assert fit is not None
    again = fit(explainer)  # same object, same settings; the global RNG is not re-seeded
    assert again is explainer, f"{name}: fit must return self"
    assert_same(explainer.explain(x), first, f"{name}: refit vs first fit", rtol=1e-6)
