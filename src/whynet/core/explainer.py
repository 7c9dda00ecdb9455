"""The explainer template: ``explain`` is written once, here; a method supplies its per-batch
computation (zennit's ``Attributor.__call__`` -> ``forward``, Captum's ``attribute`` ->
``_attribute``, pytorch-grad-cam's one override).

``Explainer.explain(inputs, target=None)``:

1. checks the explainer is ready (fitted explainers: :meth:`FittedMixin.check_is_fitted`);
2. validates the inputs (:meth:`Explainer._check_inputs`) and moves them to the model's device;
3. resolves the target once, with one policy for all methods (:func:`parse_target`);
4. chunks by ``batch_size`` with a progress bar, under :func:`~whynet.core.model.frozen_eval`,
   calling :meth:`Explainer._explain_batch` on each chunk;
5. assembles the :class:`~whynet.core.explanation.Explanation` with the parameters.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from whynet.core.explanation import Explanation
from whynet.core.inputs import (
    as_inputs,
    batch_len,
    check_keys,
    forward,
    is_mapping,
    main_key,
    take,
    to_device,
    valid_tokens,
)
from whynet.core.model import OutputSpec, frozen_eval, model_device, model_dtype, select_output
from whynet.core.params import Constraint, json_params, param_names, validate_params
from whynet.core.pipeline import Accumulator, predict_logits
from whynet.core.progress import progress as progress_bar
from whynet.core.validation import check_batch_size, check_classes, check_inputs

_PACKAGE = str(Path(__file__).resolve().parents[1])


def _raised_outside_whynet(e: BaseException) -> bool:
    """Whether ``e`` comes from the model or torch (its innermost frame is not whynet's)."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and not str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE)


class NotFittedError(ValueError, AttributeError):
    """A fitted explainer was used before ``fit`` (or after a ``fit`` that failed)."""


# ---- the one target policy -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A target resolved once per ``explain`` call.

    ``kind`` is ``"default"`` (``target=None``: the method's own default — the predicted class
    for the methods that explain a class, the configured QoI for influence), ``"predicted"``
    (the model's argmax on the unperturbed input) or ``"classes"`` (one class per input).
    """

    kind: str
    classes: torch.Tensor | None = None
    #: inputs in the whole ``explain`` call, and where this chunk's rows lie in it (methods
    #: with per-input settings, such as a per-input QoI or baseline, slice them with it)
    n: int = 0
    rows: slice = field(default_factory=lambda: slice(None))

    def take(self, rows: slice) -> Target:
        """The part of the target for a chunk of inputs."""
        part = None if self.classes is None else self.classes[rows]
        return Target(self.kind, part, self.n, slice(*rows.indices(self.n)))

    def classes_for(self, output: torch.Tensor) -> torch.Tensor:
        """One class per row of ``output``: the given classes, else the prediction."""
        if self.classes is None:
            return output.argmax(-1)
        check_classes(self.classes, output.shape[-1], name="target")
        return self.classes.to(output.device)

    def describe(self) -> Any:
        """JSON summary for the Explanation's parameters."""
        if self.classes is None:
            return None if self.kind == "default" else "predicted"
        c = self.classes
        return int(c[0]) if c.numel() and bool((c == c[0]).all()) else "per-input"


def parse_target(target: Any, n: int) -> Target:
    """The one policy: ``None`` -> the method's default; ``"predicted"``; an int (every input);
    a sequence or ``(n,)`` integer tensor (one class per input). Floats, bools and other strings
    are refused with a message saying what to pass."""
    if target is None:
        return Target("default", n=n)
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(
                f"target must be None, 'predicted', an int or a (B,) tensor of classes, "
                f"got {target!r}"
            )
        return Target("predicted", n=n)
    if isinstance(target, bool):
        raise TypeError(f"target must be an int class index, got {target!r}")
    if isinstance(target, int):
        return Target("classes", torch.full((n,), target, dtype=torch.long), n)
    if isinstance(target, (list, tuple)):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise TypeError(f"a target list must hold int class indices, got {target!r}")
        target = torch.tensor(list(target), dtype=torch.long)
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            "target must be None, 'predicted', an int or a (B,) tensor of classes, "
            f"got {type(target).__name__}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices, got dtype {target.dtype} "
            "(pass target.long() if the values are whole numbers)"
        )
    if target.dim() == 0:
        return Target("classes", target.long().expand(n).clone(), n)
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(
            f"target has {target.numel()} entries: {target.numel()} classes for {n} inputs "
            "(pass one class per input, an int, 'predicted' or None)"
        )
    return Target("classes", target.long(), n)


def resolve_targets(output: torch.Tensor, target: Any) -> torch.Tensor:
    """One class per row of ``output`` under the one policy (None/"predicted" -> argmax)."""
    return parse_target(target, output.shape[0]).classes_for(output)


# ---- the template ----------------------------------------------------------------------------


class Explainer:
    """``explainer.explain(inputs, target=None) -> Explanation``, implemented once.

    Constructors store settings only (no hooks, no ``.eval()``, no heavy imports) under the
    names of their arguments, declare constraints in ``_parameter_constraints`` and call
    :meth:`_check_params`. A method overrides :meth:`_explain_batch` (and, where its inputs or
    targets differ, :meth:`_check_inputs` / :meth:`_check_target`).
    """

    #: registry name of the method (see :mod:`whynet.registry`)
    method: ClassVar[str] = ""
    #: parameter name -> :class:`~whynet.core.params.Constraint`
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {}
    #: allowed input dimensions (batch included), None = any
    _input_ndim: ClassVar[int | tuple[int, ...] | None] = None
    #: integer inputs (token ids) allowed
    _token_inputs: ClassVar[bool] = True
    #: whether ``target`` may name classes (False: only None / "predicted")
    _class_targets: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 64,
        progress: bool | None = None,
        output: OutputSpec = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress
        if isinstance(output, bool) or not (
            output is None or isinstance(output, (int, str)) or callable(output)
        ):
            raise TypeError(
                "output must be None, an int index, a key/attribute name or a callable of the "
                f"model's raw output, got {output!r}"
            )
        #: which part of the model's raw output is the prediction (see ``select_output``)
        self.output = output

    # -- declared parameters ---------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return param_names(cls)

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters with their current values (scikit-learn's)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def _check_params(self) -> None:
        """Validate every declared constraint (one error format for all methods)."""
        validate_params(self.get_params(), self._parameter_constraints)

    def params(self) -> dict[str, Any]:
        """The settings as JSON (stored in every Explanation); objects appear as their repr."""
        p = json_params(self.get_params())
        p.pop("progress", None)
        return p

    # -- the template ----------------------------------------------------------------------

    def explain(self, inputs: Any, target: Any = None) -> Explanation:
        """Explain ``inputs`` (first dimension = inputs) for ``target``.

        ``target``: None (the method's default: the predicted class, or the configured
        quantity of interest), ``"predicted"``, an int, or one class per input. Floating
        inputs of another dtype than the model's are cast to the model's dtype; NaN or
        infinite inputs are refused.
        """
        self._check_ready()
        x = self._check_inputs(inputs)
        # floating inputs are cast to the model's dtype (documented: float64 data explains a
        # float32 model at float32 precision, rather than a raw dtype error from inside torch)
        x = to_device(x, model_device(self.model), model_dtype(self.model))
        n = batch_len(x)
        tgt = parse_target(target, n)
        acc = Accumulator()
        starts = range(0, n, self.batch_size)
        try:
            self._check_target(x, tgt)  # the first forward pass: a model that cannot take x
            self._check_doi_order(x)  # fails here
            with frozen_eval(self.model):
                for s in progress_bar(
                    starts, total=len(starts), desc=self.method, enabled=self.progress
                ):
                    rows = slice(s, s + self.batch_size)
                    acc.update(**self._explain_batch(take(x, rows), tgt.take(rows)))
        except (RuntimeError, IndexError, ValueError, TypeError) as e:
            if not _raised_outside_whynet(e):  # whynet's own errors are already clear
                raise
            raise self._failed_on(x, e) from e
        return self._explanation(acc.compute(), tgt)

    def _failed_on(self, x: Any, e: BaseException) -> BaseException:
        """The error for a torch failure while running the model: the same exception type
        (callers catching ``RuntimeError`` still do), its message prefixed with the inputs (a
        wrong channel count, token ids outside the vocabulary, integer ids into an image
        model...) instead of a bare message from deep inside the model."""
        parts: list[tuple[str, torch.Tensor]] = (
            list(x.items()) if isinstance(x, dict) else [("inputs", x)]
        )
        desc = ", ".join(
            f"{k} {tuple(t.shape[1:])} {str(t.dtype).replace('torch.', '')}"
            + ("" if t.is_floating_point() or not t.numel() else f" max {int(t.max())}")
            for k, t in parts
        )
        hint = " (token ids outside the vocabulary?)" if isinstance(e, IndexError) else ""
        msg = (
            f"{self.method}: running {type(self.model).__name__} on these inputs failed "
            f"(per input: {desc}){hint}: {e}"
        )
        try:
            return type(e)(msg)
        except Exception:  # an exception type that takes other arguments: keep it as it is
            return e

    def _check_ready(self) -> None:
        """Raise if the explainer cannot explain yet (fitted explainers: not fitted)."""

    def _check_inputs(self, inputs: Any) -> Any:
        """Validate a batch: a tensor (float, or where allowed integer token ids) or a mapping
        of tensors passed as ``model(**inputs)`` whose main tensor is checked the same way."""
        if not is_mapping(inputs):
            token = (
                self._token_inputs
                and isinstance(inputs, torch.Tensor)
                and not inputs.is_floating_point()
            )
            return check_inputs(inputs, ndim=self._input_ndim, floating=not token)
        x = as_inputs(inputs)
        assert isinstance(x, dict)
        check_keys(self.model, x)
        key = main_key(x)
        main = x[key]
        token = self._token_inputs and not main.is_floating_point()
        check_inputs(main, name=f"inputs[{key!r}]", ndim=self._input_ndim, floating=not token)
        for k, t in x.items():
            if k != key and t.is_floating_point():
                check_inputs(t, name=f"inputs[{k!r}]", ndim=None)
        valid_tokens(x, key=key)  # an attention mask of the wrong shape is refused here
        return x

    def _predict(self, x: Any, **kwargs: Any) -> torch.Tensor:
        """The model's prediction tensor for a batch (``output=`` applied); grads as the
        caller's context says."""
        return select_output(forward(self.model, x, **kwargs), self.output)

    def _check_target(self, x: Any, target: Target) -> None:
        """Refuse a target the method cannot honour before any work is done: class indices
        are checked against the model's output width (one forward pass of one input)."""
        if target.classes is None:
            return
        if not self._class_targets:
            raise ValueError(
                f"{type(self).__name__} explains what it was trained on; target must be None "
                "or 'predicted'"
            )
        check_classes(target.classes, self._n_outputs(x), name="class")

    def _check_doi_order(self, x: Any) -> None:
        """A method with a distribution of interest (``doi``) placed at a layer (``at``) must
        explain that layer or one after it (one forward of one input finds the order)."""
        from whynet.core.doi import DoI, check_upstream

        doi = getattr(self, "doi", None)
        if isinstance(doi, DoI) and doi.at is not None:
            check_upstream(self.model, doi.at, self._explained_layer(), x)

    def _n_outputs(self, x: Any) -> int:
        return int(predict_logits(self.model, take(x, slice(0, 1)), output=self.output).shape[-1])

    def _explain_batch(self, x: Any, target: Target) -> dict[str, torch.Tensor | None]:
        """The method's computation for one chunk of inputs, under ``frozen_eval``.

        Returns ``values`` (first dimension = inputs), optionally ``target`` (the class
        explained per input) and any further per-input tensors (they become ``extras``).
        """
        raise NotImplementedError

    def _explanation(self, parts: dict[str, Any], target: Target) -> Explanation:
        values = parts.pop("values")
        explained = parts.pop("target", None)
        return Explanation(
            values=values,
            target=explained,
            method=self.method,
            layer=self._explained_layer(),
            params={**self.params(), "target": target.describe()},
            extras={k: v for k, v in parts.items() if v is not None},
            meta=self._meta(),
        )

    def _explained_layer(self) -> str | None:
        return getattr(self, "layer", None)

    def _meta(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r})"
