"""Mapping batches (HF-style ``{input_ids, attention_mask}``, ``model(**batch)``) through the
sharded store: extraction, the representer fit and per-shard explanations equal one process."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet import scale
from whynet.clusters._acts import reduce_activation
from whynet.core import run_model
from whynet.representer import RepresenterPoints

# tiny ops: one intra-op thread (OpenMP spin on a loaded machine made them ~25x slower)
pytestmark = pytest.mark.usefixtures("one_thread")


class TinyTokens(nn.Module):
    """Embedding -> tanh layer over tokens -> mean over the real tokens -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.mix = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(input_ids)))  # (B, T, 4)
        m = attention_mask[..., None].to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def _batch(n: int = 48) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 11, (n, 7), generator=g)
    lengths = torch.randint(2, 8, (n,), generator=g)
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}, torch.randint(0, 3, (n,), generator=g)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyTokens().double().eval()


def test_representer_fit_of_mapping_batches_equals_one_process(model, tmp_path):
    x, y = _batch()
    kw = dict(batch_size=8, progress=False)
    local = RepresenterPoints(model, "head", **kw).fit(x, labels=y)
    sharded = scale.fit(
        RepresenterPoints(model, "head", **kw), x, y, store=tmp_path / "s", shard_rows=16
    )
    for name in ("alpha_", "weight_", "features_", "labels_"):
        assert torch.equal(getattr(local, name), getattr(sharded, name)), name
    st = scale.ShardedStore.open(tmp_path / "s")
    assert st.n_shards == 3 and torch.equal(st.gather("labels"), y)
    # a store of other token ids (same shapes) is another data set: refused, not resumed
    other = {**x, "input_ids": x["input_ids"].flip(0)}
    with pytest.raises(scale.StoreError, match="another model, layer or data"):
        scale.extract(
            model, other, y, store=tmp_path / "s", head="head", shard_rows=16, batch_size=8
        )


def test_token_layer_activations_are_pooled_over_the_attention_mask(model, tmp_path):
    x, y = _batch()
    st = scale.extract(
        model, x, y, store=tmp_path / "a", layers=["mix"], shard_rows=16, batch_size=8
    )
    whole = torch.cat(
        [
            reduce_activation(b.acts["mix"], b.lengths["mix"], b.inputs, "mix")
            for b in run_model(model, x, layers=["mix"], batch_size=8)
        ]
    )
    acts = st.gather("acts.mix")
    assert acts.shape == (48, 4) and torch.equal(acts, whole)
    # padding excluded: the pooled rows are not the plain means over all 7 positions
    with torch.no_grad():
        plain = torch.tanh(model.mix(model.embed(x["input_ids"]))).mean(1).float()
    assert not torch.allclose(acts, plain)


def test_explanations_of_mapping_batches_per_shard_equal_one_call(model, tmp_path):
    x, y = _batch()
    rp = RepresenterPoints(model, "head", batch_size=8, progress=False).fit(x, labels=y)
    q = {k: v[:32] for k, v in x.items()}
    whole = rp.explain(q)
    one = scale.explain_all(rp, q, store=tmp_path / "e", shard_rows=16)
    assert one.meta["shards"] == 2
    assert torch.equal(one.values, whole.values) and torch.equal(one.target, whole.target)
    with pytest.raises(ValueError, match="different batch sizes"):
        scale.explain(
            rp,
            {**q, "attention_mask": q["attention_mask"][:5]},
            store=tmp_path / "b",
            shard_rows=16,
        )
