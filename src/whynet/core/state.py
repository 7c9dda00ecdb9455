"""Declared fitted state and its one persistence (torchmetrics' ``add_state``, scikit-learn's
``check_is_fitted(attributes=...)``).

A fitted explainer declares, in ``_fitted_state``, the attributes ``fit`` produces (names end
in ``_``) and what each holds. From the declaration alone core

- checks the explainer is fitted (every required name present),
- assigns the state all at once at the end of ``fit`` (:meth:`FittedMixin._set_fitted`), so a
  ``fit`` that raises half-way leaves the object unfitted,
- writes and reads it: one safetensors file with JSON metadata, atomic, versioned, never
  pickled (:meth:`FittedMixin.save`, :meth:`FittedMixin.load`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from whynet.core.data import DataLike, data_length, iter_batches
from whynet.core.explainer import NotFittedError
from whynet.core.explanation import load_tensors, save_tensors
from whynet.core.model import model_device, model_dtype
from whynet.core.params import decode_params, encode_params


@dataclass(frozen=True)
class State:
    """What a fitted attribute holds.

    ``kind``: ``"tensor"``, ``"tensors"`` (a dict of name -> tensor), ``"json"`` (numbers,
    strings, lists, dicts) or ``"module"`` (an ``nn.Module`` rebuilt by ``build(config)`` from
    ``config(module)``, then loaded from its state dict). ``optional``: may be None / absent.
    ``device``: tensors go to the model's device on load (False: stay on the CPU, e.g. large
    feature matrices that may be memory-mapped). ``cast``: a module is cast to the model's
    dtype on load (False: it keeps the dtype it was saved in, e.g. float32 embedders beside a
    float64 model).
    """

    kind: str = "tensor"
    optional: bool = False
    device: bool = True
    cast: bool = True
    config: Callable[[nn.Module], dict[str, Any]] | None = None
    build: Callable[[dict[str, Any]], nn.Module] | None = None


def model_fingerprint(model: nn.Module, extra: str = "") -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(data: DataLike, labels: torch.Tensor | None, batch_size: int) -> str:
    """sha256 over the data length and the first batch (inputs and labels).

    Cheap on purpose (one batch): it guards against reusing a cache for another data set of
    the same model, not against edits deep inside the same data set.
    """
    h = hashlib.sha256(str(data_length(data)).encode())
    for x, y in iter_batches(data, labels, batch_size=batch_size):
        for key, t in [("", x)] if isinstance(x, torch.Tensor) else sorted(x.items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if y is not None:
            h.update(y.detach().cpu().contiguous().numpy().tobytes())
        break
    return h.hexdigest()


def _build_checked(
    spec: State, config: Any, weights: dict[str, torch.Tensor], where: str, name: str
) -> nn.Module:
    """Build a saved module, first on the meta device (no memory): a config whose parameter
    shapes differ from the tensors the file holds (an edited or crafted file asking for a huge
    network) is refused before anything is allocated."""
    assert spec.build is not None
    if not isinstance(config, dict):
        raise ValueError(f"{where} has a corrupt config for fitted state {name!r}")
    try:
        with torch.device("meta"):
            probe = spec.build(config)
        want = {k: tuple(t.shape) for k, t in probe.state_dict().items()}
    except Exception as e:  # a config the builder cannot use
        raise ValueError(f"{where} has a corrupt config for fitted state {name!r} ({e})") from None
    have = {k: tuple(t.shape) for k, t in weights.items()}
    if want != have:
        bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:3]
        raise ValueError(
            f"{where}: the config of fitted state {name!r} does not match its tensors "
            f"({', '.join(f'{k}: {want.get(k)} vs {have.get(k)}' for k in bad)})"
        )
    return spec.build(config)


class FittedState:
    """Declared fitted state: checked, reset and assigned at once (``fit(data) -> self``).

    For fitted parts that are saved with their owner (a per-layer clusterer inside a
    surrogate); explainers use :class:`FittedMixin`, which adds the files.
    """

    #: attribute name -> :class:`State` (names end in ``_``)
    _fitted_state: ClassVar[dict[str, State]] = {}

    # -- fitted or not -----------------------------------------------------------------------

    def check_is_fitted(self) -> None:
        missing = [
            name
            for name, spec in self._fitted_state.items()
            if not spec.optional and name not in vars(self)
        ]
        if not self._fitted_state or missing:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call .fit(data)")

    def _check_ready(self) -> None:
        self.check_is_fitted()

    def _reset_fitted(self) -> None:
        """Forget any earlier fit (a refit starts from scratch)."""
        for name in self._fitted_state:
            vars(self).pop(name, None)

    def _set_fitted(self, **state: Any) -> None:
        """Assign the whole fitted state at once (call at the very end of ``fit``)."""
        unknown = sorted(set(state) - set(self._fitted_state))
        if unknown:
            raise AttributeError(f"{type(self).__name__} does not declare fitted state {unknown}")
        missing = [
            n for n, spec in self._fitted_state.items() if n not in state and not spec.optional
        ]
        if missing:
            raise AttributeError(f"{type(self).__name__}.fit did not produce {missing}")
        self._reset_fitted()
        for name, spec in self._fitted_state.items():
            if name in state or spec.optional:  # an optional entry not given is None
                setattr(self, name, state.get(name))


class FittedMixin(FittedState):
    """A fitted explainer: declared state (:class:`FittedState`) plus one persistence."""

    #: the file format name and version of :meth:`save`
    _format: ClassVar[str] = ""
    _format_version: ClassVar[int] = 1
    #: ``load`` refuses a model whose weights differ from the fitted one (unless strict=False)
    _check_fingerprint: ClassVar[bool] = False

    model: nn.Module

    def _fingerprint(self) -> str:
        return model_fingerprint(self.model)

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the settings and the fitted state to one safetensors file (atomically)."""
        self.check_is_fitted()
        tensors: dict[str, torch.Tensor] = {}
        state: dict[str, Any] = {}
        for name, spec in self._fitted_state.items():
            value = getattr(self, name, None)
            if value is None:
                state[name] = {"none": True}
            elif spec.kind == "tensor":
                tensors[f"state.{name}"] = value
                state[name] = {"tensor": True}
            elif spec.kind == "tensors":
                for key, t in value.items():
                    tensors[f"state.{name}.{key}"] = t
                state[name] = {"keys": list(value)}
            elif spec.kind == "module":
                assert spec.config is not None
                for key, t in value.state_dict().items():
                    tensors[f"state.{name}.{key}"] = t
                state[name] = {"config": spec.config(value), "keys": list(value.state_dict())}
            else:
                state[name] = {"json": value}
        params = self.get_params()  # type: ignore[attr-defined]
        params.pop("progress", None)
        meta = {
            "params": encode_params(params),
            "state": state,
            "model_fingerprint": self._fingerprint(),
        }
        return save_tensors(path, tensors, meta, self._format, self._format_version)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: nn.Module,
        *,
        strict: bool = True,
        **overrides: Any,
    ) -> Any:
        """Rebuild a saved explainer for ``model``; never unpickles anything.

        ``overrides`` replace saved settings (runtime ones such as ``batch_size`` or
        ``progress``, and those a file cannot hold, such as callables). With ``strict`` and a
        method that checks it, the model's weights must be those it was fitted with.
        """
        tensors, meta = load_tensors(path, cls._format, cls._format_version)
        try:
            saved, state = meta["params"], meta["state"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{path} has no declared parameters and state in its metadata: it was written "
                f"by an older whynet (before {cls._format} format version "
                f"{cls._format_version}); fit again and save"
            ) from None
        if not isinstance(saved, dict):
            raise ValueError(f"{path} has corrupt metadata: 'params' must be a map")
        self = cls(model, **decode_params(saved, overrides, str(path)))  # type: ignore[call-arg]
        if (
            strict
            and cls._check_fingerprint
            and self._fingerprint() != meta.get("model_fingerprint")
        ):
            raise ValueError(
                f"{path} was fitted on a model with different weights; pass "
                "strict=False to load it anyway"
            )
        if not isinstance(state, dict) or not isinstance(saved, dict):
            raise ValueError(f"{path} has corrupt metadata: 'params' and 'state' must be maps")
        values: dict[str, Any] = {}
        dev, dtype = model_device(model), model_dtype(model)
        for name, spec in cls._fitted_state.items():
            entry = state.get(name)
            if entry is not None and not isinstance(entry, dict):
                raise ValueError(f"{path} has a corrupt entry for fitted state {name!r}")
            if entry is None or entry.get("none"):
                if not spec.optional:
                    raise ValueError(f"{path} lacks the fitted state {name!r}")
                values[name] = None
                continue
            to = dev if spec.device else None
            try:
                if spec.kind in ("tensors", "module"):
                    keys = entry["keys"]
                    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                        raise TypeError("'keys' must be a list of names")
                if spec.kind == "tensor":
                    if entry.get("tensor") is not True:
                        raise TypeError("not a tensor entry")
                    values[name] = (
                        tensors[f"state.{name}"].to(to) if to else tensors[f"state.{name}"]
                    )
                elif spec.kind == "tensors":
                    values[name] = {
                        k: tensors[f"state.{name}.{k}"].to(to)
                        if to
                        else tensors[f"state.{name}.{k}"]
                        for k in entry["keys"]
                    }
                elif spec.kind == "module":
                    weights = {k: tensors[f"state.{name}.{k}"] for k in entry["keys"]}
                    net = _build_checked(spec, entry["config"], weights, f"{path}", name)
                    saved = next(
                        (t.dtype for t in weights.values() if t.is_floating_point()), dtype
                    )
                    # cast first: loading float64 weights into float32 parameters would round
                    net.to(device=dev, dtype=dtype if spec.cast else saved)
                    net.load_state_dict(weights)
                    values[name] = net.eval()
                else:
                    values[name] = entry["json"]
            except KeyError as e:
                raise ValueError(f"{path} lacks the tensor {e} of fitted state {name!r}") from None
            except (TypeError, AttributeError) as e:
                raise ValueError(
                    f"{path} has a corrupt entry for fitted state {name!r} ({e})"
                ) from None
        self._set_fitted(
            **{k: v for k, v in values.items() if v is not None or cls._fitted_state[k].optional}
        )
        self._check_loaded(str(path))
        return self

    def _check_loaded(self, where: str) -> None:
        """Method-specific checks of a loaded state against the model (shapes...)."""
