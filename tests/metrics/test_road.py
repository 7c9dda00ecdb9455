"""ROAD (Rong et al., ICML 2022): noisy linear imputation and the MoRF/LeRF curves."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from whynet.metrics import road_auc, road_curve
from whynet.metrics.road import NEIGHBOURS, linear_imputation, noisy_linear_imputation


class PatchModel(nn.Module):
    """logits = (s, -s), s = 4 * (mean of the top-left 3x3 patch) - 2: only the patch matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 4 * x[:, 0, :3, :3].mean((1, 2)) - 2
        return torch.stack([s, -s], 1)


def _images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, :3, :3] = 1.0
    return x


def _perfect(x: torch.Tensor) -> torch.Tensor:
    sal = torch.zeros(len(x), 8, 8)
    sal[:, :3, :3] = 1.0 + torch.arange(9.0).view(3, 3)  # patch first, nothing else matters
    return sal


def test_zero_removed_is_the_models_own_score() -> None:
    x = _images()
    model = PatchModel()
    sal = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    c = road_curve(model, x, sal, 0, percentages=[0.0, 0.5], score="softmax")
    own = model(x).softmax(-1)[:, 0].double()
    torch.testing.assert_close(c[:, 0], own)
    acc = road_curve(model, x, sal, percentages=[0.0], score="accuracy")
    assert acc[:, 0].tolist() == [1.0, 1.0, 1.0]  # None = the prediction on the input


def test_constant_image_imputes_to_the_constant() -> None:
    x = torch.full((2, 3, 9, 7), 0.37, dtype=torch.float64)
    removed = torch.rand(2, 9, 7, generator=torch.Generator().manual_seed(2)) < 0.8
    out = noisy_linear_imputation(x, removed, noise=0.0)
    torch.testing.assert_close(out, x)


def test_imputed_pixels_are_the_mean_of_their_neighbours() -> None:
    g = torch.Generator().manual_seed(3)
    img = torch.rand(2, 10, 12, generator=g, dtype=torch.float64).numpy()
    removed = (torch.rand(10, 12, generator=g) < 0.6).numpy()
    removed[0, 0] = removed[9, 11] = removed[0, 5] = True  # corners and an edge
    out = linear_imputation(img, removed)
    h, w = removed.shape
    for r in range(h):
        for c in range(w):
            if not removed[r, c]:
                assert (out[:, r, c] == img[:, r, c]).all()  # known pixels untouched
                continue
            num: Any = 0.0
            den = 0.0
            for dr, dc, wt in NEIGHBOURS:
                if 0 <= r + dr < h and 0 <= c + dc < w:
                    num = num + wt * out[:, r + dr, c + dc]
                    den += wt
            assert abs(out[:, r, c] - num / den).max() < 1e-10


def test_morf_with_a_perfect_map_drops_faster_than_lerf() -> None:
    x = _images()
    model = PatchModel()
    pct = [0.0, 0.1, 0.15, 0.3, 0.5]
    kw: dict[str, Any] = dict(percentages=pct, score="softmax", noise=0.01, seed=0)
    morf = road_curve(model, x, _perfect(x), 0, order="morf", **kw)
    lerf = road_curve(model, x, _perfect(x), 0, order="lerf", **kw)
    assert (morf[:, 1:] < lerf[:, 1:] - 0.2).all()
    assert (lerf - lerf[:, :1]).abs().max() < 0.05  # the patch is never touched by LeRF here
    assert (morf[:, -1] < 0.2).all()  # the whole patch imputed from the dark background
    a_m = road_auc(model, x, _perfect(x), 0, order="morf", **kw)
    a_l = road_auc(model, x, _perfect(x), 0, order="lerf", **kw)
    assert (a_m < a_l).all()


def test_seeded_and_independent_of_batch_size() -> None:
    x = _images(4)
    sal = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(4))
    kw: dict[str, Any] = dict(percentages=[0.2, 0.6], score="logit", noise=0.05)
    a = road_curve(PatchModel(), x, sal, 0, seed=7, batch_size=3, **kw)
    b = road_curve(PatchModel(), x, sal, 0, seed=7, batch_size=64, **kw)
    c = road_curve(PatchModel(), x, sal, 0, seed=8, **kw)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_noise_has_the_requested_spread() -> None:
    x = torch.zeros(1, 1, 40, 40)
    removed = torch.zeros(1, 40, 40, dtype=torch.bool)
    removed[0, 5:35, 5:35] = True
    out = noisy_linear_imputation(x, removed, 0.1, torch.Generator().manual_seed(0))
    vals = out[0, 0][removed[0]]
    assert abs(float(vals.std()) - 0.1) < 0.01 and abs(float(vals.mean())) < 0.01


def test_clear_errors() -> None:
    x, model = _images(), PatchModel()
    sal = _perfect(x)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        road_curve(model, x, sal, percentages=[0.5, 1.0])
    with pytest.raises(ValueError, match="order must be"):
        road_curve(model, x, sal, order="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score must be"):
        road_curve(model, x, sal, score="prob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise must be"):
        road_curve(model, x, sal, noise=-1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        road_auc(model, x, sal, percentages=[0.5, 0.1])
    with pytest.raises(ValueError, match="every pixel removed"):
        linear_imputation(x[0].numpy(), torch.ones(8, 8, dtype=torch.bool).numpy())
