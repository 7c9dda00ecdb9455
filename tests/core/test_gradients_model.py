import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from whynet.core import Channel, Class, LinearPath, expand, frozen_eval, qoi_gradients


def test_linear_model_gradient_is_weight():
    lin = nn.Linear(4, 3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    g = qoi_gradients(lin, x, Class(2))
    torch.testing.assert_close(g.grads, lin.weight[2].expand(6, 4).detach())
    torch.testing.assert_close(g.qoi, lin(x)[:, 2].detach())


def test_layer_gradient_stops_at_layer_and_matches_autograd(tiny_cnn):
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    with frozen_eval(tiny_cnn):
        g = qoi_gradients(tiny_cnn, x, Class(1), layer="features.0")
    z = tiny_cnn.features[0](x).detach().requires_grad_(True)
    y = tiny_cnn.head(tiny_cnn.pool(tiny_cnn.features[1:](z.clone())).flatten(1))
    (ref,) = torch.autograd.grad(y[:, 1].sum(), z)
    torch.testing.assert_close(g.grads, ref)
    torch.testing.assert_close(g.at, tiny_cnn.features[0](x).detach())  # in-place ReLU safe
    assert hook_count(tiny_cnn) == 0


def test_points_replace_layer(tiny_cnn):
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    pts = torch.zeros(2, 6, 4, 4, dtype=torch.float64)
    g = qoi_gradients(tiny_cnn, x, Class(0), layer="features.3", points=pts, points_at="features.3")
    torch.testing.assert_close(g.qoi, tiny_cnn.head.bias[0].expand(2).detach())
    with pytest.raises(ValueError, match="points for layer"):
        qoi_gradients(
            tiny_cnn, x, Class(0), layer="features.3", points=pts[:, :2], points_at="features.3"
        )
    assert hook_count(tiny_cnn) == 0


def test_completeness_in_activation_space(mlp):
    """Sum of IG attributions at a layer = q(z) - q(baseline) (path in the layer's space).

    Smooth model (tanh/softplus) so Gauss-Legendre quadrature is exact to float64 precision.
    """
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        z = mlp[:2](x)
    base = torch.full_like(z, 0.3)
    doi = LinearPath(baseline=0.3, steps=32, rule="gausslegendre", at="1")
    total = torch.zeros_like(z)
    for ch in expand(doi, z, batch_size=40):
        g = qoi_gradients(mlp, x[ch.rows], Class(2), layer="1", points=ch.points, points_at="1")
        total.index_add_(0, ch.rows, g.grads * ch.weights.view(-1, 1))
    attributions = (total * (z - base)).sum(1)
    with torch.no_grad():
        gap = mlp[2:](z)[:, 2] - mlp[2:](base)[:, 2]
    torch.testing.assert_close(attributions, gap, atol=1e-10, rtol=1e-10)


def test_channel_qoi_gradient_to_input(tiny_cnn):
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    g = qoi_gradients(tiny_cnn, x, Channel("features.2", 3))
    xx = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(tiny_cnn.features[:3](xx)[:, 3].sum(), xx)
    torch.testing.assert_close(g.grads, ref)


def test_gradient_is_zero_when_qoi_does_not_depend_on_layer(tiny_cnn):
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    g = qoi_gradients(tiny_cnn, x, Channel("features.0", 0), layer="features.2")
    assert torch.count_nonzero(g.grads) == 0


def test_integer_inputs_rejected():
    emb = nn.Embedding(5, 3)
    with pytest.raises(TypeError, match="integer inputs"):
        qoi_gradients(emb, torch.tensor([[1, 2]]), Class(0))


def test_frozen_eval_restores_modes_and_flags_even_on_error(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn.features[0].eval()  # a mixed state must come back exactly
    tiny_cnn.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    with pytest.raises(RuntimeError), frozen_eval(tiny_cnn):
        assert not tiny_cnn.training and not tiny_cnn.features[2].training
        assert not any(p.requires_grad for p in tiny_cnn.parameters())
        raise RuntimeError("x")
    assert tiny_cnn.training and not tiny_cnn.features[0].training and tiny_cnn.features[2].training
    assert not tiny_cnn.head.weight.requires_grad and tiny_cnn.head.bias.requires_grad
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])
