"""Internal influence of a layer's neurons (Leino et al., "Influence-Directed Explanations for
Deep Convolutional Networks", ITC 2018).

Slice the network at a layer, ``f = g o h`` with ``z = h(x)``. The distributional influence of
neuron ``j`` on a quantity of interest ``q`` over a distribution of interest ``P`` is
(paper, Def. 3)::

    chi_j(q, P) = E_{x' ~ P}[ d q(g(z)) / d z_j  at  z = h(x') ]

``P`` is a finite weighted set of points per input (a :class:`~whynet.core.doi.DoI`), so the
expectation is the weighted sum ``sum_s w_s * grad_s``. That is *influence space*. With
``multiply_activation=True`` the result is multiplied element-wise by ``z - z_baseline``
(*attribution space*); for a straight-line path in the layer's own activation space this is
Integrated Gradients / Aumann-Shapley at the layer and the attributions sum to
``q(x) - q(baseline)`` (completeness).

Where the path lives
--------------------
``doi.at is None``: the points are *inputs* (Captum's ``InternalInfluence`` interpolates inputs).
The layer sees ``h(x_alpha)``, which is not a straight line in activation space, so attribution
space uses ``z_baseline = h(baseline input)`` and completeness is only approximate.
``doi.at == layer``: the points are *activations* of the layer (TruLens' ``LinearDoi(cut=...)``);
``z_baseline`` is the DoI's baseline in that space and completeness holds up to quadrature error.
``doi.at`` naming another layer interpolates there and reads gradients at ``layer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import torch
from torch import nn

from whynet.core import (
    Channel,
    Class,
    DatasetDoI,
    DoI,
    Explainer,
    Explanation,
    MaxClass,
    Point,
    QoI,
    as_qoi,
    capture,
    check_inputs,
    data_length,
    expand,
    frozen_eval,
    intervene,
    model_device,
    progress,
    qoi_gradients,
    resolve_layer,
)
from whynet.core.model import as_logits

REDUCTIONS = ("sum", "max", "mean", None)


@dataclass
class _Block:
    """Per-input results for one block of at most ``batch_size`` inputs."""

    values: torch.Tensor  # (b, *layer_shape), float64
    qoi: torch.Tensor  # q at the unperturbed inputs, (b,)
    target: torch.Tensor | None  # class per input when the QoI is a per-input Class


def _check_reduce(reduce: str | None) -> str | None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of 'sum', 'max', 'mean' or None, got {reduce!r}")
    return reduce


def collapse(values: torch.Tensor, reduce: str | None) -> torch.Tensor:
    """Collapse the spatial positions of ``(B, C, *spatial)`` values to ``(B, C)`` channels.

    ``sum`` follows TruLens' notebooks, ``max`` the paper's Keras code; ``None`` keeps every
    neuron and flattens to ``(B, C * prod(spatial))``.
    """
    _check_reduce(reduce)
    if values.dim() < 2:
        raise ValueError(
            f"values need a batch and a channel dimension, got shape {tuple(values.shape)}"
        )
    if reduce is None or values.dim() == 2:
        return values.reshape(values.shape[0], -1)
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    if reduce == "sum":
        return flat.sum(-1)
    if reduce == "mean":
        return flat.mean(-1)
    return flat.amax(-1)


class InternalInfluence(Explainer):
    """Distributional influence of a layer's neurons on a quantity of interest.

    Parameters
    ----------
    model : nn.Module
        The network; it is run in eval mode with frozen parameters (restored afterwards).
    layer : str or None
        Dotted path of the layer whose output ``z`` is explained; None explains the inputs
        themselves (then this is saliency / SmoothGrad / Integrated Gradients by DoI).
    qoi : QoI, int, list, tensor, callable or None
        Quantity of interest (Leino et al., Sec. 2.1). None -> :class:`MaxClass`, bound to the
        unperturbed input so the class never changes along a path.
    doi : DoI
        Distribution of interest per input (Sec. 2.2): ``Point()``, ``LinearPath(...)``,
        ``Gaussian(...)``, ``Mixture(...)``; ``doi.at`` chooses the space of its points.
    multiply_activation : bool
        False: influence space, ``sum_s w_s grad_s`` (the paper's ranking quantity; Captum's
        ``InternalInfluence``). True: attribution space, multiplied by ``z - z_baseline``.
    reduce : {"sum", "max", "mean", None}
        Default spatial reduction of :meth:`top_neurons`.
    batch_size : int
        Rows per forward/backward (inputs x DoI samples); peak memory is bounded by it.
    progress : bool, optional
        Progress bar (default: only on a terminal).
    """

    method = "influence"

    def __init__(
        self,
        model: nn.Module,
        layer: str | None,
        qoi: Any = None,
        doi: DoI | None = None,
        multiply_activation: bool = False,
        reduce: str | None = "sum",
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress)
        if layer is not None:
            resolve_layer(model, layer)  # fail early with the closest names
        self.layer = layer
        self.qoi_given = qoi is not None
        self.qoi = as_qoi(qoi)
        self.doi = Point() if doi is None else doi
        if not isinstance(self.doi, DoI):
            raise TypeError(
                f"doi must be a whynet DoI (Point, LinearPath, Gaussian, Mixture), "
                f"got {type(self.doi).__name__}"
            )
        if self.doi.at is not None:
            resolve_layer(model, self.doi.at)
        self.multiply_activation = bool(multiply_activation)
        self.reduce = _check_reduce(reduce)

    # ------------------------------------------------------------------ public API
    def explain(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        """Influence (or attribution) of every neuron of ``layer`` for each input.

        Parameters
        ----------
        inputs : torch.Tensor
            A batch, first dimension = inputs (token ids are allowed for a ``Point`` DoI or an
            activation-space DoI).
        target : int, (B,) tensor, "predicted" or None
            Overrides the QoI with ``Class(target)``; None keeps the explainer's QoI.

        Returns
        -------
        Explanation
            ``values`` of shape ``(B, *layer_output_shape[1:])`` in the model's dtype;
            ``extras["qoi"]`` holds q at the unperturbed inputs.
        """
        x = self._check(inputs)
        if isinstance(target, torch.Tensor) and target.dim() == 1 and len(target) != len(x):
            raise ValueError(f"target has {len(target)} entries for {len(x)} inputs")
        b = self._run(x, target, bar=True)
        return Explanation(
            values=b.values.to(self._dtype(x)),
            target=b.target,
            method=self.method,
            layer=self.layer,
            params=self._params(target),
            extras={"qoi": b.qoi},
        )

    def explain_dataset(
        self,
        data: Any,
        labels: torch.Tensor | None = None,
        cls: int | Sequence[int] | None = None,
        target: Any = None,
    ) -> Explanation:
        """Distributional influence over a whole dataset or one class (class-wide explanation).

        ``chi_j = mean over examples x of E_{x' ~ doi(x)}[d q / d z_j]``: the paper's
        distribution of interest "all instances of class ``cls``" (Sec. 2.2) when ``cls`` is
        given. Streams ``data`` (memory independent of its size) with a progress bar.

        Parameters
        ----------
        data : DataLoader, Dataset or tensor
            Examples (with labels when ``cls`` is given).
        labels : torch.Tensor, optional
            Labels for a tensor ``data``.
        cls : int or list of int, optional
            Keep only examples of these classes. With the default QoI and an int ``cls``, the
            QoI becomes ``Class(cls)`` (class-conditional influence for that class).
        target : optional
            Overrides the QoI as in :meth:`explain`.

        Returns
        -------
        Explanation
            ``values`` of shape ``(1, *layer_shape)``; ``meta["n_examples"]`` examples averaged.
        """
        if target is None and not self.qoi_given and isinstance(cls, int):
            target = cls
        doi = DatasetDoI(data, labels=labels, cls=cls, batch_size=self.batch_size)
        total: torch.Tensor | None = None
        n = 0
        length = data_length(data)
        bar_total = None if length is None else -(-length // self.batch_size)
        device = model_device(self.model)
        dtype: torch.dtype | None = None
        for xb, _ in progress(
            doi.batches(device=device),
            total=bar_total,
            desc="influence (dataset)",
            enabled=self.progress,
        ):
            xb = self._check(xb)
            dtype = self._dtype(xb)
            b = self._run(xb, target, bar=False)
            s = b.values.sum(0, keepdim=True)
            total = s if total is None else total + s
            n += len(b.values)
        if total is None or dtype is None:
            which = "" if cls is None else f" of class {cls}"
            raise ValueError(f"the data has no examples{which}")
        params = self._params(target)
        params["cls"] = cls
        return Explanation(
            values=(total / n).to(dtype),
            method=self.method,
            layer=self.layer,
            params=params,
            meta={"n_examples": n},
        )

    def top_neurons(
        self,
        explanation: Explanation | torch.Tensor,
        k: int,
        reduce: str | None | EllipsisType = ...,
        per_input: bool = False,
        absolute: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most influential channels (or neurons with ``reduce=None``).

        Spatial positions are collapsed by ``reduce`` (default: the explainer's ``reduce``);
        inputs are averaged unless ``per_input``. Ranking is by signed value (most positive
        influence first, as in the paper) or by magnitude with ``absolute=True``.

        Returns
        -------
        (indices, scores)
            ``(k,)`` tensors, or ``(B, k)`` with ``per_input``. With ``reduce=None`` indices
            point into the flattened per-input layer shape.
        """
        return top_neurons(
            explanation,
            k,
            self.reduce if reduce is ... else reduce,
            per_input=per_input,
            absolute=absolute,
        )

    # ------------------------------------------------------------------ internals
    def _check(self, inputs: Any) -> torch.Tensor:
        x = check_inputs(
            inputs, floating=isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
        )
        if not x.is_floating_point() and self.doi.at is None and not isinstance(self.doi, Point):
            raise TypeError(
                f"{self.doi!r} interpolates integer inputs (token ids), which is "
                "undefined; put the DoI in an embedding's space with at='<layer>'"
            )
        return x.to(model_device(self.model))

    def _dtype(self, x: torch.Tensor) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return x.dtype if x.is_floating_point() else torch.float32

    def _params(self, target: Any) -> dict[str, Any]:
        tgt = target if target is None or isinstance(target, (int, str)) else "per-input"
        return {
            "layer": self.layer,
            "qoi": repr(self.qoi),
            "doi": repr(self.doi),
            "multiply_activation": self.multiply_activation,
            "reduce": self.reduce,
            "batch_size": self.batch_size,
            "target": tgt,
        }

    def _qoi_for(self, target: Any) -> QoI:
        if target is None:
            return self.qoi
        if isinstance(target, str):
            if target != "predicted":
                raise ValueError(
                    f"target must be None, 'predicted', an int or a (B,) tensor, got {target!r}"
                )
            return MaxClass()
        if isinstance(target, torch.Tensor) and target.dim() == 1:
            return Class(target)
        if isinstance(target, bool) or not isinstance(target, int):
            raise TypeError(
                f"target must be None, 'predicted', an int or a (B,) tensor, "
                f"got {type(target).__name__}"
            )
        return Class(target)

    def _forward(
        self,
        x: torch.Tensor,
        layers: list[str],
        replace: torch.Tensor | None = None,
        replace_at: str | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Output and activations at ``layers``, no gradients, chunked by ``batch_size``."""
        names = list(dict.fromkeys(layers))
        outs: list[torch.Tensor] = []
        acts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for i in range(0, len(x), self.batch_size):
            sl = slice(i, i + self.batch_size)
            rep: dict[str, Any] = (
                {} if replace is None or replace_at is None else {replace_at: replace[sl]}
            )
            with torch.no_grad(), capture(self.model, names) as cap, intervene(self.model, rep):
                outs.append(as_logits(self.model(x[sl])))
            cap.check_ran()
            for name in names:
                acts[name].append(cap[name])
        return torch.cat(outs), {name: torch.cat(a) for name, a in acts.items()}

    def _run(self, x: torch.Tensor, target: Any, bar: bool) -> _Block:
        """Explain one batch: the DoI expands all of ``x`` (so sampled points do not depend on
        ``batch_size``), walked in chunks of ``batch_size`` rows."""
        qoi, doi, layer, at = self._qoi_for(target), self.doi, self.layer, self.doi.at
        with frozen_eval(self.model):
            need = [name for name in (layer, at, qoi.layer) if name is not None]
            out, acts = self._forward(x, need)
            bound = qoi.bind(out)
            q0 = bound(out, activation=acts[qoi.layer] if qoi.layer else None).detach()
            space = x if at is None else acts[at]  # where the DoI's points live
            z = x if layer is None else acts[layer]
            total = torch.zeros(z.shape, dtype=torch.float64, device=z.device)
            n_chunks = -(-len(x) * doi.n_samples // self.batch_size)
            chunks = expand(doi, space, self.batch_size)
            for chunk in progress(
                chunks, total=n_chunks, desc="influence", enabled=self.progress if bar else False
            ):
                rows = chunk.rows.to(z.device)
                if at is None:
                    g = qoi_gradients(self.model, chunk.points, bound, layer=layer, rows=rows)
                else:
                    g = qoi_gradients(
                        self.model,
                        x[rows],
                        bound,
                        layer=layer,
                        points=chunk.points,
                        points_at=at,
                        rows=rows,
                    )
                w = chunk.weights.to(z.device).reshape(-1, *([1] * (z.dim() - 1)))
                total.index_add_(0, rows, g.grads.to(torch.float64) * w)
            if self.multiply_activation:
                total = total * (z.to(torch.float64) - self._layer_baseline(x, space, z))
        tgt = None
        if isinstance(bound, Class) and bound.per_input:
            tgt = bound.classes.to(z.device)
        elif isinstance(bound, Class) and bound.classes.numel() == 1:
            tgt = bound.classes.expand(len(x)).to(z.device)
        return _Block(values=total, qoi=q0, target=tgt)

    def _layer_baseline(
        self, x: torch.Tensor, space: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``z_baseline`` at the explained layer (float64).

        The DoI's baseline lives in the DoI's space; it is pushed to ``layer`` by a forward
        pass (input space: ``h(baseline)``). A DoI without a baseline (Point, Gaussian) uses
        zero at the layer: gradient x activation.
        """
        doi, layer, at = self.doi, self.layer, self.doi.at
        base = doi.baseline(space)
        if base is None:
            return torch.zeros_like(z, dtype=torch.float64)
        if at == layer:
            return base.to(torch.float64)
        if at is None:
            if layer is None:
                return base.to(torch.float64)
            _, acts = self._forward(base, [layer])
        else:
            assert layer is not None
            _, acts = self._forward(x, [layer], replace=base, replace_at=at)
        return acts[layer].to(torch.float64)


def top_neurons(
    explanation: Explanation | torch.Tensor,
    k: int,
    reduce: str | None = "sum",
    per_input: bool = False,
    absolute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-ranked channels of an influence explanation (see
    :meth:`InternalInfluence.top_neurons`)."""
    values = explanation.values if isinstance(explanation, Explanation) else explanation
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"explanation must be an Explanation or a tensor, got {type(values).__name__}"
        )
    scores = collapse(values.detach(), reduce)
    if not per_input:
        scores = scores.mean(0)
    n = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(
            f"k must be an int in [1, {n}] (the layer has {n} "
            f"{'neurons' if reduce is None else 'channels'}), got {k!r}"
        )
    key = scores.abs() if absolute else scores
    idx = key.topk(k, dim=-1).indices
    return idx, scores.gather(-1, idx)


def check_channel(model: nn.Module, layer: str, channel: int, x: torch.Tensor) -> int:
    """Raise a clear error if ``channel`` is not a channel of ``layer`` (one forward pass)."""
    qoi = Channel(layer, channel)
    with frozen_eval(model), torch.no_grad(), capture(model, [layer]) as cap:
        model(x[:1])
    cap.check_ran()
    qoi.check_channel(cap[layer])
    return channel
