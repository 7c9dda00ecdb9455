"""One way to walk data: a DataLoader of ``(inputs, labels)``, a Dataset of pairs, or a tensor.

Every data argument in whynet (``fit``, dataset-wide explanations, metrics) goes through
:func:`iter_batches`, so all of them accept the same forms. Inputs may be a tensor or a mapping
of tensors (:mod:`whynet.core.inputs`): a DataLoader yielding dicts (the HuggingFace
convention: model inputs plus ``"labels"``), or a whole ``BatchEncoding`` with ``labels=``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from whynet.core.inputs import ModelInputs, as_inputs, batch_len, is_mapping, take, to_device
from whynet.core.validation import check_batch_size

DataLike = Any  # DataLoader | Dataset | torch.Tensor (kept loose for user containers)


#: keys under which a dict batch carries its labels (HF: "labels"; datasets often "label")
LABEL_KEYS = ("labels", "label")


def _split(batch: object, where: str) -> tuple[ModelInputs, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        x = batch[0]
        y = batch[1] if len(batch) >= 2 else None
        if not isinstance(x, torch.Tensor) and not is_mapping(x):
            raise TypeError(
                f"{where} yielded inputs of type {type(x).__name__}, expected a tensor "
                "or a mapping of tensors"
            )
        if y is not None and not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        return as_inputs(x, f"{where} inputs"), y
    if is_mapping(batch):
        assert isinstance(batch, Mapping)
        if "inputs" in batch:  # {"inputs": x, "labels": y}
            return _split((batch["inputs"], batch.get("labels")), where)
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        x = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        if not x:
            raise TypeError(f"{where} yielded a dict with labels but no model inputs")
        return _split((x, y), where)
    raise TypeError(
        f"{where} must yield (inputs, labels) pairs, input tensors or dicts of tensors "
        f"(HF style, labels under 'labels'), got {type(batch).__name__}"
    )


def _check_labels(y: torch.Tensor, n: int, where: str) -> None:
    """Class labels: one integer per input (float labels used to be truncated to ints)."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(
            f"{where} labels must be integer class indices, got dtype {y.dtype} "
            "(pass a long tensor, e.g. labels.long() if they are whole numbers)"
        )
    if y.dim() != 1 or len(y) != n:
        raise ValueError(
            f"{where} labels must have shape ({n},), one class index per input, "
            f"got {tuple(y.shape)}"
        )


def data_length(data: DataLike) -> int | None:
    """Number of examples if known without walking the data."""
    if isinstance(data, torch.Tensor):
        return int(data.shape[0])
    if is_mapping(data):
        return batch_len(as_inputs(data, "data"))
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
    class_labels: bool = True,
) -> Iterator[tuple[ModelInputs, torch.Tensor | None]]:
    """Yield ``(inputs, labels)`` batches from any supported data form, in order.

    Parameters
    ----------
    data : DataLoader, Dataset, torch.Tensor or mapping of tensors
        A loader yielding ``(inputs, labels)`` (or bare inputs, or HF-style dicts with
        ``"labels"``), a map-style dataset of such items, a tensor of inputs (first dimension =
        examples) or a mapping of such tensors (a tokenizer's ``BatchEncoding``).
    labels : torch.Tensor, optional
        Labels for a tensor ``data``; ignored otherwise (the loader/dataset carries them).
    batch_size : int
        Chunk size for tensors and datasets (a DataLoader keeps its own).
    need_labels : bool
        Raise ``ValueError`` if any batch comes without labels.
    class_labels : bool
        Labels are class indices (integer, one per input); ``False`` for regression targets.
    device : torch.device, optional
        Move batches there.
    """
    check_batch_size(batch_size)
    if isinstance(data, torch.Tensor) or is_mapping(data):
        whole = as_inputs(data, "data")
        n = batch_len(whole)
        if labels is not None and len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but data has {n} inputs")
        source: Any = (
            (
                take(whole, slice(i, i + batch_size)),
                None if labels is None else labels[i : i + batch_size],
            )
            for i in range(0, n, batch_size)
        )
        where = "tensor data"
    elif isinstance(data, DataLoader):
        source, where = data, "DataLoader"
    elif isinstance(data, Dataset):
        source = DataLoader(data, batch_size=batch_size, shuffle=False)
        where = "Dataset"
    else:
        raise TypeError(
            "data must be a torch DataLoader, a Dataset of (inputs, labels) pairs, a tensor "
            f"of inputs or a mapping of input tensors; got {type(data).__name__}"
        )
    for batch in source:
        x, y = _split(batch, where)
        if need_labels and y is None:
            raise ValueError(
                f"{where} gave a batch without labels, but labels are needed here "
                "(pass (inputs, labels) pairs or labels=...)"
            )
        if y is not None and class_labels:
            _check_labels(y, batch_len(x), where)
        if device is not None:
            x = to_device(x, device)
            y = None if y is None else y.to(device)
        yield x, y
