"""``RepresenterPoints``: which training examples a prediction rests on (Yeh et al., NeurIPS 2018).

The pre-softmax output of the fine-tuned head decomposes exactly over the training points
(Theorem 3.1):

    Phi(x_t)_c = sum_i alpha_ic * k(x_i, x_t),   k(x_i, x_t) = [f_i, 1] . [f_t, 1],

with ``f`` the head's input and ``alpha_i = -1/(2 lambda n) dL/dPhi_i``. The term of point ``i``
is its *representer value*: positive = excitatory, negative = inhibitory.

Built on the core template: ``explain`` is :meth:`whynet.core.Explainer.explain`, this class
supplies :meth:`RepresenterPoints._explain_batch`; parameters and fitted state are declared.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from whynet.core import (
    Constraint,
    Explainer,
    FittedMixin,
    Interval,
    Options,
    OutputSpec,
    State,
    StoreCache,
    Target,
    batch_len,
    check_classes,
    constraint,
    data_fingerprint,
    model_fingerprint,
    parse_target,
)
from whynet.core.params import DTYPE
from whynet.representer import _certify as certify
from whynet.representer import _features as feat
from whynet.representer import _lje as lje
from whynet.representer import _scoring as scoring
from whynet.representer._fit import fitted_state
from whynet.representer._solver import augment, check_kernel


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
        Solver steps at most (3000 in the authors' code). A fit that ends unconverged warns
        (``UserWarning`` with the achieved residual) and records ``converged_ = False``.
    tol : float, optional
        None (default): with "lbfgs" exact -- stop when the decomposition residual bound
        ``max_c ||grad J_c||_1 max|F| / (2 lambda)`` is ``<= 1e-9`` (the values then sum to the
        fine-tuned logits to float64 rounding). A float: the authors' rule, stop when
        ``mean|grad| < tol * mean|grad at step 0|`` (they use 1/200; the decomposition is then
        off by up to ~0.05 on fashion-cnn).
    dtype : torch.dtype
        Working precision of the fine-tuning, alpha and representer values.
    batch_size : int
        Inputs per forward pass when extracting features / explaining.
    block_size : int
        Training points per block when computing representer values: memory stays
        O(block_size x batch) besides the (B, n) result, and memory-mapped features work.
    kernel_dtype : torch.dtype, optional
        Precision of the products ``f_i . f_t`` (default ``dtype``). ``torch.float32`` reads the
        stored float32 features without conversion: ~2x faster, ~1e-6 relative error (the
        values are then exact only to that rounding). Refused (``ValueError``) with an explicit
        ``tol`` finer than its unit roundoff.
    solver : {"lbfgs", "gd", "lje"}
        "lbfgs" (default): preconditioned L-BFGS on the same strongly convex objective (same
        minimiser). "gd": reproduces the paper -- the authors' full-batch gradient descent with
        Armijo backtracking from step 10 and (with ``tol=None``) their 1/200 stopping rule.
        "lje": RPS-LJE (Sui, Wu, Sanner, NeurIPS 2021; :mod:`._lje`), no fine-tuning or ``l2``:
        an ascent step and a Newton expansion of the trained head; needs ``targets="labels"``.
    lje_step, lje_damping : float
        RPS-LJE's ascent step (the authors' 0.01) and Hessian damping (x its mean diagonal).
    cache_dir : str or Path, optional
        Keep features on disk (:class:`whynet.core.StoreCache`: ``.npy`` + sha256 sidecar) and
        reuse them, memory-mapped, when the same model and data come back.
    progress : bool, optional
        Progress bars (default: on a terminal).
    output : int, str or callable, optional
        The head's logits among a multi-output model's outputs (``whynet.core.select_output``).

    Attributes (after ``fit``)
    --------------------------
    alpha_ : (n, C) representer coefficients; ``features_`` : (n, D) float32 head inputs;
    ``weight_`` : (C, D+1) fine-tuned head, bias last; ``labels_`` : (n,) or None;
    ``converged_``, ``grad_norm_`` (mean |grad J| at the returned iterate), ``grad_norm0_``,
    ``n_iter_``, ``objective_`` (declared in ``_fitted_state``; saved and loaded by
    :class:`whynet.core.FittedMixin`).
    """

    method = "representer"
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "head": constraint(str, error=TypeError, desc="the dotted name of a layer"),
        "l2": constraint(Interval(float, 0, None, "neither"), desc="a positive number"),
        "targets": constraint(Options(("model", "labels"))),
        "max_iter": constraint(Interval(int, 0, None)),
        "tol": constraint(Interval(float, 0, 1, "left"), None, desc="in [0, 1) or None"),
        "dtype": constraint(DTYPE, error=TypeError),
        "block_size": constraint(Interval(int, 1, None)),
        "kernel_dtype": constraint(DTYPE, None, error=TypeError),
        "solver": constraint(Options(("lbfgs", "gd", "lje")), desc="'lbfgs', 'gd' or 'lje'"),
        "lje_step": constraint(Interval(float, 0, None), desc="a number >= 0"),
        "lje_damping": constraint(Interval(float, 0, None, "neither"), desc="a positive number"),
        "cache_dir": constraint(str, os.PathLike, None, error=TypeError, desc="a folder or None"),
    }
    _fitted_state: ClassVar[dict[str, State]] = {
        "alpha_": State(),
        "weight_": State(),
        # a memory-mapped CPU matrix for large n: never moved to the model's device
        "features_": State(device=False),
        "labels_": State(optional=True),
        "converged_": State("json"),
        "grad_norm_": State("json"),
        "grad_norm0_": State("json"),
        "n_iter_": State("json"),
        "objective_": State("json"),
        # RPS-LJE only (solver="lje"): the expansion point and the damped inverse Hessian
        "lje_weight0_": State(optional=True),
        "lje_hinv_": State(optional=True),
    }
    # the declared state's types (annotations only: absent until fit)
    alpha_: torch.Tensor
    weight_: torch.Tensor
    features_: torch.Tensor
    labels_: torch.Tensor | None
    converged_: bool
    grad_norm_: float
    grad_norm0_: float
    n_iter_: int
    objective_: float
    lje_weight0_: torch.Tensor | None
    lje_hinv_: torch.Tensor | None
    # derived from the state after fit, made once (see _scoring.kernel_parts)
    _kcache: tuple[Any, ...]
    _format = "whynet.representer"
    _format_version = 2  # 1: the representer's own file layout before the core persistence
    _check_fingerprint = True

    def __init__(
        self,
        model: nn.Module,
        head: str = "head",
        l2: float = 0.003,
        targets: str = "model",
        max_iter: int = 3000,
        tol: float | None = None,
        dtype: torch.dtype = torch.float64,
        *,
        batch_size: int = 256,
        block_size: int = 65536,
        kernel_dtype: torch.dtype | None = None,
        solver: str = "lbfgs",
        lje_step: float = 0.01,
        lje_damping: float = 1e-3,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        output: OutputSpec = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, output=output)
        self.head = head
        self.l2 = l2
        self.targets = targets
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.block_size = block_size
        self.kernel_dtype = kernel_dtype
        self.solver = solver
        self.lje_step = lje_step
        self.lje_damping = lje_damping
        self.cache_dir = cache_dir
        self._check_params()
        self.l2, self.tol = float(l2), None if tol is None else float(tol)
        self.lje_step, self.lje_damping = float(lje_step), float(lje_damping)
        lje.check_targets(solver, targets)
        self._check_kernel()
        # a str, so that the setting can be saved (a Path is not JSON)
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)

    def _check_kernel(self) -> None:
        """Refuse a kernel dtype that rounds coarser than the tolerance asked for (Bad input)."""
        check_kernel(self.kernel_dtype or self.dtype, self.tol)

    def _fingerprint(self) -> str:
        """The model's weights and the head's name (a cache or file is for one head)."""
        return model_fingerprint(self.model, extra=self.head)

    # ---- fitting -------------------------------------------------------------------------

    def fit(self, train_data: Any, labels: torch.Tensor | None = None) -> RepresenterPoints:
        """Extract the head's input on ``train_data`` and fine-tune the head (Sec. 3.1).

        ``train_data`` is anything :func:`whynet.core.iter_batches` takes; labels come from the
        loader/dataset, or ``labels`` for a tensor. Training-point order is the data order.
        """
        self._reset_fitted()
        feat.linear_head(self.model, self.head)
        need = self.targets == "labels"
        cache = None
        if self.cache_dir is not None:
            key = hashlib.sha256(
                (
                    self._fingerprint()
                    + data_fingerprint(train_data, labels, self.batch_size)
                    + repr(self.output)
                ).encode()
            ).hexdigest()
            cache = StoreCache(self.cache_dir, key, what="representer feature")
        features, outputs, y = feat.training_features(
            self.model,
            self.head,
            train_data,
            labels,
            batch_size=self.batch_size,
            need_labels=need,
            progress=self.progress,
            cache=cache,
            output=self.output,
        )
        return self.fit_features(features, outputs=outputs, labels=y)

    def fit_features(
        self,
        features: torch.Tensor,
        outputs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> RepresenterPoints:
        """Fine-tune the head on precomputed head inputs ``features`` (n, D) (Eq. 2).

        ``outputs`` (n, C) are the model's logits on the same points (needed for
        ``targets="model"``; default: the current head applied to ``features``); ``labels``
        (n,) are needed for ``targets="labels"`` and for :meth:`global_importance`.
        """
        self._reset_fitted()
        self._set_fitted(**fitted_state(self, features, outputs, labels))
        return self

    def _check_loaded(self, where: str) -> None:
        """The saved head and coefficients must fit the model's head."""
        feat.check_loaded(self.model, self.head, self.weight_, self.features_, self.alpha_, where)

    # ---- explaining ----------------------------------------------------------------------

    def _features_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, out = feat.forward_features(self.model, self.head, x, self.batch_size, self.output)
        feat.check_finite(f, "test")
        return f, out

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test features (B, D) float32 and model outputs of inputs ``x`` (eval mode)."""
        return self._features_of(self._check_inputs(x))

    def logits_features(self, features: torch.Tensor) -> torch.Tensor:
        """Fine-tuned head logits ``[f, 1] W^T`` (B, C) for head inputs ``features``."""
        self.check_is_fitted()
        return augment(features.to(self.weight_.device), self.dtype) @ self.weight_.T

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The fine-tuned head's logits on inputs ``x`` (B, C), in ``dtype``."""
        self.check_is_fitted()
        return self.logits_features(self._forward(x)[0])

    def _blocks(
        self, test: torch.Tensor, classes: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, values (B, nb))`` over blocks of training points (:func:`._scoring.blocks`)."""
        return scoring.blocks(self, test, classes)

    def values_features(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Representer values (B, n) of head inputs ``features`` for ``classes`` (B,).

        Queries go ``batch_size`` at a time through one matrix product per block of training
        points (no per-query loop)."""
        self.check_is_fitted()
        return scoring.values(self, features, classes)

    def _classes(self, outputs: torch.Tensor, target: Target) -> torch.Tensor:
        """The class per input (the given ones, else the original model's argmax)."""
        classes = target.classes_for(outputs).to(self.alpha_.device)
        check_classes(classes, self.alpha_.shape[1], name="target")
        return classes

    def _check_target(self, x: torch.Tensor, target: Target) -> None:
        # the classes are the fitted coefficients' columns: no forward pass needed
        if target.classes is not None:
            check_classes(target.classes, self.alpha_.shape[1], name="target")

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, torch.Tensor | None]:
        """Representer values of every training point for a chunk of inputs (Thm. 3.1).

        ``values`` (B, n_train) with ``values.sum(1) == logits(inputs)[b, target_b]`` (up to the
        stationarity residual ``grad J / (2 lambda)``); ``logits`` (an extra) the fine-tuned
        logit of the target class; the default target is the original model's prediction.
        """
        f, outputs = self._features_of(x)
        classes = self._classes(outputs, target)
        logit = self.logits_features(f).gather(1, classes[:, None])[:, 0]
        return {"values": self.values_features(f, classes), "target": classes, "logits": logit}

    def _explained_layer(self) -> str | None:
        return self.head

    def _meta(self) -> dict[str, Any]:
        return {"n_train": int(self.features_.shape[0])}

    def top(self, inputs: torch.Tensor, k: int = 5, target: Any = None) -> TopPoints:
        """The ``k`` most excitatory (largest) and inhibitory (most negative) training points.

        ``target`` follows the one policy of :meth:`explain` (None / "predicted": the model's
        prediction). Exact with the default float64 kernel: a scan in order of each class's
        bounds ``|alpha_ic| (1 + ||f_i|| ||f_t||)`` that stops when nothing unread can enter
        the top-k, else a certified float32 scan rescored in float64, else the float64
        blocks (:func:`._certify.top`); memory stays O(B x (block + k)).
        """
        self.check_is_fitted()
        n = self.features_.shape[0]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
        x = self._check_inputs(inputs)
        tgt = parse_target(target, batch_len(x))
        self._check_target(x, tgt)
        f, outputs = self._features_of(x)
        classes = self._classes(outputs, tgt)
        return TopPoints(*certify.top(self, f, classes, k))

    # ---- dataset debugging ---------------------------------------------------------------

    def global_importance(self) -> torch.Tensor:
        """``|alpha_{i, y_i}|`` per training point (Sec. 4.2): large = suspicious label.

        With ``solver="lje"``: ``|(W_i f_i)_{y_i}|``, the point's value for itself."""
        self.check_is_fitted()
        if self.labels_ is None:
            raise ValueError(
                "global importance needs the training labels; fit on "
                "(inputs, labels) pairs or pass labels=..."
            )
        labels = self.labels_.to(self.alpha_.device)
        if self.lje_hinv_ is not None:  # RPS-LJE: |(W_i f_i)_{y_i}|, the authors' score
            return lje.self_values(*lje.parts(self), labels).abs()
        return self.alpha_.gather(1, labels[:, None])[:, 0].abs()

    def mislabel_ranking(self) -> torch.Tensor:
        """Training indices by decreasing global importance: the order to check labels in."""
        return torch.argsort(self.global_importance(), descending=True, stable=True)
