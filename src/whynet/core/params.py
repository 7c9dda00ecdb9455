"""Declared parameters (scikit-learn's ``_parameter_constraints`` / ``get_params``).

An explainer's parameters are the arguments of its ``__init__`` (``model`` excepted), stored
under the same names. Each class declares constraints for them; :func:`validate_params` checks
them all with one error format, and :func:`json_params` / :func:`decode_params` turn them into
JSON for an ``Explanation`` or a saved file and back.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Interval:
    """A number in an interval. ``kind`` is ``int`` (bools excluded) or ``float`` (ints allowed;
    NaN and infinities always rejected)."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind is int and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        lo_ok = self.low is None or (
            v >= self.low if self.closed in ("both", "left") else v > self.low
        )
        hi_ok = self.high is None or (
            v <= self.high if self.closed in ("both", "right") else v < self.high
        )
        return lo_ok and hi_ok

    def describe(self) -> str:
        what = "an int" if self.kind is int else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}")
        return what + (" " + " and ".join(parts) if parts else "")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def accepts(self, v: Any) -> bool:
        return any(v == o and type(v) is type(o) for o in self.values)

    def describe(self) -> str:
        return f"one of {self.values}"


@dataclass(frozen=True)
class Check:
    """Any predicate, with its description (``callable``, ``a dtype``...)."""

    fn: Callable[[Any], bool]
    description: str

    def accepts(self, v: Any) -> bool:
        return bool(self.fn(v))

    def describe(self) -> str:
        return self.description


CALLABLE = Check(callable, "callable")
DTYPE = Check(lambda v: v in (torch.float32, torch.float64), "torch.float32 or torch.float64")


@dataclass(frozen=True)
class Constraint:
    """Alternatives a parameter may satisfy (``None`` in the list allows None; a type allows its
    instances), the error to raise otherwise and an optional description for the message."""

    alternatives: tuple[Any, ...]
    error: type[Exception] = ValueError
    description: str | None = None

    def accepts(self, v: Any) -> bool:
        for alt in self.alternatives:
            if alt is None:
                if v is None:
                    return True
            elif isinstance(alt, type):
                if isinstance(v, alt) and not (alt is int and isinstance(v, bool)):
                    return True
            elif alt.accepts(v):
                return True
        return False

    def describe(self) -> str:
        if self.description is not None:
            return self.description
        words = [
            "None" if a is None else a.__name__ if isinstance(a, type) else a.describe()
            for a in self.alternatives
        ]
        return " or ".join(words)


def constraint(
    *alternatives: Any, error: type[Exception] = ValueError, desc: str | None = None
) -> Constraint:
    """Shorthand: ``constraint(Interval(float, 0, None, "neither"), None)``."""
    return Constraint(tuple(alternatives), error, desc)


def param_names(cls: type) -> list[str]:
    """The parameters of ``cls.__init__`` (``self``, ``model`` and ``*args/**kwargs`` excepted)."""
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    return [
        p.name
        for p in sig.parameters.values()
        if p.name not in ("self", "model")
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def validate_params(params: Mapping[str, Any], constraints: Mapping[str, Constraint]) -> None:
    """Raise the constraint's error naming the first parameter that violates its declaration."""
    for name, con in constraints.items():
        if name not in params:
            continue
        value = params[name]
        if not con.accepts(value):
            raise con.error(f"{name} must be {con.describe()}, got {value!r}")


def to_json(value: Any) -> tuple[bool, Any]:
    """``(True, json)`` for a value JSON can hold (dtypes encoded), ``(False, description)``
    for one it cannot (callables, modules, tensors, QoI objects...)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, repr(value))
    if isinstance(value, os.PathLike):
        return True, os.fspath(value)
    if isinstance(value, torch.dtype):
        return True, {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        items = [to_json(v) for v in value]
        if all(ok for ok, _ in items):
            return True, [v for _, v in items]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        enc = {k: to_json(v) for k, v in value.items()}
        if all(ok for ok, _ in enc.values()):
            return True, {"map": {k: v for k, (_, v) in enc.items()}}
    if isinstance(value, torch.Tensor):
        return False, "tensor"
    return False, getattr(value, "__name__", None) or repr(value)


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json` for the values it could encode."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"dtype"}:
            return _DTYPES[value["dtype"]]
        if set(value) == {"map"}:
            return {k: from_json(v) for k, v in value["map"].items()}
    return value


def json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters as plain JSON for an ``Explanation`` (readable, not for decoding)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        ok, enc = to_json(value)
        if ok and isinstance(value, torch.dtype):
            enc = str(value)
        elif ok and isinstance(enc, dict) and "map" in enc:
            enc = enc["map"]
        out[name] = enc
    return out


def encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for a saved file: ``{"value": json}`` or ``{"unsaved": what}``."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        ok, enc = to_json(value)
        out[name] = {"value": enc} if ok else {"unsaved": enc}
    return out


def decode_params(
    saved: Mapping[str, Any], overrides: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Constructor arguments from :func:`encode_params` plus ``overrides``; a parameter that
    could not be saved must be passed again (the message names it)."""
    out: dict[str, Any] = {}
    missing: list[str] = []
    for name, entry in saved.items():
        if name in overrides:
            continue
        if not isinstance(entry, Mapping) or not ({"value"} <= set(entry) or "unsaved" in entry):
            raise ValueError(f"{where} has a corrupt parameter entry {name!r}")
        if "unsaved" in entry:
            missing.append(f"{name} (was {entry['unsaved']})")
        else:
            out[name] = from_json(entry["value"])
    if missing:
        raise ValueError(
            f"{where} was saved with parameters that cannot be stored in a file: "
            f"{', '.join(missing)}; pass them again to load(..., name=value)"
        )
    out.update(overrides)
    return out
