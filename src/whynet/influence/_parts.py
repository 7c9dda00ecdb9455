"""Pieces of :class:`~whynet.influence.internal.InternalInfluence`: a chunk's results, the
per-input slicing of QoIs and DoI baselines, and a QoI bound on the differentiated forward."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from whynet.core import Class, Comparative, DoI, Linear, LinearPath, Mixture, QoI


@dataclass
class _Block:
    """Per-input results for one block of at most ``batch_size`` inputs."""

    values: torch.Tensor  # (b, *layer_shape), float64
    qoi: torch.Tensor  # q at the unperturbed inputs, (b,)
    target: torch.Tensor | None  # class per input when the QoI is a per-input Class


def _take_qoi(qoi: QoI, rows: slice, n: int) -> QoI:
    """The part of a QoI with per-input classes (``Class((B,) tensor)``, also inside a
    ``Comparative`` or a sum) that belongs to the inputs ``rows`` of an ``n``-input call."""
    if isinstance(qoi, Class) and qoi.per_input:
        if len(qoi.classes) != n:
            raise ValueError(f"{len(qoi.classes)} per-input targets for {n} inputs")
        return Class(qoi.classes[rows])
    if isinstance(qoi, Comparative):
        part = copy.copy(qoi)
        part.a, part.b = _take_qoi(qoi.a, rows, n), _take_qoi(qoi.b, rows, n)  # type: ignore[assignment]
        return part
    if isinstance(qoi, Linear):
        return Linear([(w, _take_qoi(q, rows, n)) for w, q in qoi.terms])
    return qoi


def _take_doi(doi: DoI, rows: slice, n: int, space: torch.Tensor) -> DoI:
    """The DoI for the inputs ``rows`` of an ``n``-input call: a baseline given as a batch
    (one point per input, shaped like the whole call's points) is sliced with the inputs."""
    if isinstance(doi, Mixture):
        mix = copy.copy(doi)
        mix.components = [(w, _take_doi(d, rows, n, space)) for w, d in doi.components]
        return mix
    if isinstance(doi, LinearPath):
        base = doi.baseline_value
        batch = isinstance(base, torch.Tensor) and base.dim() == space.dim()
        if batch and n > 1 and base.shape[0] == n:  # type: ignore[union-attr]
            path = copy.copy(doi)
            path.baseline_value = base[rows]  # type: ignore[index]
            return path
    return doi


class _BoundOnForward(QoI):
    """A QoI bound to the output of the very forward pass that differentiates it.

    For a :class:`Point` DoI the gradient pass runs on the unperturbed inputs, so its output is
    the one ``bind`` needs: binding there spares the separate no-grad forward (issue 17).
    """

    def __init__(self, qoi: QoI) -> None:
        self.qoi = qoi
        self.layer = qoi.layer
        self.raw = qoi.raw
        self.bound: QoI | None = None

    def __call__(  # type: ignore[override]
        self,
        output: torch.Tensor | None,
        rows: torch.Tensor | None = None,
        activation: torch.Tensor | None = None,
        *,
        raw: object = None,
    ) -> torch.Tensor:
        # a raw-output QoI (a user callable) has nothing to bind and may have no prediction
        self.bound = self.qoi if output is None else self.qoi.bind(output.detach())
        return self.bound(output, rows=rows, activation=activation, raw=raw)
