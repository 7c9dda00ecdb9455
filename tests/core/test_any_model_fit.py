"""Issue 15: fitted methods on HF-style models — dict DataLoaders, padding that is not id 0,
and a vision transformer's patch tokens. Hermetic tiny configs, random weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet.clusters import ClusterSurrogate
from whynet.gradcam import GradCAM
from whynet.influence import InternalInfluence
from whynet.inversion import GuidedFeatureInversion
from whynet.masks import MaskExplainer
from whynet.representer import RepresenterPoints

transformers = pytest.importorskip("transformers")

PAD = 1  # RoBERTa / GPT-2 style: padding is not id 0


class PooledBert(nn.Module):
    """A tiny BERT encoder + attention-masked mean pooling + a linear head (minilm-style)."""

    def __init__(self) -> None:
        super().__init__()
        cfg = transformers.BertConfig(
            vocab_size=30,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=24,
            pad_token_id=PAD,
        )
        torch.manual_seed(0)
        self.bert = transformers.BertModel(cfg)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask=None):  # noqa: ANN001, ANN201
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        w = m[..., None].to(h.dtype)
        return self.head((h * w).sum(1) / w.sum(1))


def reviews(n: int = 24, t: int = 9, extra_pad: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, t + 1, (n,), generator=g)
    ids = torch.randint(2, 30, (n, t), generator=g)
    pos = torch.arange(t)[None, :]
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    if extra_pad:
        ids = torch.cat([ids, torch.full((n, extra_pad), PAD)], 1)
        mask = torch.cat([mask, torch.zeros(n, extra_pad, dtype=torch.long)], 1)
    return {"input_ids": ids, "attention_mask": mask}


def hf_loader(b: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.utils.data.DataLoader:
    rows = [{**{k: v[i] for k, v in b.items()}, "labels": labels[i]} for i in range(len(labels))]
    return torch.utils.data.DataLoader(rows, batch_size=8)


@pytest.fixture(scope="module")
def text_model() -> nn.Module:
    return PooledBert().double().eval()


def test_masks_with_an_attention_mask_and_with_pad_id(text_model):
    b = reviews()
    labels = text_model(**b).argmax(1)
    kw = dict(modality="sequence", embedding="bert.embeddings.word_embeddings", batch_size=8)
    ex = MaskExplainer(text_model, **kw).fit(hf_loader(b, labels), epochs=1)
    m = ex.explain(b).values
    pad = b["attention_mask"] == 0
    assert bool(pad.any()) and bool((m[pad] == 0).all())  # exactly 0 on padding
    assert bool((m[~pad] > 0).all())
    # plain id tensors: padding from pad_id (a model whose pad id is 1)
    ids_model = IdsOnly(text_model)
    ex2 = MaskExplainer(ids_model, pad_id=PAD, **{**kw, "embedding": "inner." + kw["embedding"]})
    ex2.fit(b["input_ids"], epochs=1)
    m2 = ex2.explain(b["input_ids"]).values
    assert bool((m2[pad] == 0).all()) and bool((m2[~pad] > 0).all())


class IdsOnly(nn.Module):
    """The same model called with ids only: it rebuilds the mask from its pad id."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids):  # noqa: ANN001, ANN201
        return self.inner(ids, (ids != PAD).long())


def test_clusters_surrogate_unchanged_by_extra_padding(text_model):
    b, longer = reviews(), reviews(extra_pad=5)
    labels = text_model(**b).argmax(1)
    kw = dict(
        n_clusters=3, algorithm="kmeans", embed_dim=4, layer_weights=None, n_init=2, batch_size=8
    )
    s = ClusterSurrogate(text_model, ["bert.encoder.layer.0"], **kw).fit(hf_loader(b, labels))
    p_short, p_long = s.predict_proba(b), s.predict_proba(longer)
    torch.testing.assert_close(p_short, p_long, rtol=1e-5, atol=1e-6)
    # plain ids with pad_id: the same pooling over real tokens
    s2 = ClusterSurrogate(IdsOnly(text_model), ["inner.bert.encoder.layer.0"], pad_id=PAD, **kw)
    s2.fit(b["input_ids"])
    torch.testing.assert_close(
        s2.predict_proba(b["input_ids"]),
        s2.predict_proba(longer["input_ids"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_representer_fit_on_a_dict_dataloader_decomposes_exactly(text_model):
    b = reviews()
    labels = text_model(**b).argmax(1)
    rp = RepresenterPoints(text_model, head="head", batch_size=8).fit(hf_loader(b, labels))
    assert rp.alpha_.shape[0] == 24
    e = rp.explain(b)
    # the decomposition is exact (of the fine-tuned head's logits) and close to the model's
    torch.testing.assert_close(e.values.sum(1), e.extras["logits"], rtol=0, atol=1e-6)
    assert torch.equal(e.target, text_model(**b).argmax(1))


# ---- a vision transformer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=8,
        num_hidden_layers=3,  # vit.layers.1 is not the last block (whose patch tokens never
        num_attention_heads=2,  # reach the CLS head: Grad-CAM there is all zero)
        intermediate_size=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg).double().eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def test_vit_influence_gradcam_and_gfi_on_patch_tokens(vit):
    x = images()
    block = "vit.layers.1"
    e = InternalInfluence(vit, block).explain(x)
    assert e.values.shape == (4, 17, 8) and e.meta["neuron_dim"] == 2
    idx, _ = InternalInfluence(vit, block).top_neurons(e, 8)
    assert idx.shape == (8,)
    cam = GradCAM(vit, block).explain(x)
    assert cam.extras["cam"].shape == (4, 4, 4) and cam.values.shape == (4, 16, 16)
    # Grad-CAM on tokens == Grad-CAM on the hand-reshaped grid
    g = InternalInfluence(vit, block, qoi=cam.target).explain(x).values  # d y_c / d tokens
    acts: list[torch.Tensor] = []
    h = vit.get_submodule(block).register_forward_hook(
        lambda m, a, o: acts.append(o[0] if isinstance(o, tuple) else o)
    )
    vit(x)
    h.remove()
    grid = lambda t: t[:, 1:].transpose(1, 2).reshape(4, 8, 4, 4)  # noqa: E731
    ref = torch.relu((grid(g).mean((2, 3), keepdim=True) * grid(acts[0])).sum(1))
    torch.testing.assert_close(cam.extras["cam"], ref, rtol=1e-8, atol=1e-10)
    assert bool(cam.extras["cam"].flatten(1).amax(1).gt(0).all())  # a real map, not all zero
    gfi = GuidedFeatureInversion(
        vit, "vit.layernorm", block, stage1_steps=2, stage2_steps=2, batch_size=4
    ).explain(x)
    assert gfi.values.shape == (4, 16, 16) and gfi.extras["omega"].shape == (4, 8)


def test_vit_masks_clusters_and_representer(vit):
    x = images(12)
    m = MaskExplainer(vit, batch_size=6).fit(x, epochs=1).explain(x[:2])
    assert m.values.shape == (2, 16, 16)
    s = ClusterSurrogate(
        vit,
        ["vit.layers.1"],
        n_clusters=2,
        algorithm="kmeans",
        layer_weights=None,
        n_init=2,
        batch_size=6,
    ).fit(x)
    assert s.predict_proba(x).shape == (12, 3)
    rp = RepresenterPoints(vit, head="classifier").fit(x)
    e = rp.explain(x[:3])
    torch.testing.assert_close(e.values.sum(1), e.extras["logits"], rtol=0, atol=1e-6)
    # an HF mapping of pixel_values works the same as the tensor
    e2 = rp.explain({"pixel_values": x[:3]})
    torch.testing.assert_close(e2.values, e.values)


def test_report_draws_vit_token_influence_on_the_patch_grid(vit):
    from whynet.viz.explanation import image_maps

    x = images(2)
    e = InternalInfluence(vit, "vit.layers.1").explain(x)
    maps = image_maps(e)
    assert maps is not None and maps.shape == (2, 4, 4)
    ref = e.values[:, 1:].abs().sum(-1).reshape(2, 4, 4).float()
    torch.testing.assert_close(maps, ref)
