"""The one model pipeline: run a model over data in eval mode, without gradients, optionally
capturing named layers' outputs or inputs, streaming batch by batch with progress.

Every loop in whynet that runs a model over data (predictions for target resolution and
metrics, representer features, clustering activations, essence ablations, the zoo's accuracy)
is a call of :func:`run_model` or :func:`predict_logits`; results are gathered with one running
:class:`Accumulator` (torchmetrics' update/compute split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from whynet.core.data import DataLike, data_length, iter_batches
from whynet.core.hooks import capture, intervene
from whynet.core.inputs import ModelInputs, batch_len, forward
from whynet.core.model import OutputSpec, frozen_eval, model_device, select_output
from whynet.core.progress import progress as progress_bar
from whynet.core.validation import check_batch_size, check_classes

Replacement = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Batch:
    """One batch of :func:`run_model`: the data, the model's prediction and what was captured."""

    #: index of the batch's first example in the data order
    start: int
    #: the batch as given to the model (a tensor or a mapping of tensors)
    inputs: ModelInputs
    labels: torch.Tensor | None
    #: the model's prediction tensor (see :func:`~whynet.core.model.select_output`)
    output: torch.Tensor
    #: captured layer outputs by name (unpacked: a ``PackedSequence`` comes back padded)
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    #: valid lengths of layers that returned a ``PackedSequence`` (None for others)
    lengths: dict[str, torch.Tensor | None] = field(default_factory=dict)
    #: captured layer inputs by name
    layer_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return batch_len(self.inputs)


def run_model(
    model: nn.Module,
    data: DataLike,
    labels: torch.Tensor | None = None,
    *,
    layers: Sequence[str] = (),
    inputs: Sequence[str] = (),
    replace: Mapping[str, Replacement] | None = None,
    batch_size: int = 256,
    need_labels: bool = False,
    device: torch.device | str | None = None,
    progress: bool | None = False,
    desc: str = "forward",
    forward_kwargs: Mapping[str, Any] | None = None,
    output: OutputSpec = None,
) -> Iterator[Batch]:
    """Yield a :class:`Batch` per batch of ``data``, in data order.

    The model runs under :func:`~whynet.core.model.frozen_eval` and ``torch.no_grad()`` for the
    whole walk (restored when the generator finishes or is closed); hooks live only while each
    forward runs. Every captured layer must run exactly once per forward.

    Parameters
    ----------
    data : DataLoader, Dataset or torch.Tensor
        Anything :func:`~whynet.core.data.iter_batches` takes.
    layers, inputs : sequence of str
        Layers whose outputs (``layers``) or first inputs (``inputs``) are captured.
    replace : mapping, optional
        Layer outputs replaced during the forward (:func:`~whynet.core.hooks.intervene`).
    batch_size : int
        Chunk size for tensors and datasets (a DataLoader keeps its own).
    device : optional
        Where batches go; default the model's device.
    progress : bool or None
        Progress bar (None: on a terminal; default off, as most callers are inner loops).
    output : int, str or callable, optional
        Which part of the model's raw output is the prediction
        (:func:`~whynet.core.model.select_output`).
    """
    check_batch_size(batch_size)
    device = model_device(model) if device is None else device
    n = data_length(data)
    total = None if n is None else -(-n // batch_size)
    batches = iter_batches(
        data, labels, batch_size=batch_size, need_labels=need_labels, device=device
    )
    kwargs = dict(forward_kwargs or {})
    start = 0
    with frozen_eval(model), torch.no_grad():
        for x, y in progress_bar(batches, total=total, desc=desc, enabled=progress):
            with (
                capture(model, list(layers), inputs=list(inputs)) as cap,
                intervene(model, dict(replace or {})),
            ):
                out = select_output(forward(model, x, **kwargs), output)
            cap.check_once()
            if y is not None and isinstance(out, torch.Tensor) and out.dim() == 2:
                check_classes(y, out.shape[1], name="label")  # labels are the model's classes
            yield Batch(
                start=start,
                inputs=x,
                labels=y,
                output=out,
                acts={name: cap[name] for name in cap.calls},
                lengths={name: cap.length(name) for name in cap.calls},
                layer_inputs={name: cap.input(name) for name in cap.input_calls},
            )
            start += batch_len(x)


def predict_logits(
    model: nn.Module,
    data: DataLike,
    batch_size: int = 256,
    *,
    replace: Mapping[str, Replacement] | None = None,
    progress: bool | None = False,
    desc: str = "predict",
    output: OutputSpec = None,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """The model's prediction tensor over all of ``data`` (eval mode, no gradients, chunked);
    ``output`` picks it from the raw output (:func:`~whynet.core.model.select_output`)."""
    acc = Accumulator()
    for b in run_model(
        model,
        data,
        replace=replace,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        forward_kwargs=forward_kwargs,
        output=output,
    ):
        acc.update(output=b.output)
    if acc.n == 0:
        raise ValueError("the data has no examples")
    return acc.compute()["output"]


class Accumulator:
    """The one running accumulator: ``update(**tensors)`` per batch, ``compute()`` at the end.

    ``reduce="cat"`` concatenates along the first dimension; ``"sum"`` keeps running float64
    sums over the first dimension (memory independent of the data size). ``n`` counts rows.
    Optional values (None) are allowed only if every update gives None for that name.
    """

    def __init__(self, reduce: Literal["cat", "sum"] = "cat") -> None:
        if reduce not in ("cat", "sum"):
            raise ValueError(f"reduce must be 'cat' or 'sum', got {reduce!r}")
        self.reduce = reduce
        self.n = 0
        self._parts: dict[str, list[torch.Tensor | None]] = {}
        self._sums: dict[str, torch.Tensor] = {}

    def update(self, **tensors: torch.Tensor | None) -> None:
        rows = None
        for name, t in tensors.items():
            if self.reduce == "sum":
                if t is None:
                    raise ValueError(f"cannot sum a missing value {name!r}")
                s = t.detach().to(torch.float64).sum(0)
                self._sums[name] = s if name not in self._sums else self._sums[name] + s
            else:
                self._parts.setdefault(name, []).append(None if t is None else t.detach())
            if t is not None and rows is None:
                rows = int(t.shape[0])
        self.n += rows or 0

    def compute(self) -> dict[str, Any]:
        """Concatenated tensors (``cat``; None where every update gave None) or the sums."""
        if self.reduce == "sum":
            return dict(self._sums)
        out: dict[str, Any] = {}
        for name, parts in self._parts.items():
            given = [p for p in parts if p is not None]
            if given and len(given) != len(parts):
                raise ValueError(f"{name!r} is missing in some batches but not in others")
            out[name] = torch.cat(given) if given else None
        return out
