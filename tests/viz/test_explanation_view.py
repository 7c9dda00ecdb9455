"""An Explanation renders itself: ``_repr_html_`` (the report's figures, escaped) and
``whynet.viz.show`` (matplotlib), from what it carries (files, classes, tokens, inputs)."""

from __future__ import annotations

import base64
import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from whynet import Explanation  # noqa: E402
from whynet.viz import explanation_figures, show  # noqa: E402


def _image_expl() -> Explanation:
    g = torch.Generator().manual_seed(0)
    return Explanation(
        values=torch.rand(3, 6, 6, generator=g),
        target=torch.tensor([1, 0, 1]),
        method="gradcam",
        layer="conv",
        extras={"inputs": torch.rand(3, 3, 12, 12, generator=g)},
        meta={"files": ["a.png", "b<x>.png", "c.png"], "classes": ["cat", "dog"]},
    )


def test_repr_html_shows_the_images_with_file_and_class_names():
    e = _image_expl()
    page = e._repr_html_()
    assert "gradcam" in page and "3x6x6" in page and "b<x>.png" not in page
    png = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(png) == 1
    img = mpimg.imread(io.BytesIO(base64.b64decode(png[0])), format="png")
    assert img.ndim == 3 and img.shape[0] > 50
    figs = explanation_figures(e)  # the same figures as the report
    assert len(figs) == 1 and figs[0].png == base64.b64decode(png[0])


def test_repr_html_highlights_tokens():
    e = Explanation(
        values=torch.tensor([[0.5, -1.0, 0.0]]),
        method="influence",
        meta={"tokens": [["good", "<b>", "movie"]], "texts": ["good <b> movie"]},
    )
    page = e._repr_html_()
    assert (
        page.count('class="tok"') == 3
        and "&lt;b&gt;" in page
        and "<b>" not in page.replace("<b>Explanation</b>", "")
    )
    assert "rgba(30,110,255,1.000)" in page  # the negative token, full weight


def test_show_draws_with_matplotlib_and_refuses_what_it_cannot_draw():
    fig = show(_image_expl())
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "b<x>.png\ncat"
    fig = show(
        Explanation(values=torch.tensor([[1.0, 0.5]]), meta={"tokens": [["a", "b"]]}),
    )
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["a", "b"]
    with pytest.raises(ValueError, match="cannot draw values of shape"):
        show(Explanation(values=torch.zeros(2, 5), method="representer"))
