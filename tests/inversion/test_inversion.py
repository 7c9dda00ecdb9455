"""Guided feature inversion: the identities of Du et al. 2018 (Eqs. 2, 4-6), batching, and a
two-object model where the class-discriminative mask must find the right object."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import whynet.inversion.explainer as gfi_module
from whynet.core import Explanation, blend
from whynet.inversion import GuidedFeatureInversion, basis_mask, normalise, phi_bg
from whynet.metrics import gaussian_blur

sys.path.insert(0, str(Path(__file__).parent))
from _toy import toy_model, trained_toy, two_object_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(stage1_steps=3, stage2_steps=12)


def small(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return toy_model().to(dtype)


def images(n: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_phi_identities() -> None:
    x = images()
    p = gaussian_blur(x, 2.0)
    m = torch.rand(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(blend(x, torch.ones_like(m), p), x, rtol=0, atol=0)
    torch.testing.assert_close(blend(x, torch.zeros_like(m), p), p, rtol=0, atol=0)
    torch.testing.assert_close(phi_bg(x, m, p), blend(x, 1 - m, p), rtol=0, atol=0)
    torch.testing.assert_close(blend(x, m, p), x * m[:, None] + p * (1 - m[:, None]))


def test_mask_scale_invariant_and_in_range() -> None:
    g = torch.Generator().manual_seed(3)
    basis = torch.rand(2, 5, 4, 6, generator=g, dtype=torch.float64)
    omega = torch.rand(2, 5, generator=g, dtype=torch.float64)
    m = basis_mask(omega, basis, (16, 24))
    assert m.shape == (2, 16, 24)
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    low = normalise(torch.einsum("bk,bkhw->bhw", omega, basis))
    assert low.flatten(1).min(1).values.tolist() == [0.0, 0.0]
    assert low.flatten(1).max(1).values.tolist() == [1.0, 1.0]
    for c in (1e-3, 3.7, 1e4):
        torch.testing.assert_close(basis_mask(c * omega, basis, (16, 24)), m, rtol=0, atol=1e-14)


def test_constant_map_and_zero_omega_give_zeros_without_nan() -> None:
    basis = torch.ones(1, 3, 4, 4, dtype=torch.float64)
    omega = torch.rand(1, 3, dtype=torch.float64, requires_grad=True)
    m = basis_mask(omega, basis, (8, 8))
    m.sum().backward()
    assert bool((m == 0).all()) and bool(torch.isfinite(omega.grad).all())
    assert bool((basis_mask(torch.zeros(1, 3), basis.float(), (8, 8)) == 0).all())


def test_explain_shapes_range_and_extras() -> None:
    model = small(torch.float32)
    x = torch.rand(3, 1, 16, 20, generator=torch.Generator().manual_seed(4))
    e = GuidedFeatureInversion(model, "5", "4", **FAST).explain(x)
    assert isinstance(e, Explanation) and e.method == "inversion" and e.layer == "4"
    assert e.values.shape == (3, 16, 20) and e.extras["stage1_mask"].shape == (3, 16, 20)
    for m in (e.values, e.extras["stage1_mask"]):
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert e.extras["omega"].shape == (3, 16) and e.extras["omega_stage1"].shape == (3, 16)
    assert e.extras["stage1_loss"].shape == (3, 3) and e.extras["stage2_loss"].shape == (3, 12)
    torch.testing.assert_close(e.target, model(x).argmax(1))
    assert bool(((e.extras["prob_kept"] >= 0) & (e.extras["prob_kept"] <= 1)).all())


def test_same_layer_for_inversion_and_basis() -> None:
    # the authors' code inverts and spans the mask at one layer (pool5 for both)
    model = small()
    x = images(2)
    e = GuidedFeatureInversion(model, "4", "4", **FAST).explain(x)
    assert e.values.shape == (2, 16, 16) and bool(torch.isfinite(e.values).all())


def test_omega_nonnegative_after_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    real = gfi_module.basis_mask

    def spy(omega: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        seen.append(float(omega.detach().min()))
        return real(omega, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(gfi_module, "basis_mask", spy)
    # a large lr makes Adam overshoot below zero, so the clamp is exercised
    e = GuidedFeatureInversion(small(), "5", "4", lr=0.3, gamma=0.0, delta=0.0, **FAST).explain(
        images(2)
    )
    assert len(seen) == 3 + 12 + 2  # every loss evaluation, then the two returned masks
    assert min(seen) >= 0.0
    assert bool((e.extras["omega"] >= 0).all()) and bool((e.extras["omega"] == 0).any())


def test_stage1_never_reads_the_target() -> None:
    assert "target" not in inspect.signature(GuidedFeatureInversion.stage1).parameters
    g = GuidedFeatureInversion(small(), "5", "4", **FAST)
    a, b = g.explain(images(2), target=0), g.explain(images(2), target=1)
    for key in ("stage1_mask", "omega_stage1", "stage1_loss"):
        torch.testing.assert_close(a.extras[key], b.extras[key], rtol=0, atol=0)
    assert not torch.equal(a.extras["stage2_loss"], b.extras["stage2_loss"])


def test_alone_equals_in_batch() -> None:
    model, x = small(), images(3)
    target = torch.tensor([1, 0, 1])
    joint = GuidedFeatureInversion(model, "5", "4", batch_size=3, **FAST).explain(x, target)
    chunks = GuidedFeatureInversion(model, "5", "4", batch_size=2, **FAST).explain(x, target)
    for i in range(3):
        alone = GuidedFeatureInversion(model, "5", "4", **FAST).explain(
            x[i : i + 1], target[i : i + 1]
        )
        torch.testing.assert_close(alone.values[0], joint.values[i], rtol=0, atol=1e-10)
        torch.testing.assert_close(
            alone.extras["omega"][0], joint.extras["omega"][i], rtol=0, atol=1e-10
        )
    torch.testing.assert_close(chunks.values, joint.values, rtol=0, atol=1e-10)


def test_hand_written_adam_matches_torch() -> None:
    g = torch.Generator().manual_seed(5)
    p1 = torch.rand(4, 3, generator=g, dtype=torch.float64)
    p2 = p1.clone().requires_grad_(True)
    ours = gfi_module._Adam(p1)
    ref = torch.optim.Adam([p2], lr=0.05)
    for _ in range(6):
        grad = torch.randn(4, 3, generator=g, dtype=torch.float64)
        ours.step(grad, 0.05)
        p2.grad = grad.clone()
        ref.step()
    torch.testing.assert_close(p1, p2.detach(), rtol=0, atol=1e-14)


def test_constant_image_is_well_defined() -> None:
    x = torch.full((2, 1, 16, 16), 0.5)
    e = GuidedFeatureInversion(small(torch.float32), "5", "4", **FAST).explain(x)
    for t in (e.values, e.extras["stage1_mask"], e.extras["omega"], e.extras["stage2_loss"]):
        assert bool(torch.isfinite(t).all())
    assert float(e.values.min()) >= 0 and float(e.values.max()) <= 1


def test_bad_input_raises_clear_errors() -> None:
    model = small(torch.float32)
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="spatial"):
        GuidedFeatureInversion(model, "5", "6", **FAST).explain(x)  # Flatten output
    with pytest.raises(ValueError, match="out of range"):
        GuidedFeatureInversion(model, "5", "4", **FAST).explain(x, target=7)
    with pytest.raises(ValueError, match="unknown layer"):
        GuidedFeatureInversion(model, "5", "conv9", **FAST).explain(x)
    with pytest.raises(ValueError, match="dimensions"):
        GuidedFeatureInversion(model, "5", "4", **FAST).explain(x[:, 0])
    with pytest.raises(ValueError, match="lr"):
        GuidedFeatureInversion(model, "5", "4", lr=0)
    with pytest.raises(ValueError, match="blur"):
        GuidedFeatureInversion(model, "5", "4", blur_sigma=-1.0)


def test_hygiene_and_round_trip(tmp_path: Path) -> None:
    model = small(torch.float32).train()
    x = torch.rand(2, 1, 16, 16)
    e = GuidedFeatureInversion(model, "5", "4", **FAST).explain(x)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    back = Explanation.load(e.save(tmp_path / "gfi.safetensors"))
    torch.testing.assert_close(back.values, e.values)
    torch.testing.assert_close(back.extras["omega"], e.extras["omega"])
    assert back.params["stage2_steps"] == 12


def test_two_objects_each_class_mask_finds_its_object() -> None:
    model = trained_toy()
    x, boxes = two_object_image()
    e = GuidedFeatureInversion(model, "5", "4").explain(x.repeat(2, 1, 1, 1), torch.tensor([0, 1]))

    def mass(i: int, cls: int) -> float:
        x0, y0, x1, y1 = boxes[cls]
        return float(e.values[i, y0:y1, x0:x1].mean())

    assert mass(0, 0) > mass(0, 1)  # the mask for class 0 covers the horizontal bar
    assert mass(1, 1) > mass(1, 0)  # the mask for class 1 covers the vertical bar


def test_guard_never_returns_an_all_zero_omega() -> None:
    # untrained model: the L1 terms dominate and would clamp every weight to 0 at once
    e = GuidedFeatureInversion(small(), "5", "4", **FAST).explain(images(2))
    assert bool((e.extras["omega"] > 0).any(1).all())
    assert bool((e.extras["omega_stage1"] > 0).any(1).all())


def test_registry_and_top_level_export() -> None:
    import whynet
    from whynet.registry import get_explainer

    assert get_explainer("inversion") is GuidedFeatureInversion
    assert whynet.GuidedFeatureInversion is GuidedFeatureInversion
    assert GuidedFeatureInversion.method == "inversion"
