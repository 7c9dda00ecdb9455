import numpy as np
import pytest
import torch

from whynet.registry import register_explainer
from whynet.viz import (
    figure_png,
    grid_png,
    heatmap,
    highlight_text,
    molecule_svg,
    overlay,
    png_bytes,
    to_rgb,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_to_rgb_layouts_and_range():
    chw = torch.zeros(3, 4, 5)
    chw[0, 0, 0] = 1.0
    a = to_rgb(chw)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8
    assert a[0, 0, 0] == 255 and a[1, 1, 0] == 0
    assert to_rgb(np.zeros((1, 6, 7))).shape == (6, 7, 3)
    assert to_rgb(np.full((2, 2), 0.5), lo=0.0, hi=1.0)[0, 0, 0] == 128
    with pytest.raises(ValueError, match="cannot render"):
        to_rgb(np.zeros((2, 3, 4, 5)))


def test_heatmap_and_overlay():
    h = heatmap(np.arange(6.0).reshape(2, 3), cmap="gray")
    assert h.shape == (2, 3, 3) and h[0, 0, 0] == 0 and h[1, 2, 0] == 255
    sym = heatmap(np.array([[-1.0, 0.0, 1.0]]), cmap="gray", symmetric=True)
    assert sym[0, 1, 0] == 128  # zero sits in the middle of a diverging map
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros((2, 2, 2)))
    img = np.zeros((8, 8))
    blended = overlay(img, np.ones((2, 2)), alpha=0.0)  # heat resized to the image
    assert blended.shape == (8, 8, 3) and blended.max() == 0


def test_png_encoders():
    assert png_bytes(torch.rand(1, 5, 5)).startswith(PNG_MAGIC)
    assert grid_png([np.zeros((4, 4))] * 3, ncol=2, titles=["a", "b", "c"]).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="at least one"):
        grid_png([])
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_highlight_text_escapes_and_checks_lengths():
    html = highlight_text(["<b>", "ok"], [1.0, -0.5])
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "30,110,255" in html  # negative weights in blue
    with pytest.raises(ValueError, match="2 tokens but 1 weights"):
        highlight_text(["a", "b"], [0.1])


def test_molecule_svg_checks_input():
    pytest.importorskip("rdkit")
    svg = molecule_svg("CCO", [0.0, 0.5, 1.0])
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg
    with pytest.raises(ValueError, match="cannot parse"):
        molecule_svg("not a smiles((", [1.0])
    with pytest.raises(ValueError, match="2 weights for 3 atoms"):
        molecule_svg("CCO", [1.0, 1.0])


def test_register_explainer_rejects_bad_targets():
    with pytest.raises(ValueError, match="package.module:Class"):
        register_explainer("x", "no_colon", "desc")
