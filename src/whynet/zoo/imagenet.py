"""ImageNet helpers: class names and the EfficientNet-Lite preprocessing (no torchvision)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "imagenet_classes",
    "imagenet_synsets",
    "imagenet_preprocess",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_deprocess",
]

CLASSES_FILE = Path(__file__).resolve().parent / "weights" / "imagenet_classes.txt"
IMAGENET_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STD = (0.5, 0.5, 0.5)


@functools.lru_cache(maxsize=1)
def _table() -> tuple[list[str], list[str]]:
    synsets, names = [], []
    for line in CLASSES_FILE.read_text().splitlines():
        if line.strip():
            syn, name = line.split("\t", 1)
            synsets.append(syn)
            names.append(name)
    if len(names) != 1000:
        raise ValueError(f"{CLASSES_FILE}: expected 1000 classes, found {len(names)}")
    return synsets, names


def imagenet_classes(short: bool = True) -> list[str]:
    """The 1,000 ImageNet-1k class names in index order (``short``: first synonym only,
    e.g. ``"espresso"``; else WordNet lemmas, e.g. ``"tabby, tabby cat"``)."""
    names = _table()[1]
    return [n.split(",")[0].strip() for n in names] if short else list(names)


def imagenet_synsets() -> list[str]:
    """WordNet ids (``n01440764`` ...) of the 1,000 classes, in index order."""
    return list(_table()[0])


def _to_pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr, mode="RGB")


def imagenet_preprocess(
    image: Any | Sequence[Any], resize: int = 256, crop: int = 224
) -> torch.Tensor:
    """EfficientNet-Lite0 preprocessing: shorter side to ``resize`` (bilinear, antialiased),
    centre crop ``crop`` x ``crop``, scale to [0, 1], normalise with mean 0.5 / std 0.5 per
    channel (so inputs lie in [-1, 1]).

    Accepts an RGB image (uint8 (H, W, 3) array, PIL image, or (3, H, W) tensor) or a list of
    them; returns float32 (3, crop, crop) or (B, 3, crop, crop).
    """
    if isinstance(image, (list, tuple)):
        return torch.stack([imagenet_preprocess(im, resize, crop) for im in image])
    from PIL import Image

    pil = _to_pil(image)
    w, h = pil.size
    scale = resize / min(w, h)
    nw, nh = max(resize, round(w * scale)), max(resize, round(h * scale))
    pil = pil.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    pil = pil.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std).contiguous()


def imagenet_deprocess(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation: (…, 3, H, W) in [-1, 1] back to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
    return (x * std + mean).clamp(0, 1)
