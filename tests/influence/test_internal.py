"""InternalInfluence: axioms and exact identities (Leino et al. 2018), float64, tiny models."""

import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from whynet.core import (
    Channel,
    Class,
    Comparative,
    Explanation,
    Function,
    Gaussian,
    LinearPath,
    MaxClass,
    Mixture,
    Point,
    capture,
    intervene,
)
from whynet.influence import InternalInfluence, top_neurons

D = torch.float64


def two_layer() -> nn.Sequential:
    torch.manual_seed(1)
    return (
        nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softplus(), nn.Linear(4, 3))
        .double()
        .eval()
    )


def infl(model, layer, x, **kw):
    target = kw.pop("target", None)
    return InternalInfluence(model, layer, **kw).explain(x, target=target).values


# ------------------------------------------------------------------ linear agreement
@pytest.mark.parametrize("doi", [Point(), LinearPath(0.0, steps=7), Gaussian(0.5, 4, seed=3)])
def test_linear_model_influence_is_weights(doi):
    lin = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=D)
    for c in range(3):
        v = infl(lin, None, x, qoi=Class(c), doi=doi)
        torch.testing.assert_close(v, lin.weight[c].detach().expand(4, 5))


def test_cut_before_a_linear_layer_gives_its_weights():
    m = two_layer()
    x = torch.randn(6, 5, dtype=D)
    # layer "3" (Softplus output) feeds the final Linear: its influence is that layer's weights
    for doi in (Point(), LinearPath(0.0, steps=5), Gaussian(0.3, 3)):
        v = infl(m, "3", x, qoi=Class(2), doi=doi)
        torch.testing.assert_close(v, m[4].weight[2].detach().expand(6, 4))
    v = infl(m, "3", x, qoi=Comparative(0, 1))
    torch.testing.assert_close(v, (m[4].weight[0] - m[4].weight[1]).detach().expand(6, 4))


# ------------------------------------------------------------------ distributional linearity
@pytest.mark.parametrize("at", [None, "1"])
def test_mixture_is_weighted_sum_of_components(at):
    m = two_layer()
    x = torch.randn(5, 5, dtype=D)
    comps = [
        (0.2, Point(at=at)),
        (0.5, Gaussian(0.4, 3, seed=7, at=at)),
        (0.3, LinearPath(0.1, steps=4, rule="riemann_middle", at=at)),
    ]
    mix = infl(m, "1", x, qoi=Class(1), doi=Mixture(comps))
    parts = sum(w * infl(m, "1", x, qoi=Class(1), doi=d) for w, d in comps)
    torch.testing.assert_close(mix, parts, rtol=1e-12, atol=1e-12)


def test_mixture_weights_are_normalised():
    m = two_layer()
    x = torch.randn(3, 5, dtype=D)
    a = infl(m, "1", x, qoi=Class(0), doi=Mixture([(2.0, Point()), (6.0, Gaussian(0.2, 2))]))
    b = infl(m, "1", x, qoi=Class(0), doi=Mixture([(0.25, Point()), (0.75, Gaussian(0.2, 2))]))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ completeness
def test_completeness_at_the_input():
    m = two_layer()
    x = torch.randn(4, 5, dtype=D)
    base = torch.randn(5, dtype=D)
    v = infl(m, None, x, qoi=Class(2), doi=LinearPath(base, steps=256), multiply_activation=True)
    with torch.no_grad():
        gap = m(x)[:, 2] - m(base[None])[:, 2]
    torch.testing.assert_close(v.sum(1), gap, rtol=1e-10, atol=1e-10)


def test_completeness_at_an_internal_layer_with_a_latent_baseline():
    m = two_layer()
    x = torch.randn(4, 5, dtype=D)
    latent = torch.randn(6, dtype=D) * 0.5
    doi = LinearPath(latent, steps=256, at="1")
    v = infl(m, "1", x, qoi=Comparative(0, 2), doi=doi, multiply_activation=True)
    with torch.no_grad():
        y = m(x)
        with intervene(m, {"1": latent.expand(4, 6)}):
            yb = m(x)
    gap = (y[:, 0] - y[:, 2]) - (yb[:, 0] - yb[:, 2])
    torch.testing.assert_close(v.sum(1), gap, rtol=1e-10, atol=1e-10)


def test_completeness_relu_cnn_latent_baseline(tiny_cnn):
    # piecewise-linear integrand: quadrature converges slowly, so a looser tolerance
    x = torch.randn(3, 1, 6, 6, dtype=D)
    doi = LinearPath(0.0, steps=256, rule="riemann_middle", at="features.0")
    e = InternalInfluence(
        tiny_cnn, "features.0", qoi=Class(1), doi=doi, multiply_activation=True
    ).explain(x)
    with torch.no_grad():
        y = tiny_cnn(x)[:, 1]
        with intervene(tiny_cnn, {"features.0": torch.zeros(3, 4, 6, 6, dtype=D)}):
            yb = tiny_cnn(x)[:, 1]
    torch.testing.assert_close(e.values.flatten(1).sum(1), y - yb, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(e.extras["qoi"], y)


def test_attribution_space_is_influence_times_activation_difference(tiny_cnn):
    # input-space path: z_baseline = h(baseline input), as documented
    x = torch.randn(2, 1, 5, 5, dtype=D)
    base = torch.full((1, 5, 5), 0.3, dtype=D)
    doi = LinearPath(base, steps=6)
    a = infl(tiny_cnn, "features.2", x, qoi=Class(0), doi=doi, multiply_activation=True)
    i = infl(tiny_cnn, "features.2", x, qoi=Class(0), doi=doi)
    with torch.no_grad(), capture(tiny_cnn, "features.2") as cx:
        tiny_cnn(x)
    with torch.no_grad(), capture(tiny_cnn, "features.2") as cb:
        tiny_cnn(base.expand(2, 1, 5, 5))
    torch.testing.assert_close(a, i * (cx["features.2"] - cb["features.2"]))
    # a DoI without a baseline multiplies by the activation itself (gradient x activation)
    p = infl(tiny_cnn, "features.2", x, qoi=Class(0), multiply_activation=True)
    torch.testing.assert_close(p, infl(tiny_cnn, "features.2", x, qoi=Class(0)) * cx["features.2"])


# ------------------------------------------------------------------ path rules / point
@pytest.mark.parametrize("at", [None, "features.2"])
def test_one_step_riemann_right_equals_point(tiny_cnn, at):
    x = torch.randn(3, 1, 5, 5, dtype=D)
    base = 0.0 if at is None else torch.zeros(6, 5, 5, dtype=D)
    a = infl(tiny_cnn, "features.2", x, doi=LinearPath(base, steps=1, rule="riemann_right", at=at))
    b = infl(tiny_cnn, "features.2", x, doi=Point(at=at))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ QoI linearity, sensitivity
def test_qoi_linearity(tiny_cnn):
    x = torch.randn(4, 1, 5, 5, dtype=D)
    doi = LinearPath(0.0, steps=5)
    combo = infl(tiny_cnn, "features.0", x, qoi=Class(0) - 2.0 * Class(2), doi=doi)
    parts = infl(tiny_cnn, "features.0", x, qoi=Class(0), doi=doi) - 2 * infl(
        tiny_cnn, "features.0", x, qoi=Class(2), doi=doi
    )
    torch.testing.assert_close(combo, parts, rtol=1e-12, atol=1e-12)
    comp = infl(tiny_cnn, "features.0", x, qoi=Comparative(0, 2), doi=doi)
    torch.testing.assert_close(
        comp,
        infl(tiny_cnn, "features.0", x, qoi=Class(0) - Class(2), doi=doi),
        rtol=1e-12,
        atol=1e-12,
    )


def test_sensitivity():
    lin = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        lin[0].weight[:, 3] = 0.0  # the model ignores feature 3
    x = torch.randn(5, 4, dtype=D)
    for doi in (Point(), LinearPath(0.0, steps=8), Gaussian(0.5, 3)):
        v = infl(lin, None, x, qoi=Class(1), doi=doi)
        assert torch.all(v[:, 3] == 0)
    # IG sensitivity (a): input and baseline differ in one feature that changes the output
    base = x.clone()
    base[:, 1] += 1.0
    v = infl(lin, None, x, qoi=Class(1), doi=LinearPath(base, steps=32), multiply_activation=True)
    with torch.no_grad():
        changed = (lin(x)[:, 1] - lin(base)[:, 1]).abs() > 1e-6
    assert changed.any()
    assert torch.all(v[changed, 1] != 0)
    assert torch.all(v[:, [0, 2, 3]] == 0)


# ------------------------------------------------------------------ determinism, chunking
def test_determinism_and_chunking_invariance(tiny_cnn):
    x = torch.randn(3, 1, 6, 6, dtype=D)
    for doi in (
        LinearPath(0.0, steps=5),
        Gaussian(0.3, 3, seed=2),
        LinearPath(0.0, steps=3, at="features.0"),
    ):
        runs = [
            infl(tiny_cnn, "features.2", x, doi=doi, qoi=Class(1), batch_size=bs)
            for bs in (1, 4, 1000, 1000)
        ]
        assert torch.equal(runs[2], runs[3])  # determinism
        for r in runs[:2]:
            torch.testing.assert_close(r, runs[2], rtol=1e-12, atol=1e-13)
        # an input's result does not depend on what it is explained with (Gaussian noise too)
        for i in range(len(x)):
            alone = infl(tiny_cnn, "features.2", x[i : i + 1], doi=doi, qoi=Class(1))
            torch.testing.assert_close(alone, runs[2][i : i + 1], rtol=1e-12, atol=1e-13)


def test_max_class_is_bound_on_the_unperturbed_input(tiny_cnn):
    x = torch.randn(6, 1, 5, 5, dtype=D)
    pred = tiny_cnn(x).argmax(1)
    doi = LinearPath(0.0, steps=5)
    e = InternalInfluence(tiny_cnn, "features.2", doi=doi).explain(x)
    assert torch.equal(e.target, pred)
    ref = infl(tiny_cnn, "features.2", x, qoi=Class(pred), doi=doi)
    torch.testing.assert_close(e.values, ref, rtol=0, atol=0)
    # target overrides the QoI
    t = torch.tensor([0, 1, 2, 0, 1, 2])
    e2 = InternalInfluence(tiny_cnn, "features.2", qoi=MaxClass(), doi=doi).explain(x, target=t)
    torch.testing.assert_close(e2.values, infl(tiny_cnn, "features.2", x, qoi=Class(t), doi=doi))
    assert torch.equal(e2.target, t)
    e3 = InternalInfluence(tiny_cnn, "features.2", doi=doi).explain(x, target=2)
    torch.testing.assert_close(e3.values, infl(tiny_cnn, "features.2", x, qoi=Class(2), doi=doi))


def test_integer_inputs_at_an_embedding():
    torch.manual_seed(0)

    class Tok(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(10, 4, padding_idx=0)
            self.gru = nn.GRU(4, 5, batch_first=True, bidirectional=True)
            self.head = nn.Linear(10, 2)

        def forward(self, ids):
            out, _ = self.gru(self.embedding(ids))
            return self.head(out.mean(1))

    m = Tok().double()
    ids = torch.randint(1, 10, (3, 6))
    e = InternalInfluence(
        m,
        "embedding",
        qoi=Class(1),
        doi=LinearPath(0.0, steps=64, at="embedding"),
        multiply_activation=True,
    ).explain(ids)
    with torch.no_grad():
        y = m(ids)[:, 1]
        with intervene(m, {"embedding": torch.zeros(3, 6, 4, dtype=D)}):
            yb = m(ids)[:, 1]
    torch.testing.assert_close(e.values.flatten(1).sum(1), y - yb, rtol=1e-6, atol=1e-6)
    g = InternalInfluence(m, "gru", qoi=Class(0)).explain(ids)  # tuple output (GRU)
    assert g.values.shape == (3, 6, 10)
    with pytest.raises(TypeError, match="integer inputs"):
        InternalInfluence(m, "embedding", doi=LinearPath(0.0, steps=2)).explain(ids)
    assert hook_count(m) == 0


# ------------------------------------------------------------------ dataset influence, ranking
def test_explain_dataset_streams_the_class_mean(tiny_cnn):
    x = torch.randn(23, 1, 5, 5, dtype=D)
    y = torch.randint(0, 3, (23,))
    expl = InternalInfluence(tiny_cnn, "features.2", batch_size=4)
    d = expl.explain_dataset(x, labels=y, cls=1)
    ref = expl.explain(x[y == 1], target=1).values.mean(0, keepdim=True)
    torch.testing.assert_close(d.values, ref, rtol=1e-12, atol=1e-12)
    assert d.meta["n_examples"] == int((y == 1).sum())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    d2 = InternalInfluence(tiny_cnn, "features.2", batch_size=64).explain_dataset(loader, cls=1)
    torch.testing.assert_close(d2.values, ref, rtol=1e-12, atol=1e-12)
    whole = expl.explain_dataset(x)  # no class: MaxClass per example
    torch.testing.assert_close(
        whole.values, expl.explain(x).values.mean(0, keepdim=True), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="no examples of class"):
        expl.explain_dataset(x, labels=torch.zeros(23, dtype=torch.long), cls=2)


def test_top_neurons_reductions():
    v = torch.zeros(2, 4, 2, 2, dtype=D)
    v[:, 0] = 1.0  # sum 4, max 1
    v[:, 1, 0, 0] = 3.0  # sum 3, max 3
    v[:, 2] = -5.0
    v[0, 3, 1, 1] = 2.5
    e = Explanation(values=v)
    idx, sc = top_neurons(e, 2, reduce="sum")
    assert idx.tolist() == [0, 1] and sc.tolist() == [4.0, 3.0]
    idx, _ = top_neurons(e, 2, reduce="max")
    assert idx.tolist() == [1, 3]
    idx, sc = top_neurons(e, 1, reduce="mean", absolute=True)
    assert idx.tolist() == [2] and sc.tolist() == [-5.0]
    idx, _ = top_neurons(e, 1, reduce=None)
    assert idx.tolist() == [4]  # flat index of channel 1, position (0, 0)
    idx, _ = top_neurons(e, 1, reduce="max", per_input=True)
    assert idx.tolist() == [[1], [1]]
    with pytest.raises(ValueError, match="k must be"):
        top_neurons(e, 5)
    with pytest.raises(ValueError, match="reduce"):
        top_neurons(e, 1, reduce="median")


# ------------------------------------------------------------------ save/load, bad input
def test_explanation_round_trip(tmp_path, tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=D)
    e = InternalInfluence(tiny_cnn, "features.2", doi=LinearPath(0.0, steps=3)).explain(x)
    back = Explanation.load(e.save(tmp_path / "e.safetensors"))
    assert torch.equal(back.values, e.values) and back.layer == "features.2"
    assert back.params["doi"] == e.params["doi"]


def test_bad_input_raises_clearly_and_leaves_no_hooks(tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=D)
    tiny_cnn.train()
    with pytest.raises(ValueError, match="unknown layer 'features.9'"):
        InternalInfluence(tiny_cnn, "features.9")
    with pytest.raises(ValueError, match="channel 6 out of range"):
        InternalInfluence(tiny_cnn, None, qoi=Channel("features.2", 6)).explain(x)
    with pytest.raises(ValueError, match="one value per input"):
        InternalInfluence(tiny_cnn, "features.2", qoi=Function(lambda y: y.sum())).explain(x)
    with pytest.raises(ValueError, match="baseline of shape"):
        InternalInfluence(
            tiny_cnn, "features.2", doi=LinearPath(torch.zeros(3, 5), steps=2)
        ).explain(x)
    with pytest.raises(ValueError, match="baseline of shape"):
        InternalInfluence(
            tiny_cnn, "features.2", doi=LinearPath(torch.zeros(5, 5), steps=2, at="features.0")
        ).explain(x)
    with pytest.raises(ValueError, match="class index 7 out of range"):
        InternalInfluence(tiny_cnn, "features.2").explain(x, target=7)
    with pytest.raises(ValueError, match="target has 3 entries"):
        InternalInfluence(tiny_cnn, "features.2").explain(x, target=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        InternalInfluence(tiny_cnn, "features.2").explain(x * float("nan"))
    with pytest.raises(TypeError, match="doi must be"):
        InternalInfluence(tiny_cnn, "features.2", doi="path")
    assert hook_count(tiny_cnn) == 0
    assert all(m.training for m in tiny_cnn.modules())
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_channel_qoi_at_input_is_a_neuron_saliency(tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=D)
    v = infl(tiny_cnn, None, x, qoi=Channel("features.0", 1))
    # conv channel 1 summed over space: gradient w.r.t. input is the kernel summed over shifts
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tiny_cnn.features[0](xr)[:, 1].sum(), xr)
    torch.testing.assert_close(v, g)


def test_batch_baselines_and_per_input_qois_follow_the_chunks(tiny_cnn):
    # the template explains the inputs in chunks of batch_size: a baseline given per input
    # and a QoI with one class per input must be sliced with them
    x = torch.randn(5, 1, 5, 5, dtype=D)
    cls = torch.tensor([0, 2, 1, 1, 0])
    z = torch.randn(5, 4, 5, 5, dtype=D)
    for doi in (
        LinearPath(torch.randn(5, 1, 5, 5, dtype=D), steps=3),
        LinearPath(z, steps=3, at="features.0"),
        Mixture([(0.5, Point()), (0.5, LinearPath(torch.randn(5, 1, 5, 5, dtype=D), steps=2))]),
    ):
        for qoi in (Class(cls), Comparative(cls, 1), Class(cls) - Class(2)):
            kw = dict(qoi=qoi, doi=doi, multiply_activation=True)
            whole = infl(tiny_cnn, "features.2", x, **kw)
            torch.testing.assert_close(
                infl(tiny_cnn, "features.2", x, batch_size=2, **kw), whole, rtol=1e-12, atol=1e-13
            )
    e = InternalInfluence(tiny_cnn, "features.2", qoi=Class(cls), batch_size=2).explain(x)
    assert torch.equal(e.target, cls) and e.params["target"] is None
    with pytest.raises(ValueError, match="4 per-input targets for 5 inputs"):
        InternalInfluence(tiny_cnn, "features.2", qoi=Class(cls[:4])).explain(x)
