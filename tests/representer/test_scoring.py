"""Blocked scoring is the one-product formula (issue 17's fast paths).

To the last bits only: the BLAS product of a block picks its kernel by shape, so a dot product
``f_i . f_t`` may be summed in another order in a block of 7 than in one of 150 (one rounding,
~1e-17 here); the values themselves are the same float64 operations on every path."""

from __future__ import annotations

import pytest
import torch

from tests.representer.test_representer import data, make_model
from whynet.representer import RepresenterPoints, augment
from whynet.representer import _certify as certify
from whynet.representer import _scoring as scoring

pytestmark = pytest.mark.usefixtures("one_thread")


ULP = {"rtol": 0, "atol": 1e-16}  # values are ~1e-2: a few units in the last place


def copy_of(rp: RepresenterPoints, **kw) -> RepresenterPoints:
    other = RepresenterPoints(rp.model, head="4", **kw)
    for k, v in vars(rp).items():
        if k.endswith("_"):
            setattr(other, k, v)
    return other


@pytest.fixture(scope="module")
def fitted() -> tuple[RepresenterPoints, torch.Tensor, torch.Tensor]:
    x, y = data(n=150)
    rp = RepresenterPoints(make_model(), head="4").fit(x, y)
    xt, _ = data(n=11, seed=5)
    f, out = rp._forward(xt)
    return rp, f, out.argmax(1)


def test_blocked_values_equal_one_product_exactly(fitted) -> None:
    rp, f, cls = fitted
    ref = rp.values_features(f, cls)
    # the formula, in the same operations: alpha + alpha * (f_i . f_t)
    k = f.double() @ rp.features_.double().T
    coef = rp.alpha_.T[cls]
    assert torch.equal(ref, torch.addcmul(coef, coef, k))
    for block, batch in ((7, 3), (64, 11), (149, 1)):
        v = copy_of(rp, block_size=block, batch_size=batch).values_features(f, cls)
        torch.testing.assert_close(v, ref, **ULP, msg=f"block {block}, batch {batch}")
    # and the decomposition of the fine-tuned logits
    logits = (augment(f, torch.float64) @ rp.weight_.T).gather(1, cls[:, None])[:, 0]
    torch.testing.assert_close(ref.sum(1), logits, rtol=0, atol=1e-6)


def test_blocked_top_equals_the_top_of_all_values(fitted, monkeypatch) -> None:
    rp, f, cls = fitted
    full = rp.values_features(f, cls)
    hi, lo = full.topk(4, dim=1), full.topk(4, dim=1, largest=False)
    for elems, rows, block, batch in ((1, 1, 150, 256), (40, 5, 9, 4), (1 << 18, 2048, 150, 2)):
        monkeypatch.setattr(scoring, "TOP_BLOCK_ELEMS", elems)
        monkeypatch.setattr(scoring, "TOP_MIN_ROWS", rows)
        t = copy_of(rp, block_size=block, batch_size=batch)
        got = certify.top(t, f, cls, 4)
        torch.testing.assert_close(got[1], hi.values, **ULP)
        torch.testing.assert_close(got[3], lo.values, **ULP)
        assert torch.equal(got[0], hi.indices) and torch.equal(got[2], lo.indices)


def test_memory_mapped_features_score_as_in_memory(fitted, tmp_path, monkeypatch) -> None:
    import numpy as np

    rp, f, cls = fitted
    path = tmp_path / "f.npy"
    np.save(path, rp.features_.numpy())
    mm = copy_of(rp, block_size=32)
    mm.features_ = torch.from_numpy(np.load(path, mmap_mode="c"))
    assert scoring.kernel_parts(mm)[0] is None  # scored block by block from the map
    torch.testing.assert_close(mm.values_features(f, cls), rp.values_features(f, cls), **ULP)
    monkeypatch.setattr(scoring, "CONVERT_ROWS", 5)  # float32 map, float64 kernel: 5 at a time
    torch.testing.assert_close(mm.values_features(f, cls), rp.values_features(f, cls), **ULP)
    a, b = certify.top(mm, f, cls, 3), certify.top(rp, f, cls, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    torch.testing.assert_close(a[1], b[1], **ULP)
