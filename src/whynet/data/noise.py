"""Label noise: flip an exact fraction of labels and record which ones (mislabel detection)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["NoisyLabels", "with_noisy_labels"]


class NoisyLabels(NamedTuple):
    """``labels``: int64 (N,) new labels; ``flipped``: bool (N,), True where the label changed."""

    labels: torch.Tensor
    flipped: torch.Tensor


def with_noisy_labels(
    dataset_or_labels: Any, fraction: float, seed: int = 0, num_classes: int | None = None
) -> NoisyLabels:
    """Flip exactly ``round(fraction * N)`` labels, each to a different class chosen uniformly.

    Parameters
    ----------
    dataset_or_labels
        A labels tensor/array (N,) or a dataset with ``.labels``/``.y`` or ``.tensors()``.
    fraction
        In [0, 1].
    seed
        Seed of the choice of flipped items and of their new classes.
    num_classes
        Default: ``len(dataset.class_names)`` if available, else ``max(label) + 1``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    obj = dataset_or_labels
    if num_classes is None and getattr(obj, "class_names", None) is not None:
        num_classes = len(obj.class_names)
    if hasattr(obj, "labels"):
        labels = obj.labels
    elif hasattr(obj, "y"):
        labels = obj.y
    elif hasattr(obj, "tensors"):
        labels = obj.tensors()[1]
    else:
        labels = obj
    y = torch.as_tensor(np.asarray(labels)).long().clone()
    if y.ndim != 1:
        raise ValueError("labels must be one-dimensional")
    n = len(y)
    k = num_classes if num_classes is not None else int(y.max()) + 1 if n else 0
    if k < 2 and fraction > 0:
        raise ValueError("need at least two classes to flip labels")
    rng = np.random.default_rng(seed)
    count = int(round(fraction * n))
    idx = rng.choice(n, size=count, replace=False)
    shift = rng.integers(1, max(k, 2), size=count)  # never 0: always a different class
    y_np = y.numpy()
    y_np[idx] = (y_np[idx] + shift) % k
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.as_tensor(idx, dtype=torch.long)] = True
    return NoisyLabels(torch.from_numpy(y_np), flipped)
