"""MaskExplainer (Phillips, Goh & Hodas 2019): exact identities, training properties, files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from whynet.masks import ImageMaskNet, MaskExplainer, SequenceMaskNet

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- tiny hermetic tasks
def region_task(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """10x10 images; the label is the sign of the top-left 3x3 patch, the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 10, 10, generator=g) * 0.5
    s = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    x = x.double()
    x[:, :, :3, :3] = s[:, None, None, None] + 0.2 * torch.randn(n, 1, 3, 3, generator=g).double()
    return x, (s > 0).long()


def region_model() -> nn.Module:
    """A known model: logit of class 1 = 4 * mean of the top-left 3x3 patch, class 0 = minus it."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 2)).double()
    w = torch.zeros(10, 10, dtype=torch.float64)
    w[:3, :3] = 4.0 / 9
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-w.flatten(), w.flatten()]))
        model[1].bias.zero_()
    return model.eval()


class BagModel(nn.Module):
    """Token ids (B, T) -> logits: a linear map of the summed embeddings (0 = padding)."""

    def __init__(self, vocab: int = 16, dim: int = 6, out: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).sum(1))


def token_task(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of length 4..8 (padded to 8) of filler ids 4..15 with one key token: id 2 for
    class 1, id 3 for class 0. Returns (ids, labels, key position)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 16, (n, 8), generator=g)
    lengths = torch.randint(4, 9, (n,), generator=g)
    ids[torch.arange(8)[None, :] >= lengths[:, None]] = 0
    y = torch.randint(0, 2, (n,), generator=g)
    pos = (torch.rand(n, generator=g) * lengths).long()
    ids[torch.arange(n), pos] = 3 - y
    return ids, y, pos


def token_model() -> nn.Module:
    torch.manual_seed(0)
    model = BagModel().double()
    ids, y, _ = token_task(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), 5e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def small_image_net() -> nn.Module:
    torch.manual_seed(0)  # a given network is used as is (not re-initialised by the seed)
    return ImageMaskNet(in_channels=1, width=4, depth=2)


def small_seq_net() -> nn.Module:
    torch.manual_seed(0)
    return SequenceMaskNet(embed_dim=6, hidden=8)


@pytest.fixture(scope="module")
def img_model() -> nn.Module:
    return region_model()


@pytest.fixture(scope="module")
def tok_model() -> nn.Module:
    return token_model()


@pytest.fixture(scope="module")
def img_fitted(img_model: nn.Module) -> MaskExplainer:
    x, _ = region_task(192)
    return MaskExplainer(
        img_model,
        "image",
        small_image_net(),
        sparsity=3.0,
        fill="zero",
        lr=2e-2,
        batch_size=32,
        progress=False,
    ).fit(x, epochs=8)


@pytest.fixture(scope="module")
def tok_fitted(tok_model: nn.Module) -> MaskExplainer:
    ids, _, _ = token_task(256)
    return MaskExplainer(
        tok_model, "sequence", small_seq_net(), sparsity=1.0, lr=3e-2, batch_size=32, progress=False
    ).fit(ids, epochs=6)


# ---------------------------------------------------------------- exact identities
@pytest.mark.parametrize("fill", ["blur", "mean", "zero"])
def test_all_ones_mask_reproduces_image_output_exactly(img_model: nn.Module, fill: str) -> None:
    x, _ = region_task(8)
    me = MaskExplainer(img_model, "image", fill=fill)
    ones = torch.ones(8, 10, 10, dtype=torch.float64)
    assert torch.equal(me.masked_output(x, ones), img_model(x))
    # and an all-zeros mask gives the model's output on the reference itself
    zero_out = me.masked_output(x, torch.zeros_like(ones))
    ref = torch.zeros_like(x) if fill == "zero" else None
    if ref is not None:
        assert torch.equal(zero_out, img_model(ref))


def test_all_ones_mask_reproduces_sequence_output_exactly(tok_model: nn.Module) -> None:
    ids, _, _ = token_task(8)
    me = MaskExplainer(tok_model, "sequence")
    ones = (ids != 0).double()
    before = hook_count(tok_model)
    assert torch.equal(me.masked_output(ids, ones), tok_model(ids))
    assert hook_count(tok_model) == before
    # scaling embeddings by m is what the hook does: compare with a direct computation
    m = torch.rand(8, 8, dtype=torch.float64) * ones
    direct = tok_model.head((tok_model.embedding(ids) * m[..., None]).sum(1))
    torch.testing.assert_close(me.masked_output(ids, m), direct, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- fitted properties
def test_image_masks_in_unit_interval_and_shape(img_fitted: MaskExplainer) -> None:
    x, _ = region_task(20, seed=5)
    e = img_fitted.explain(x)
    assert e.values.shape == (20, 10, 10)
    assert e.values.dtype == torch.float64
    assert float(e.values.min()) >= 0.0 and float(e.values.max()) <= 1.0
    assert e.method == "masks"


def test_image_mask_concentrates_on_the_label_region(img_fitted: MaskExplainer) -> None:
    x, _ = region_task(100, seed=7)
    m = img_fitted.explain(x).values
    inside = m[:, :3, :3].mean()
    outside = (m.sum((1, 2)) - m[:, :3, :3].sum((1, 2))).mean() / (100 - 9)
    assert inside > 10 * outside, (float(inside), float(outside))
    # and the masked input still gets the model's prediction for most inputs
    assert img_fitted.history_[-1]["fidelity"] > 0.9


def test_sequence_masks_zero_on_padding_and_concentrate_on_key_token(
    tok_fitted: MaskExplainer,
) -> None:
    ids, _, pos = token_task(100, seed=9)
    m = tok_fitted.explain(ids).values
    assert m.shape == ids.shape
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert bool((m[ids == 0] == 0).all())
    key = m[torch.arange(100), pos]
    others = (m.sum(1) - key) / ((ids != 0).sum(1) - 1)
    assert float((key > others).double().mean()) > 0.9
    assert float(key.mean()) > 2 * float(others.mean())


def test_mask_size_falls_as_sparsity_grows(img_model: nn.Module) -> None:
    x, _ = region_task(128)
    sizes = []
    for sparsity in (0.0, 0.01, 0.1, 1.0, 10.0):
        me = MaskExplainer(
            img_model,
            "image",
            small_image_net(),
            sparsity=sparsity,
            fill="zero",
            lr=5e-2,
            batch_size=32,
            seed=0,
            progress=False,
        ).fit(x, epochs=10)
        sizes.append(float(me.explain(x).values.mean()))
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[0] > 0.9 and sizes[-1] < 0.05, sizes


def test_fit_leaves_model_untouched(tok_model: nn.Module) -> None:
    ids, _, _ = token_task(64)
    for p in tok_model.parameters():
        p.grad = None
    tok_model.train()  # fit must use eval mode inside and restore the caller's mode
    state = {k: v.clone() for k, v in tok_model.state_dict().items()}
    flags = [p.requires_grad for p in tok_model.parameters()]
    before = hook_count(tok_model)
    MaskExplainer(tok_model, "sequence", small_seq_net(), progress=False).fit(ids, epochs=1)
    assert tok_model.training
    tok_model.eval()
    assert all(torch.equal(v, state[k]) for k, v in tok_model.state_dict().items())
    assert [p.requires_grad for p in tok_model.parameters()] == flags
    assert all(p.grad is None for p in tok_model.parameters())
    assert hook_count(tok_model) == before


def test_validation_early_stopping_keeps_best(img_model: nn.Module) -> None:
    x, _ = region_task(96)
    xv, _ = region_task(32, seed=3)
    me = MaskExplainer(
        img_model, "image", small_image_net(), sparsity=1.0, lr=2e-2, batch_size=32, progress=False
    ).fit(x, epochs=3, val_data=xv, patience=1)
    assert 1 <= len(me.history_) <= 3
    assert all("val_loss" in h and "val_fidelity" in h for h in me.history_)


def test_regression_sequence_preserves_prediction() -> None:
    torch.manual_seed(0)
    model = BagModel(out=1).double().eval()
    ids, _, _ = token_task(64)
    me = MaskExplainer(
        model,
        "sequence",
        small_seq_net(),
        task="regression",
        sparsity=0.1,
        lr=3e-2,
        batch_size=32,
        progress=False,
    ).fit(ids, epochs=2)
    assert me.output_scale_ > 0
    assert all(set(h) >= {"loss", "size", "fidelity"} for h in me.history_)
    m = me.explain(ids).values
    assert bool((m[ids == 0] == 0).all())


# ---------------------------------------------------------------- files
def test_save_load_round_trip(
    tmp_path,
    img_fitted: MaskExplainer,
    img_model: nn.Module,
    tok_fitted: MaskExplainer,
    tok_model: nn.Module,
) -> None:
    x, _ = region_task(10, seed=11)
    img_fitted.save(tmp_path / "img.safetensors")
    loaded = MaskExplainer.load(tmp_path / "img.safetensors", img_model)
    assert torch.equal(loaded.explain(x).values, img_fitted.explain(x).values)
    assert loaded.fill == img_fitted.fill and loaded.sparsity == img_fitted.sparsity

    ids, _, _ = token_task(10, seed=11)
    tok_fitted.save(tmp_path / "tok.safetensors")
    loaded = MaskExplainer.load(tmp_path / "tok.safetensors", tok_model)
    assert torch.equal(loaded.explain(ids).values, tok_fitted.explain(ids).values)
    assert loaded.max_length_ == tok_fitted.max_length_

    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError):
        MaskExplainer.load(tmp_path / "bad.safetensors", img_model)


# ---------------------------------------------------------------- bad input
def test_bad_input(
    img_fitted: MaskExplainer, tok_fitted: MaskExplainer, tok_model: nn.Module
) -> None:
    ids, _, _ = token_task(4)
    x, _ = region_task(4)
    with pytest.raises(TypeError, match="modality='sequence'"):
        tok_fitted.explain(x[:, 0, 0, :])  # float tensor given to a sequence explainer
    with pytest.raises(TypeError, match="modality='image'"):
        img_fitted.explain(ids)
    with pytest.raises(ValueError, match="dimensions"):
        img_fitted.explain(x[:, 0])
    empty = ids.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="empty sequence"):
        tok_fitted.explain(empty)
    with pytest.raises(ValueError, match="empty sequences"):
        tok_fitted.explain(torch.zeros(2, 0, dtype=torch.long))
    longer = torch.randint(4, 16, (2, tok_fitted.max_length_ + 1))
    with pytest.raises(ValueError, match="longer than any seen in training"):
        tok_fitted.explain(longer)
    gap = ids.clone()
    gap[0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        tok_fitted.explain(gap)
    with pytest.raises(ValueError, match="target"):
        tok_fitted.explain(ids, target=1)
    # regression model, target="label", no labels
    model = BagModel(out=1).double().eval()
    with pytest.raises(ValueError, match="labels"):
        MaskExplainer(model, "sequence", task="regression", target="label").fit(ids)
    loader = torch.utils.data.DataLoader(ids, batch_size=2)
    with pytest.raises(ValueError, match="labels"):
        MaskExplainer(model, "sequence", task="regression", target="label", progress=False).fit(
            loader
        )
    with pytest.raises(ValueError, match="modality"):
        MaskExplainer(model, "text")
    with pytest.raises(ValueError, match="fill"):
        MaskExplainer(model, "image", fill="noise")
    with pytest.raises(ValueError, match="sparsity"):
        MaskExplainer(model, "image", sparsity=-1.0)
    with pytest.raises(TypeError, match="nn.Embedding"):
        MaskExplainer(model, "sequence", embedding="head").fit(ids)
    with pytest.raises(ValueError, match="not fitted"):
        MaskExplainer(model, "sequence").explain(ids)


def test_label_target_and_data_forms(img_model: nn.Module) -> None:
    x, y = region_task(64)
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    fits = []
    for data, labels in ((x, y), (ds, None), (loader, None)):
        me = MaskExplainer(
            img_model,
            "image",
            small_image_net(),
            target="label",
            lr=2e-2,
            batch_size=16,
            progress=False,
        ).fit(data, labels, epochs=1)
        fits.append(me)
        assert me.history_[0]["fidelity"] >= 0.0
    # a tensor and a Dataset of the same pairs, same seed: the same shuffled order -> same net
    a, b = fits[0].explain(x).values, fits[1].explain(x).values
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_explain_is_batch_invariant(img_fitted: MaskExplainer) -> None:
    x, _ = region_task(10, seed=13)
    full = img_fitted.explain(x).values
    bs = img_fitted.batch_size
    img_fitted.batch_size = 3
    try:
        chunked = img_fitted.explain(x).values
    finally:
        img_fitted.batch_size = bs
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12)
    one = img_fitted.explain(x[4:5]).values
    torch.testing.assert_close(one[0], full[4], rtol=0, atol=1e-12)
