import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from whynet.core import capture, hooked, intervene, resolve_layer
from whynet.core.layers import layer_name_of, layer_names


def test_resolve_dotted_paths(tiny_cnn):
    assert resolve_layer(tiny_cnn, "features.2") is tiny_cnn.features[2]
    assert layer_name_of(tiny_cnn, tiny_cnn.head) == "head"
    assert "features.0" in layer_names(tiny_cnn)
    with pytest.raises(ValueError, match="not part of this model"):
        layer_name_of(tiny_cnn, nn.Linear(1, 1))
    with pytest.raises(ValueError, match="not part of this model"):
        resolve_layer(tiny_cnn, nn.Linear(1, 1))


def test_unknown_layer_lists_closest(tiny_cnn):
    with pytest.raises(ValueError, match=r"unknown layer 'featurs.2'.*features\.2"):
        resolve_layer(tiny_cnn, "featurs.2")
    with pytest.raises(TypeError):
        resolve_layer(tiny_cnn, 3)  # type: ignore[arg-type]


def test_capture_survives_inplace_relu(tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    conv_out = tiny_cnn.features[0](x)  # before the in-place ReLU
    with capture(tiny_cnn, "features.0") as cap:
        y = tiny_cnn(x)
    assert (conv_out < 0).any()
    torch.testing.assert_close(cap["features.0"], conv_out)  # not overwritten by ReLU(inplace)
    torch.testing.assert_close(y, tiny_cnn(x))  # the model output is unchanged by capture
    assert hook_count(tiny_cnn) == 0


def test_capture_keep_graph_differentiable(tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    with capture(tiny_cnn, "features.2", keep_graph=True) as cap:
        tiny_cnn(x)
    (g,) = torch.autograd.grad(cap["features.2"].sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0


def test_capture_same_name_twice_records_once(tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    with capture(tiny_cnn, ["features.0", "features.0"]) as cap:
        tiny_cnn(x)
    assert len(cap.calls["features.0"]) == 1
    torch.testing.assert_close(cap["features.0"], tiny_cnn.features[0](x))
    assert hook_count(tiny_cnn) == 0


def test_reused_module_records_each_call():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin).double()
    with capture(model, "0") as cap:
        model(torch.randn(2, 3, dtype=torch.float64))
    assert len(cap.calls["0"]) == 2
    with pytest.raises(ValueError, match="ran 2 times"):
        cap["0"]
    with (
        pytest.raises(ValueError, match="more than once"),
        intervene(model, {"0": torch.zeros(2, 3)}),
    ):
        model(torch.randn(2, 3, dtype=torch.float64))
    assert hook_count(model) == 0


class SkipsBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


def test_layer_that_never_runs():
    model = SkipsBranch()
    with capture(model, "unused") as cap:
        model(torch.randn(1, 3))
    with pytest.raises(ValueError, match="did not run"):
        cap.check_ran()


def test_intervene_replaces_and_accepts_functions(tiny_cnn):
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    with intervene(tiny_cnn, {"features.3": torch.zeros(())}):
        y = tiny_cnn(x)
    torch.testing.assert_close(y, tiny_cnn.head.bias.expand(3, 3))
    with intervene(tiny_cnn, {"features.3": lambda a: a}):
        torch.testing.assert_close(tiny_cnn(x), tiny_cnn(x))
    with (
        pytest.raises(ValueError, match="does not match"),
        intervene(tiny_cnn, {"features.3": torch.zeros(5, 2)}),
    ):
        tiny_cnn(x)
    assert hook_count(tiny_cnn) == 0


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_when_model_raises():
    model = nn.Sequential(nn.Linear(3, 3), Boom())
    with pytest.raises(RuntimeError, match="boom"), capture(model, ["0", "1"]):
        model(torch.randn(1, 3))
    with pytest.raises(RuntimeError, match="boom"), intervene(model, {"0": torch.zeros(1, 3)}):
        model(torch.randn(1, 3))
    assert hook_count(model) == 0


def test_hooked_leaves_foreign_hooks_alone():
    model = nn.Linear(2, 2)
    mine = model.register_forward_hook(lambda *a: None)
    with hooked([(model, "forward", lambda *a: None), (model, "forward_pre", lambda *a: None)]):
        assert hook_count(model) == 3
    assert hook_count(model) == 1
    mine.remove()
    with pytest.raises(ValueError, match="unknown hook kind"), hooked([(model, "sideways", print)]):  # type: ignore[list-item]
        pass
    assert hook_count(model) == 0
