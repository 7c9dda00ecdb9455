"""Issue 15: models people actually have — HF mappings, multi-output models, token layouts.

Hermetic: tiny HF configs built here with random weights (float64), nothing downloaded.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet.core import Explanation, select_output
from whynet.gradcam import GradCAM
from whynet.influence import InternalInfluence
from whynet.influence.essence import essence

transformers = pytest.importorskip("transformers")

LAYER = "bert.encoder.layer.0"


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        pad_token_id=1,  # not 0: padding must come from the attention mask
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).double().eval()


def batch(n: int = 3, t: int = 7, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 40, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 1
    if pad_to is not None:
        extra = pad_to - t
        ids = torch.cat([ids, torch.ones(n, extra, dtype=torch.long)], 1)
        mask = torch.cat([mask, torch.zeros(n, extra, dtype=torch.long)], 1)
    return {"input_ids": ids, "attention_mask": mask}


def hand_influence(model: nn.Module, b: dict[str, torch.Tensor], cls: torch.Tensor) -> torch.Tensor:
    """d logit_c / d (layer output) with a plain hook and model(**b)."""
    store: list[torch.Tensor] = []

    def hook(mod, args, out):  # noqa: ANN001
        t = out[0] if isinstance(out, tuple) else out
        leaf = t.detach().requires_grad_(True)
        store.append(leaf)
        return (leaf, *out[1:]) if isinstance(out, tuple) else leaf

    h = model.get_submodule(LAYER).register_forward_hook(hook)
    try:
        logits = model(**b).logits
    finally:
        h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), store[0])
    return g


def test_influence_on_a_batch_encoding_equals_the_hand_computation(bert):
    b = batch()
    e = InternalInfluence(bert, LAYER).explain(transformers.BatchEncoding(b))
    pred = bert(**b).logits.argmax(1)
    assert torch.equal(e.target, pred)
    torch.testing.assert_close(e.values, hand_influence(bert, b, pred), rtol=1e-6, atol=1e-9)
    assert e.meta["neuron_dim"] == 2  # (B, T, D): hidden units
    assert torch.equal(e.extras["valid_tokens"], b["attention_mask"].bool())
    for p in bert.parameters():
        assert p.requires_grad  # restored


def test_padding_does_not_change_the_real_tokens(bert):
    short, long = batch(), batch(pad_to=11)
    ex = InternalInfluence(bert, LAYER)
    a, b = ex.explain(short, target=0), ex.explain(long, target=0)
    real = short["attention_mask"].bool()
    torch.testing.assert_close(b.values[:, :7][real], a.values[real], rtol=1e-6, atol=1e-9)
    # the ranking excludes padding, so extra padding does not move it either
    ia, sa = ex.top_neurons(a, 12)
    ib, sb = ex.top_neurons(b, 12)
    torch.testing.assert_close(sa, sb, rtol=1e-6, atol=1e-9)


def test_top_neurons_on_a_token_layer_ranks_hidden_units(bert):
    ex = InternalInfluence(bert, LAYER)
    e = ex.explain(batch())
    idx, scores = ex.top_neurons(e, 12)  # k up to D = 12 (T = 7)
    assert idx.shape == (12,) and sorted(idx.tolist()) == list(range(12))
    mask = e.extras["valid_tokens"][:, :, None]
    ref = (e.values * mask).sum(1).mean(0)
    torch.testing.assert_close(scores, ref[idx])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 12\] .*12 hidden units"):
        ex.top_neurons(e, 13)
    # channel_dim overrides the layout: positions as neurons
    pos = InternalInfluence(bert, LAYER, channel_dim=1)
    e1 = pos.explain(batch())
    assert e1.meta["neuron_dim"] == 1
    assert pos.top_neurons(e1, 7)[0].shape == (7,)
    with pytest.raises(ValueError, match="channel_dim=3 is out of range"):
        InternalInfluence(bert, LAYER, channel_dim=3).explain(batch())


def test_essence_on_a_token_layer_keeps_hidden_units(bert):
    b = batch(6)
    labels = bert(**b).logits.argmax(1)
    r = essence(bert, LAYER, int(labels[0]), [3, 12], b, labels, random_draws=1, batch_size=4)
    assert r.channels.shape == (12,)
    assert r.rows[-1]["reduced_acc"] == r.rows[-1]["full_acc"]  # all 12 kept = the model


class ThreeHeads(nn.Module):
    """An ONet-like model: (bbox (B, 4), landmarks (B, 10), prob (B, 2))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.box, self.marks, self.prob = nn.Linear(4, 4), nn.Linear(4, 10), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        h = self.pool(self.body(x)).flatten(1)
        return self.box(h), self.marks(h), self.prob(h)


def test_a_multi_output_model_needs_output_and_then_equals_the_hand_computation():
    m = ThreeHeads().double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=r"returned tuple \(0: \(\d, 4\), 1: \(\d, 10\), 2: \(\d, 2\)\)"
    ):
        InternalInfluence(m, "body.1").explain(x)
    with pytest.raises(TypeError, match="pass output="):
        GradCAM(m, "body.1").explain(x)
    e2 = InternalInfluence(m, "body.1", qoi=1, output=2).explain(x)
    ecall = InternalInfluence(m, "body.1", qoi=1, output=lambda out: out[2]).explain(x)
    eqoi = InternalInfluence(m, "body.1", qoi=lambda out: out[2][:, 1]).explain(x)
    xs = x.clone()
    store: list[torch.Tensor] = []

    def hook(mod, args, out):  # noqa: ANN001
        leaf = out.detach().requires_grad_(True)
        store.append(leaf)
        return leaf

    h = m.body[1].register_forward_hook(hook)
    q = m(xs)[2][:, 1].sum()
    h.remove()
    (ref,) = torch.autograd.grad(q, store[0])
    for e in (e2, ecall, eqoi):
        torch.testing.assert_close(e.values, ref, rtol=1e-10, atol=1e-12)
    cam = GradCAM(m, "body.1", output=2).explain(x)
    assert cam.values.shape == (3, 8, 8)


def test_select_output_choices_and_errors():
    out = (torch.zeros(2, 4), torch.ones(2, 10), torch.full((2, 2), 0.5))
    assert select_output(out, 1) is out[1]
    assert select_output(out, -1) is out[2]
    assert select_output({"logits": out[0]}) is out[0]
    assert select_output({"a": out[0], "b": out[1]}, "b") is out[1]
    with pytest.raises(IndexError, match="output=3 is out of range: the model returned 3"):
        select_output(out, 3)
    with pytest.raises(ValueError, match="output='c' is not in the model's output"):
        select_output({"a": out[0]}, "c")
    with pytest.raises(TypeError, match="selects a str, not a tensor"):
        select_output({"a": "text"}, "a")
    with pytest.raises(TypeError, match="output must be None, an int index"):
        select_output(out, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="output must be None, an int index"):
        InternalInfluence(ThreeHeads(), "body.1", output=True)


def test_bad_mappings_are_refused_clearly(bert):
    ex = InternalInfluence(bert, LAYER)
    b = batch()
    with pytest.raises(ValueError, match="different batch sizes .*input_ids: 3, attention_mask: 2"):
        ex.explain({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"][:2]})
    with pytest.raises(TypeError, match=r"key\(s\) \['pixel_mask'\] that .* does not take"):
        ex.explain({**b, "pixel_mask": b["attention_mask"]})
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ex.explain({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"][:, :4]})
    with pytest.raises(TypeError, match=r"inputs\['input_ids'\] is a list, not a tensor"):
        ex.explain({"input_ids": [[1, 2]]})
    for h in (bert._forward_hooks, bert.get_submodule(LAYER)._forward_hooks):
        assert not h


def test_dict_dataloaders_work_in_dataset_influence(bert):
    b = batch(6)
    labels = bert(**b).logits.argmax(1)
    rows = [
        {
            "input_ids": b["input_ids"][i],
            "attention_mask": b["attention_mask"][i],
            "labels": labels[i],
        }
        for i in range(6)
    ]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    ex = InternalInfluence(bert, LAYER)
    from_loader = ex.explain_dataset(loader, target=0)
    from_tensors = ex.explain_dataset(b, labels, target=0)
    assert isinstance(from_loader, Explanation)
    torch.testing.assert_close(from_loader.values, from_tensors.values)
    per_input = ex.explain(b, target=0).values.mean(0, keepdim=True)
    torch.testing.assert_close(from_loader.values, per_input)


def test_inputs_the_model_cannot_take_are_named(bert):
    b = batch()
    b["input_ids"][0, 0] = 99  # vocabulary of 40
    with pytest.raises(
        IndexError,
        match=r"running BertForSequenceClassification on these inputs "
        r"failed \(per input: input_ids \(7,\) int64 max 99.*outside the vocab",
    ):
        InternalInfluence(bert, LAYER).explain(b)
    m = ThreeHeads().double()
    with pytest.raises(RuntimeError, match=r"per input: inputs \(2, 8, 8\) float64\): .*channels"):
        InternalInfluence(m, "body.1", output=2).explain(
            torch.randn(2, 2, 8, 8, dtype=torch.float64)
        )
    assert not m.body[1]._forward_hooks
