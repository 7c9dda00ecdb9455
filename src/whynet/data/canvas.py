"""A localisation benchmark built from Fashion-MNIST: one item on a larger cluttered canvas.

Each image places one Fashion-MNIST item (28x28) at a random position on a ``size`` x ``size``
canvas, adds clutter (crops of *other* items, placed so that they never touch the item's box) and
Gaussian noise. The exact bounding box of the item's nonzero pixels is returned, for the pointing
game and localisation error.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from whynet.data._base import ImageDataset
from whynet.data.fashion import fashion_mnist

__all__ = ["CanvasDataset", "canvas"]

_SPLIT_CODE = {"train": 1, "test": 2}


class CanvasDataset(ImageDataset):
    """Canvas images: items ``(x, y)`` with x float32 (1, size, size) in [0, 1], y int64 0..9.

    Attributes
    ----------
    boxes : torch.Tensor
        int64 (N, 4) ``(x0, y0, x1, y1)``: column/row of the item's first nonzero pixel and one
        past its last, so ``image[y0:y1, x0:x1]`` holds every nonzero pixel of the item.
    offsets : torch.Tensor
        int64 (N, 2) ``(row, col)`` where the 28x28 item was pasted.
    source_index : torch.Tensor
        int64 (N,) index of the item in ``fashion_mnist(split)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray,
        offsets: np.ndarray,
        source_index: np.ndarray,
        **kw: Any,
    ) -> None:
        super().__init__(images, labels, **kw)
        self.boxes = torch.from_numpy(boxes)
        self.offsets = torch.from_numpy(offsets)
        self.source_index = torch.from_numpy(source_index)

    def item_mask(self, index: int) -> torch.Tensor:
        """Boolean (size, size) mask of the item's own nonzero pixels in image ``index``."""
        src = fashion_mnist(self.split).images[int(self.source_index[index])]
        size = self.images.shape[-1]
        mask = np.zeros((size, size), dtype=bool)
        r, c = (int(v) for v in self.offsets[index])
        mask[r : r + 28, c : c + 28] = src > 0
        return torch.from_numpy(mask)

    def box_masks(self) -> torch.Tensor:
        """Boolean (N, size, size) masks of the bounding boxes."""
        size = self.images.shape[-1]
        ar = torch.arange(size)
        x0, y0, x1, y1 = self.boxes.unbind(1)
        rows = (ar[None] >= y0[:, None]) & (ar[None] < y1[:, None])
        cols = (ar[None] >= x0[:, None]) & (ar[None] < x1[:, None])
        return rows[:, :, None] & cols[:, None, :]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    # boxes as (x0, y0, x1, y1), end exclusive; touching counts as overlapping (1 px margin)
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


@functools.lru_cache(maxsize=4)
def _generate(
    split: str, size: int, n: int, seed: int, fragments: int, noise: float, root: str | None
) -> tuple[np.ndarray, ...]:
    src = fashion_mnist(split, root=root)
    items, labels = src.images, src.labels.numpy()
    m = len(items)
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], size])
    out = np.empty((n, size, size), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.int64)
    offsets = np.empty((n, 2), dtype=np.int64)
    # tight boxes of every source item, once
    nz_rows = items.max(axis=2) > 0
    nz_cols = items.max(axis=1) > 0
    for i in range(n):
        k = i % m
        img = np.zeros((size, size), dtype=np.float32)
        r, c = (int(v) for v in rng.integers(0, size - 28 + 1, size=2))
        rows, cols = np.flatnonzero(nz_rows[k]), np.flatnonzero(nz_cols[k])
        if len(rows):
            box = (c + int(cols[0]), r + int(rows[0]), c + int(cols[-1]) + 1, r + int(rows[-1]) + 1)
        else:  # an empty item (never happens in Fashion-MNIST): degenerate box at the offset
            box = (c, r, c, r)
        for _ in range(fragments):
            j = int(rng.integers(0, m))
            if j == k:
                j = (j + 1) % m
            h, w = (int(v) for v in rng.integers(8, 15, size=2))
            pr, pc = int(rng.integers(0, 28 - h + 1)), int(rng.integers(0, 28 - w + 1))
            patch = items[j, pr : pr + h, pc : pc + w].astype(np.float32) / 255.0
            for _try in range(20):
                fr, fc = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                if not _overlaps((fc, fr, fc + w, fr + h), box):
                    img[fr : fr + h, fc : fc + w] = np.maximum(
                        img[fr : fr + h, fc : fc + w], patch * 0.8
                    )
                    break
        img[r : r + 28, c : c + 28] = np.maximum(
            img[r : r + 28, c : c + 28], items[k].astype(np.float32) / 255.0
        )
        if noise > 0:
            img += rng.normal(0.0, noise, size=img.shape).astype(np.float32)
        out[i] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        boxes[i] = box
        offsets[i] = (r, c)
    index = np.arange(n, dtype=np.int64) % m
    return out, labels[index].astype(np.int64), boxes, offsets, index


def canvas(
    split: str = "train",
    size: int = 64,
    n: int | None = None,
    seed: int = 0,
    fragments: int = 3,
    noise: float = 0.05,
    root: str | None = None,
) -> CanvasDataset:
    """Cluttered-canvas localisation data built from Fashion-MNIST ``split``.

    Image ``i`` holds item ``i % len(fashion_mnist(split))`` at a uniformly random offset,
    ``fragments`` crops (8-14 px, 0.8 intensity) of other random items outside the item's box
    (with a 1 px gap) and Gaussian noise of std ``noise``, clipped to [0, 1]. Deterministic given
    ``(split, size, n, seed, fragments, noise)``.

    Parameters
    ----------
    split
        ``"train"`` or ``"test"``.
    size
        Canvas side in pixels (>= 28).
    n
        Number of images; default the size of the Fashion-MNIST split (60,000 / 10,000).
    seed, fragments, noise
        Generation settings (see above).
    root
        Fashion-MNIST folder, as in :func:`whynet.data.fashion_mnist`.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 28:
        raise ValueError("size must be at least 28")
    if n is None:
        n = len(fashion_mnist(split, root=root))
    images, labels, boxes, offsets, index = _generate(
        split, size, int(n), seed, fragments, float(noise), None if root is None else str(root)
    )
    from whynet.data.fashion import FASHION_CLASSES

    return CanvasDataset(
        images,
        labels,
        boxes,
        offsets,
        index,
        name="fashion-canvas",
        split=split,
        class_names=list(FASHION_CLASSES),
        meta={
            "size": size,
            "seed": seed,
            "fragments": fragments,
            "noise": noise,
            "box_format": "(x0, y0, x1, y1), end exclusive",
        },
    )
