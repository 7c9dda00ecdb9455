"""Explanatory masks from a trained explainer network (Phillips, Goh & Hodas, 2019).

An explainer network g maps an input x to a mask m = sigmoid(g(x)) in [0, 1]. The frozen model f
sees the masked input x~ = m*x + (1-m)*b (images; b = blurred x, its mean, or 0) or, for token
sequences, its embedding vectors scaled by m. g is trained so that f(x~) keeps f's prediction
while the mask stays small:

    L = l(f(x~), y) + sparsity * mean(m) [+ smoothness * TV(m)]                         (1)
    [+ deletion * L_del(f(x~_bar))]                                                   (2)

with l the cross-entropy to f's predicted class (or the label), or the squared error to f's
unmasked output (regression). The optional deletion term (2) (:mod:`whynet.masks.objective`)
asks the model given the complement 1 - m to lose the prediction. Explaining a new input is
then one forward pass of g.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Generator
from typing import Any, ClassVar

import torch
from torch import nn

from whynet.core import (
    Explainer,
    FittedMixin,
    ModelInputs,
    OutputSpec,
    State,
    Target,
    batch_len,
    blend,
    check_classes,
    data_length,
    frozen_eval,
    intervene,
    is_mapping,
    iter_batches,
    main_tensor,
    model_device,
    model_dtype,
    reference,
    resolve_layer,
    train,
    with_main,
)
from whynet.core.params import Interval, Options, constraint
from whynet.masks.inputs import check_batch, check_labels, shuffled_batches, token_valid
from whynet.masks.networks import (
    ImageMaskNet,
    SequenceMaskNet,
    build_network,
    network_config,
)
from whynet.masks.objective import mask_loss, objective_name

__all__ = ["MaskExplainer", "FILLS", "FORMAT", "FORMAT_VERSION"]

FORMAT = "whynet.masks"
#: 2: the declared-state layout of :mod:`whynet.core.state` (1 was the method's own layout)
FORMAT_VERSION = 2
MODALITIES = ("image", "sequence")
TASKS = ("classification", "regression")
TARGETS = ("prediction", "label")
#: the references b an image may be blended into (:func:`whynet.core.image.reference`)
FILLS = ("blur", "mean", "zero")

_NON_NEGATIVE = constraint(Interval(float, 0, None))


class MaskExplainer(FittedMixin, Explainer):
    """A trained explainer network that outputs explanatory masks in one forward pass.

    Phillips, Goh & Hodas, "Explanatory Masks for Neural Network Interpretability" (2019),
    objective (1) in the module docstring.

    Parameters
    ----------
    model : nn.Module
        The frozen pre-trained model f; never modified (eval mode, parameters untouched).
    modality : {"image", "sequence"}
        ``"image"``: inputs (B, C, H, W) float, one mask value per pixel. ``"sequence"``: token
        ids (B, T) int with trailing padding, one mask value per token, applied by scaling the
        output of the model's ``embedding`` layer through a forward hook. Either may be a
        mapping for ``model(**batch)`` (an HF ``BatchEncoding``): its ``pixel_values`` /
        ``input_ids`` are masked and its attention mask marks the padding.
    explainer : nn.Module, optional
        The network g. Default: :class:`~whynet.masks.networks.ImageMaskNet` for images,
        :class:`~whynet.masks.networks.SequenceMaskNet` (biGRU over the detached embeddings)
        for sequences. A custom image net maps (B, C, H, W) -> (B, H, W) logits; a custom
        sequence net maps (embeddings (B, T, E), valid (B, T) bool) -> (B, T) logits.
    sparsity : float
        Weight lambda of mean(m) in (1). Too small: masks collapse to all ones; too large: to
        all zeros (always look at the sweep of mask size vs fidelity).
    fill : {"blur", "mean", "zero"}
        Reference b for images: Gaussian-blurred input (``blur_sigma`` px), per-image channel
        mean, or zeros. Sequences always scale embeddings towards 0.
    target : {"prediction", "label"}
        Preserve the model's own prediction (explains f) or fit the label.
    smoothness : float
        Weight of the total-variation term (images).
    deletion : float
        Weight of the deletion term (2): the model given the complement 1 - m must lose the
        prediction (its class probability, or for regression its output moves to the output
        on the fully removed input). 0 (default): the paper's preservation-only loss (1),
        which finds what is *enough*; > 0 also asks the mask to hold what is *necessary*.
    embedding : str
        Dotted name of the model's embedding layer (sequences).
    task : {"classification", "regression"}
        Cross-entropy to a class, or squared error divided by the variance of the reference
        outputs over the first training batch (so ``sparsity`` means the same across units).
    lr : float
        Adam learning rate for g.
    batch_size : int
        Training and explanation batch size.
    seed : int
        Seeds g's initialisation and the training order.
    blur_sigma : float
        Standard deviation (px) of the blur fill.
    progress : bool, optional
        Show a bar during ``fit`` (default: on a terminal).
    output : int, str or callable, optional
        The prediction among a multi-output model's outputs (``whynet.core.select_output``).
    pad_id : int or None
        Padding id of plain ``(B, T)`` id tensors (default 0, as the bundled models); a
        mapping's attention mask takes precedence; None: no padding. Masks are exactly 0 on
        padding, which is excluded from the mask size.
    """

    method = "masks"
    _class_targets = False  # amortised: it explains what its network was trained on
    _parameter_constraints: ClassVar = {
        "modality": constraint(Options(MODALITIES)),
        "explainer": constraint(nn.Module, None, error=TypeError, desc="an nn.Module or None"),
        "sparsity": _NON_NEGATIVE,
        "fill": constraint(Options(FILLS)),
        "target": constraint(Options(TARGETS)),
        "smoothness": _NON_NEGATIVE,
        "deletion": _NON_NEGATIVE,
        "embedding": constraint(str, error=TypeError),
        "task": constraint(Options(TASKS)),
        "lr": _NON_NEGATIVE,
        "seed": constraint(int, error=TypeError),
        "blur_sigma": _NON_NEGATIVE,
        "pad_id": constraint(int, None, error=TypeError, desc="an int token id or None"),
    }
    _fitted_state: ClassVar = {
        "network_": State("module", config=network_config, build=build_network),
        "history_": State("json"),
        "in_channels_": State("json"),
        "output_scale_": State("json"),
        "max_length_": State("json", optional=True),
    }
    _format = FORMAT
    _format_version = FORMAT_VERSION
    network_: nn.Module
    history_: list[dict[str, float]]
    in_channels_: int
    output_scale_: float
    max_length_: int  # sequences only

    def __init__(
        self,
        model: nn.Module,
        modality: str = "image",
        explainer: nn.Module | None = None,
        *,
        sparsity: float = 1.0,
        fill: str = "blur",
        target: str = "prediction",
        smoothness: float = 0.0,
        deletion: float = 0.0,
        embedding: str = "embedding",
        task: str = "classification",
        lr: float = 3e-3,
        batch_size: int = 64,
        seed: int = 0,
        blur_sigma: float = 4.0,
        progress: bool | None = None,
        output: OutputSpec = None,
        pad_id: int | None = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, output=output)
        self.modality = modality
        self.explainer = explainer
        self.sparsity = sparsity
        self.fill = fill
        self.target = target
        self.smoothness = smoothness
        self.deletion = deletion
        self.embedding = embedding
        self.task = task
        self.lr = lr
        self.seed = seed
        self.blur_sigma = blur_sigma
        self.pad_id = pad_id
        self._check_params()

    def params(self) -> dict[str, Any]:
        """The settings as JSON; a given explainer network appears as its class name."""
        p = super().params()
        p["explainer"] = None if self.explainer is None else type(self.explainer).__name__
        return p

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, inputs: Any) -> Any:
        return self._check_x(inputs)

    def _check_x(self, x: object, name: str = "inputs", check_length: bool = True) -> Any:
        """Validate a batch for this modality (against the fitted channels / lengths)."""
        return check_batch(
            x,
            self.modality,
            name,
            self.model,
            channels=getattr(self, "in_channels_", None),
            max_length=getattr(self, "max_length_", None) if check_length else None,
            pad_id=self.pad_id,
        )

    def _embedding_layer(self) -> nn.Embedding:
        layer = resolve_layer(self.model, self.embedding)
        if not isinstance(layer, nn.Embedding):
            raise TypeError(
                f"embedding layer {self.embedding!r} is a {type(layer).__name__}, "
                "expected nn.Embedding"
            )
        return layer

    def _build(self, x: ModelInputs) -> nn.Module:
        """The explainer network for this model and input (a copy of a user-given one)."""
        device, dtype = model_device(self.model), model_dtype(self.model)
        if self.explainer is not None:
            net = copy.deepcopy(self.explainer)
        elif self.modality == "image":
            net = ImageMaskNet(in_channels=int(main_tensor(x).shape[1]))
        else:
            net = SequenceMaskNet(embed_dim=self._embedding_layer().embedding_dim)
        return net.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ mask and masked forward
    def _mask(self, net: nn.Module, batch: ModelInputs) -> torch.Tensor:
        """m = sigmoid(g(x)) in [0, 1]: (B, H, W) or (B, T) with padding exactly 0."""
        x = main_tensor(batch)
        if self.modality == "image":
            logits = net(x)
            if logits.shape != (x.shape[0], *x.shape[2:]):
                raise ValueError(
                    f"explainer network gave shape {tuple(logits.shape)}, expected "
                    f"{(x.shape[0], *x.shape[2:])}"
                )
            return torch.sigmoid(logits)
        valid = token_valid(batch, self.pad_id)
        with torch.no_grad():  # g reads the model's embeddings, detached (f stays untouched)
            emb = self._embedding_layer()(x)
        logits = net(emb, valid)
        return torch.sigmoid(logits) * valid.to(logits.dtype)

    def masked_output(self, x: ModelInputs, mask: torch.Tensor) -> torch.Tensor:
        """The model's output on x masked by ``mask``: f(x*m + b*(1-m)) or f with its embedding
        vectors scaled by m. ``mask`` = 1 reproduces ``model(x)`` exactly.

        Call inside :func:`~whynet.core.frozen_eval` to get the model's eval-mode output.
        """
        if self.modality == "image":
            img = main_tensor(x)
            with torch.no_grad():
                ref = reference(img, self.fill, self.blur_sigma, name="fill")
            return self._predict(with_main(x, blend(img, mask.to(img.dtype), ref)))
        scale = mask.unsqueeze(-1)

        def scaled(emb: torch.Tensor) -> torch.Tensor:
            return emb * scale.to(emb.dtype)

        with intervene(self.model, {self.embedding: scaled}):
            return self._predict(x)

    # ------------------------------------------------------------------ training
    def _loss(
        self,
        net: nn.Module,
        x: ModelInputs,
        y: torch.Tensor | None,
        scale: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Objective (1) [+ (2)] on one batch (:func:`whynet.masks.objective.mask_loss`)."""
        return mask_loss(self, net, x, y, scale)

    def _epoch_batches(
        self, data: Any, labels: torch.Tensor | None, gen: torch.Generator
    ) -> Generator[tuple[ModelInputs, torch.Tensor | None], None, None]:
        return shuffled_batches(
            data,
            labels,
            gen,
            self.batch_size,
            self.target == "label",
            model_device(self.model),
            class_labels=self.task == "classification",
        )

    def _evaluate(
        self,
        net: nn.Module,
        data: Any,
        labels: torch.Tensor | None,
        scale: float,
    ) -> dict[str, float]:
        """Mean loss, mask size and fidelity of objective (1) over ``data`` (no gradients)."""
        totals: dict[str, float] = {}
        n = 0
        with torch.no_grad():
            for x, y in iter_batches(
                data,
                labels,
                batch_size=self.batch_size,
                need_labels=self.target == "label",
                device=model_device(self.model),
                class_labels=self.task == "classification",
            ):
                x = self._check_x(x, "val_data", check_length=False)
                _, stats = self._loss(net, x, y, scale)
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v * batch_len(x)
                n += batch_len(x)
        if n == 0:
            raise ValueError("val_data is empty")
        return {k: v / n for k, v in totals.items()}

    def _first_batch(self, data: Any, labels: torch.Tensor | None) -> tuple[nn.Module, ModelInputs]:
        """Peek at the first training batch (the one :func:`~whynet.core.train` will see
        first: same seed, same generator) and build the network g from it, initialised under
        ``fork_rng`` seeded with ``seed`` (reproducible, the global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # a shuffled DataLoader draws its order from it
            batches = self._epoch_batches(data, labels, torch.Generator().manual_seed(self.seed))
            try:
                first = next(batches, None)
            finally:
                batches.close()
            if first is None:
                raise ValueError("train_data is empty")
            x = self._check_x(first[0], "train_data", check_length=False)
            torch.manual_seed(self.seed)
            return self._build(x), x

    def fit(
        self,
        train_data: Any,
        labels: torch.Tensor | None = None,
        *,
        epochs: int = 5,
        val_data: Any = None,
        val_labels: torch.Tensor | None = None,
        patience: int = 2,
    ) -> MaskExplainer:
        """Train the explainer network g on ``train_data`` by minimising (1); f stays frozen.

        Parameters
        ----------
        train_data : DataLoader, Dataset or torch.Tensor
            Inputs (with labels when ``target="label"``); see :func:`whynet.core.iter_batches`.
            Tensors and Datasets are shuffled each epoch with the explainer's seed.
        labels : torch.Tensor, optional
            Labels for tensor ``train_data``.
        epochs : int
            Maximum number of passes.
        val_data, val_labels : optional
            Validation data: after each epoch its loss is computed; training stops after
            ``patience`` epochs without improvement and the best network is kept.
        patience : int
            Early-stopping patience (epochs).

        Returns
        -------
        self
        """
        self._reset_fitted()
        bare = isinstance(train_data, torch.Tensor) or is_mapping(train_data)
        if self.target == "label" and labels is None and bare:
            raise ValueError(
                f"target='label' needs labels, but train_data is a bare tensor and "
                f"labels=None (a {self.task} model's prediction can be kept with "
                "target='prediction')"
            )
        if self.modality == "sequence":
            self._embedding_layer()
        check_labels(labels, data_length(train_data), self.task)  # also when only kept
        max_len = 0
        with frozen_eval(self.model):
            net, x0 = self._first_batch(train_data, labels)
            if labels is not None and self.task == "classification":
                check_classes(labels, self._n_outputs(x0), name="label")  # even if unused
            scale = 1.0
            if self.task == "regression":
                # the variance of f's outputs on the first training batch: `sparsity` then
                # means the same whatever the output's units
                with torch.no_grad():
                    ref = self._predict(x0)
                scale = max(float(ref.double().var()), 1e-12) if ref.numel() > 1 else 1.0

            def loss(batch: tuple[ModelInputs, torch.Tensor | None]) -> Any:
                nonlocal max_len
                x = self._check_x(batch[0], "train_data", check_length=False)
                if self.modality == "sequence":
                    max_len = max(max_len, int(token_valid(x, self.pad_id).sum(1).max()))
                value, stats = self._loss(net, x, batch[1], scale)
                return value, stats, batch_len(x)

            validate = None
            if val_data is not None:

                def validate() -> dict[str, float]:
                    return self._evaluate(net, val_data, val_labels, scale)

            result = train(
                net,
                lambda epoch, gen: self._epoch_batches(train_data, labels, gen),
                loss,
                epochs=epochs,
                lr=self.lr,
                seed=self.seed,
                validate=validate,
                patience=patience,
                progress=self.progress,
                desc="masks",
            )
        state: dict[str, Any] = {
            "network_": net,
            "history_": result.history,
            "in_channels_": int(main_tensor(x0).shape[1]),
            "output_scale_": scale,
        }
        if self.modality == "sequence":
            state["max_length_"] = max_len
        self._set_fitted(**state)
        return self

    # ------------------------------------------------------------------ explaining
    def _explain_batch(self, x: ModelInputs, target: Target) -> dict[str, torch.Tensor | None]:
        """Masks from one forward pass of the trained network g: (B, H, W) or (B, T), padding 0.

        g explains what it was trained on (the model's prediction, or the label), so only
        ``target=None`` / ``"predicted"`` reach here.
        """
        with frozen_eval(self.network_), torch.no_grad():
            return {"values": self._mask(self.network_, x)}

    def _meta(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "trained_target": self.target,
            "objective": objective_name(self.deletion),  # which loss g was trained with
            "deletion": self.deletion,
        }

    # ------------------------------------------------------------------ files
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: nn.Module,
        *,
        strict: bool = True,
        progress: bool | None = None,
        **overrides: Any,
    ) -> MaskExplainer:
        """Rebuild a saved MaskExplainer for ``model`` (never unpickles anything).

        The trained network comes from the file, so a custom ``explainer`` given at
        construction need not be passed again.
        """
        overrides.setdefault("explainer", None)
        loaded: MaskExplainer = super().load(
            path, model, strict=strict, progress=progress, **overrides
        )
        return loaded

    def _check_loaded(self, where: str) -> None:
        kind = getattr(self.network_, "config", {}).get("kind")
        if kind is not None and kind != self.modality:
            raise ValueError(
                f"{where} holds a {kind} explainer network but modality={self.modality!r}"
            )
        # the network was fitted for inputs of in_channels_ channels: a model whose first
        # convolution reads another number of channels is not the one it was fitted on
        conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if self.modality == "image" and conv is not None and conv.in_channels != self.in_channels_:
            raise ValueError(
                f"{where} was fitted for {self.in_channels_}-channel inputs, but the model's "
                f"first convolution reads {conv.in_channels} channels: an unrelated model"
            )
