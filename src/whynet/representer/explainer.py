"""``RepresenterPoints``: which training examples a prediction rests on (Yeh et al., NeurIPS 2018).

The pre-softmax output of the fine-tuned head decomposes exactly over the training points
(Theorem 3.1):

    Phi(x_t)_c = sum_i alpha_ic * k(x_i, x_t),   k(x_i, x_t) = [f_i, 1] . [f_t, 1],

with ``f`` the head's input and ``alpha_i = -1/(2 lambda n) dL/dPhi_i``. The term of point ``i``
is its *representer value*: positive = excitatory, negative = inhibitory.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from whynet.core import (
    Explainer,
    Explanation,
    FittedMixin,
    check_classes,
    check_inputs,
    frozen_eval,
    load_tensors,
    model_device,
    resolve_targets,
    save_tensors,
)
from whynet.representer import _features as feat
from whynet.representer._solver import alpha_from, augment, solve, solve_lbfgs

FORMAT = "whynet.representer"
FORMAT_VERSION = 1
_TARGETS = ("model", "labels")


class TopPoints(NamedTuple):
    """The ``k`` most excitatory and most inhibitory training points per test input (B, k)."""

    excitatory: torch.Tensor  # indices into the training set, largest values first
    excitatory_values: torch.Tensor
    inhibitory: torch.Tensor  # indices, most negative values first
    inhibitory_values: torch.Tensor


class RepresenterPoints(FittedMixin, Explainer):
    """Representer point selection (Yeh, Kim, Yen, Ravikumar, NeurIPS 2018).

    Parameters
    ----------
    model : nn.Module
        A trained classifier whose output is ``head(f)`` with ``head`` an ``nn.Linear``.
    head : str
        Dotted name of the final linear layer; its *input* is the feature vector ``f``.
    l2 : float
        ``lambda`` of the fine-tuning objective (Eq. 2); the authors use 0.003.
    targets : {"model", "labels"}
        Fine-tuning targets: the original model's softmax (the authors' choice for explaining a
        given model) or the training labels one-hot (requires labels).
    max_iter : int
        Gradient steps of the fine-tuning (3000 in the authors' code).
    tol : float
        Stop when ``mean|grad| < tol * mean|grad at step 0|`` (authors: 1/200).
    dtype : torch.dtype
        Working precision of the fine-tuning, alpha and representer values (float64: exact
        decomposition to ~1e-10 of the logits at convergence).
    batch_size : int
        Inputs per forward pass when extracting features / explaining.
    block_size : int
        Training points per block when computing representer values: memory stays
        O(block_size x batch) besides the (B, n) result, and memory-mapped features work.
    kernel_dtype : torch.dtype, optional
        Precision of the products ``f_i . f_t`` (default ``dtype``). ``torch.float32`` reads the
        stored float32 features without conversion: faster for n ~ 1M, ~1e-6 relative error.
    solver : {"gd", "lbfgs"}
        "gd": the authors' full-batch gradient descent with Armijo backtracking from step 10.
        "lbfgs": L-BFGS with Armijo backtracking on the same (strongly convex) objective and
        the same stopping rule: same minimiser, typically 10-30x fewer steps.
    cache_dir : str or Path, optional
        Keep features on disk (``.npy`` + sha256 sidecar) and reuse them, memory-mapped, when
        the same model and data come back.
    progress : bool, optional
        Progress bars (default: on a terminal).

    Attributes (after ``fit``)
    --------------------------
    alpha_ : (n, C) representer coefficients; ``features_`` : (n, D) float32 head inputs;
    ``weight_`` : (C, D+1) fine-tuned head, bias last; ``labels_`` : (n,) or None;
    ``converged_``, ``grad_norm_`` (mean |grad J| at the returned iterate), ``grad_norm0_``,
    ``n_iter_``, ``objective_``.
    """

    method = "representer"

    def __init__(
        self,
        model: nn.Module,
        head: str = "head",
        l2: float = 0.003,
        targets: str = "model",
        max_iter: int = 3000,
        tol: float = 1.0 / 200,
        dtype: torch.dtype = torch.float64,
        *,
        batch_size: int = 256,
        block_size: int = 65536,
        kernel_dtype: torch.dtype | None = None,
        solver: str = "gd",
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress)
        if not isinstance(head, str):
            raise TypeError(f"head must be the dotted name of a layer, got {type(head).__name__}")
        if not (isinstance(l2, (int, float)) and l2 > 0 and math.isfinite(l2)):
            raise ValueError(f"l2 must be a positive number, got {l2!r}")
        if targets not in _TARGETS:
            raise ValueError(f"targets must be one of {_TARGETS}, got {targets!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
            raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
        if not (isinstance(tol, (int, float)) and 0 <= tol < 1):
            raise ValueError(f"tol must be in [0, 1), got {tol!r}")
        for name, dt in (("dtype", dtype), ("kernel_dtype", kernel_dtype)):
            if dt is not None and dt not in (torch.float32, torch.float64):
                raise TypeError(f"{name} must be torch.float32 or torch.float64, got {dt}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        if solver not in ("gd", "lbfgs"):
            raise ValueError(f"solver must be 'gd' or 'lbfgs', got {solver!r}")
        self.solver = solver
        self.head = head
        self.l2 = float(l2)
        self.targets = targets
        self.max_iter = max_iter
        self.tol = float(tol)
        self.dtype = dtype
        self.block_size = block_size
        self.kernel_dtype = kernel_dtype
        self.cache_dir = cache_dir

    # ---- fitting -------------------------------------------------------------------------

    def fit(self, train_data: Any, labels: torch.Tensor | None = None) -> RepresenterPoints:
        """Extract the head's input on ``train_data`` and fine-tune the head (Sec. 3.1).

        ``train_data`` is anything :func:`whynet.core.iter_batches` takes; labels come from the
        loader/dataset, or ``labels`` for a tensor. Training-point order is the data order.
        """
        feat.linear_head(self.model, self.head)
        need = self.targets == "labels"
        cache = None
        if self.cache_dir is not None:
            key = hashlib.sha256(
                (
                    feat.model_fingerprint(self.model, self.head)
                    + feat.data_fingerprint(train_data, labels, self.batch_size)
                ).encode()
            ).hexdigest()
            cache = feat.FeatureCache(self.cache_dir, key)
        if cache is not None and cache.exists():
            arrays, _ = cache.read()
            features, outputs, y = arrays["features"], arrays["outputs"], arrays.get("labels")
            if need and y is None:
                raise ValueError(
                    "targets='labels' but the cached training data had no labels; "
                    "pass (inputs, labels) pairs or labels=..."
                )
        else:
            fs, outs, ys = [], [], []
            for f, out, yb in feat.iter_features(
                self.model, self.head, train_data, labels, self.batch_size, need, self.progress
            ):
                fs.append(f)
                outs.append(out.double())  # targets: keep the logits at full precision
                ys.append(yb)
            if not fs:
                raise ValueError("train_data is empty")
            features, outputs = torch.cat(fs), torch.cat(outs)
            y = None if any(v is None for v in ys) else torch.cat([v for v in ys if v is not None])
            feat.check_finite(features)
            if cache is not None:
                cache.write(
                    {"features": features, "outputs": outputs, "labels": y},
                    {"head": self.head, "n": int(features.shape[0])},
                )
        return self.fit_features(features, outputs=outputs, labels=y)

    def fit_features(
        self,
        features: torch.Tensor,
        outputs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> RepresenterPoints:
        """Fine-tune the head on precomputed head inputs ``features`` (n, D).

        ``outputs`` (n, C) are the model's logits on the same points (needed for
        ``targets="model"``; default: the current head applied to ``features``); ``labels``
        (n,) are needed for ``targets="labels"`` and for :meth:`global_importance`.
        """
        head = feat.linear_head(self.model, self.head)
        features = check_inputs(features, name="features", ndim=2, finite=False)
        feat.check_finite(features)
        n, d = features.shape
        c = head.out_features
        if d != head.in_features:
            raise ValueError(
                f"features have {d} columns but head {self.head!r} takes {head.in_features}"
            )
        device = model_device(self.model)
        if labels is not None:
            labels = torch.as_tensor(labels).long().reshape(-1).to(device)
            if labels.shape[0] != n:
                raise ValueError(f"{labels.shape[0]} labels for {n} training points")
            check_classes(labels, c, name="label")
        fa = augment(features.to(device), self.dtype)
        w0 = feat.head_weight(head).to(device, self.dtype)
        if self.targets == "labels":
            if labels is None:
                raise ValueError(
                    "targets='labels' needs training labels: pass (inputs, labels) "
                    "pairs or labels=..."
                )
            t = torch.nn.functional.one_hot(labels, c).to(self.dtype)
        else:
            if outputs is None:
                outputs = fa @ w0.T
            if outputs.shape != (n, c):
                raise ValueError(
                    f"model outputs have shape {tuple(outputs.shape)}, expected "
                    f"({n}, {c}) = (training points, head outputs); targets='model' "
                    "needs a classifier whose output is the head's output"
                )
            t = torch.softmax(outputs.to(device, self.dtype), dim=1)
        run = solve if self.solver == "gd" else solve_lbfgs
        res = run(fa, w0, t, self.l2, max_iter=self.max_iter, tol=self.tol)
        self.alpha_ = alpha_from(res.phi, t, self.l2)
        self.weight_ = res.weight
        self.features_ = features if features.dtype == torch.float32 else features.float()
        self.labels_ = labels
        self.converged_ = res.converged
        self.grad_norm_ = res.grad_mean
        self.grad_norm0_ = res.grad_mean0
        self.n_iter_ = res.n_iter
        self.objective_ = res.objective
        return self

    # ---- explaining ----------------------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test features (B, D) float32 and model outputs, chunked, eval mode."""
        check_inputs(x, name="inputs", floating=x.is_floating_point())
        fs, outs = [], []
        with frozen_eval(self.model), torch.no_grad():
            dev = model_device(self.model)
            for i in range(0, x.shape[0], self.batch_size):
                f, out = feat.forward_features(
                    self.model, self.head, x[i : i + self.batch_size].to(dev)
                )
                fs.append(f)
                outs.append(out)
        f = torch.cat(fs)
        feat.check_finite(f, "test")
        return f, torch.cat(outs)

    def logits_features(self, features: torch.Tensor) -> torch.Tensor:
        """Fine-tuned head logits ``[f, 1] W^T`` (B, C) for head inputs ``features``."""
        self.check_is_fitted()
        return augment(features.to(self.weight_.device), self.dtype) @ self.weight_.T

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The fine-tuned head's logits on inputs ``x`` (B, C), in ``dtype``."""
        self.check_is_fitted()
        return self.logits_features(self._forward(x)[0])

    def _blocks(self, test: torch.Tensor, classes: torch.Tensor) -> Any:
        """Yield ``(start, values (B, nb))`` over blocks of training points (Thm. 3.1 terms)."""
        kdt = self.kernel_dtype or self.dtype
        dev = self.alpha_.device
        ft = test.to(dev, kdt)
        n = self.features_.shape[0]
        for a in range(0, n, self.block_size):
            fb = self.features_[a : a + self.block_size].to(dev, kdt)
            k = (ft @ fb.T).to(self.dtype) + 1.0  # [f_t, 1] . [f_i, 1]
            yield a, self.alpha_[a : a + self.block_size].T[classes] * k

    def values_features(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Representer values (B, n) of head inputs ``features`` for ``classes`` (B,)."""
        self.check_is_fitted()
        n = self.features_.shape[0]
        out = torch.empty(features.shape[0], n, dtype=self.dtype, device=self.alpha_.device)
        for i in range(0, features.shape[0], self.batch_size):
            rows = slice(i, i + self.batch_size)
            for a, v in self._blocks(features[rows], classes[rows]):
                out[rows, a : a + v.shape[1]] = v
        return out

    def _classes(self, outputs: torch.Tensor, target: Any) -> torch.Tensor:
        if target is None or (isinstance(target, str) and target == "predicted"):
            return resolve_targets(outputs, None).to(self.alpha_.device)
        if isinstance(target, str):
            raise ValueError(f"target must be 'predicted', an int or a (B,) tensor, got {target!r}")
        classes = resolve_targets(outputs, target).to(self.alpha_.device)
        check_classes(classes, self.alpha_.shape[1], name="target")
        return classes

    def explain(self, inputs: torch.Tensor, target: Any = "predicted") -> Explanation:
        """Representer values of every training point for each input.

        Parameters
        ----------
        inputs : torch.Tensor
            Test inputs (B, ...).
        target : "predicted", int or (B,) tensor
            Class to decompose; "predicted" = the original model's argmax.

        Returns
        -------
        Explanation
            ``values`` (B, n_train) with ``values.sum(1) == logits(inputs)[b, target_b]`` (up to
            the stationarity residual ``grad J / (2 lambda)``); ``extras["logits"]`` the
            fine-tuned logit of the target class.
        """
        self.check_is_fitted()
        f, outputs = self._forward(inputs)
        classes = self._classes(outputs, target)
        values = self.values_features(f, classes)
        logit = self.logits_features(f).gather(1, classes[:, None])[:, 0]
        return Explanation(
            values=values,
            target=classes,
            method=self.method,
            layer=self.head,
            params=self._params(),
            extras={"logits": logit},
            meta={"n_train": int(self.features_.shape[0])},
        )

    def top(self, inputs: torch.Tensor, k: int = 5, target: Any = "predicted") -> TopPoints:
        """The ``k`` most excitatory (largest) and inhibitory (most negative) training points.

        Computed block by block with a running top-k, so memory stays O(B x (block + k)) even
        for millions of training points.
        """
        self.check_is_fitted()
        n = self.features_.shape[0]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
        f, outputs = self._forward(inputs)
        classes = self._classes(outputs, target)
        b = f.shape[0]
        empty_v = torch.empty(b, 0, dtype=self.dtype, device=self.alpha_.device)
        empty_i = torch.empty(b, 0, dtype=torch.long, device=self.alpha_.device)
        hi_v, hi_i, lo_v, lo_i = empty_v, empty_i, empty_v, empty_i
        for a, v in self._blocks(f, classes):
            idx = torch.arange(a, a + v.shape[1], device=v.device).expand(b, -1)
            cand_v, cand_i = torch.cat([hi_v, v], 1), torch.cat([hi_i, idx], 1)
            top = cand_v.topk(min(k, cand_v.shape[1]), dim=1)
            hi_v, hi_i = top.values, cand_i.gather(1, top.indices)
            cand_v, cand_i = torch.cat([lo_v, v], 1), torch.cat([lo_i, idx], 1)
            bot = cand_v.topk(min(k, cand_v.shape[1]), dim=1, largest=False)
            lo_v, lo_i = bot.values, cand_i.gather(1, bot.indices)
        return TopPoints(hi_i, hi_v, lo_i, lo_v)

    # ---- dataset debugging ---------------------------------------------------------------

    def global_importance(self) -> torch.Tensor:
        """``|alpha_{i, y_i}|`` per training point (Sec. 4.2): large = suspicious label."""
        self.check_is_fitted()
        if self.labels_ is None:
            raise ValueError(
                "global importance needs the training labels; fit on "
                "(inputs, labels) pairs or pass labels=..."
            )
        return self.alpha_.gather(1, self.labels_[:, None].to(self.alpha_.device))[:, 0].abs()

    def mislabel_ranking(self) -> torch.Tensor:
        """Training indices by decreasing global importance: the order to check labels in."""
        return torch.argsort(self.global_importance(), descending=True, stable=True)

    # ---- persistence ---------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "l2": self.l2,
            "targets": self.targets,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "dtype": str(self.dtype),
            "solver": self.solver,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted state (alpha, head, features, labels) to one safetensors file."""
        self.check_is_fitted()
        tensors = {"alpha": self.alpha_, "weight": self.weight_, "features": self.features_}
        if self.labels_ is not None:
            tensors["labels"] = self.labels_
        meta = {
            "params": self._params(),
            "converged": self.converged_,
            "grad_norm": self.grad_norm_,
            "grad_norm0": self.grad_norm0_,
            "n_iter": self.n_iter_,
            "objective": self.objective_,
            "model_fingerprint": feat.model_fingerprint(self.model, self.head),
        }
        return save_tensors(path, tensors, meta, FORMAT, FORMAT_VERSION)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: nn.Module, *, strict: bool = True, **kwargs: Any
    ) -> RepresenterPoints:
        """Read a file written by :meth:`save` for ``model``.

        With ``strict`` (default) the model's weights must be those it was fitted with
        (sha256 fingerprint); otherwise explanations would not describe this model.
        ``kwargs`` override runtime settings (batch_size, block_size, kernel_dtype, progress).
        """
        tensors, meta = load_tensors(path, FORMAT, FORMAT_VERSION)
        missing = {"alpha", "weight", "features"} - set(tensors)
        if missing:
            raise ValueError(f"{path} lacks tensors {sorted(missing)}")
        p = dict(meta["params"])
        dtype = {"torch.float64": torch.float64, "torch.float32": torch.float32}[p.pop("dtype")]
        self = cls(model, dtype=dtype, **p, **kwargs)
        head = feat.linear_head(model, self.head)
        if strict and feat.model_fingerprint(model, self.head) != meta.get("model_fingerprint"):
            raise ValueError(
                f"{path} was fitted on a model with different weights; pass "
                "strict=False to load it anyway"
            )
        w = tensors["weight"]
        if w.shape != (head.out_features, head.in_features + 1):
            raise ValueError(
                f"{path} holds a head of shape {tuple(w.shape)}, the model's head "
                f"is ({head.out_features}, {head.in_features} + 1)"
            )
        dev = model_device(model)
        self.alpha_ = tensors["alpha"].to(dev)
        self.weight_ = w.to(dev)
        self.features_ = tensors["features"]
        self.labels_ = tensors["labels"].to(dev) if "labels" in tensors else None
        self.converged_ = bool(meta["converged"])
        self.grad_norm_ = float(meta["grad_norm"])
        self.grad_norm0_ = float(meta["grad_norm0"])
        self.n_iter_ = int(meta["n_iter"])
        self.objective_ = float(meta["objective"])
        return self
