"""The one gradient utility: d qoi / d (inputs or a layer's activation), in one forward+backward.

Every gradient-based explainer calls :func:`qoi_gradients`; the variants (input gradients,
layer gradients, gradients at replaced activations, Channel QoIs) are arguments, not copies.

Taking the gradient at a layer makes the layer's output a fresh leaf (detached from the layers
below), so backward stops there: nothing below the layer is differentiated. Points in a layer's
space with a :class:`~whynet.core.cut.Cut` at that layer skip the layers below entirely: only
the rest of the network runs, from the points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from whynet.core.cut import Cut
from whynet.core.hooks import Registration, hooked, primary, ran_twice, replace_hook
from whynet.core.inputs import ModelInputs, forward, main_tensor, with_main
from whynet.core.layers import resolve_layer
from whynet.core.model import OutputSpec, select_output
from whynet.core.qoi import QoI


@dataclass
class Gradients:
    """Result of :func:`qoi_gradients` for one batch."""

    #: the point the gradient was taken at (inputs, or the layer's activation)
    at: torch.Tensor
    #: d sum(qoi) / d at
    grads: torch.Tensor
    #: qoi value per row
    qoi: torch.Tensor
    #: the model's prediction tensor (None only for a raw-output QoI on a model whose output
    #: has no prediction tensor without ``output=``)
    output: torch.Tensor | None


def _leaf_hook(layer: str, slot: list[torch.Tensor], replacement: torch.Tensor | None) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if slot:
            ran_twice(layer)
        tensor, rebuild = primary(output)
        if replacement is not None and replacement.shape != tensor.shape:
            raise ValueError(
                f"points for layer {layer!r} have shape {tuple(replacement.shape)}, "
                f"the layer outputs {tuple(tensor.shape)}"
            )
        src = tensor if replacement is None else replacement
        leaf = src.detach().to(tensor.dtype).requires_grad_(True)
        slot.append(leaf)
        return rebuild(leaf.clone())  # in-place ops downstream modify the clone, not the leaf

    return hook


def _qoi_hook(store: list[torch.Tensor]) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        tensor, rebuild = primary(output)
        store.append(tensor)
        return rebuild(tensor.clone())

    return hook


def qoi_gradients(
    model: nn.Module,
    inputs: ModelInputs,
    qoi: QoI,
    *,
    layer: str | None = None,
    points: torch.Tensor | None = None,
    points_at: str | None = None,
    rows: torch.Tensor | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    output: OutputSpec = None,
    cut: Cut | None = None,
) -> Gradients:
    """Gradient of ``qoi`` w.r.t. the inputs or the activation of ``layer``.

    Parameters
    ----------
    model : nn.Module
        Should be in eval mode with frozen parameters (see ``frozen_eval``): the QoI is summed
        over the batch before backward, which is per-sample only without batch coupling.
    inputs : torch.Tensor or mapping of tensors
        Model inputs (one row per point; ignored values when ``points`` replace an earlier layer
        only matter for layers below it). A mapping is passed as ``model(**inputs)``; without
        a ``layer`` the gradient is taken w.r.t. its main tensor
        (:func:`~whynet.core.inputs.main_key`).
    qoi : QoI
        A bound QoI; ``rows`` maps each row to its original input for per-input targets.
    layer : str, optional
        Differentiate w.r.t. this layer's output; None = w.r.t. ``inputs``.
    points, points_at : torch.Tensor, str, optional
        Replace the output of layer ``points_at`` by ``points`` (interpolation in activation
        space). When ``points_at == layer`` the gradient is taken at the points themselves.
    cut : Cut, optional
        The network above ``points_at`` (:func:`~whynet.core.cut.cut_for`): the pass runs
        ``cut(points)`` instead of the whole model with the output replaced (the same numbers;
        ``inputs`` are not used). ``layer`` and the QoI's layer must run inside it.
    """
    kwargs = forward_kwargs or {}
    regs: list[Registration] = []
    leaf: list[torch.Tensor] = []
    qoi_acts: list[torch.Tensor] = []
    if points is not None and points_at is None:
        raise ValueError("points_at must name the layer whose output the points replace")
    if cut is not None and (points is None or points_at != cut.layer or layer is None):
        raise ValueError(
            f"a cut at {cut.layer!r} needs points at that layer (points_at=) and a layer at or "
            "above it to differentiate"
        )
    if cut is not None and layer == points_at:  # the points themselves are the leaf
        assert points is not None
        leaf.append(points.detach().requires_grad_(True))
        layer_hook = False
    else:
        layer_hook = layer is not None
    if points is not None and points_at != layer and cut is None:
        assert points_at is not None
        regs.append(
            (resolve_layer(model, points_at), "forward", replace_hook(points_at, points, []))
        )
    if layer_hook:
        assert layer is not None
        rep = points if (points is not None and points_at == layer) else None
        regs.append((resolve_layer(model, layer), "forward", _leaf_hook(layer, leaf, rep)))
    if qoi.layer is not None:
        regs.append((resolve_layer(model, qoi.layer), "forward", _qoi_hook(qoi_acts)))

    x = inputs
    if layer is None:
        main = main_tensor(inputs)
        if not main.is_floating_point():
            raise TypeError(
                "gradients w.r.t. integer inputs (token ids) are undefined; "
                "explain an embedding layer instead"
            )
        x = with_main(inputs, main.detach().requires_grad_(True))
    with torch.enable_grad(), hooked(regs):
        if cut is None:
            raw = forward(model, x, **kwargs)
        else:  # only the layers above the points; in-place ops downstream hit the clone
            assert points is not None
            raw = cut(leaf[0].clone() if leaf else points.detach())
    out = _prediction(raw, output, qoi)
    if layer is not None and not leaf:
        raise ValueError(f"layer {layer!r} did not run in the forward pass")
    activation = None
    if qoi.layer is not None:
        if not qoi_acts:
            raise ValueError(
                f"layer {qoi.layer!r} (read by {qoi!r}) did not run in the forward pass"
            )
        if len(qoi_acts) > 1:
            ran_twice(qoi.layer)
        activation = qoi_acts[0]
    q = qoi(out, rows=rows, activation=activation, raw=raw)
    at = main_tensor(x) if layer is None else leaf[0]
    if q.requires_grad:
        (g,) = torch.autograd.grad(q.sum(), at, allow_unused=True)
    else:
        g = None
    grads = torch.zeros_like(at) if g is None else g  # the QoI does not depend on `at`
    return Gradients(
        at=at.detach(),
        grads=grads.detach(),
        qoi=q.detach(),
        output=None if out is None else out.detach(),
    )


def _prediction(raw: Any, output: OutputSpec, qoi: QoI) -> torch.Tensor | None:
    """The prediction tensor; a raw-output QoI (a user callable choosing from a tuple) needs
    none, so there an output without one is not an error."""
    try:
        return select_output(raw, output)
    except TypeError:
        if qoi.raw and output is None:
            return None
        raise
