"""The deletion term (2) of the mask objective (whynet.masks.objective): hand-written references
on tiny float64 models, weight 0 = the paper's loss (1), gradients, bad values, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.masks.test_masks import (
    BagModel,
    region_model,
    region_task,
    small_image_net,
    small_seq_net,
    token_model,
    token_task,
)
from whynet.core import frozen_eval
from whynet.masks import MaskExplainer
from whynet.masks.objective import deletion_loss, mask_loss, objective_name
from whynet.zoo.masks_pretrained import PRETRAINED, WEIGHTS_DIR, load_pretrained, pretrained_info

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(deletion: float, sparsity: float = 0.7) -> MaskExplainer:
    net = small_image_net().double()
    # a non-constant mask: perturb the zero-initialised output layer
    with torch.no_grad():
        net.out.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return MaskExplainer(
        region_model(), "image", net, sparsity=sparsity, fill="zero", deletion=deletion
    )


def _sequence(deletion: float, task: str = "classification") -> MaskExplainer:
    torch.manual_seed(0)
    model = token_model() if task == "classification" else BagModel(out=1).double().eval()
    net = small_seq_net().double()
    with torch.no_grad():
        net.out.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return MaskExplainer(model, "sequence", net, sparsity=0.4, task=task, deletion=deletion)


def _image_reference(me: MaskExplainer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1) and (2) written out for fill="zero": x~ = x*m, x~_bar = x*(1-m)."""
    model, net = me.model, me.explainer
    assert net is not None
    m = torch.sigmoid(net(x))
    pred = model(x).argmax(1)
    paper = F.cross_entropy(model(x * m[:, None]), pred) + me.sparsity * m.mean()
    p_bar = torch.softmax(model(x * (1 - m)[:, None]), 1)
    deleted = p_bar[torch.arange(len(x)), pred].mean()
    return paper, deleted


def _sequence_reference(
    me: MaskExplainer, ids: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1) and (2) for the bag model: embeddings scaled by m, by (1-m) on real tokens, by 0."""
    model, net = me.model, me.explainer
    assert net is not None
    valid = (ids != 0).double()
    emb = model.embedding(ids).detach()
    m = torch.sigmoid(net(emb, ids != 0)) * valid

    def f(scale_tokens: torch.Tensor) -> torch.Tensor:
        return model.head((emb * scale_tokens[..., None]).sum(1))

    size = (m.sum(1) / valid.sum(1)).mean()
    ref = f(valid)
    if me.task == "classification":
        pred = ref.argmax(1)
        paper = F.cross_entropy(f(m), pred) + me.sparsity * size
        deleted = torch.softmax(f((1 - m) * valid), 1)[torch.arange(len(ids)), pred].mean()
    else:
        paper = ((f(m) - ref) ** 2).mean() / scale + me.sparsity * size
        deleted = ((f((1 - m) * valid) - f(torch.zeros_like(m))) ** 2).mean() / scale
    return paper, deleted


def _loss(me: MaskExplainer, x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, dict]:
    assert me.explainer is not None
    with frozen_eval(me.model):
        return mask_loss(me, me.explainer, x, None, scale)


# ---------------------------------------------------------------- values against references
def test_image_deletion_term_equals_reference() -> None:
    x, _ = region_task(16)
    me = _image(deletion=2.5)
    loss, stats = _loss(me, x)
    paper, deleted = _image_reference(me, x)
    assert 0 < float(deleted.detach()) < 1
    torch.testing.assert_close(loss, paper + 2.5 * deleted, rtol=1e-12, atol=1e-12)
    assert stats["deletion"] == pytest.approx(float(deleted.detach()), rel=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sequence_deletion_term_equals_reference(task: str) -> None:
    ids, _, _ = token_task(16)
    me = _sequence(deletion=1.5, task=task)
    loss, stats = _loss(me, ids, scale=2.0)
    paper, deleted = _sequence_reference(me, ids, scale=2.0)
    assert float(deleted.detach()) > 0
    torch.testing.assert_close(loss, paper + 1.5 * deleted, rtol=1e-12, atol=1e-12)
    assert stats["deletion"] == pytest.approx(float(deleted.detach()), rel=1e-12)


def test_weight_zero_is_the_papers_loss() -> None:
    x, _ = region_task(16)
    ids, _, _ = token_task(16)
    loss, stats = _loss(_image(deletion=0.0), x)
    paper, _ = _image_reference(_image(deletion=0.0), x)
    torch.testing.assert_close(loss, paper, rtol=0, atol=1e-14)
    assert "deletion" not in stats  # the history of a paper-loss fit keeps its keys
    for task in ("classification", "regression"):
        me = _sequence(deletion=0.0, task=task)
        loss, _ = _loss(me, ids, scale=2.0)
        paper, _ = _sequence_reference(me, ids, scale=2.0)
        torch.testing.assert_close(loss, paper, rtol=0, atol=1e-14)
    assert MaskExplainer(region_model()).deletion == 0.0  # the default is the paper's


def test_complement_of_an_all_ones_mask_is_the_removed_input() -> None:
    """m = 1: the complement removes everything, so (2) for regression is exactly 0."""
    ids, _, _ = token_task(8)
    me = _sequence(deletion=1.0, task="regression")
    with frozen_eval(me.model):
        ones = (ids != 0).double()
        value = deletion_loss(me, ids, ones, me.model(ids), scale=1.0)
    assert float(value) == 0.0


# ---------------------------------------------------------------- gradients and training
def test_gradients_flow_to_the_explainer_only() -> None:
    x, _ = region_task(16)
    me = _image(deletion=1.0)
    net = me.explainer
    assert net is not None
    with frozen_eval(me.model):
        mask = me._mask(net, x)
        value = deletion_loss(me, x, mask, me.model(x).argmax(1), scale=1.0)
        grads = torch.autograd.grad(value, list(net.parameters()), allow_unused=True)
        _, deleted = _image_reference(me, x)
        expected = torch.autograd.grad(deleted, list(net.parameters()), allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    for g, e in zip(grads, expected, strict=True):
        if e is None:
            assert g is None or bool((g == 0).all())
        else:
            assert g is not None
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None and p.requires_grad for p in me.model.parameters())


def test_deletion_empties_the_complement() -> None:
    """Trained with (2), the complement keeps less of the prediction than with (1) alone."""
    x, _ = region_task(192)
    xv, _ = region_task(64, seed=3)

    def complement_prob(deletion: float) -> float:
        me = MaskExplainer(
            region_model(),
            "image",
            small_image_net().double(),
            sparsity=1.0,
            fill="zero",
            deletion=deletion,
            lr=2e-2,
            batch_size=32,
            progress=False,
        ).fit(x, epochs=6)
        assert all("deletion" in h for h in me.history_) == (deletion > 0)
        with frozen_eval(me.model), torch.no_grad():
            m = me.explain(xv).values
            return float(deletion_loss(me, xv, m, me.model(xv).argmax(1), scale=1.0))

    assert complement_prob(3.0) < complement_prob(0.0)


# ---------------------------------------------------------------- parameters and files
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "1"])
def test_bad_deletion_weight_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="deletion must be"):
        MaskExplainer(region_model(), deletion=bad)  # type: ignore[arg-type]


def test_weight_saved_loaded_and_named_in_meta(tmp_path: Path) -> None:
    x, _ = region_task(32)
    model = region_model()
    me = MaskExplainer(
        model, "image", small_image_net().double(), fill="zero", deletion=0.5, progress=False
    ).fit(x, epochs=1)
    e = me.explain(x[:2])
    assert e.meta["objective"] == "preserve+delete" and e.meta["deletion"] == 0.5
    assert e.params["deletion"] == 0.5
    me.save(tmp_path / "m.safetensors")
    back = MaskExplainer.load(tmp_path / "m.safetensors", model)
    assert back.deletion == 0.5
    torch.testing.assert_close(back.explain(x[:2]).values, e.values, rtol=0, atol=0)
    paper = MaskExplainer(model, "image", small_image_net().double(), progress=False)
    assert paper.fit(x, epochs=1).explain(x[:2]).meta["objective"] == "preserve"


def test_model_untouched_by_deletion_training() -> None:
    ids, _, _ = token_task(64)
    model: nn.Module = token_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MaskExplainer(
        model, "sequence", small_seq_net().double(), deletion=1.0, batch_size=32, progress=False
    ).fit(ids, epochs=1)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_explainers_name_their_loss(name: str) -> None:
    """A shipped file's record and its loaded settings agree on the loss it was trained with."""
    if not (WEIGHTS_DIR / f"{name}.safetensors").is_file():
        pytest.skip(f"{name} is not shipped")
    info = pretrained_info(name)
    me, _, _ = load_pretrained(name)
    assert info.get("deletion", 0.0) == me.deletion
    assert info.get("objective", "preserve") == objective_name(me.deletion)
    assert (me.deletion > 0) == name.endswith("-delete")
