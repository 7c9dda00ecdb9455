"""Localisation of saliency maps against ground-truth boxes.

Boxes are ``(x0, y0, x1, y1)`` in pixels, end exclusive (``image[y0:y1, x0:x1]``), the format
of :func:`whynet.data.canvas`. ``boxes`` is a (B, 4) tensor (one box per image) or a list of
(K_i, 4) tensors (several objects of the target class; a hit on any counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from whynet.metrics._common import as_saliency

BoxesSpec = torch.Tensor | Sequence[torch.Tensor]


def _box_list(boxes: BoxesSpec, n: int) -> list[torch.Tensor]:
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"boxes must be (B, 4) (x0, y0, x1, y1) or a list of (K, 4); got "
                f"shape {tuple(boxes.shape)}"
            )
        out = [boxes[i : i + 1] for i in range(len(boxes))]
    else:
        out = [torch.as_tensor(b).reshape(-1, 4) for b in boxes]
    if len(out) != n:
        raise ValueError(f"got boxes for {len(out)} images but {n} saliency maps")
    for b in out:
        if b.numel() and bool(((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any()):
            raise ValueError(f"boxes must satisfy x1 >= x0 and y1 >= y0, got {b.tolist()}")
    return [b.long().cpu() for b in out]


def max_points(saliency: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, 2) ``(row, col)`` of each map's maximum (first in row-major order on ties), after
    bilinear upsampling to ``size`` (the image's (H, W)) when given."""
    s = as_saliency(saliency, size)
    idx = s.flatten(1).argmax(1).cpu()
    w = s.shape[-1]
    return torch.stack([idx // w, idx % w], 1)


def pointing_game(
    saliency: Any,
    boxes: BoxesSpec,
    tolerance: float = 0.0,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Pointing-game hits (Zhang et al., "Top-down neural attention by excitation backprop",
    ECCV 2016): 1.0 where the map's maximum lies inside a box, or within ``tolerance`` pixels
    (Euclidean distance to the box; the paper uses 15 px on VOC/COCO images), else 0.0.
    Box coordinates are image pixels: pass ``size=(H, W)`` for maps of another resolution
    (a 7x7 Grad-CAM), which are then bilinearly upsampled.

    Returns
    -------
    torch.Tensor
        (B,) float64 of 0/1; its mean is the pointing-game accuracy.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    pts = max_points(saliency, size)
    out = torch.zeros(len(pts), dtype=torch.float64)
    for i, (b, (r, c)) in enumerate(zip(_box_list(boxes, len(pts)), pts.tolist())):
        if not b.numel():
            continue
        # distance from pixel (r, c) to the pixel set [x0, x1-1] x [y0, y1-1]
        dx = torch.clamp(torch.maximum(b[:, 0] - c, c - (b[:, 2] - 1)), min=0).double()
        dy = torch.clamp(torch.maximum(b[:, 1] - r, r - (b[:, 3] - 1)), min=0).double()
        inside = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        out[i] = float(bool((inside & (dx.hypot(dy) <= tolerance)).any()))
    return out


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) end-exclusive boxes -> (N, M) float64."""
    a, b = a.double(), b.double()
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def saliency_boxes(
    saliency: Any,
    threshold: float = 0.5,
    component: Literal["largest", "all"] = "largest",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One box per map from its thresholded saliency, (B, 4) int64 ``(x0, y0, x1, y1)``.

    Each map is min-max normalised to [0, 1]; pixels ``>= threshold`` are kept and the box
    covers the largest 8-connected component of them (CAM, Zhou et al. CVPR 2016, Sec. 3) or all
    of them (``component="all"``). A map with no pixel kept (e.g. constant, threshold > 0) gets
    the empty box (0, 0, 0, 0). ``size=(H, W)`` upsamples maps to the image first.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if component not in ("largest", "all"):
        raise ValueError(f"component must be 'largest' or 'all', got {component!r}")
    from scipy import ndimage

    s = as_saliency(saliency, size).double()
    lo = s.flatten(1).min(1).values.view(-1, 1, 1)
    hi = s.flatten(1).max(1).values.view(-1, 1, 1)
    span = hi - lo
    norm = torch.where(span > 0, (s - lo) / span.clamp(min=1e-300), torch.zeros_like(s))
    keep = (norm >= threshold).cpu().numpy()
    out = np.zeros((len(keep), 4), dtype=np.int64)
    for i, k in enumerate(keep):
        if component == "largest" and k.any():
            lab, n = ndimage.label(k, structure=np.ones((3, 3), dtype=bool))
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            sizes[0] = 0
            k = lab == int(np.argmax(sizes))  # ties: the component found first
        rows, cols = np.flatnonzero(k.any(1)), np.flatnonzero(k.any(0))
        if len(rows):
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return torch.from_numpy(out)


def localisation_error(
    saliency: Any,
    boxes: BoxesSpec,
    threshold: float = 0.5,
    iou_threshold: float = 0.5,
    component: Literal["largest", "all"] = "largest",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Box-localisation errors (ILSVRC protocol, as in CAM and Du et al. 2018, Sec. 5.2).

    The predicted box is :func:`saliency_boxes` of the map; an image is an error (1.0) when its
    IoU with every ground-truth box is below ``iou_threshold`` (0.5), else 0.0. Classification
    is not included: pass maps for the classes you want judged.

    Returns
    -------
    torch.Tensor
        (B,) float64 of 0/1; its mean is the localisation error rate.
    """
    pred = saliency_boxes(saliency, threshold, component, size)
    out = torch.ones(len(pred), dtype=torch.float64)
    for i, b in enumerate(_box_list(boxes, len(pred))):
        if b.numel() and float(box_iou(pred[i : i + 1], b).max()) >= iou_threshold:
            out[i] = 0.0
    return out
