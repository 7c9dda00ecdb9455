"""Real photographs bundled with scikit-image, scikit-learn and matplotlib (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from whynet.data._base import require

__all__ = ["Photo", "photos", "PHOTO_NAMES"]

PHOTO_NAMES = [
    "coffee",
    "chelsea",
    "rocket",
    "astronaut",
    "motorcycle",
    "china",
    "flower",
    "grace_hopper",
]

# name -> (source, description, ImageNet class indices a person would accept, in order of
# preference; empty when no single ImageNet class is clearly right)
_EXPECTED: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "coffee": ("skimage.data.coffee", "a cup of coffee on a saucer", (967, 968, 504)),
    "chelsea": ("skimage.data.chelsea", "Chelsea the cat", (281, 282, 285, 283, 284, 287)),
    "rocket": ("skimage.data.rocket", "a rocket on its launch pad", (657, 744, 812)),
    "astronaut": ("skimage.data.astronaut", "Eileen Collins in her NASA portrait", ()),
    "motorcycle": (
        "skimage.data.stereo_motorcycle (left image)",
        "a motorcycle in a workshop",
        (665, 670, 518, 535),
    ),
    "china": ("sklearn.datasets.load_sample_images (china.jpg)", "a Chinese temple", (698, 832)),
    "flower": ("sklearn.datasets.load_sample_images (flower.jpg)", "a daisy-like flower", (985,)),
    "grace_hopper": (
        "matplotlib sample_data grace_hopper.jpg",
        "Grace Hopper in navy uniform",
        (652, 457, 906),
    ),
}
# short ImageNet names of the indices above (checked against whynet.zoo.imagenet_classes())
_NAMES = {
    967: "espresso",
    968: "cup",
    504: "coffee mug",
    281: "tabby",
    282: "tiger cat",
    285: "Egyptian cat",
    283: "Persian cat",
    284: "Siamese cat",
    287: "lynx",
    657: "missile",
    744: "projectile",
    812: "space shuttle",
    665: "moped",
    670: "motor scooter",
    518: "crash helmet",
    535: "disk brake",
    698: "palace",
    832: "stupa",
    985: "daisy",
    652: "military uniform",
    457: "bow tie",
    906: "Windsor tie",
}


@dataclass
class Photo:
    """One photograph: ``image`` uint8 (H, W, 3) RGB; ``expected`` ImageNet class indices that a
    person would accept (first = preferred; see ``whynet.zoo.imagenet_classes()`` for names)."""

    name: str
    image: np.ndarray
    source: str
    description: str
    expected: tuple[int, ...] = field(default_factory=tuple)
    expected_names: tuple[str, ...] = field(default_factory=tuple)


def _load(name: str) -> np.ndarray:
    if name in ("coffee", "chelsea", "rocket", "astronaut"):
        return np.asarray(getattr(require("skimage.data", "scikit-image"), name)())
    if name == "motorcycle":
        left, _right, _disp = require("skimage.data", "scikit-image").stereo_motorcycle()
        return np.asarray(left)
    if name in ("china", "flower"):
        imgs = require("sklearn.datasets", "scikit-learn").load_sample_images()
        files = [f.rsplit("/", 1)[-1] for f in imgs.filenames]
        return np.asarray(imgs.images[files.index(f"{name}.jpg")])
    if name == "grace_hopper":
        from PIL import Image

        cbook = require("matplotlib.cbook", "matplotlib")
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    raise KeyError(f"unknown photo {name!r}; choose from {PHOTO_NAMES}")


def photos(names: list[str] | None = None) -> list[Photo]:
    """The bundled photographs (all of :data:`PHOTO_NAMES` by default), RGB uint8 (H, W, 3).

    Preprocess for ImageNet models with ``whynet.zoo.imagenet_preprocess``.
    """
    out = []
    for name in names or PHOTO_NAMES:
        if name not in _EXPECTED:
            raise KeyError(f"unknown photo {name!r}; choose from {PHOTO_NAMES}")
        source, desc, expected = _EXPECTED[name]
        img = _load(name)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"photo {name}: unexpected array {img.dtype} {img.shape}")
        names_ = tuple(_NAMES[i] for i in expected)
        out.append(Photo(name, np.ascontiguousarray(img), source, desc, expected, names_))
    return out
