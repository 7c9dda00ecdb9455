"""whynet.metrics against hand-computed cases, an independent blur, and streaming == one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from whynet.core import Explanation
from whynet.metrics import (
    DeletionAUC,
    InsertionAUC,
    LocalisationError,
    PointingGame,
    as_saliency,
    box_iou,
    deletion_auc,
    deletion_curve,
    gaussian_blur,
    insertion_auc,
    insertion_curve,
    localisation_error,
    mask_fidelity,
    pointing_game,
    saliency_boxes,
    trapezoid,
)

pytestmark = pytest.mark.usefixtures("one_thread")

W = torch.tensor([[4.0, 3.0], [2.0, 1.0]], dtype=torch.float64)


class Weighted(nn.Module):
    """logits = (sum(w * x), -sum(w * x)): class 0's logit is a known pixel sum."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, -s], 1)


def ones() -> torch.Tensor:
    return torch.ones(1, 1, 2, 2, dtype=torch.float64)


def test_trapezoid_by_hand() -> None:
    y = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0])
    assert trapezoid(y).item() == pytest.approx(3.75)
    assert trapezoid(torch.full((7,), 2.5)).item() == pytest.approx(2.5)
    x = torch.tensor([0.0, 1.0, 3.0])
    assert trapezoid(torch.tensor([1.0, 1.0, 3.0]), x).item() == pytest.approx(1.0 + 4.0)
    with pytest.raises(ValueError):
        trapezoid(torch.tensor([1.0]))


def test_deletion_insertion_logit_by_hand() -> None:
    model = Weighted(W)
    kw = dict(baseline="zero", steps=4, score="logit")
    perfect, inverted = W[None], -W[None]
    assert deletion_curve(model, ones(), perfect, 0, **kw)[0].tolist() == [10, 6, 3, 1, 0]
    assert deletion_curve(model, ones(), inverted, 0, **kw)[0].tolist() == [10, 9, 7, 4, 0]
    assert insertion_curve(model, ones(), perfect, 0, **kw)[0].tolist() == [0, 4, 7, 9, 10]
    assert insertion_curve(model, ones(), inverted, 0, **kw)[0].tolist() == [0, 1, 3, 6, 10]
    assert deletion_auc(model, ones(), perfect, 0, **kw).item() == pytest.approx(3.75)
    assert deletion_auc(model, ones(), inverted, 0, **kw).item() == pytest.approx(6.25)
    assert insertion_auc(model, ones(), perfect, 0, **kw).item() == pytest.approx(6.25)
    assert insertion_auc(model, ones(), inverted, 0, **kw).item() == pytest.approx(3.75)


def test_deletion_softmax_by_hand_and_predicted_target() -> None:
    model = Weighted(W)
    sig = [1 / (1 + math.exp(-2 * v)) for v in (10, 6, 3, 1, 0)]  # softmax of (L, -L)
    want = sum((sig[k] + sig[k + 1]) / 2 for k in range(4)) / 4
    got = deletion_auc(model, ones(), W[None], None, baseline="zero", steps=4)
    assert got.item() == pytest.approx(want, abs=1e-12)
    # the same for class 1 is the mirror image: 1 - p
    got1 = deletion_auc(model, ones(), W[None], 1, baseline="zero", steps=4)
    assert got1.item() == pytest.approx(1 - want, abs=1e-12)


def test_steps_change_rounded_pixel_counts() -> None:
    # 4 pixels in 3 steps: round(0, 4/3, 8/3, 4) = 0, 1, 3, 4 pixels removed
    c = deletion_curve(Weighted(W), ones(), W[None], 0, baseline="zero", steps=3, score="logit")
    assert c[0].tolist() == [10, 6, 1, 0]


def test_perfect_beats_inverted_on_a_small_cnn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    # an oracle saliency: each pixel's exact effect on the logit of a linear-in-x proxy
    lin = Weighted(torch.rand(8, 8, dtype=torch.float64))
    d_good = deletion_auc(lin, x, lin.w.expand(2, 8, 8) * x.sum(1), 0, baseline="zero")
    d_bad = deletion_auc(lin, x, -lin.w.expand(2, 8, 8) * x.sum(1), 0, baseline="zero")
    assert bool((d_good < d_bad).all())
    # the CNN path runs and gives probabilities in [0, 1]
    c = insertion_curve(model, x, torch.rand(2, 8, 8), steps=5, batch_size=3)
    assert c.shape == (2, 6) and bool(((c >= 0) & (c <= 1)).all())


def test_blur_matches_scipy_and_keeps_constants() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 11, 9, generator=g, dtype=torch.float64)
    ref = np.stack(
        [
            np.stack([ndimage.gaussian_filter(c, 1.0, mode="nearest", truncate=3.0) for c in img])
            for img in x.numpy()
        ]
    )
    np.testing.assert_allclose(gaussian_blur(x, 1.0).numpy(), ref, atol=1e-12)
    const = torch.full((1, 1, 5, 5), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)


def test_streaming_equals_one_shot_and_batch_size_is_invisible() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4)
    ).double()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    s = torch.rand(5, 6, 6, dtype=torch.float64)
    one = deletion_auc(model, x, s, steps=9, batch_size=64)
    torch.testing.assert_close(deletion_auc(model, x, s, steps=9, batch_size=4), one)
    stream = DeletionAUC(model, steps=9, batch_size=7)
    stream.update(x[:2], s[:2])
    stream.update(x[2:], s[2:])
    torch.testing.assert_close(stream.values, one)
    assert stream.compute() == pytest.approx(float(one.mean()))
    ins = InsertionAUC(model, steps=9)
    ins.update(x[:3], Explanation(values=s[:3]))
    ins.update(x[3:], s[3:])
    torch.testing.assert_close(ins.values, insertion_auc(model, x, s, steps=9))
    with pytest.raises(ValueError):
        DeletionAUC(model).compute()


def test_model_mode_and_grad_flags_restored() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))
    model.train()
    deletion_auc(model, torch.rand(2, 1, 3, 3), torch.rand(2, 3, 3), steps=2)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_pointing_game_by_hand() -> None:
    s = torch.zeros(3, 10, 10)
    s[:, 5, 7] = 1.0  # max at row 5, col 7
    boxes = torch.tensor(
        [
            [6, 4, 9, 6],  # cols 6..8, rows 4..5: hit
            [8, 4, 9, 6],  # cols 8..8: one column away
            [0, 0, 3, 3],
        ]
    )  # far
    assert pointing_game(s, boxes).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(s, boxes, tolerance=1.0).tolist() == [1.0, 1.0, 0.0]
    # several boxes per image: a hit on any counts; an empty list never hits
    multi = [torch.tensor([[0, 0, 1, 1], [7, 5, 8, 6]]), torch.zeros(0, 4), boxes[2:]]
    assert pointing_game(s, multi).tolist() == [1.0, 0.0, 0.0]
    pg = PointingGame()
    pg.update(s[:1], boxes[:1])
    pg.update(s[1:], boxes[1:])
    assert pg.compute() == pytest.approx(1 / 3)


def test_box_iou_and_saliency_boxes_by_hand() -> None:
    a = torch.tensor([[0, 0, 4, 4]])
    b = torch.tensor([[2, 2, 6, 6], [0, 0, 4, 4], [4, 0, 8, 4]])
    torch.testing.assert_close(
        box_iou(a, b), torch.tensor([[4 / 28, 1.0, 0.0]], dtype=torch.float64)
    )
    s = torch.zeros(1, 12, 12)
    s[0, 1:4, 2:8] = 1.0  # big blob: rows 1..3, cols 2..7 (18 px)
    s[0, 9:11, 9:11] = 0.9  # small blob (4 px)
    assert saliency_boxes(s, 0.5).tolist() == [[2, 1, 8, 4]]
    assert saliency_boxes(s, 0.5, component="all").tolist() == [[2, 1, 11, 11]]
    assert saliency_boxes(s, 0.95).tolist() == [[2, 1, 8, 4]]
    assert saliency_boxes(torch.ones(1, 5, 5), 0.5).tolist() == [[0, 0, 0, 0]]  # constant map


def test_localisation_error_perfect_and_inverted() -> None:
    box = torch.tensor([[3, 2, 9, 7]])
    perfect = torch.zeros(1, 16, 16)
    perfect[0, 2:7, 3:9] = 1.0
    assert localisation_error(perfect, box).tolist() == [0.0]
    assert localisation_error(1 - perfect, box).tolist() == [1.0]
    # overlap 3x5 of two 6x5 boxes: IoU = 15 / 45 = 1/3 < 0.5 is an error; 0.3 passes
    shifted = torch.zeros(1, 16, 16)
    shifted[0, 2:7, 6:12] = 1.0
    assert localisation_error(shifted, box).tolist() == [1.0]
    assert localisation_error(shifted, box, iou_threshold=0.3).tolist() == [0.0]
    le = LocalisationError()
    le.update(torch.cat([perfect, 1 - perfect]), box.repeat(2, 1))
    assert le.compute() == pytest.approx(0.5)


def test_mask_fidelity_identities() -> None:
    model = Weighted(W)
    x = ones().repeat(2, 1, 1, 1)
    f = mask_fidelity(model, x, torch.ones(2, 2, 2, dtype=torch.float64), 0, score="logit")
    torch.testing.assert_close(f.kept, f.original)
    assert f.removed.tolist() == [0.0, 0.0] and f.agreement.tolist() == [1.0, 1.0]
    half = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64).repeat(2, 1, 1)
    f = mask_fidelity(model, x, half, 0, score="logit")
    assert f.kept.tolist() == [4.0, 4.0] and f.removed.tolist() == [6.0, 6.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_fidelity(model, x, 2 * half)


def test_bad_inputs_raise_clear_errors() -> None:
    model = Weighted(W)
    with pytest.raises(ValueError, match="maps for"):
        deletion_auc(model, ones(), torch.rand(2, 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        deletion_auc(model, ones(), torch.rand(1, 2, 2), target=5)
    with pytest.raises(ValueError, match="baseline"):
        deletion_auc(model, ones(), torch.rand(1, 2, 2), baseline="noise")
    with pytest.raises(ValueError, match="dimensions"):
        deletion_auc(model, torch.ones(1, 2, 2), torch.rand(1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        as_saliency(torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="boxes"):
        pointing_game(torch.rand(1, 4, 4), torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match="steps"):
        deletion_auc(model, ones(), torch.rand(1, 2, 2), steps=0)


def test_as_saliency_shapes() -> None:
    s = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(as_saliency(s), s.sum(1))
    up = as_saliency(torch.ones(2, 2, 2), (8, 8))
    assert up.shape == (2, 8, 8) and bool((up == 1).all())


def test_low_resolution_maps_need_the_image_size() -> None:
    # a 2x2 map whose maximum cell is the bottom-right quarter of a 16x16 image
    s = torch.tensor([[[0.0, 0.1], [0.2, 1.0]]])
    box = torch.tensor([[8, 8, 16, 16]])
    assert pointing_game(s, box, size=(16, 16)).tolist() == [1.0]
    assert saliency_boxes(s, 0.9).tolist() == [[1, 1, 2, 2]]  # map cells, not pixels
    x0, y0, x1, y1 = saliency_boxes(s, 0.9, size=(16, 16))[0].tolist()
    assert x0 >= 8 and y0 >= 8 and x1 == 16 and y1 == 16
    assert localisation_error(s, box, threshold=0.9).tolist() == [1.0]
    pg = PointingGame(size=(16, 16))
    pg.update(s, box)
    assert pg.compute() == 1.0
