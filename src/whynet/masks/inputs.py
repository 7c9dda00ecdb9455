"""Input checks of the explanatory masks: images (B, C, H, W) or token ids (B, T) with trailing
padding 0 (Phillips, Goh & Hodas 2019 mask pixels or token embeddings; the two need different
inputs, and an amortised explainer only knows the channels and lengths it was trained on)."""

from __future__ import annotations

import torch

from whynet.core import check_inputs


def check_images(x: object, name: str, channels: int | None) -> torch.Tensor:
    """A float (B, C, H, W) batch, with ``channels`` channels when given."""
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise TypeError(
            f"{name}: this MaskExplainer has modality='image' and needs float "
            f"images (B, C, H, W); got an integer tensor {tuple(x.shape)} "
            "(token ids need modality='sequence')"
        )
    x = check_inputs(x, name=name, ndim=4)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} have {x.shape[1]} channels; the explainer was trained on {channels}"
        )
    return x


def check_tokens(x: object, name: str, max_length: int | None) -> torch.Tensor:
    """Integer (B, T) token ids: none empty, padding (id 0) only trailing, no sequence longer
    than ``max_length`` real tokens when given."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        raise TypeError(
            f"{name}: this MaskExplainer has modality='sequence' and needs integer "
            f"token ids (B, T); got a float tensor {tuple(x.shape)} "
            "(images need modality='image')"
        )
    x = check_inputs(x, name=name, ndim=2, floating=False)
    if x.shape[1] == 0:
        raise ValueError(f"{name} are empty sequences (length 0)")
    valid = x != 0
    lengths = valid.sum(1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"{name} row {row} is an empty sequence (all padding, id 0)")
    # padding must only trail: position t valid implies t < length
    prefix = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    if not bool((prefix == valid).all()):
        row = int((prefix != valid).any(1).nonzero()[0])
        raise ValueError(
            f"{name} row {row} has padding (id 0) before a real token; padding must only trail"
        )
    if max_length is not None and int(lengths.max()) > max_length:
        raise ValueError(
            f"{name} contain a sequence of {int(lengths.max())} tokens, longer "
            f"than any seen in training ({max_length}); refit on longer "
            "sequences or truncate"
        )
    return x


def check_labels(labels: torch.Tensor | None, n: int | None, task: str) -> None:
    """Training labels: a tensor, one per input; integer classes for classification (their
    range is checked per batch against the model's output width)."""
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if task == "classification":
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels must hold integer class indices, got dtype {labels.dtype} "
                "(pass labels.long() if the values are whole numbers)"
            )
        if labels.dim() != 1:
            raise ValueError(f"labels must be one class per input, got shape {tuple(labels.shape)}")
    if n is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} inputs (pass one label per input)")
