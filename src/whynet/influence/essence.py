"""The "essence" of a class (Leino et al. 2018, Sec. 4.2): keep only the top-k channels by
class-conditional influence at one layer, ablate the rest, and check that the reduced model
still separates the class from the rest about as well as the full model (and much better than
k random channels).

The paper's table values were not found (METHODS.md); layer, k, the ablation value and the
data split are parameters here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from whynet.core import Accumulator, DoI, OutputSpec, frozen_eval, resolve_layer, run_model
from whynet.influence.internal import InternalInfluence
from whynet.influence.ranking import collapse


@dataclass
class EssenceResult:
    """Class-vs-rest scores of the full model, the top-k model and random-k models.

    ``rows`` has one dict per k: ``k``, ``reduced_acc``, ``reduced_bacc``, ``random_acc``,
    ``random_bacc`` (mean over draws), ``full_acc``, ``full_bacc``. ``acc`` is plain accuracy
    of "predicted == cls" against "label == cls"; ``bacc`` the balanced accuracy (mean of the
    true-positive and true-negative rates), which a constant "not cls" answer cannot inflate.
    """

    cls: int
    layer: str
    ablation: str
    channels: torch.Tensor  # all channels ranked by class-conditional influence
    scores: torch.Tensor  # their influence (spatially reduced)
    rows: list[dict[str, float]] = field(default_factory=list)
    n_eval: int = 0


def _binary_scores(pred_is: torch.Tensor, true_is: torch.Tensor) -> tuple[float, float]:
    acc = (pred_is == true_is).double().mean().item()
    pos, neg = true_is.sum().item(), (~true_is).sum().item()
    tpr = (pred_is & true_is).sum().item() / pos if pos else float("nan")
    tnr = (~pred_is & ~true_is).sum().item() / neg if neg else float("nan")
    return acc, 0.5 * (tpr + tnr)


def _predict(
    model: nn.Module,
    data: Any,
    labels: torch.Tensor | None,
    batch_size: int,
    replace: dict[str, Any] | None,
    output: OutputSpec = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and labels over ``data`` (the model pipeline; ``replace`` ablates)."""
    acc = Accumulator()
    for b in run_model(
        model,
        data,
        labels,
        replace=replace,
        batch_size=batch_size,
        need_labels=True,
        output=output,
    ):
        acc.update(pred=b.output.argmax(-1).cpu(), y=b.labels)
    got = acc.compute()
    return got["pred"], got["y"].cpu()


def _mean_activation(
    model: nn.Module,
    layer: str,
    data: Any,
    labels: torch.Tensor | None,
    batch_size: int,
    output: OutputSpec = None,
) -> torch.Tensor:
    acc = Accumulator("sum")  # float64 running sum over examples
    for b in run_model(model, data, labels, layers=[layer], batch_size=batch_size, output=output):
        acc.update(act=b.acts[layer])
    if acc.n == 0:
        raise ValueError("no data to compute the mean activation from")
    return acc.compute()["act"] / acc.n


def _keep_only(keep: torch.Tensor, fill: torch.Tensor | float, dim: int = 1):
    def fn(out: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(out.shape[dim], dtype=torch.bool, device=out.device)
        mask[keep.to(out.device)] = True
        shape = [1] * out.dim()
        shape[dim] = -1
        f = fill if isinstance(fill, float) else fill.to(out.dtype).expand_as(out[0])
        return torch.where(
            mask.view(shape), out, torch.as_tensor(f, dtype=out.dtype, device=out.device)
        )

    return fn


def essence(
    model: nn.Module,
    layer: str,
    cls: int,
    k: int | Sequence[int],
    data: Any,
    labels: torch.Tensor | None = None,
    ablation: str = "mean",
    influence_data: Any = None,
    influence_labels: torch.Tensor | None = None,
    doi: DoI | None = None,
    reduce: str | None = "sum",
    random_draws: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool | None = None,
    output: OutputSpec = None,
    channel_dim: int | None = None,
) -> EssenceResult:
    """Keep only the top-k channels of ``layer`` for class ``cls``; compare accuracies.

    Parameters
    ----------
    model : nn.Module
        A classifier.
    layer : str
        The layer; its neurons are channels (dimension 1) or, for a ``(B, T, D)`` token layer,
        hidden units (see ``channel_dim``).
    cls : int
        The class whose essence is extracted.
    k : int or sequence of int
        Numbers of channels to keep.
    data, labels : held-out evaluation data (loader/dataset of pairs, or tensor + labels).
    ablation : {"mean", "zero"}
        Value given to the other channels: their mean activation (per position) over
        ``influence_data`` (default), or zero. Mean ablation keeps the next layer's input near
        its training distribution; zeroing many channels shifts every logit together, so the
        argmax collapses to always / never ``cls`` (measured on fashion-cnn: docs/influence.md).
    influence_data, influence_labels : optional
        Data for the class-conditional influence (examples of ``cls``, QoI = its logit) and
        the mean activation; default: ``data``. Use training data to keep evaluation held out.
    doi : DoI, optional
        Per-example DoI inside the class distribution (default ``Point()``).
    reduce : {"sum", "max", "mean"}
        Spatial reduction for the channel ranking.
    random_draws, seed : random-k baseline: draws of k channels with a seeded generator.
    output : int, str or callable, optional
        The prediction among a multi-output model's outputs (``select_output``).
    channel_dim : int, optional
        The neuron axis of ``layer`` (default: :func:`whynet.core.layout.neuron_dim`).
    """
    if ablation not in ("zero", "mean"):
        raise ValueError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    if reduce is None:
        raise ValueError("essence ranks channels: reduce must be 'sum', 'max' or 'mean'")
    if isinstance(random_draws, bool) or not isinstance(random_draws, int) or random_draws < 1:
        raise ValueError(
            f"random_draws must be an int >= 1 (the random-k baseline), got {random_draws!r}"
        )
    resolve_layer(model, layer)
    ks = [k] if isinstance(k, int) else list(k)
    inf_data = data if influence_data is None else influence_data
    inf_labels = labels if influence_data is None else influence_labels
    expl = InternalInfluence(
        model,
        layer,
        qoi=cls,
        doi=doi,
        batch_size=batch_size,
        progress=progress,
        output=output,
        channel_dim=channel_dim,
    ).explain_dataset(inf_data, inf_labels, cls=cls)
    dim = int(expl.meta["neuron_dim"])
    scores = collapse(expl.values, reduce, dim)[0]
    n_ch = scores.numel()
    unit = "hidden units" if dim > 1 else "channels"
    for kk in ks:
        if isinstance(kk, bool) or not isinstance(kk, int) or not 1 <= kk <= n_ch:
            raise ValueError(f"k must be in [1, {n_ch}] ({unit} of {layer!r}), got {kk!r}")
    order = scores.argsort(descending=True)
    with frozen_eval(model):
        fill: torch.Tensor | float = 0.0
        if ablation == "mean":
            fill = _mean_activation(model, layer, inf_data, inf_labels, batch_size, output)
        pred, y = _predict(model, data, labels, batch_size, None, output)
        truth = y == cls
        full = _binary_scores(pred == cls, truth)
        gen = torch.Generator().manual_seed(seed)
        result = EssenceResult(
            cls=cls,
            layer=layer,
            ablation=ablation,
            channels=order,
            scores=scores[order],
            n_eval=len(y),
        )
        for kk in ks:
            p, _ = _predict(
                model, data, labels, batch_size, {layer: _keep_only(order[:kk], fill, dim)}, output
            )
            red = _binary_scores(p == cls, truth)
            rnd = []
            for _ in range(random_draws):
                pick = torch.randperm(n_ch, generator=gen)[:kk]
                p, _ = _predict(
                    model, data, labels, batch_size, {layer: _keep_only(pick, fill, dim)}, output
                )
                rnd.append(_binary_scores(p == cls, truth))
            ra = sum(a for a, _ in rnd) / len(rnd) if rnd else float("nan")
            rb = sum(b for _, b in rnd) / len(rnd) if rnd else float("nan")
            result.rows.append(
                {
                    "k": kk,
                    "reduced_acc": red[0],
                    "reduced_bacc": red[1],
                    "random_acc": ra,
                    "random_bacc": rb,
                    "full_acc": full[0],
                    "full_bacc": full[1],
                }
            )
    return result
