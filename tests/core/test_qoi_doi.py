import numpy as np
import pytest
import torch

from whynet.core import (
    Channel,
    Class,
    Comparative,
    Function,
    Gaussian,
    LinearPath,
    MaxClass,
    Mixture,
    Point,
    as_qoi,
    expand,
    path_rule,
)
from whynet.core.doi import RULES, DatasetDoI

OUT = torch.tensor([[1.0, 5.0, 2.0], [4.0, 0.0, -1.0]], dtype=torch.float64)


def test_qoi_linearity():
    a = Comparative(1, [0, 2])(OUT)
    b = (Class(1) - Class([0, 2]))(OUT)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, OUT[:, 1] - OUT[:, [0, 2]].mean(1))
    torch.testing.assert_close((2 * Class(0) + Class(2))(OUT), 2 * OUT[:, 0] + OUT[:, 2])


def test_per_input_class_and_rows():
    q = Class(torch.tensor([2, 0]))
    torch.testing.assert_close(q(OUT), torch.tensor([2.0, 4.0], dtype=torch.float64))
    rows = torch.tensor([1, 1, 0])
    torch.testing.assert_close(
        q(OUT[[1, 1, 0]], rows=rows), torch.tensor([4.0, 4.0, 2.0], dtype=torch.float64)
    )


def test_maxclass_is_fixed_by_bind():
    bound = MaxClass().bind(OUT)
    assert isinstance(bound, Class)
    assert bound.classes.tolist() == [1, 0]
    swapped = OUT.flip(1)  # argmax changes along a "path"; the bound class must not
    torch.testing.assert_close(bound(swapped), swapped.gather(1, torch.tensor([[1], [0]]))[:, 0])
    with pytest.raises(RuntimeError, match="bound"):
        MaxClass()(OUT)


def test_class_out_of_range_and_bad_shapes():
    with pytest.raises(ValueError, match="index 3 out of range"):
        Class(3).bind(OUT)
    with pytest.raises(ValueError, match="one value per input"):
        Function(lambda y: y)(OUT)
    with pytest.raises(TypeError):
        as_qoi(object())
    assert isinstance(as_qoi(None), MaxClass)
    with pytest.raises(ValueError, match="channel 9 out of range"):
        Channel("l", 9)(OUT, activation=torch.zeros(2, 4, 3, 3))


def test_channel_sums_space():
    act = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    torch.testing.assert_close(Channel("l", 1)(OUT, activation=act), act[:, 1].sum((1, 2)))


@pytest.mark.parametrize("rule", RULES)
def test_path_rules_integrate_linear_functions(rule):
    alphas, w = path_rule(rule, 16)
    assert w.dtype == torch.float64 and len(alphas) == 16
    assert torch.all((alphas >= 0) & (alphas <= 1))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    exact = rule in ("riemann_trapezoid", "riemann_middle", "gausslegendre")
    if exact:  # these rules integrate a linear function exactly
        assert float((w * alphas).sum()) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
    "rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]
)
def test_path_rules_equal_captum(rule):
    am = pytest.importorskip("captum.attr._utils.approximation_methods")
    step_sizes, alphas = am.approximation_parameters(rule)
    a, w = path_rule(rule, 7)
    np.testing.assert_allclose(a.numpy(), alphas(7), atol=1e-7)
    np.testing.assert_allclose(w.numpy(), step_sizes(7), atol=1e-12)


def test_path_rule_errors():
    with pytest.raises(ValueError, match="unknown path rule"):
        path_rule("simpson", 4)
    with pytest.raises(ValueError, match="steps"):
        LinearPath(steps=0)
    with pytest.raises(ValueError, match="both ends"):
        path_rule("riemann_trapezoid", 1)


def test_linear_path_one_step_is_point():
    z = torch.randn(3, 4, dtype=torch.float64)
    lp = LinearPath(baseline=0.0, steps=1, rule="riemann_right")
    torch.testing.assert_close(lp.sample(z, 0), Point().sample(z, 0))
    torch.testing.assert_close(lp.weights(), Point().weights())


def test_baseline_shapes():
    z = torch.randn(3, 4, dtype=torch.float64)
    lp = LinearPath(baseline=torch.ones(4), steps=2, rule="riemann_left")
    torch.testing.assert_close(lp.sample(z, 0), torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="baseline of shape"):
        LinearPath(baseline=torch.ones(5), steps=2).sample(z, 0)
    with pytest.raises(TypeError):
        LinearPath(baseline="zero").sample(z, 0)  # type: ignore[arg-type]


def test_gaussian_is_seeded():
    z = torch.zeros(2, 3)
    g = Gaussian(0.5, samples=4, seed=3)
    torch.testing.assert_close(g.sample(z, 2), Gaussian(0.5, 4, seed=3).sample(z, 2))
    assert not torch.equal(g.sample(z, 1), g.sample(z, 2))
    with pytest.raises(ValueError):
        Gaussian(-1.0)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 7, 100])
def test_expand_covers_every_pair_once(batch_size):
    z = torch.arange(5, dtype=torch.float64)[:, None]
    doi = LinearPath(baseline=0.0, steps=3, rule="riemann_right")
    seen = []
    for chunk in expand(doi, z, batch_size):
        assert len(chunk.rows) <= batch_size
        for r, s, p, w in zip(chunk.rows, chunk.samples, chunk.points, chunk.weights):
            torch.testing.assert_close(p, doi.sample(z, int(s))[r])
            assert float(w) == pytest.approx(1 / 3)
            seen.append((int(r), int(s)))
    assert sorted(seen) == [(r, s) for r in range(5) for s in range(3)]


def test_mixture_weights_and_samples():
    z = torch.randn(2, 3)
    mix = Mixture([(3.0, Point()), (1.0, LinearPath(0.0, steps=2, rule="riemann_left"))])
    torch.testing.assert_close(
        mix.weights(), torch.tensor([0.75, 0.125, 0.125], dtype=torch.float64)
    )
    torch.testing.assert_close(mix.sample(z, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same space"):
        Mixture([(1.0, Point()), (1.0, Point(at="x"))])


def test_dataset_doi_filters_class():
    x = torch.arange(10, dtype=torch.float64)[:, None]
    y = torch.tensor([0, 1] * 5)
    got = torch.cat([b for b, _ in DatasetDoI(x, y, cls=1, batch_size=3).batches()])
    torch.testing.assert_close(got, x[1::2])
    with pytest.raises(ValueError, match="labels"):
        list(DatasetDoI(x, cls=1).batches())
