"""Input checks of the explanatory masks: images (B, C, H, W) or token ids (B, T) with trailing
padding (Phillips, Goh & Hodas 2019 mask pixels or token embeddings; the two need different
inputs, and an amortised explainer only knows the channels and lengths it was trained on).

A batch may be a tensor or a mapping for ``model(**batch)`` (an HF ``BatchEncoding``): then
its main tensor (``input_ids`` / ``pixel_values``) is checked, and padding comes from its
attention mask; plain id tensors use ``pad_id``. No pad id is assumed anywhere else.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from whynet.core import (
    as_inputs,
    batch_len,
    check_inputs,
    is_mapping,
    iter_batches,
    main_key,
    main_tensor,
    take,
    valid_tokens,
)
from whynet.core.inputs import check_keys


def check_batch(
    x: object,
    modality: str,
    name: str,
    model: nn.Module,
    *,
    channels: int | None,
    max_length: int | None,
    pad_id: int | None,
) -> Any:
    """Validate a batch for ``modality``: a tensor, or a mapping whose main tensor is checked."""
    if not is_mapping(x):
        if modality == "image":
            return check_images(x, name, channels)
        return check_tokens(x, name, max_length, pad_id)
    batch = as_inputs(x, name)
    check_keys(model, batch, name)
    assert isinstance(batch, dict)
    key = main_key(batch)
    label = f"{name}[{key!r}]"
    if modality == "image":
        check_images(batch[key], label, channels)
    else:
        check_tokens(batch[key], label, max_length, pad_id, valid=token_valid(batch, pad_id))
    return batch


def token_valid(x: Any, pad_id: int | None) -> torch.Tensor:
    """Real tokens (B, T) of a sequence batch: its attention mask, else ids != ``pad_id``,
    else every position."""
    valid = valid_tokens(x, pad_id=pad_id)
    if valid is None:
        ids = main_tensor(x)
        return torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device)
    return valid


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


def check_tokens(
    x: object,
    name: str,
    max_length: int | None,
    pad_id: int | None = 0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integer (B, T) token ids: none empty, padding (``valid`` False, else id ``pad_id``) only
    trailing, no sequence longer than ``max_length`` real tokens when given."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        raise TypeError(
            f"{name}: this MaskExplainer has modality='sequence' and needs integer "
            f"token ids (B, T); got a float tensor {tuple(x.shape)} "
            "(images need modality='image')"
        )
    x = check_inputs(x, name=name, ndim=2, floating=False)
    if x.shape[1] == 0:
        raise ValueError(f"{name} are empty sequences (length 0)")
    what = "the attention mask" if valid is not None else f"id {pad_id}"
    if valid is None:
        valid = token_valid(x, pad_id)
    lengths = valid.sum(1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"{name} row {row} is an empty sequence (all padding, {what})")
    # padding must only trail: position t valid implies t < length
    prefix = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    if not bool((prefix == valid).all()):
        row = int((prefix != valid).any(1).nonzero()[0])
        raise ValueError(
            f"{name} row {row} has padding ({what}) before a real token; padding must only trail"
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


def shuffled_batches(
    data: Any,
    labels: torch.Tensor | None,
    gen: torch.Generator,
    batch_size: int,
    need_labels: bool,
    device: torch.device,
    class_labels: bool = True,
) -> Generator[tuple[Any, torch.Tensor | None], None, None]:
    """One epoch of training batches in a shuffled, seeded order; every data form still goes
    through :func:`whynet.core.iter_batches` (tensors, mappings and Datasets are permuted with
    ``gen``, a DataLoader keeps its own order)."""
    if isinstance(data, torch.Tensor) or is_mapping(data):
        data = as_inputs(data, "train_data")
        perm = torch.randperm(batch_len(data), generator=gen)
        data = take(data, perm)
        labels = None if labels is None else labels[perm.to(labels.device)]
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        # the same permutation as for a tensor of the same examples
        n = len(data)  # type: ignore[arg-type]
        data = Subset(data, torch.randperm(n, generator=gen).tolist())
    yield from iter_batches(
        data,
        labels,
        batch_size=batch_size,
        need_labels=need_labels,
        device=device,
        class_labels=class_labels,
    )
