"""Image rendering with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().float().numpy()
    return np.asarray(a)


def to_rgb(image: Any, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """An image as ``H x W x 3`` uint8.

    Accepts ``(C, H, W)`` with C in {1, 3}, ``(H, W, C)`` or ``(H, W)``, float or uint8. Floats
    are scaled from ``[lo, hi]`` (default: the image's own min and max) to [0, 255].
    """
    a = _numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] in (1, 3) and a.shape[0] < a.shape[1]:
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"cannot render an array of shape {a.shape} as an image")
    if a.dtype != np.uint8:
        lo = float(np.nanmin(a)) if lo is None else lo
        hi = float(np.nanmax(a)) if hi is None else hi
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
        a = (a * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def heatmap(values: Any, cmap: str = "jet", symmetric: bool = False) -> np.ndarray:
    """A 2-D map coloured with a matplotlib colormap, ``H x W x 3`` uint8.

    ``symmetric`` centres zero (for signed attributions, with a diverging ``cmap``).
    """
    from matplotlib import colormaps

    v = _numpy(values).astype(np.float64)
    if v.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D map, got shape {v.shape}")
    if symmetric:
        m = max(float(np.abs(v).max()), 1e-12)
        v = (v / m + 1) / 2
    else:
        lo, hi = float(v.min()), float(v.max())
        v = (v - lo) / max(hi - lo, 1e-12)
    return (colormaps[cmap](v)[..., :3] * 255 + 0.5).astype(np.uint8)


def overlay(image: Any, heat: Any, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heatmap over an image (heat resized to the image by nearest neighbour)."""
    base = to_rgb(image)
    h = _numpy(heat)
    if h.shape != base.shape[:2]:
        ys = (np.arange(base.shape[0]) * h.shape[0] / base.shape[0]).astype(int)
        xs = (np.arange(base.shape[1]) * h.shape[1] / base.shape[1]).astype(int)
        h = h[ys][:, xs]
    col = heatmap(h, cmap=cmap)
    return ((1 - alpha) * base + alpha * col + 0.5).astype(np.uint8)


def png_bytes(image: Any) -> bytes:
    """PNG-encode an image (anything :func:`to_rgb` accepts)."""
    import matplotlib.image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, to_rgb(image), format="png")
    return buf.getvalue()


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """PNG-encode a matplotlib figure and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def grid_png(
    images: Sequence[Any], ncol: int = 8, titles: Sequence[str] | None = None, size: float = 1.4
) -> bytes:
    """A grid of images with optional titles, PNG-encoded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not images:
        raise ValueError("grid_png needs at least one image")
    n = len(images)
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(size * ncol, size * nrow + 0.3 * nrow), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_rgb(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=7)
    return figure_png(fig)
