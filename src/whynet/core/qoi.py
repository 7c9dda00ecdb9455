"""Quantities of interest (QoI): what scalar per input we explain (Leino et al. 2018, Sec. 2).

A QoI maps the model's output (pre-softmax logits: softmax saturation kills gradients) to one
value per input. QoIs that depend on the input being explained (``MaxClass``) are *bound* to the
unperturbed input first (:meth:`QoI.bind`), so the class never changes along a path.

Rows: when inputs are expanded by a distribution of interest, ``rows[i]`` says which original
input row ``i`` belongs to; per-input targets are indexed with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from whynet.core.validation import check_classes

ClassSpec = int | Sequence[int] | torch.Tensor


class QoI:
    """Base class: ``qoi(output, rows, activation) -> (B,)``."""

    #: internal layer whose activation this QoI reads (None: it reads the model output)
    layer: str | None = None
    #: whether it reads the model's *raw* output (a user callable: a tuple, a ModelOutput...)
    #: rather than the prediction tensor chosen by ``output=``
    raw: bool = False

    def bind(self, output: torch.Tensor) -> QoI:
        """Fix anything that depends on the unperturbed inputs' output (default: nothing)."""
        self.validate(output)
        return self

    def validate(self, output: torch.Tensor) -> None:
        """Check the QoI fits a model output (e.g. class indices in range)."""

    def value(
        self,
        output: torch.Tensor,
        rows: torch.Tensor | None = None,
        activation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        output: torch.Tensor | None,
        rows: torch.Tensor | None = None,
        activation: torch.Tensor | None = None,
        *,
        raw: object = None,
    ) -> torch.Tensor:
        """The QoI per row. ``output`` is the prediction tensor (``output=``'s choice), ``raw``
        what the model returned; a :attr:`raw` QoI reads ``raw`` when it is given."""
        seen = raw if (self.raw and raw is not None) else output
        if seen is None:
            raise TypeError(f"{self!r} needs the model's prediction tensor; pass output=")
        q = self.value(seen, rows, activation)  # type: ignore[arg-type]
        n = _rows(seen) if activation is None else activation.shape[0]
        if not isinstance(q, torch.Tensor) or q.shape != (n,):
            shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise ValueError(f"{self!r} must return one value per input, shape ({n},); got {shape}")
        return q

    # QoIs are linear in the output where it makes sense: Comparative(a, b) == Class(a) - Class(b)
    def __add__(self, other: QoI) -> QoI:
        return Linear([(1.0, self), (1.0, as_qoi(other))])

    def __sub__(self, other: QoI) -> QoI:
        return Linear([(1.0, self), (-1.0, as_qoi(other))])

    def __mul__(self, scale: float) -> QoI:
        return Linear([(float(scale), self)])

    __rmul__ = __mul__

    def __neg__(self) -> QoI:
        return Linear([(-1.0, self)])


def _rows(output: object) -> int:
    """Batch size of a (raw) model output: the first dimension of its first tensor."""
    if isinstance(output, torch.Tensor):
        return int(output.shape[0])
    values = output.values() if isinstance(output, dict) else output
    if hasattr(output, "to_tuple"):
        values = output.to_tuple()  # type: ignore[attr-defined]
    for v in values if isinstance(values, (tuple, list)) else list(values):  # type: ignore[call-overload]
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise TypeError(f"model output of type {type(output).__name__} holds no tensor")


def _class_tensor(spec: ClassSpec) -> torch.Tensor:
    t = torch.as_tensor(spec, dtype=torch.long)
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(f"class must be an int, a list of ints or a (B,) tensor; got {spec!r}")
    return t


def _select_mean(
    output: torch.Tensor, classes: torch.Tensor, per_input: bool, rows: torch.Tensor | None
) -> torch.Tensor:
    if output.dim() != 2:
        raise ValueError(
            f"class QoIs need a (batch, classes) output, got shape {tuple(output.shape)}"
        )
    if per_input:
        idx = classes.to(output.device)
        idx = idx if rows is None else idx[rows.to(idx.device)]
        if idx.shape[0] != output.shape[0]:
            raise ValueError(f"{idx.shape[0]} per-input targets for {output.shape[0]} outputs")
        return output.gather(1, idx[:, None]).squeeze(1)
    return output[:, classes.to(output.device)].mean(1)


class Class(QoI):
    """The output for class ``c``.

    ``c`` is an int, a list of ints (their outputs averaged) or a ``(B,)`` tensor of one class
    per input.
    """

    def __init__(self, c: ClassSpec) -> None:
        self.per_input = isinstance(c, torch.Tensor) and c.dim() == 1
        self.classes = _class_tensor(c).reshape(-1)

    def validate(self, output: torch.Tensor) -> None:
        check_classes(self.classes, output.shape[-1])

    def value(self, output, rows=None, activation=None):  # type: ignore[no-untyped-def]
        return _select_mean(output, self.classes, self.per_input, rows)

    def __repr__(self) -> str:
        return f"Class({self.classes.tolist() if self.classes.numel() > 1 else int(self.classes)})"


class Comparative(QoI):
    """``y[c1] - y[c2]``: what separates class ``c1`` from ``c2``; a side may be a list (mean)."""

    def __init__(self, c1: ClassSpec, c2: ClassSpec) -> None:
        self.a, self.b = Class(c1), Class(c2)

    def validate(self, output: torch.Tensor) -> None:
        self.a.validate(output)
        self.b.validate(output)

    def value(self, output, rows=None, activation=None):  # type: ignore[no-untyped-def]
        return self.a.value(output, rows) - self.b.value(output, rows)

    def __repr__(self) -> str:
        return f"Comparative({self.a!r}, {self.b!r})"


class MaxClass(QoI):
    """The output of the class the model predicts for the *unperturbed* input.

    Must be bound before use; binding fixes one class per input so points along a path or in
    a Gaussian ball are all explained for the same class.
    """

    def bind(self, output: torch.Tensor) -> QoI:
        return Class(output.argmax(-1).detach())

    def value(self, output, rows=None, activation=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("MaxClass must be bound to the unperturbed output first (qoi.bind)")

    def __repr__(self) -> str:
        return "MaxClass()"


class Channel(QoI):
    """An internal neuron's activation at ``layer``, summed over its positions.

    ``dim`` is the layer's neuron axis (:func:`whynet.core.layout.neuron_dim`): 1 for a
    ``(B, C, ...)`` activation (``act[:, c].sum()`` per input; ``act[:, c]`` for ``(B, C)``),
    2 for a ``(B, T, D)`` token layer (hidden unit ``c`` summed over tokens). Used to interpret
    what a neuron responds to.
    """

    def __init__(self, layer: str, c: int, dim: int = 1) -> None:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"channel must be an int, got {type(c).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int (the neuron axis), got {dim!r}")
        self.layer = layer
        self.c = c
        self.dim = dim

    def check_channel(self, activation: torch.Tensor) -> None:
        n = activation.shape[self.dim] if activation.dim() > self.dim else 0
        if not 0 <= self.c < n:
            unit = "hidden units" if self.dim > 1 else "channels"
            raise ValueError(
                f"channel {self.c} out of range for layer {self.layer!r} "
                f"with {n} {unit} (shape {tuple(activation.shape)})"
            )

    def value(self, output, rows=None, activation=None):  # type: ignore[no-untyped-def]
        if activation is None:
            raise ValueError(f"Channel QoI needs the activation of layer {self.layer!r}")
        self.check_channel(activation)
        return activation.select(self.dim, self.c).reshape(activation.shape[0], -1).sum(1)

    def __repr__(self) -> str:
        extra = "" if self.dim == 1 else f", dim={self.dim}"
        return f"Channel({self.layer!r}, {self.c}{extra})"


class Function(QoI):
    """Any callable ``raw model output -> (B,)``: it receives what the model returned (a
    tensor, a tuple, an HF ``ModelOutput``), so it can read any of several outputs."""

    raw = True

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn

    def value(self, output, rows=None, activation=None):  # type: ignore[no-untyped-def]
        return self.fn(output)

    def __repr__(self) -> str:
        return f"Function({getattr(self.fn, '__name__', 'fn')})"


class Linear(QoI):
    """A weighted sum of QoIs reading the model output."""

    def __init__(self, terms: list[tuple[float, QoI]]) -> None:
        if any(q.layer is not None for _, q in terms):
            raise ValueError("combinations of Channel QoIs are not supported")
        self.terms = terms

    def bind(self, output: torch.Tensor) -> QoI:
        return Linear([(w, q.bind(output)) for w, q in self.terms])

    def validate(self, output: torch.Tensor) -> None:
        for _, q in self.terms:
            q.validate(output)

    @property
    def raw(self) -> bool:  # type: ignore[override]
        return any(q.raw for _, q in self.terms)

    def __call__(  # type: ignore[override]
        self,
        output: torch.Tensor | None,
        rows: torch.Tensor | None = None,
        activation: torch.Tensor | None = None,
        *,
        raw: object = None,
    ) -> torch.Tensor:
        # each term sees what it reads: the prediction tensor, or the raw output for callables
        return sum(w * q(output, rows, raw=raw) for w, q in self.terms)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}*{q!r}" for w, q in self.terms)


def as_qoi(spec: QoI | ClassSpec | Callable[[torch.Tensor], torch.Tensor] | None) -> QoI:
    """Coerce a user value to a QoI: None -> MaxClass, int/list/tensor -> Class, callable."""
    if spec is None:
        return MaxClass()
    if isinstance(spec, QoI):
        return spec
    if isinstance(spec, (int, list, tuple, torch.Tensor)) and not isinstance(spec, bool):
        return Class(spec)
    if callable(spec):
        return Function(spec)
    raise TypeError(f"cannot use {type(spec).__name__} as a quantity of interest")
