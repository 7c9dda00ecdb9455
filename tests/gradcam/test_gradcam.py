"""Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) against a hand-written reference, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import hook_count
from whynet.core import Explanation
from whynet.gradcam import GradCAM

D = torch.float64


def pooled_cnn() -> nn.Sequential:
    """conv -> in-place ReLU -> max-pool -> conv -> ReLU -> GAP -> head: maps at half size."""
    torch.manual_seed(3)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(5, 3),
        )
        .double()
        .eval()
    )


def reference(
    model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor, relu: bool = True
) -> torch.Tensor:
    """Eq. 1-2 written out: a forward hook keeps A (handing on a clone, so an in-place op
    downstream cannot touch it), autograd gives d y^c / d A."""
    kept: list[torch.Tensor] = []

    def hook(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        kept.append(out)
        return out.clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        y = model(x)
    finally:
        handle.remove()
    (a,) = kept
    (g,) = torch.autograd.grad(y.gather(1, classes[:, None]).sum(), a)
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1)
    return torch.relu(cam) if relu else cam


def images(n: int = 5, h: int = 10, w: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, h, w, generator=torch.Generator().manual_seed(7), dtype=D)


@pytest.mark.parametrize("layer", ["features.0", "features.2", "features.3"])
def test_equals_the_hand_written_reference(tiny_cnn, layer):
    x = images(5, 6, 6)
    pred = tiny_cnn(x).argmax(1)
    e = GradCAM(tiny_cnn, layer).explain(x)
    assert isinstance(e, Explanation) and e.method == "gradcam" and e.layer == layer
    assert torch.equal(e.target, pred)
    ref = reference(tiny_cnn, layer, x, pred)
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(e.values, ref, rtol=1e-12, atol=1e-14)  # same size: no resize
    assert e.params == {
        "layer": layer,
        "relu": True,
        "upsample": True,
        "batch_size": 64,
        "output": None,
        "target": None,
    }


def test_upsampled_to_the_input_size():
    m = pooled_cnn()
    x = images(4, 10, 12)
    pred = m(x).argmax(1)
    e = GradCAM(m, "4").explain(x)
    ref = reference(m, "4", x, pred)
    assert ref.shape == (4, 5, 6) and e.values.shape == (4, 10, 12)
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-12, atol=1e-14)
    up = F.interpolate(ref[:, None], size=(10, 12), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(e.values, up, rtol=1e-12, atol=1e-14)
    small = GradCAM(m, "4", upsample=False).explain(x)
    assert small.values.shape == (4, 5, 6)
    torch.testing.assert_close(small.values, ref, rtol=1e-12, atol=1e-14)


def test_relu_off_gives_the_signed_map():
    m = pooled_cnn()
    x = images(6)
    signed = GradCAM(m, "3", relu=False).explain(x)  # before the ReLU: maps of both signs
    ref = reference(m, "3", x, m(x).argmax(1), relu=False)
    torch.testing.assert_close(signed.extras["cam"], ref, rtol=1e-12, atol=1e-14)
    assert bool((signed.extras["cam"] < 0).any()) and bool((signed.extras["cam"] > 0).any())
    pos = GradCAM(m, "3").explain(x)
    torch.testing.assert_close(pos.extras["cam"], torch.relu(signed.extras["cam"]))


def test_per_input_and_fixed_targets():
    m = pooled_cnn()
    x = images(6)
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    e = GradCAM(m, "4", upsample=False).explain(x, target=t)
    assert torch.equal(e.target, t)
    torch.testing.assert_close(e.values, reference(m, "4", x, t), rtol=1e-12, atol=1e-14)
    e2 = GradCAM(m, "4", upsample=False).explain(x, target=2)
    assert e2.target.tolist() == [2] * 6
    torch.testing.assert_close(
        e2.values, reference(m, "4", x, torch.full((6,), 2)), rtol=1e-12, atol=1e-14
    )
    pred = GradCAM(m, "4").explain(x, target="predicted")
    assert torch.equal(pred.target, m(x).argmax(1))


def test_batch_size_independence(tiny_cnn):
    x = images(7, 6, 6)
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    whole = GradCAM(tiny_cnn, "features.3", batch_size=64).explain(x, target=t)
    for bs in (1, 3):
        part = GradCAM(tiny_cnn, "features.3", batch_size=bs).explain(x, target=t)
        torch.testing.assert_close(part.values, whole.values, rtol=1e-12, atol=1e-14)
        assert torch.equal(part.target, whole.target)
    for i in range(len(x)):
        alone = GradCAM(tiny_cnn, "features.3").explain(x[i : i + 1], target=t[i : i + 1])
        torch.testing.assert_close(alone.values, whole.values[i : i + 1], rtol=1e-12, atol=1e-14)


def test_bad_input_clear_errors_and_no_hooks_left(tiny_cnn):
    x = images(2, 6, 6)
    tiny_cnn.train()
    with pytest.raises(ValueError, match=r"\(B, K, h, w\) output; layer 'head' outputs shape"):
        GradCAM(tiny_cnn, "head").explain(x)
    with pytest.raises(ValueError, match="unknown layer"):
        GradCAM(tiny_cnn, "features.9")
    with pytest.raises(TypeError, match="relu must be bool"):
        GradCAM(tiny_cnn, "features.3", relu=1)
    with pytest.raises(ValueError, match="out of range"):
        GradCAM(tiny_cnn, "features.3").explain(x, target=3)
    with pytest.raises(ValueError, match="4 dimensions"):
        GradCAM(tiny_cnn, "features.3").explain(x[:, 0])
    with pytest.raises(TypeError, match="floating"):
        GradCAM(tiny_cnn, "features.3").explain(torch.zeros(2, 1, 6, 6, dtype=torch.long))
    GradCAM(tiny_cnn, "features.3").explain(x)
    assert hook_count(tiny_cnn) == 0
    assert all(m.training for m in tiny_cnn.modules())
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_registered_with_its_capabilities():
    from whynet.registry import get_explainer, method_info

    assert get_explainer("gradcam") is GradCAM
    info = method_info("gradcam")
    assert not info.fitted and info.inputs == ("image",) and info.targets == "class"
    assert [a.name for a in info.args] == ["layer"]


@pytest.mark.parametrize("relu", [True, False])
def test_equals_captum_layer_gradcam(relu):
    captum_attr = pytest.importorskip("captum.attr")
    m = pooled_cnn()
    x = images(4)
    t = torch.tensor([2, 0, 1, 2])
    ours = GradCAM(m, "3", relu=relu, upsample=False).explain(x, target=t).values
    ref = captum_attr.LayerGradCam(m, m[3]).attribute(x, target=t, relu_attributions=relu)
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-12, atol=1e-14)
    assert hook_count(m) == 0
