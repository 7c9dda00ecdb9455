"""Distributions of interest (DoI): over which points the influence is averaged.

Leino et al. (2018) define distributional influence chi_j = E_{z~P}[d q / d z_j]. A DoI here is
a finite weighted set of S points per input, produced lazily one sample index at a time so that
an explainer can expand ``B inputs x S samples`` in chunks of ``batch_size`` rows (peak memory
does not grow with S).

``at=None`` places the points in input space; ``at="<layer>"`` places them in that layer's
activation space (the explainer replaces the layer's output by the points). Baselines live in
the same space as the points.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from whynet.core.data import DataLike, iter_batches
from whynet.core.image import blend
from whynet.core.inputs import ModelInputs, forward, take
from whynet.core.validation import check_batch_size

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def path_rule(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alphas in [0, 1] and their weights for a path integral with ``steps`` points.

    The left/right/middle Riemann rules and Gauss-Legendre give exactly Captum's
    ``approximation_parameters`` (alphas and step sizes, float64). ``riemann_trapezoid`` is the
    textbook trapezoid rule: ``steps`` equally spaced points including both ends with weights
    ``h/2, h, ..., h, h/2`` (h = 1/(steps-1)), which sum to 1 so completeness holds. Captum's
    trapezoid uses step 1/steps for these points and sums to (steps-1)/steps instead.
    """
    if rule not in RULES:
        raise ValueError(f"unknown path rule {rule!r}; choose one of {', '.join(RULES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    n = steps
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (1 + x)), torch.from_numpy(0.5 * w)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if rule == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n, dtype=torch.float64)
    elif rule == "riemann_right":
        alphas = torch.linspace(1 / n, 1, n, dtype=torch.float64)
    elif rule == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=torch.float64)
    else:  # trapezoid
        if n == 1:
            raise ValueError("riemann_trapezoid needs steps >= 2 (both ends of the path)")
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
    return alphas, weights


class DoI:
    """A finite, weighted distribution of points around each input."""

    #: layer whose activation space the points live in (None: input space)
    at: str | None = None

    @property
    def n_samples(self) -> int:
        return len(self.weights())

    def weights(self) -> torch.Tensor:
        """Float64 weights of the S samples (they sum to 1 for an expectation)."""
        raise NotImplementedError

    def sample(self, z: torch.Tensor, s: int) -> torch.Tensor:
        """The ``s``-th point for every input in ``z`` (shape of ``z``)."""
        raise NotImplementedError

    def baseline(self, z: torch.Tensor) -> torch.Tensor | None:
        """The baseline in the space of ``z`` (for attribution space), or None."""
        return None


class Point(DoI):
    """The input itself: the gradient at z (``LinearPath(steps=1, rule="riemann_right")``)."""

    def __init__(self, at: str | None = None) -> None:
        self.at = at

    def weights(self) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64)

    def sample(self, z: torch.Tensor, s: int) -> torch.Tensor:
        return z

    def __repr__(self) -> str:
        return "Point()" if self.at is None else f"Point(at={self.at!r})"


def broadcast_baseline(baseline: float | torch.Tensor, z: torch.Tensor, where: str) -> torch.Tensor:
    """A baseline shaped like ``z``: a scalar, one point shaped like ``z[0]``, or like ``z``."""
    if not isinstance(baseline, torch.Tensor):
        if not isinstance(baseline, (int, float)) or isinstance(baseline, bool):
            raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
        return torch.full_like(z, float(baseline))
    b = baseline.to(device=z.device, dtype=z.dtype)
    if b.shape == z.shape:
        return b
    if b.shape == z.shape[1:]:
        return b.unsqueeze(0).expand_as(z)
    if b.dim() == z.dim() and b.shape[0] == 1 and b.shape[1:] == z.shape[1:]:
        return b.expand_as(z)
    raise ValueError(
        f"baseline of shape {tuple(b.shape)} does not fit {where} of shape "
        f"{tuple(z.shape)} (give a scalar, one point {tuple(z.shape[1:])}, or a batch)"
    )


def _check_baseline(baseline: object) -> None:
    """A baseline must be finite (a NaN baseline makes every point NaN: all-zero results)."""
    if isinstance(baseline, torch.Tensor):
        if baseline.is_floating_point() and not bool(torch.isfinite(baseline).all()):
            raise ValueError("baseline contains NaN or infinite values")
    elif (
        isinstance(baseline, (int, float))
        and not isinstance(baseline, bool)
        and not math.isfinite(baseline)
    ):
        raise ValueError(f"baseline must be a finite number, got {baseline!r}")


class LinearPath(DoI):
    """Points on the straight line from a baseline to the input (Integrated Gradients' path).

    Parameters
    ----------
    baseline : float or torch.Tensor
        Scalar, one point shaped like a single input (or activation when ``at`` is set), or a
        batch shaped like the inputs.
    steps : int
        Number of points.
    rule : str
        ``riemann_left|riemann_right|riemann_middle|riemann_trapezoid|gausslegendre``
        (see :func:`path_rule`).
    at : str, optional
        Interpolate in this layer's activation space instead of input space.
    """

    def __init__(
        self,
        baseline: float | torch.Tensor = 0.0,
        steps: int = 50,
        rule: str = "gausslegendre",
        at: str | None = None,
    ) -> None:
        self.alphas, self._weights = path_rule(rule, steps)
        _check_baseline(baseline)
        self.baseline_value = baseline
        self.steps, self.rule, self.at = steps, rule, at

    def weights(self) -> torch.Tensor:
        return self._weights

    def baseline(self, z: torch.Tensor) -> torch.Tensor:
        where = "inputs" if self.at is None else f"the activation of {self.at!r}"
        return broadcast_baseline(self.baseline_value, z, where)

    def sample(self, z: torch.Tensor, s: int) -> torch.Tensor:
        return blend(z, float(self.alphas[s]), self.baseline(z))

    def __repr__(self) -> str:
        return f"LinearPath(steps={self.steps}, rule={self.rule!r}, at={self.at!r})"


class Gaussian(DoI):
    """A Gaussian ball around the input: z + sigma * N(0, I), ``samples`` draws (SmoothGrad).

    Sample ``s`` uses a generator seeded with ``seed + s`` and one noise draw of a single row's
    shape, added to every row: an input's result is reproducible and does not depend on what it
    is explained with (alone, in any batch, in any data batch of ``explain_dataset``). The price:
    over a dataset the noise is ``samples`` shared draws, not one set per input.
    """

    def __init__(
        self, sigma: float, samples: int = 50, seed: int = 0, at: str | None = None
    ) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a number, got {type(sigma).__name__}")
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        self.sigma, self.samples, self.seed, self.at = float(sigma), samples, seed, at

    def weights(self) -> torch.Tensor:
        return torch.full((self.samples,), 1.0 / self.samples, dtype=torch.float64)

    def sample(self, z: torch.Tensor, s: int) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(self.seed + s)
        noise = torch.randn(z.shape[1:], generator=g, dtype=torch.float64)  # one row, broadcast
        return z + self.sigma * noise.to(device=z.device, dtype=z.dtype)

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma}, samples={self.samples})"


class Mixture(DoI):
    """A weighted mixture of DoIs in the same space (distributional linearity)."""

    def __init__(self, components: Sequence[tuple[float, DoI]]) -> None:
        if not components:
            raise ValueError("a mixture needs at least one component")
        spaces = {d.at for _, d in components}
        if len(spaces) > 1:
            raise ValueError("mixture components must live in the same space (same `at`)")
        for w, _ in components:
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise TypeError(f"mixture weights must be numbers, got {w!r}")
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"mixture weights must be finite and >= 0, got {w!r}")
        total = sum(w for w, _ in components)
        if total <= 0:
            raise ValueError("mixture weights must sum to a positive number")
        self.components = [(w / total, d) for w, d in components]
        self.at = spaces.pop()

    def weights(self) -> torch.Tensor:
        return torch.cat([w * d.weights() for w, d in self.components])

    def _locate(self, s: int) -> tuple[DoI, int]:
        for _, d in self.components:
            if s < d.n_samples:
                return d, s
            s -= d.n_samples
        raise IndexError(s)

    def sample(self, z: torch.Tensor, s: int) -> torch.Tensor:
        d, i = self._locate(s)
        return d.sample(z, i)


def check_upstream(model: torch.nn.Module, at: str, layer: str | None, x: ModelInputs) -> None:
    """The DoI's points (replacing ``at``'s output) must lie upstream of the explained ``layer``
    (None: the inputs): one forward pass of one input records which layer runs first.

    Points placed after the explained layer cannot change it: the gradient there would be
    that of the unperturbed input, the attribution all zeros, without any error.
    """
    from whynet.core.hooks import hooked
    from whynet.core.layers import resolve_layer
    from whynet.core.model import frozen_eval

    if at == layer:
        return
    if layer is None:
        raise ValueError(
            f"the DoI's points live at layer {at!r}, which runs after the explained inputs; "
            "explain a layer at or after it, or set the DoI's at=None"
        )
    order: list[str] = []

    def seen(name: str) -> object:
        def hook(*args: object) -> None:
            if name not in order:
                order.append(name)

        return hook

    regs = [(resolve_layer(model, n), "forward", seen(n)) for n in (at, layer)]
    with frozen_eval(model), torch.no_grad(), hooked(regs):  # type: ignore[arg-type]
        forward(model, take(x, slice(0, 1)))
    if at in order and layer in order and order.index(at) > order.index(layer):
        raise ValueError(
            f"the DoI's points live at layer {at!r}, which runs after the explained layer "
            f"{layer!r}: they cannot change it (all-zero attributions); place the points at "
            f"or before {layer!r}"
        )


@dataclass
class Chunk:
    """One chunk of an expansion: ``points[i]`` is sample ``samples[i]`` of input ``rows[i]``."""

    rows: torch.Tensor
    samples: torch.Tensor
    weights: torch.Tensor
    points: torch.Tensor


def expand(doi: DoI, z: torch.Tensor, batch_size: int) -> Iterator[Chunk]:
    """Walk the ``B x S`` expansion of ``z`` in chunks of at most ``batch_size`` rows.

    Samples are generated lazily, one sample index at a time, so memory stays bounded by
    ``batch_size`` whatever S is.
    """
    check_batch_size(batch_size)
    B, weights = z.shape[0], doi.weights()
    S = len(weights)
    pending: list[tuple[int, int, int]] = []  # (sample, first row, end row)
    filled = 0
    for s in range(S):
        b0 = 0
        while b0 < B:
            take = min(B - b0, batch_size - filled)
            pending.append((s, b0, b0 + take))
            filled += take
            b0 += take
            if filled == batch_size:
                yield _build(doi, z, weights, pending)
                pending, filled = [], 0
    if pending:
        yield _build(doi, z, weights, pending)


def _build(
    doi: DoI, z: torch.Tensor, weights: torch.Tensor, parts: list[tuple[int, int, int]]
) -> Chunk:
    cache: dict[int, torch.Tensor] = {}
    points, rows, samples = [], [], []
    for s, b0, b1 in parts:
        if s not in cache:
            cache = {s: doi.sample(z, s)}  # one sample of the whole batch at a time
        points.append(cache[s][b0:b1])
        rows.append(torch.arange(b0, b1))
        samples.append(torch.full((b1 - b0,), s, dtype=torch.long))
    r, sm = torch.cat(rows), torch.cat(samples)
    return Chunk(rows=r, samples=sm, weights=weights[sm], points=torch.cat(points))


class DatasetDoI:
    """A dataset (or one class of it) as the distribution of interest (class-wide influence).

    Streams ``data`` in batches; each example contributes through ``inner`` (``Point`` by
    default), weighted equally. ``cls`` keeps only examples whose label is in ``cls``.
    """

    def __init__(
        self,
        data: DataLike,
        labels: torch.Tensor | None = None,
        cls: int | Sequence[int] | None = None,
        inner: DoI | None = None,
        batch_size: int = 256,
    ) -> None:
        self.data, self.labels = data, labels
        self.cls = None if cls is None else ([cls] if isinstance(cls, int) else list(cls))
        self.inner = inner if inner is not None else Point()
        self.batch_size = check_batch_size(batch_size)

    def batches(
        self, device: torch.device | None = None
    ) -> Iterator[tuple[ModelInputs, torch.Tensor | None]]:
        """Yield ``(inputs, labels)`` batches of the examples in the distribution."""
        for x, y in iter_batches(
            self.data,
            self.labels,
            batch_size=self.batch_size,
            need_labels=self.cls is not None,
            device=device,
        ):
            if self.cls is not None:
                assert y is not None
                keep = torch.isin(y, torch.tensor(self.cls, device=y.device))
                x, y = take(x, keep), y[keep]
                if len(y) == 0:
                    continue
            yield x, y
