"""Equality with Captum's InternalInfluence for input-space paths (same rule and steps)."""

import pytest
import torch

from tests.conftest import TinyCNN, hook_count
from whynet.core import LinearPath
from whynet.influence import InternalInfluence

captum_attr = pytest.importorskip("captum.attr")

RULES = {
    "riemann_left": "riemann_left",
    "riemann_right": "riemann_right",
    "riemann_middle": "riemann_middle",
    "gausslegendre": "gausslegendre",
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("layer", ["features.0", "pool"])
def test_equals_captum_internal_influence(rule, layer):
    torch.manual_seed(0)
    model = TinyCNN().eval()  # float32, as users run it
    x = torch.randn(6, 1, 7, 7)
    base = torch.randn(1, 1, 7, 7) * 0.1
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    ours = (
        InternalInfluence(model, layer, doi=LinearPath(base, steps=12, rule=rule), batch_size=10)
        .explain(x, target=target)
        .values
    )
    ref = captum_attr.InternalInfluence(model, model.get_submodule(layer)).attribute(
        x, baselines=base, target=target, n_steps=12, method=RULES[rule]
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert hook_count(model) == 0
