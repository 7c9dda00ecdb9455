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

from collections.abc import Iterator, Sequence
from types import EllipsisType
from typing import Any

import torch
from torch import nn

from whynet.core import (
    Accumulator,
    Channel,
    Class,
    DatasetDoI,
    DoI,
    Explainer,
    Explanation,
    MaxClass,
    ModelInputs,
    OutputSpec,
    Point,
    QoI,
    Target,
    as_qoi,
    batch_len,
    constraint,
    data_length,
    expand,
    frozen_eval,
    main_tensor,
    model_device,
    parse_target,
    progress,
    qoi_gradients,
    resolve_layer,
    run_model,
    take,
    valid_tokens,
    with_main,
)
from whynet.core.cut import Cut, cut_for
from whynet.core.layout import neuron_dim
from whynet.influence._parts import _Block, _BoundOnForward, _take_doi, _take_qoi
from whynet.influence.ranking import REDUCE, top_neurons


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
    output : int, str or callable, optional
        Which part of the model's raw output the QoI reads (:func:`whynet.core.select_output`):
        needed for multi-output models; HF outputs with ``logits`` need nothing. A callable
        QoI receives the raw output itself.
    channel_dim : int, optional
        The layer's neuron axis (:func:`whynet.core.layout.neuron_dim`): by default channels
        (dimension 1) for ``(B, C, ...)`` outputs and hidden units (the last) for ``(B, T, D)``
        token layers, which are reduced over their real tokens (the attention mask's).
    """

    method = "influence"
    _point_fast = True  # False: a Point through the general path (the tests compare both)
    _use_cut = True  # False: points at a layer always run the full forward (tests, benchmark)
    _parameter_constraints = {
        "layer": constraint(str, None, error=TypeError, desc="a dotted layer name or None"),
        "doi": constraint(
            DoI, None, error=TypeError, desc="a whynet DoI (Point, LinearPath, Gaussian, Mixture)"
        ),
        "multiply_activation": constraint(bool, error=TypeError),
        "reduce": REDUCE,
        "channel_dim": constraint(int, None, error=TypeError, desc="an int axis or None"),
    }

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
        output: OutputSpec = None,
        channel_dim: int | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, output=output)
        self.layer = layer
        self.qoi = qoi
        self.doi = doi
        self.multiply_activation = multiply_activation
        self.reduce = reduce
        self.channel_dim = channel_dim
        self._check_params()
        if layer is not None:
            resolve_layer(model, layer)  # fail early with the closest names
        self._qoi = as_qoi(qoi)  # the QoI used when target is None
        self._doi = Point() if doi is None else doi
        if self._doi.at is not None:
            resolve_layer(model, self._doi.at)
        self._path: str | None = None  # which per-point pass the last explanation ran

    # ------------------------------------------------------------------ public API
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
        target : int, "predicted" or None
            Overrides the QoI as in :meth:`explain` (one class for every example).

        Returns
        -------
        Explanation
            ``values`` of shape ``(1, *layer_shape)``; ``meta["n_examples"]`` examples averaged.
        """
        if target is None and self.qoi is None and isinstance(cls, int):
            target = cls
        qoi = self._dataset_qoi(target)
        doi = DatasetDoI(data, labels=labels, cls=cls, batch_size=self.batch_size)
        length = data_length(data)
        acc = Accumulator("sum")  # float64 running sum: memory independent of the data size
        dtype: torch.dtype | None = None
        for xb, _ in progress(
            doi.batches(device=model_device(self.model)),
            total=None if length is None else -(-length // self.batch_size),
            desc="influence (dataset)",
            enabled=self.progress,
        ):
            xb = self._check_inputs(xb)
            if dtype is None:  # first batch: the DoI's layer must run before the explained one
                self._check_doi_order(xb)
            dtype = self._dtype(xb)
            with frozen_eval(self.model):  # the gradient passes too: BatchNorm's running stats
                acc.update(values=self._influence(xb, qoi).values)
        if acc.n == 0 or dtype is None:
            which = "" if cls is None else f" of class {cls}"
            raise ValueError(f"the data has no examples{which}")
        params = self.params()
        params["target"] = (
            target if target is None or isinstance(target, (int, str)) else "per-input"
        )
        params["cls"] = cls
        shape = acc.compute()["values"].shape
        return Explanation(
            values=(acc.compute()["values"] / acc.n).unsqueeze(0).to(dtype),
            method=self.method,
            layer=self.layer,
            params=params,
            meta={
                "n_examples": acc.n,
                "neuron_dim": self._neuron_dim(len(shape) + 1),
                **self._meta(),
            },
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
            channel_dim=self.channel_dim if isinstance(explanation, torch.Tensor) else None,
        )

    # ------------------------------------------------------------------ the template's hooks
    def params(self) -> dict[str, Any]:
        """The settings as JSON; the QoI and DoI as used (``MaxClass()``, ``Point()`` when
        None was given)."""
        p = super().params()
        p["qoi"], p["doi"] = repr(self._qoi), repr(self._doi)
        return p

    def _check_inputs(self, inputs: Any) -> Any:
        x = super()._check_inputs(inputs)
        main = main_tensor(x)
        if (
            not main.is_floating_point()
            and self._doi.at is None
            and not isinstance(self._doi, Point)
        ):
            raise TypeError(
                f"{self._doi!r} interpolates integer inputs (token ids), which is "
                "undefined; put the DoI in an embedding's space with at='<layer>'"
            )
        return x

    def _explain_batch(self, x: ModelInputs, target: Target) -> dict[str, Any]:
        n, rows = target.n, target.rows  # per-input QoIs and baselines are sliced with the chunk
        if target.kind == "predicted":
            qoi: QoI = MaxClass()
        elif target.classes is not None:
            qoi = Class(target.classes)  # one class per input (the chunk's part)
        else:
            qoi = _take_qoi(self._qoi, rows, n)
        b = self._influence(x, qoi, rows, n)
        valid = valid_tokens(x)  # a token layer's real positions (from the attention mask)
        if valid is not None and not (b.values.dim() == 3 and b.values.shape[1] == valid.shape[1]):
            valid = None
        return {
            "values": b.values.to(self._dtype(x)),
            "target": b.target,
            "qoi": b.qoi,
            "valid_tokens": valid,
        }

    def _explanation(self, parts: dict[str, Any], target: Target) -> Explanation:
        e = super()._explanation(parts, target)
        e.meta["neuron_dim"] = self._neuron_dim(e.values.dim())
        return e

    def _meta(self) -> dict[str, Any]:
        """``path``: for points at a layer, whether each point ran only the layers above it
        (a :class:`~whynet.core.cut.Cut`) or the full forward with the output replaced."""
        return {} if self._path is None else {"path": self._path}

    def _neuron_dim(self, ndim: int) -> int:
        return neuron_dim(self.model, self.layer, ndim, self.channel_dim)

    # ------------------------------------------------------------------ internals
    def _dtype(self, x: ModelInputs) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        main = main_tensor(x)
        return main.dtype if main.is_floating_point() else torch.float32

    def _dataset_qoi(self, target: Any) -> QoI:
        """The QoI of a dataset-wide explanation: the explainer's, or one class for all."""
        if target is None:
            return self._qoi
        t = parse_target(target, 1)
        if t.classes is None:
            return MaxClass()
        return Class(int(t.classes[0]))

    def _forward(
        self,
        x: ModelInputs,
        layers: list[str],
        replace: tuple[str, torch.Tensor] | None = None,
        qoi: QoI | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Output and activations at ``layers`` through the model pipeline (no gradients,
        chunked by ``batch_size``); ``replace = (layer, values)`` replaces a layer's output.
        For a raw-output ``qoi`` (a user callable) on a model without ``output=``, the
        "output" is the QoI's value itself, as a ``(B, 1)`` column."""
        names = list(dict.fromkeys(layers))
        rep: dict[str, Any] = {}
        if replace is not None:
            # the pipeline walks ``x`` in order, one forward per chunk: hand each its rows
            chunks: Iterator[torch.Tensor] = iter(replace[1].split(self.batch_size))
            rep = {replace[0]: lambda out: next(chunks)}
        output: OutputSpec = self.output
        if qoi is not None and qoi.raw and output is None:
            q = qoi
            output = lambda raw: q(None, raw=raw).unsqueeze(1)  # noqa: E731
        acc = Accumulator()
        for b in run_model(
            self.model, x, layers=names, replace=rep, batch_size=self.batch_size, output=output
        ):
            acc.update(output=b.output, **{f"act:{name}": b.acts[name] for name in names})
        got = acc.compute()
        return got["output"], {name: got[f"act:{name}"] for name in names}

    def _influence(self, x: ModelInputs, qoi: QoI, rows: slice | None = None, n: int = 0) -> _Block:
        """Explain one block of inputs: the DoI expands all of ``x``, walked in chunks of
        ``batch_size`` rows. An input's sampled points depend only on the input (a DoI draws
        per sample index, not per batch), so the result does not depend on ``batch_size``.
        ``rows`` / ``n``: where the block lies in an ``n``-input call (batch baselines)."""
        layer, at = self.layer, self._doi.at
        self._path = None
        point = isinstance(self._doi, Point) and at is None and batch_len(x) <= self.batch_size
        if point and self._point_fast:
            return self._point(x, qoi)
        need = [name for name in (layer, at, qoi.layer) if name is not None]
        out, acts = self._forward(x, need, qoi=qoi)
        if qoi.raw and self.output is None:  # the forward's "output" was the QoI itself
            bound, q0 = qoi, out[:, 0].detach()
        else:
            bound = qoi.bind(out)
            q0 = bound(out, activation=acts[qoi.layer] if qoi.layer else None).detach()
        space = main_tensor(x) if at is None else acts[at]  # where the DoI's points live
        cut = None if at is None else self._cut(x, at, space, qoi)
        doi = self._doi if rows is None else _take_doi(self._doi, rows, n, space)
        z = main_tensor(x) if layer is None else acts[layer]
        total = torch.zeros(z.shape, dtype=torch.float64, device=z.device)
        for chunk in expand(doi, space, self.batch_size):
            crow = chunk.rows.to(z.device)
            if at is None:
                g = qoi_gradients(
                    self.model,
                    with_main(take(x, crow), chunk.points),
                    bound,
                    layer=layer,
                    rows=crow,
                    output=self.output,
                )
            else:
                g = qoi_gradients(
                    self.model,
                    x if cut is not None else take(x, crow),  # a cut starts from the points
                    bound,
                    layer=layer,
                    points=chunk.points,
                    points_at=at,
                    rows=crow,
                    output=self.output,
                    cut=cut,
                )
            w = chunk.weights.to(z.device).reshape(-1, *([1] * (z.dim() - 1)))
            total.index_add_(0, crow, g.grads.to(torch.float64) * w)
        if self.multiply_activation:
            total = total * (z.to(torch.float64) - self._layer_baseline(doi, x, space, z))
        return _Block(values=total, qoi=q0, target=self._target_of(bound, batch_len(x), z.device))

    def _cut(self, x: ModelInputs, at: str, z: torch.Tensor, qoi: QoI) -> Cut | None:
        """The network above ``at`` when the model can be cut there (checked), so that each
        point runs only those layers: the layers below computed ``z`` once per input."""
        if not self._use_cut:
            self._path = f"full forward per point, {at!r} replaced (cut disabled)"
            return None
        reads = [n for n in (self.layer,) if n is not None and n != at]
        reads += [qoi.layer] if qoi.layer is not None else []  # at `at` itself: not in the rest
        cut, self._path = cut_for(self.model, at, x, z, reads)
        return cut

    def _point(self, x: ModelInputs, qoi: QoI) -> _Block:
        """A :class:`Point` DoI: one forward + one partial backward, the QoI bound inside it;
        the same numbers as the general path (the points are the inputs, weight 1)."""
        lazy = _BoundOnForward(qoi)
        g = qoi_gradients(self.model, x, lazy, layer=self.layer, output=self.output)
        assert lazy.bound is not None
        total = g.grads.to(torch.float64)
        if self.multiply_activation:  # a Point has no baseline: gradient x activation
            total = total * g.at.to(torch.float64)
        n = batch_len(x)
        return _Block(values=total, qoi=g.qoi, target=self._target_of(lazy.bound, n, g.at.device))

    @staticmethod
    def _target_of(bound: QoI, n: int, device: torch.device) -> torch.Tensor | None:
        """The class per input when the bound QoI is a :class:`Class`."""
        tgt = None
        if isinstance(bound, Class) and bound.per_input:
            tgt = bound.classes.to(device)
        elif isinstance(bound, Class) and bound.classes.numel() == 1:
            tgt = bound.classes.expand(n).to(device)
        return tgt

    def _layer_baseline(
        self, doi: DoI, x: ModelInputs, space: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``z_baseline`` at the explained layer (float64).

        The DoI's baseline lives in the DoI's space; it is pushed to ``layer`` by a forward
        pass (input space: ``h(baseline)``). A DoI without a baseline (Point, Gaussian) uses
        zero at the layer: gradient x activation.
        """
        layer, at = self.layer, doi.at
        base = doi.baseline(space)
        if base is None:
            return torch.zeros_like(z, dtype=torch.float64)
        if at == layer:
            return base.to(torch.float64)
        if at is None:
            if layer is None:
                return base.to(torch.float64)
            _, acts = self._forward(with_main(x, base), [layer])
        else:
            assert layer is not None
            _, acts = self._forward(x, [layer], replace=(at, base))
        return acts[layer].to(torch.float64)


def check_channel(
    model: nn.Module, layer: str, channel: int, x: ModelInputs, channel_dim: int | None = None
) -> int:
    """Raise a clear error if ``channel`` is not a neuron of ``layer`` (one forward pass);
    return the layer's neuron axis (:func:`whynet.core.layout.neuron_dim`)."""
    acts = [b.acts[layer] for b in run_model(model, take(x, slice(0, 1)), layers=[layer])]
    dim = neuron_dim(model, layer, acts[0].dim(), channel_dim)
    Channel(layer, channel, dim).check_channel(acts[0])
    return dim
