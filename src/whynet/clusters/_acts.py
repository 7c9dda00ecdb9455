"""Streaming layer activations for clustering: capture, reduce to a fixed shape, cache on disk.

Each chosen layer's output is reduced per input to a fixed-shape float tensor:

- ``(B, C, H, W)`` (convolutional feature maps) are kept as they are (a convolutional
  autoencoder embeds them);
- ``(B, F)`` (flat layers) are kept;
- ``(B, T, H)`` (token sequences, batch first, e.g. a GRU's output) are mean-pooled over the
  *valid* tokens: those of a ``PackedSequence`` (its lengths), or, when the model's input is
  integer token ids ``(B, T)``, the positions whose id is not 0 (padding). If the time axis is
  axis 2 instead (a ``Conv1d`` output ``(B, C, T)`` over token ids) it is pooled there. Other
  3-D outputs are treated as ``(B, T, H)`` and averaged over axis 1.

Large training sets spill to float32 files on disk (``np.memmap``), so a 60k-point set of
conv feature maps never has to fit in memory twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from whynet.core import as_logits, frozen_eval, hooked, iter_batches, progress, resolve_layer
from whynet.core.data import data_length


def _main_tensor(output: Any, layer: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The explained tensor of a layer output and, for packed sequences, the lengths."""
    if isinstance(output, PackedSequence):
        padded, lengths = pad_packed_sequence(output, batch_first=True)
        return padded, lengths
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and output:
        return _main_tensor(output[0], layer)
    raise TypeError(
        f"layer {layer!r} returned {type(output).__name__}; expected a tensor, "
        "a tuple starting with one, or a PackedSequence"
    )


def reduce_activation(
    t: torch.Tensor, lengths: torch.Tensor | None, x: torch.Tensor, layer: str
) -> torch.Tensor:
    """Reduce a layer's output batch to ``(B, C, H, W)`` or ``(B, F)`` float32 (module doc)."""
    if not t.is_floating_point():
        raise TypeError(
            f"layer {layer!r} gives activations of dtype {t.dtype}; clustering needs "
            "floating activations (choose a layer after the embedding/cast)"
        )
    if t.dim() == 0 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"layer {layer!r} output of shape {tuple(t.shape)} has no batch "
            f"dimension matching the {x.shape[0]} inputs"
        )
    t = t.detach().float()
    if t.dim() == 1:
        return t[:, None]
    if t.dim() in (2, 4):
        return t
    if t.dim() == 3:
        axis, mask = 1, None
        if lengths is not None:
            steps = torch.arange(t.shape[1], device=t.device)
            mask = steps[None, :] < lengths.to(t.device)[:, None]
        elif x.dim() == 2 and not x.is_floating_point():
            if t.shape[1] == x.shape[1]:
                mask = x != 0
            elif t.shape[2] == x.shape[1]:
                axis, mask = 2, x != 0
        if mask is None:
            return t.mean(dim=axis)
        m = mask.to(t.dtype).unsqueeze(3 - axis)  # (B, T, 1) or (B, 1, T)
        return (t * m).sum(dim=axis) / m.sum(dim=axis).clamp_min(1.0)
    return t.flatten(1)


class _Recorder:
    """Forward hooks that keep the (raw) output of each named layer for the current batch."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.modules = [resolve_layer(model, name) for name in self.layers]
        self.seen: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}

    def registrations(self) -> list[tuple[nn.Module, Any, Callable[..., Any]]]:
        def make(name: str) -> Callable[..., Any]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                t, lengths = _main_tensor(output, name)
                if not t.is_floating_point():  # fail here, before later layers choke on it
                    raise TypeError(
                        f"layer {name!r} gives activations of dtype {t.dtype}; "
                        "clustering needs floating activations (choose a layer "
                        "after the embedding/cast)"
                    )
                # clone: a downstream in-place op (ReLU(inplace=True)) must not change it
                self.seen.setdefault(name, []).append((t.detach().clone(), lengths))

            return hook

        return [(m, "forward", make(n)) for m, n in zip(self.modules, self.layers)]

    def take(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.layers:
            calls = self.seen.get(name, [])
            if not calls:
                raise ValueError(f"layer {name!r} did not run in the forward pass")
            if len(calls) > 1:
                raise ValueError(
                    f"layer {name!r} ran {len(calls)} times in one forward pass "
                    "(a reused module); choose a layer that runs once"
                )
            out[name] = reduce_activation(calls[0][0], calls[0][1], x, name)
        self.seen = {}
        return out


def stream_activations(
    model: nn.Module,
    layers: Sequence[str],
    data: Any,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 256,
    need_labels: bool = False,
    device: torch.device | None = None,
    show_progress: bool | None = None,
    desc: str = "activations",
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]]:
    """Yield ``(reduced activations per layer, model logits, labels)`` batch by batch.

    The model runs in eval mode with frozen parameters and no autograd; hooks live only while
    each forward runs.
    """
    rec = _Recorder(model, layers)
    n = data_length(data)
    total = None if n is None else -(-n // batch_size)
    batches = iter_batches(
        data, labels, batch_size=batch_size, need_labels=need_labels, device=device
    )
    with frozen_eval(model), torch.no_grad():
        for x, y in progress(batches, total=total, desc=desc, enabled=show_progress):
            with hooked(rec.registrations()):
                out = as_logits(model(x))
            yield rec.take(x), out.detach(), y


class ActivationStore:
    """Append-only float32 arrays, one per layer; spills to ``np.memmap`` files past a limit.

    Parameters
    ----------
    memory_limit : int
        Bytes kept in memory before everything moves to files in ``cache_dir``.
    cache_dir : path, optional
        Where the files go (a private temporary folder inside it); default the system temp dir.
    """

    def __init__(
        self, memory_limit: int = 1 << 30, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.memory_limit = memory_limit
        self.cache_dir = cache_dir
        self.chunks: dict[str, list[np.ndarray]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.rows: dict[str, int] = {}
        self.bytes = 0
        self.folder: Path | None = None
        self.files: dict[str, Any] = {}
        self.paths: dict[str, Path] = {}

    def append(self, name: str, batch: torch.Tensor) -> None:
        arr = np.ascontiguousarray(batch.cpu().numpy(), dtype=np.float32)
        shape = tuple(arr.shape[1:])
        if self.shapes.setdefault(name, shape) != shape:
            raise ValueError(
                f"layer {name!r} changed shape between batches: "
                f"{self.shapes[name]} then {shape} (pad sequences to one length?)"
            )
        self.rows[name] = self.rows.get(name, 0) + len(arr)
        if self.folder is not None:
            self._file(name).write(arr.tobytes())
            return
        self.chunks.setdefault(name, []).append(arr)
        self.bytes += arr.nbytes
        if self.bytes > self.memory_limit:
            self._spill()

    def _spill(self) -> None:
        base = None if self.cache_dir is None else str(self.cache_dir)
        if base is not None:
            os.makedirs(base, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="whynet-acts-", dir=base))
        for name, chunks in self.chunks.items():
            fh = self._file(name)
            for c in chunks:
                fh.write(c.tobytes())
        self.chunks = {}

    def _file(self, name: str) -> Any:
        if name not in self.files:
            assert self.folder is not None
            self.paths[name] = self.folder / f"layer{len(self.paths)}.f32"
            self.files[name] = open(self.paths[name], "wb")  # noqa: SIM115
        return self.files[name]

    def arrays(self) -> dict[str, np.ndarray]:
        """Each layer's rows as one float32 array (in memory or memory-mapped, read-only)."""
        out: dict[str, np.ndarray] = {}
        for name, shape in self.shapes.items():
            if self.folder is None:
                out[name] = np.concatenate(self.chunks.pop(name))  # free chunks as we go
            else:
                self.files[name].close()
                out[name] = np.memmap(
                    self.paths[name], dtype=np.float32, mode="r", shape=(self.rows[name], *shape)
                )
        return out

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def close(self) -> None:
        """Delete the cache files (arrays returned by :meth:`arrays` become invalid)."""
        for fh in self.files.values():
            fh.close()
        self.files = {}
        self.chunks = {}
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
