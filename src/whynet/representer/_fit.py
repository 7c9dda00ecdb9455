"""Fine-tuning the head on its input features (Yeh et al. 2018, Eq. 2): targets, solver, state.

``fit = one forward pass + the solver``: the features arrive as float32 (n, D) from the forward
(or the cache) and the default L-BFGS reads them once into ``[F, 1]^T`` (D+1, n) in the working
dtype (:func:`~whynet.representer._solver.augment_t`); nothing else of size n x D is made.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from whynet.core import check_classes, check_inputs, model_device
from whynet.representer import _features as feat
from whynet.representer import _lje as lje
from whynet.representer._gd import solve
from whynet.representer._solver import (
    EXACT_ATOL,
    alpha_from,
    augment,
    augment_t,
    solve_lbfgs_t,
)


def _targets(
    rp: Any,
    outputs: torch.Tensor | None,
    labels: torch.Tensor | None,
    logits0: Any,
    shape: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """(n, C) fine-tuning targets: one-hot labels, or the model's softmax (``logits0()``: the
    current head on the features, when no outputs were given)."""
    if rp.targets == "labels":
        if labels is None:
            raise ValueError(
                "targets='labels' needs training labels: pass (inputs, labels) pairs or labels=..."
            )
        return torch.nn.functional.one_hot(labels, shape[1]).to(rp.dtype)
    if outputs is None:
        outputs = logits0()
    n, c = shape
    if outputs.shape != (n, c):
        raise ValueError(
            f"model outputs have shape {tuple(outputs.shape)}, expected ({n}, {c}) = (training "
            "points, head outputs); targets='model' needs a classifier whose output is the "
            "head's output"
        )
    return torch.softmax(outputs.to(device, rp.dtype), dim=1)


def fitted_state(
    rp: Any,
    features: torch.Tensor,
    outputs: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> dict[str, Any]:
    """The fitted state of ``rp`` (a RepresenterPoints) from head inputs ``features`` (n, D)."""
    head = feat.linear_head(rp.model, rp.head)
    features = check_inputs(features, name="features", ndim=2, finite=False)
    feat.check_finite(features)
    n, d = features.shape
    c = head.out_features
    if d != head.in_features:
        raise ValueError(f"features have {d} columns but head {rp.head!r} takes {head.in_features}")
    device = model_device(rp.model)
    if labels is not None:
        labels = torch.as_tensor(labels).long().reshape(-1).to(device)
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for {n} training points")
        check_classes(labels, c, name="label")
    w0 = feat.head_weight(head).to(device, rp.dtype)
    # float32 on the caller's side already (the forward's); a memory map stays one
    stored = features if features.dtype == torch.float32 else features.float()
    if rp.solver in ("gd", "lje"):
        fa = augment(features.to(device), rp.dtype)
        t = _targets(rp, outputs, labels, lambda: fa @ w0.T, (n, c), device)
        rp._check_kernel()
        if rp.solver == "lje":
            state = lje.fitted_state(fa, w0, t, rp.lje_step, rp.lje_damping)
            return {**state, "features_": stored, "labels_": labels}
        # tol=None: the authors' 1/200 rule (this solver is for reproducing the paper)
        tol = 1.0 / 200 if rp.tol is None else rp.tol
        res = solve(fa, w0, t, rp.l2, max_iter=rp.max_iter, tol=tol)
    else:
        ft = augment_t(features.to(device), rp.dtype)
        t = _targets(rp, outputs, labels, lambda: (w0 @ ft).T, (n, c), device)
        rp._check_kernel()
        atol = EXACT_ATOL if rp.tol is None else None
        res = solve_lbfgs_t(ft, w0, t, rp.l2, max_iter=rp.max_iter, tol=rp.tol, atol=atol)
        del ft
    if not res.converged:
        hint = ", or solver='lbfgs'" if rp.solver == "gd" else ""
        warnings.warn(
            f"representer fit ended unconverged after {res.n_iter} {rp.solver} steps: "
            f"decomposition residual up to {res.residual:.3g} (mean|grad J| {res.grad_mean:.3g}"
            f"); values.sum(1) differs from the logits by up to that much. Pass a larger "
            f"max_iter (now {rp.max_iter}){hint}{', or tol=None' if rp.tol else ''}",
            UserWarning,
            stacklevel=3,
        )
    return {
        "alpha_": alpha_from(res.phi, t, rp.l2),
        "weight_": res.weight,
        "features_": stored,
        "labels_": labels,
        "converged_": bool(res.converged),
        "grad_norm_": float(res.grad_mean),
        "grad_norm0_": float(res.grad_mean0),
        "n_iter_": int(res.n_iter),
        "objective_": float(res.objective),
    }
