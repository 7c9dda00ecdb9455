"""Cluttered canvas benchmark and label noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whynet.data import canvas, fashion_mnist, with_noisy_labels
from whynet.data.canvas import _generate


@pytest.fixture(scope="module")
def small():
    return canvas("test", n=300)


def test_canvas_shapes_and_labels(small):
    x, y = small.tensors()
    assert x.shape == (300, 1, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    src = fashion_mnist("test")
    assert torch.equal(y, src.labels[:300])
    assert small.boxes.shape == (300, 4) and small.class_names == src.class_names


def test_canvas_boxes_are_tight_around_item(small):
    for i in range(len(small)):
        m = small.item_mask(i).numpy()
        x0, y0, x1, y1 = small.boxes[i].tolist()
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert (x0, y0, x1, y1) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        # the item's pixels are visible in the canvas (max-composited, noise is small)
        img = small.images[i].astype(float) / 255
        r, c = small.offsets[i].tolist()
        item = fashion_mnist("test").images[i].astype(float) / 255
        assert np.all(img[r : r + 28, c : c + 28][item > 0.5] > 0.3)


def test_canvas_box_masks(small):
    masks = small.box_masks()
    x0, y0, x1, y1 = small.boxes[7].tolist()
    assert masks.shape == (300, 64, 64)
    assert int(masks[7].sum()) == (x1 - x0) * (y1 - y0)
    assert bool(masks[7, y0, x0]) and bool(masks[7, y1 - 1, x1 - 1])
    assert not bool(masks[7, y0 - 1, x0]) if y0 > 0 else True


def test_canvas_deterministic_and_prefix_stable(small):
    fresh = _generate.__wrapped__("test", 64, 50, 0, 3, 0.05, None)
    np.testing.assert_array_equal(fresh[0], small.images[:50])
    np.testing.assert_array_equal(fresh[2], small.boxes[:50].numpy())
    other = _generate.__wrapped__("test", 64, 50, 1, 3, 0.05, None)
    assert not np.array_equal(other[0], fresh[0])


def test_canvas_other_size():
    ds = canvas("train", size=40, n=20)
    assert ds.tensors()[0].shape == (20, 1, 40, 40)
    assert int(ds.boxes[:, 2:].max()) <= 40
    with pytest.raises(ValueError):
        canvas("test", size=20, n=2)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 1.0])
def test_noisy_labels_exact_fraction(fraction):
    labels = torch.arange(1000) % 10
    noisy, flipped = with_noisy_labels(labels, fraction, seed=3, num_classes=10)
    assert int(flipped.sum()) == round(fraction * 1000)
    assert torch.equal(noisy != labels, flipped)
    assert torch.equal(noisy[~flipped], labels[~flipped])
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9
    assert torch.equal(labels, torch.arange(1000) % 10)  # input untouched


def test_noisy_labels_deterministic_and_from_dataset(small):
    a = with_noisy_labels(small, 0.2, seed=0)
    b = with_noisy_labels(small, 0.2, seed=0)
    c = with_noisy_labels(small, 0.2, seed=1)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.flipped, b.flipped)
    assert not torch.equal(a.flipped, c.flipped)
    assert int(a.flipped.sum()) == 60
    with pytest.raises(ValueError):
        with_noisy_labels(small, 1.5)
