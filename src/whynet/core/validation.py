"""Input checks shared by every explainer: clear errors naming the problem."""

from __future__ import annotations

import torch


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` must be a positive int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def check_inputs(
    x: object,
    *,
    name: str = "inputs",
    ndim: int | tuple[int, ...] | None = None,
    floating: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a batch of inputs.

    Parameters
    ----------
    x : torch.Tensor
        The batch; the first dimension indexes inputs.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions (batch dimension included).
    floating : bool
        Require a floating dtype (token ids pass ``floating=False``).
    finite : bool
        Reject NaN or infinite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty batch (first dimension = inputs), "
            f"got shape {tuple(x.shape)}"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions "
                f"(batch first), got shape {tuple(x.shape)}"
            )
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if not floating and x.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor (token ids), got dtype {x.dtype}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def check_classes(index: torch.Tensor, n_classes: int, *, name: str = "class") -> None:
    """Every class index must lie in ``[0, n_classes)``."""
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_classes):
        bad = index[(index < 0) | (index >= n_classes)][0].item()
        raise ValueError(f"{name} index {bad} out of range for a model with {n_classes} outputs")
