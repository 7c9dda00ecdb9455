"""One way to walk data: a DataLoader of ``(inputs, labels)``, a Dataset of pairs, or a tensor.

Every data argument in whynet (``fit``, dataset-wide explanations, metrics) goes through
:func:`iter_batches`, so all of them accept the same three forms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from whynet.core.validation import check_batch_size

DataLike = Any  # DataLoader | Dataset | torch.Tensor (kept loose for user containers)


def _split(batch: object, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        x = batch[0]
        y = batch[1] if len(batch) >= 2 else None
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where} yielded inputs of type {type(x).__name__}, expected a tensor")
        if y is not None and not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        return x, y
    if isinstance(batch, dict) and "inputs" in batch:
        return _split((batch["inputs"], batch.get("labels")), where)
    raise TypeError(
        f"{where} must yield (inputs, labels) pairs or input tensors, got {type(batch).__name__}"
    )


def data_length(data: DataLike) -> int | None:
    """Number of examples if known without walking the data."""
    if isinstance(data, torch.Tensor):
        return int(data.shape[0])
    if isinstance(data, DataLoader):
        try:
            return len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
    try:
        return len(data)
    except TypeError:
        return None


def iter_batches(
    data: DataLike,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 256,
    need_labels: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(inputs, labels)`` batches from any supported data form, in order.

    Parameters
    ----------
    data : DataLoader, Dataset or torch.Tensor
        A loader yielding ``(inputs, labels)`` (or bare inputs), a map-style dataset of such
        pairs, or a tensor of inputs (first dimension = examples).
    labels : torch.Tensor, optional
        Labels for a tensor ``data``; ignored otherwise (the loader/dataset carries them).
    batch_size : int
        Chunk size for tensors and datasets (a DataLoader keeps its own).
    need_labels : bool
        Raise ``ValueError`` if any batch comes without labels.
    device : torch.device, optional
        Move batches there.
    """
    check_batch_size(batch_size)
    if isinstance(data, torch.Tensor):
        if labels is not None and len(labels) != len(data):
            raise ValueError(f"labels has {len(labels)} entries but data has {len(data)} inputs")
        source: Any = (
            (data[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
            for i in range(0, len(data), batch_size)
        )
        where = "tensor data"
    elif isinstance(data, DataLoader):
        source, where = data, "DataLoader"
    elif isinstance(data, Dataset):
        source = DataLoader(data, batch_size=batch_size, shuffle=False)
        where = "Dataset"
    else:
        raise TypeError(
            "data must be a torch DataLoader, a Dataset of (inputs, labels) pairs, "
            f"or a tensor of inputs; got {type(data).__name__}"
        )
    for batch in source:
        x, y = _split(batch, where)
        if need_labels and y is None:
            raise ValueError(
                f"{where} gave a batch without labels, but labels are needed here "
                "(pass (inputs, labels) pairs or labels=...)"
            )
        if device is not None:
            x = x.to(device)
            y = None if y is None else y.to(device)
        yield x, y
