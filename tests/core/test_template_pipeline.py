"""The explain template, the target policy, declared parameters and the model pipeline.

A toy method (gradient x input, written in a few lines on the template) is checked against a
hand-written loop; the pipeline against plain forwards.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from tests.conftest import hook_count
from whynet.core import (
    Accumulator,
    Explainer,
    Target,
    constraint,
    parse_target,
    predict_logits,
    qoi_gradients,
    run_model,
)
from whynet.core.params import (
    DTYPE,
    Interval,
    Options,
    decode_params,
    encode_params,
    json_params,
)
from whynet.core.qoi import Class


class GradInput(Explainer):
    """A sixth method in a dozen lines: gradient x input of the target logit."""

    method = "grad-input"
    _parameter_constraints = {
        "scale": constraint(Interval(float, 0, None, "neither")),
        "mode": constraint(Options(("plain", "abs"))),
    }

    def __init__(
        self,
        model: nn.Module,
        scale: float = 1.0,
        mode: str = "plain",
        *,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress)
        self.scale = scale
        self.mode = mode
        self._check_params()

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, Any]:
        classes = target.classes_for(predict_logits(self.model, x))
        g = qoi_gradients(self.model, x, Class(classes))
        v = self.scale * g.grads * x
        return {"values": v.abs() if self.mode == "abs" else v, "target": classes}


def reference(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, classes[:, None]).sum(), x)
    return g * x


def test_template_equals_hand_written_and_is_chunk_independent(tiny_cnn):
    x = torch.randn(7, 1, 6, 6, dtype=torch.float64)
    pred = tiny_cnn(x).argmax(1)
    e = GradInput(tiny_cnn, batch_size=3).explain(x)
    torch.testing.assert_close(e.values, reference(tiny_cnn, x, pred))
    assert e.target.tolist() == pred.tolist()
    assert e.method == "grad-input" and e.params["scale"] == 1.0 and "progress" not in e.params
    assert e.params["target"] is None
    e1 = GradInput(tiny_cnn, batch_size=1).explain(x, target=2)
    torch.testing.assert_close(e1.values, reference(tiny_cnn, x, torch.full((7,), 2)))
    per = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    torch.testing.assert_close(
        GradInput(tiny_cnn, batch_size=4).explain(x, target=per).values,
        reference(tiny_cnn, x, per),
    )


def test_template_restores_modes_and_grads_and_leaves_no_hooks(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn.features[0].eval()  # a mixed-mode model comes back mixed
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    GradInput(tiny_cnn, batch_size=2).explain(torch.randn(3, 1, 5, 5, dtype=torch.float64))
    assert tiny_cnn.training and not tiny_cnn.features[0].training
    assert all(p.requires_grad for p in tiny_cnn.parameters())
    assert hook_count(tiny_cnn) == 0
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])


def test_template_refuses_bad_targets_before_any_work(tiny_cnn):
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    ex = GradInput(tiny_cnn)
    with pytest.raises(ValueError, match="class index 3 out of range"):
        ex.explain(x, target=3)
    with pytest.raises(TypeError, match="integer class indices"):
        ex.explain(x, target=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="2 inputs"):
        ex.explain(x, target=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="must be a non-empty batch"):
        ex.explain(torch.zeros(0, 1, 5, 5))


def test_target_policy():
    assert parse_target(None, 3).kind == "default"
    assert parse_target("predicted", 3).kind == "predicted"
    assert parse_target(2, 3).classes.tolist() == [2, 2, 2]
    assert parse_target([0, 1, 2], 3).classes.tolist() == [0, 1, 2]
    assert parse_target(torch.tensor(1), 2).classes.tolist() == [1, 1]
    assert parse_target(torch.tensor([1, 0], dtype=torch.int32), 2).classes.dtype == torch.long
    out = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    assert parse_target(None, 2).classes_for(out).tolist() == [1, 0]
    for bad, err in [
        (True, TypeError),
        (1.5, TypeError),
        ("largest", ValueError),
        ([0, 1.0], TypeError),
        (torch.tensor([True, False]), TypeError),
        (torch.tensor([[0, 1]]), ValueError),
    ]:
        with pytest.raises(err):
            parse_target(bad, 2)
    with pytest.raises(ValueError, match="out of range"):
        parse_target(5, 2).classes_for(out)
    part = parse_target(2, 5).take(slice(3, 6))
    assert part.classes.tolist() == [2, 2] and (part.n, part.rows) == (5, slice(3, 5, 1))
    assert parse_target(None, 3).describe() is None
    assert parse_target(1, 3).describe() == 1
    assert parse_target([0, 1], 2).describe() == "per-input"


def test_declared_parameters(tiny_cnn):
    ex = GradInput(tiny_cnn, 2.0, "abs", batch_size=5)
    assert ex.get_params() == {"scale": 2.0, "mode": "abs", "batch_size": 5, "progress": None}
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got -1"):
        GradInput(tiny_cnn, -1.0)
    with pytest.raises(ValueError, match="scale must be"):
        GradInput(tiny_cnn, float("nan"))
    with pytest.raises(ValueError, match=r"mode must be one of \('plain', 'abs'\)"):
        GradInput(tiny_cnn, mode="ABS")
    with pytest.raises(ValueError, match="scale must be"):
        GradInput(tiny_cnn, True)  # a bool is not a number here


def test_parameter_json_round_trip():
    params = {
        "a": 1,
        "b": [1, 2],
        "dtype": torch.float64,
        "d": {"x": 1.5},
        "fn": torch.relu,
        "none": None,
    }
    enc = encode_params(params)
    assert enc["fn"] == {"unsaved": "relu"}
    with pytest.raises(ValueError, match=r"fn \(was relu\).*pass them again"):
        decode_params(enc, {}, "file.safetensors")
    back = decode_params(enc, {"fn": torch.tanh}, "f")
    assert back == {**params, "fn": torch.tanh}
    assert json_params(params)["dtype"] == "torch.float64"
    assert DTYPE.accepts(torch.float32) and not DTYPE.accepts(torch.int64)


# ---- the pipeline ----------------------------------------------------------------------------


def test_run_model_captures_outputs_and_inputs_and_restores(tiny_cnn):
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    tiny_cnn.train()
    batches = list(run_model(tiny_cnn, x, layers=["features.0"], inputs=["head"], batch_size=2))
    assert [b.start for b in batches] == [0, 2, 4]
    assert tiny_cnn.training and hook_count(tiny_cnn) == 0
    tiny_cnn.eval()
    with torch.no_grad():
        conv = tiny_cnn.features[0](x)
        feats = tiny_cnn.pool(tiny_cnn.features(x)).flatten(1)
        out = tiny_cnn(x)
    torch.testing.assert_close(torch.cat([b.acts["features.0"] for b in batches]), conv)
    torch.testing.assert_close(torch.cat([b.layer_inputs["head"] for b in batches]), feats)
    torch.testing.assert_close(torch.cat([b.output for b in batches]), out)
    torch.testing.assert_close(predict_logits(tiny_cnn, x, 2), out)


def test_run_model_restores_when_the_consumer_stops_early(tiny_cnn):
    tiny_cnn.train()
    gen = run_model(tiny_cnn, torch.randn(6, 1, 5, 5, dtype=torch.float64), batch_size=2)
    next(gen)
    assert not tiny_cnn.training  # eval while walking
    gen.close()
    assert tiny_cnn.training and all(p.requires_grad for p in tiny_cnn.parameters())


def test_run_model_refuses_a_reused_module():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    with pytest.raises(ValueError, match="ran 2 times"):
        list(run_model(model, torch.randn(2, 3), layers=["0"]))
    assert hook_count(model) == 0


class PackedGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.gru = nn.GRU(4, 3, batch_first=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != 0).sum(1)
        packed = pack_padded_sequence(
            self.emb(ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)
        return h[-1]


def test_run_model_unpacks_packed_sequences_with_lengths():
    model = PackedGRU()
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    (b,) = run_model(model, ids, layers=["gru"])
    assert b.acts["gru"].shape == (2, 3, 3)
    assert b.lengths["gru"].tolist() == [3, 2]
    assert bool((b.acts["gru"][1, 2] == 0).all())  # padding


def test_accumulator():
    acc = Accumulator()
    acc.update(a=torch.ones(2, 3), b=None)
    acc.update(a=torch.zeros(1, 3), b=None)
    out = acc.compute()
    assert out["a"].shape == (3, 3) and out["b"] is None and acc.n == 3
    s = Accumulator("sum")
    s.update(a=torch.ones(2, 3))
    s.update(a=torch.ones(4, 3))
    assert s.compute()["a"].tolist() == [6.0] * 3 and s.n == 6
    mixed = Accumulator()
    mixed.update(a=torch.ones(1))
    mixed.update(a=None)
    with pytest.raises(ValueError, match="missing in some batches"):
        mixed.compute()
    with pytest.raises(ValueError, match="'cat' or 'sum'"):
        Accumulator("mean")  # type: ignore[arg-type]
