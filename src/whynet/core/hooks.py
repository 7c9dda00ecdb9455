"""The one place whynet registers hooks.

Every hook goes through :func:`hooked`, which keeps the handles it registered and removes them
by handle in ``finally`` — even when the model raises mid-forward. Nothing is removed by
"level" or by clearing a module's hook dicts, so hooks that users or other libraries installed
are left alone.

In-place operations: a forward hook that returns a tensor replaces the module's output. The
capture and gradient hooks here hand downstream modules a *clone* of the tensor they keep, so an
in-place ReLU after the hooked layer modifies the clone, never the captured value.

Reused modules: a module called more than once per forward produces one entry per call in
:class:`Capture`. Intervening on, or taking gradients at, such a module is ambiguous and raises
``ValueError`` naming the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
from torch.utils.hooks import RemovableHandle

from whynet.core.layers import resolve_layer

HookKind = Literal["forward", "forward_pre", "full_backward"]
Registration = tuple[nn.Module, HookKind, Callable[..., Any]]


@contextmanager
def hooked(registrations: Sequence[Registration]) -> Iterator[list[RemovableHandle]]:
    """Register hooks for the duration of the block and remove them by handle afterwards."""
    handles: list[RemovableHandle] = []
    try:
        for module, kind, fn in registrations:
            if kind == "forward":
                handles.append(module.register_forward_hook(fn))
            elif kind == "forward_pre":
                handles.append(module.register_forward_pre_hook(fn))
            elif kind == "full_backward":
                handles.append(module.register_full_backward_hook(fn))
            else:
                raise ValueError(f"unknown hook kind {kind!r}")
        yield handles
    finally:
        for h in handles:
            h.remove()


def _first_tensor_key(output: Mapping[str, Any]) -> str | None:
    for key, value in output.items():
        if isinstance(value, torch.Tensor):
            return str(key)
    return None


def primary(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Split a module output into its main tensor and a function that rebuilds the output.

    Recurrent layers return ``(output, hidden)`` and HF blocks a tuple or a ``ModelOutput``
    (``last_hidden_state`` first); we explain the first tensor and pass the rest on.
    """
    if isinstance(output, torch.Tensor):
        return output, lambda t: t
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        rest = output[1:]
        return output[0], lambda t: (t, *rest)
    if isinstance(output, Mapping):
        key = _first_tensor_key(output)
        if key is not None:

            def rebuild(t: torch.Tensor) -> Any:
                new = copy.copy(output)  # a ModelOutput keeps its type and other fields
                new[key] = t  # type: ignore[index]
                return new

            return output[key], rebuild
    raise TypeError(f"layer output of type {type(output).__name__} has no tensor to explain")


def unpack(output: Any, layer: str = "layer") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one output unpacker: ``(tensor, lengths)`` of a module's output or input.

    A tensor is itself; a tuple/list is its first element (recurrent layers return
    ``(output, hidden)``); a mapping / HF ``ModelOutput`` is its first tensor entry
    (``last_hidden_state``); a ``PackedSequence`` is padded batch-first and its ``lengths``
    come back so that callers can exclude the padding. Lengths are None otherwise.
    """
    if isinstance(output, PackedSequence):
        padded, lengths = pad_packed_sequence(output, batch_first=True)
        return padded, lengths
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, (tuple, list)) and output:
        return unpack(output[0], layer)
    if isinstance(output, Mapping):
        key = _first_tensor_key(output)
        if key is not None:
            return output[key], None
    raise TypeError(
        f"layer {layer!r} returned {type(output).__name__}; expected a tensor, "
        "a tuple or mapping (ModelOutput) holding one, or a PackedSequence"
    )


def ran_twice(layer: str) -> None:
    """Raise the error for a layer that ran more than once where one call is needed."""
    raise ValueError(
        f"layer {layer!r} ran more than once in one forward pass (a reused module); "
        "capture it to see every call, or choose a layer that runs once"
    )


class Capture:
    """Activations recorded at named layers, one entry per call."""

    def __init__(self, layers: Sequence[str], inputs: Sequence[str] = ()) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        #: per call, the valid lengths of a ``PackedSequence`` output (None otherwise)
        self.lengths: dict[str, list[torch.Tensor | None]] = {name: [] for name in layers}
        #: the first positional input of the ``inputs`` layers, one entry per call
        self.input_calls: dict[str, list[torch.Tensor]] = {name: [] for name in inputs}

    @staticmethod
    def _one(calls: list[torch.Tensor], layer: str, what: str) -> torch.Tensor:
        if not calls:
            raise ValueError(f"layer {layer!r} did not run in the forward pass")
        if len(calls) > 1:
            raise ValueError(f"layer {layer!r} ran {len(calls)} times; use .{what}[{layer!r}]")
        return calls[0]

    def __getitem__(self, layer: str) -> torch.Tensor:
        return self._one(self.calls[layer], layer, "calls")

    def input(self, layer: str) -> torch.Tensor:
        """The input of ``layer`` (captured with ``inputs=[layer]``) of its one call."""
        return self._one(self.input_calls[layer], layer, "input_calls")

    def length(self, layer: str) -> torch.Tensor | None:
        """Valid lengths of ``layer``'s one call when it returned a ``PackedSequence``."""
        self[layer]  # the same errors as for the values
        return self.lengths[layer][0]

    def check_ran(self) -> None:
        """Raise if a captured layer never ran."""
        for name, calls in (*self.calls.items(), *self.input_calls.items()):
            if not calls:
                raise ValueError(
                    f"layer {name!r} did not run in the forward pass; "
                    "it cannot be explained with this model/input"
                )

    def check_once(self) -> None:
        """Raise if a captured layer did not run exactly once (a reused module)."""
        self.check_ran()
        for name, calls in (*self.calls.items(), *self.input_calls.items()):
            if len(calls) > 1:
                raise ValueError(
                    f"layer {name!r} ran {len(calls)} times in one forward pass "
                    "(a reused module); choose a layer that runs once"
                )


def _capture_hook(
    store: list[torch.Tensor], lengths: list[torch.Tensor | None], keep_graph: bool, layer: str
) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if keep_graph:
            tensor, rebuild = primary(output)
            store.append(tensor)
            lengths.append(None)
            return rebuild(tensor.clone())  # downstream in-place ops hit the clone
        tensor, length = unpack(output, layer)
        store.append(tensor.detach().clone())  # a later in-place op must not change it
        lengths.append(length)
        return None

    return hook


def _input_hook(store: list[torch.Tensor], layer: str) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any) -> None:
        if not args:
            raise TypeError(f"layer {layer!r} was called without a positional input")
        store.append(unpack(args[0], layer)[0].detach())

    return hook


@contextmanager
def capture(
    model: nn.Module,
    layers: str | Sequence[str],
    *,
    keep_graph: bool = False,
    inputs: str | Sequence[str] = (),
) -> Iterator[Capture]:
    """Record the outputs of ``layers`` (and the inputs of ``inputs``) during forwards run
    inside the block.

    Parameters
    ----------
    layers : str or sequence of str
        Dotted module paths whose outputs are recorded (unpacked by :func:`unpack`).
    keep_graph : bool
        Keep the autograd graph (to differentiate through the captured tensors); otherwise
        detached copies are stored.
    inputs : str or sequence of str
        Dotted module paths whose first positional *input* is recorded (Captum's
        ``attribute_to_layer_input``; representer points read the head's input).

    Examples
    --------
    >>> with capture(model, ["features.3", "head"]) as cap:
    ...     model(x)
    >>> cap["features.3"].shape
    """
    # a name given twice is hooked once (else every call would be recorded twice)
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    in_names = [inputs] if isinstance(inputs, str) else list(dict.fromkeys(inputs))
    cap = Capture(names, in_names)
    regs: list[Registration] = [
        (
            resolve_layer(model, n),
            "forward",
            _capture_hook(cap.calls[n], cap.lengths[n], keep_graph, n),
        )
        for n in names
    ]
    regs += [
        (resolve_layer(model, n), "forward_pre", _input_hook(cap.input_calls[n], n))
        for n in in_names
    ]
    with hooked(regs):
        yield cap


def replace_hook(
    layer: str, value: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], seen: list[int]
) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        seen.append(1)
        if len(seen) > 1:
            ran_twice(layer)
        tensor, rebuild = primary(output)
        new = value(tensor) if callable(value) else value
        if not isinstance(new, torch.Tensor):
            raise TypeError(
                f"intervention at {layer!r} must give a tensor, got {type(new).__name__}"
            )
        if new.shape != tensor.shape:
            try:
                new = new.expand_as(tensor)
            except RuntimeError:
                raise ValueError(
                    f"intervention at {layer!r}: replacement of shape "
                    f"{tuple(new.shape)} does not match the layer output "
                    f"{tuple(tensor.shape)}"
                ) from None
        return rebuild(new.to(dtype=tensor.dtype, device=tensor.device).clone())

    return hook


@contextmanager
def intervene(
    model: nn.Module,
    replacements: Mapping[str, torch.Tensor | Callable[[torch.Tensor], torch.Tensor]],
) -> Iterator[None]:
    """Replace layer outputs during forwards run inside the block.

    ``replacements`` maps a layer name to a tensor (broadcast to the output's shape) or to a
    function of the original output. A layer that runs twice raises ``ValueError``.
    """
    seen: dict[str, list[int]] = {name: [] for name in replacements}

    def new_forward(module: nn.Module, args: Any) -> None:  # calls are counted per forward
        for calls in seen.values():
            calls.clear()

    regs: list[Registration] = [(model, "forward_pre", new_forward)]
    regs += [
        (resolve_layer(model, name), "forward", replace_hook(name, value, seen[name]))
        for name, value in replacements.items()
    ]
    with hooked(regs):
        yield


@contextmanager
def record_outputs(model: nn.Module, layer: str) -> Iterator[list[Any]]:
    """Keep ``layer``'s raw outputs (as the module returned them, one entry per call) during
    forwards run inside the block; the cut (:mod:`whynet.core.cut`) checks with it that the
    layer runs once and returns a plain tensor."""
    seen: list[Any] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        seen.append(output)

    with hooked([(resolve_layer(model, layer), "forward", hook)]):
        yield seen
