"""visualize_neuron (channel QoI -> input heatmap/mask) and essence (top-k channel ablation)."""

import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from whynet.influence import InternalInfluence, essence, gaussian_blur, visualize_neuron

D = torch.float64


def test_gaussian_blur_preserves_constants_and_mass_centre():
    const = torch.full((2, 9, 9), 3.0, dtype=D)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)
    spike = torch.zeros(1, 9, 9, dtype=D)
    spike[0, 4, 4] = 1.0
    b = gaussian_blur(spike, 1.0)
    assert b[0, 4, 4] == b.max() and torch.allclose(b[0], b[0].T)
    torch.testing.assert_close(b.sum(), torch.tensor(1.0, dtype=D), rtol=1e-3, atol=1e-3)


def test_visualize_neuron_shapes_mask_and_batching(tiny_cnn):
    x = torch.randn(4, 1, 8, 8, dtype=D)
    heat, masked = visualize_neuron(
        tiny_cnn, "features.0", 2, x, blur=1.0, percentile=0.75, opacity=0.2
    )
    assert heat.shape == (4, 8, 8) and masked.shape == x.shape
    assert heat.min() >= 0 and torch.allclose(heat.flatten(1).amax(1), torch.ones(4, dtype=D))
    kept = masked == x
    dim = torch.isclose(masked, 0.2 * x)
    assert torch.all(kept | dim)
    frac = kept.flatten(1).double().mean(1)
    assert torch.all((frac > 0.1) & (frac <= 0.3))  # ~25% of pixels above the 75th percentile
    h1, m1 = visualize_neuron(tiny_cnn, "features.0", 2, x[1:2], blur=1.0, percentile=0.75)
    torch.testing.assert_close(h1, heat[1:2])
    torch.testing.assert_close(m1, masked[1:2])
    # no blur: the heatmap is the positive part of gradient x input, scaled
    h0, _ = visualize_neuron(tiny_cnn, "features.0", 2, x, blur=0.0)
    from whynet.core import Channel

    ref = (
        InternalInfluence(tiny_cnn, None, qoi=Channel("features.0", 2), multiply_activation=True)
        .explain(x)
        .values[:, 0]
        .clamp_min(0)
    )
    ref = ref / ref.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(h0, ref)
    hi, _ = visualize_neuron(tiny_cnn, "features.2", 0, x, doi="ig", steps=8)
    assert hi.shape == (4, 8, 8)


def test_visualize_neuron_bad_input(tiny_cnn):
    x = torch.randn(2, 1, 6, 6, dtype=D)
    tiny_cnn.train()
    with pytest.raises(ValueError, match="channel 9 out of range"):
        visualize_neuron(tiny_cnn, "features.2", 9, x)
    with pytest.raises(ValueError, match="unknown layer"):
        visualize_neuron(tiny_cnn, "feature.2", 0, x)
    with pytest.raises(ValueError, match="percentile"):
        visualize_neuron(tiny_cnn, "features.2", 0, x, percentile=95)
    with pytest.raises(ValueError, match="4 dimensions"):
        visualize_neuron(tiny_cnn, "features.2", 0, x[:, 0])
    assert hook_count(tiny_cnn) == 0 and tiny_cnn.training


def _clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, generator=g, dtype=D) * 0.4 + 2.0 * nn.functional.one_hot(y, 3)
    return x, y


def _hand_built() -> nn.Module:
    """Hidden units 2c, 2c+1 detect class c and vote for it; units 6, 7 are distractors."""
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(8, 3, generator=g, dtype=D) * 0.3)
        m[0].bias.copy_(torch.tensor([-0.6] * 6 + [0.0, 0.0], dtype=D))
        m[2].weight.copy_(torch.randn(3, 8, generator=g, dtype=D) * 0.1)
        m[2].bias.zero_()
        for c in range(3):
            m[0].weight[2 * c : 2 * c + 2] = 0.0
            m[0].weight[2 * c : 2 * c + 2, c] = torch.tensor([1.0, 0.6], dtype=D)
            m[2].weight[:, 2 * c : 2 * c + 2] = -0.3
            m[2].weight[c, 2 * c : 2 * c + 2] = 1.0
    return m.eval()


def test_essence_all_channels_is_the_full_model_and_is_seeded():
    m = _hand_built()
    xtr, ytr = _clusters(200, 2)
    xte, yte = _clusters(150, 3)
    r = essence(
        m,
        "1",
        1,
        [1, 2, 8],
        xte,
        yte,
        influence_data=xtr,
        influence_labels=ytr,
        ablation="zero",
        random_draws=3,
        seed=5,
    )
    assert [row["k"] for row in r.rows] == [1, 2, 8]
    assert set(r.channels[:2].tolist()) == {2, 3}  # the class-1 detectors
    full = r.rows[-1]
    assert full["reduced_acc"] == full["full_acc"] and full["random_acc"] == full["full_acc"]
    assert full["full_bacc"] > 0.9  # the toy task is learnable
    # ranking is the class-conditional influence, summed over space
    ref = InternalInfluence(m, "1", qoi=1).explain_dataset(xtr, ytr, cls=1).values
    assert torch.equal(r.channels, ref[0].argsort(descending=True))
    again = essence(
        m,
        "1",
        1,
        [1, 2, 8],
        xte,
        yte,
        influence_data=xtr,
        influence_labels=ytr,
        ablation="zero",
        random_draws=3,
        seed=5,
    )
    assert again.rows == r.rows
    # the top-2 channels keep the class far better than 2 random ones
    assert r.rows[1]["reduced_bacc"] > 0.9 > r.rows[1]["random_bacc"]
    rm = essence(m, "1", 1, 8, xte, yte, ablation="mean", random_draws=1)
    assert rm.rows[0]["reduced_acc"] == rm.rows[0]["full_acc"]
    # the default is mean ablation; it too keeps the class with the top-2 and not with random-2
    rd = essence(m, "1", 1, 2, xte, yte, influence_data=xtr, influence_labels=ytr, seed=5)
    assert rd.ablation == "mean"
    assert rd.rows[0]["reduced_bacc"] > 0.9 > rd.rows[0]["random_bacc"]
    assert hook_count(m) == 0


def test_essence_bad_input():
    m = _hand_built()
    x, y = _clusters(20, 4)
    with pytest.raises(ValueError, match="ablation"):
        essence(m, "1", 0, 1, x, y, ablation="noise")
    with pytest.raises(ValueError, match=r"k must be in \[1, 8\]"):
        essence(m, "1", 0, 9, x, y)
    with pytest.raises(ValueError, match="labels"):
        essence(m, "1", 0, 1, x)
    assert hook_count(m) == 0
