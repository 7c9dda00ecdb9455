"""Explanatory masks from a trained explainer network (Phillips, Goh & Hodas, 2019).

An explainer network g maps an input x to a mask m = sigmoid(g(x)) in [0, 1]. The frozen model f
sees the masked input x~ = m*x + (1-m)*b (images; b = blurred x, its mean, or 0) or, for token
sequences, its embedding vectors scaled by m. g is trained so that f(x~) keeps f's prediction
while the mask stays small:

    L = l(f(x~), y) + sparsity * mean(m) [+ smoothness * TV(m)]                         (1)

with l the cross-entropy to f's predicted class (or the label), or the squared error to f's
unmasked output (regression). Explaining a new input is then one forward pass of g.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from whynet.core import (
    Explainer,
    Explanation,
    FittedMixin,
    as_logits,
    check_batch_size,
    check_inputs,
    frozen_eval,
    intervene,
    iter_batches,
    load_tensors,
    model_device,
    model_dtype,
    progress_enabled,
    resolve_layer,
    save_tensors,
)
from whynet.masks.fill import FILLS, apply_image_mask, fill_value
from whynet.masks.networks import ImageMaskNet, SequenceMaskNet, build_network, network_config

__all__ = ["MaskExplainer", "FORMAT", "FORMAT_VERSION"]

FORMAT = "whynet.masks"
FORMAT_VERSION = 1
MODALITIES = ("image", "sequence")
TASKS = ("classification", "regression")
TARGETS = ("prediction", "label")


def _total_variation(m: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring mask values, per image (B,) for m (B, H, W)."""
    dh = (m[:, 1:, :] - m[:, :-1, :]).abs().flatten(1).mean(1)
    dw = (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


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
        ids (B, T) int, 0 = padding (trailing), one mask value per token, applied by scaling the
        output of the model's ``embedding`` layer through a forward hook.
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
    """

    method = "masks"

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
        embedding: str = "embedding",
        task: str = "classification",
        lr: float = 3e-3,
        batch_size: int = 64,
        seed: int = 0,
        blur_sigma: float = 4.0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress)
        for name, value, allowed in (
            ("modality", modality, MODALITIES),
            ("fill", fill, FILLS),
            ("target", target, TARGETS),
            ("task", task, TASKS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, num in (
            ("sparsity", sparsity),
            ("smoothness", smoothness),
            ("lr", lr),
            ("blur_sigma", blur_sigma),
        ):
            if (
                isinstance(num, bool)
                or not isinstance(num, (int, float))
                or num < 0
                or not math.isfinite(num)
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {num!r}")
        if explainer is not None and not isinstance(explainer, nn.Module):
            raise TypeError(f"explainer must be an nn.Module, got {type(explainer).__name__}")
        self.modality = modality
        self.explainer = explainer
        self.sparsity = float(sparsity)
        self.fill = fill
        self.target = target
        self.smoothness = float(smoothness)
        self.embedding = embedding
        self.task = task
        self.lr = float(lr)
        self.seed = int(seed)
        self.blur_sigma = float(blur_sigma)

    # ------------------------------------------------------------------ settings / state
    def _params(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "sparsity": self.sparsity,
            "fill": self.fill,
            "target": self.target,
            "smoothness": self.smoothness,
            "embedding": self.embedding,
            "task": self.task,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "blur_sigma": self.blur_sigma,
        }

    def _check_x(
        self,
        x: object,
        name: str = "inputs",
        check_length: bool = True,
    ) -> torch.Tensor:
        """Validate a batch for this modality; sequences: trailing padding, none empty."""
        if self.modality == "image":
            if isinstance(x, torch.Tensor) and not x.is_floating_point():
                raise TypeError(
                    f"{name}: this MaskExplainer has modality='image' and needs float "
                    f"images (B, C, H, W); got an integer tensor {tuple(x.shape)} "
                    "(token ids need modality='sequence')"
                )
            x = check_inputs(x, name=name, ndim=4)
            if hasattr(self, "in_channels_") and x.shape[1] != self.in_channels_:
                raise ValueError(
                    f"{name} have {x.shape[1]} channels; the explainer was trained "
                    f"on {self.in_channels_}"
                )
            return x
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            raise TypeError(
                f"{name}: this MaskExplainer has modality='sequence' and needs integer "
                f"token ids (B, T); got a float tensor {tuple(x.shape)} "
                "(images need modality='image')"
            )
        x = check_inputs(x, name=name, ndim=2, floating=False)
        if x.shape[1] == 0:
            raise ValueError(f"{name} are empty sequences (length 0)")
        valid = x != 0
        lengths = valid.sum(1)
        if bool((lengths == 0).any()):
            row = int((lengths == 0).nonzero()[0])
            raise ValueError(f"{name} row {row} is an empty sequence (all padding, id 0)")
        # padding must only trail: position t valid implies t < length
        prefix = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        if not bool((prefix == valid).all()):
            row = int((prefix != valid).any(1).nonzero()[0])
            raise ValueError(
                f"{name} row {row} has padding (id 0) before a real token; padding must only trail"
            )
        if check_length and hasattr(self, "max_length_") and int(lengths.max()) > self.max_length_:
            raise ValueError(
                f"{name} contain a sequence of {int(lengths.max())} tokens, longer "
                f"than any seen in training ({self.max_length_}); refit on longer "
                "sequences or truncate"
            )
        return x

    def _embedding_layer(self) -> nn.Embedding:
        layer = resolve_layer(self.model, self.embedding)
        if not isinstance(layer, nn.Embedding):
            raise TypeError(
                f"embedding layer {self.embedding!r} is a {type(layer).__name__}, "
                "expected nn.Embedding"
            )
        return layer

    def _build(self, x: torch.Tensor) -> nn.Module:
        """The explainer network for this model and input (a copy of a user-given one)."""
        device, dtype = model_device(self.model), model_dtype(self.model)
        if self.explainer is not None:
            net = copy.deepcopy(self.explainer)
        elif self.modality == "image":
            net = ImageMaskNet(in_channels=int(x.shape[1]))
        else:
            net = SequenceMaskNet(embed_dim=self._embedding_layer().embedding_dim)
        return net.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ mask and masked forward
    def _mask(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """m = sigmoid(g(x)) in [0, 1]: (B, H, W) or (B, T) with padding exactly 0."""
        if self.modality == "image":
            logits = net(x)
            if logits.shape != (x.shape[0], *x.shape[2:]):
                raise ValueError(
                    f"explainer network gave shape {tuple(logits.shape)}, expected "
                    f"{(x.shape[0], *x.shape[2:])}"
                )
            return torch.sigmoid(logits)
        valid = x != 0
        with torch.no_grad():  # g reads the model's embeddings, detached (f stays untouched)
            emb = self._embedding_layer()(x)
        logits = net(emb, valid)
        return torch.sigmoid(logits) * valid.to(logits.dtype)

    def masked_output(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's output on x masked by ``mask``: f(x*m + b*(1-m)) or f with its embedding
        vectors scaled by m. ``mask`` = 1 reproduces ``model(x)`` exactly.

        Call inside :func:`~whynet.core.frozen_eval` to get the model's eval-mode output.
        """
        if self.modality == "image":
            with torch.no_grad():
                ref = fill_value(x, self.fill, self.blur_sigma)
            return as_logits(self.model(apply_image_mask(x, mask.to(x.dtype), ref)))
        scale = mask.unsqueeze(-1)

        def scaled(emb: torch.Tensor) -> torch.Tensor:
            return emb * scale.to(emb.dtype)

        with intervene(self.model, {self.embedding: scaled}):
            return as_logits(self.model(x))

    # ------------------------------------------------------------------ training
    def _loss(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Objective (1) on one batch, with the batch's mean mask size and fidelity."""
        with torch.no_grad():
            ref_out = as_logits(self.model(x))
        mask = self._mask(net, x)
        out = self.masked_output(x, mask)
        if self.task == "classification":
            goal = ref_out.argmax(1) if self.target == "prediction" else y
            assert goal is not None
            fit = F.cross_entropy(out, goal.to(out.device).long())
            fidelity = float((out.argmax(1) == ref_out.argmax(1)).double().mean())
        else:
            goal = ref_out if self.target == "prediction" else y
            assert goal is not None
            goal = goal.to(out).reshape(out.shape)
            if not hasattr(self, "output_scale_"):
                self.output_scale_ = (
                    max(float(ref_out.double().var()), 1e-12) if ref_out.numel() > 1 else 1.0
                )
            fit = F.mse_loss(out, goal) / self.output_scale_
            # fidelity for regression: 1 - MSE(masked, unmasked) / var (an R^2 against f)
            fidelity = 1.0 - float(F.mse_loss(out.detach(), ref_out)) / self.output_scale_
        if self.modality == "image":
            size = mask.flatten(1).mean(1)
        else:
            valid = (x != 0).to(mask.dtype)
            size = mask.sum(1) / valid.sum(1)  # padding excluded from the mean
        loss = fit + self.sparsity * size.mean()
        if self.modality == "image" and self.smoothness > 0:
            loss = loss + self.smoothness * _total_variation(mask).mean()
        stats = {
            "loss": float(loss.detach()),
            "size": float(size.detach().mean()),
            "fidelity": fidelity,
        }
        return loss, stats

    def _epoch_batches(
        self,
        data: Any,
        labels: torch.Tensor | None,
        gen: torch.Generator,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        # shuffled, seeded order; every form still goes through iter_batches
        need = self.target == "label"
        device = model_device(self.model)
        if isinstance(data, torch.Tensor):
            perm = torch.randperm(len(data), generator=gen)
            data = data[perm]
            labels = None if labels is None else labels[perm.to(labels.device)]
        elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            # the same permutation as for a tensor of the same examples
            n = len(data)  # type: ignore[arg-type]
            data = Subset(data, torch.randperm(n, generator=gen).tolist())
        yield from iter_batches(
            data, labels, batch_size=self.batch_size, need_labels=need, device=device
        )

    def _evaluate(
        self,
        net: nn.Module,
        data: Any,
        labels: torch.Tensor | None,
    ) -> dict[str, float]:
        totals: dict[str, float] = {}
        n = 0
        with torch.no_grad():
            for x, y in iter_batches(
                data,
                labels,
                batch_size=self.batch_size,
                need_labels=self.target == "label",
                device=model_device(self.model),
            ):
                x = self._check_x(x, "val_data", check_length=False)
                _, stats = self._loss(net, x, y)
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v * len(x)
                n += len(x)
        if n == 0:
            raise ValueError("val_data is empty")
        return {k: v / n for k, v in totals.items()}

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
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if self.target == "label" and labels is None and isinstance(train_data, torch.Tensor):
            raise ValueError(
                f"target='label' needs labels, but train_data is a bare tensor and "
                f"labels=None (a {self.task} model's prediction can be kept with "
                "target='prediction')"
            )
        if self.modality == "sequence":
            self._embedding_layer()
        check_batch_size(self.batch_size)
        for attr in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, attr)  # refit from scratch
        gen = torch.Generator().manual_seed(self.seed)
        net: nn.Module | None = None
        opt: torch.optim.Optimizer | None = None
        history: list[dict[str, float]] = []
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        max_len, in_channels, bad_epochs = 0, 0, 0
        show = progress_enabled(self.progress)
        with frozen_eval(self.model):
            for epoch in range(epochs):
                bar = None
                if show:
                    from tqdm.auto import tqdm

                    bar = tqdm(
                        desc=f"masks epoch {epoch + 1}/{epochs}",
                        leave=False,
                        dynamic_ncols=True,
                        unit="batch",
                    )
                totals: dict[str, float] = {}
                n = 0
                for x, y in self._epoch_batches(train_data, labels, gen):
                    x = self._check_x(x, "train_data", check_length=False)
                    if net is None:
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(self.seed)
                            net = self._build(x)
                        net.train()
                        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
                        in_channels = int(x.shape[1])
                    assert opt is not None
                    if self.modality == "sequence":
                        max_len = max(max_len, int((x != 0).sum(1).max()))
                    loss, stats = self._loss(net, x, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    for k, v in stats.items():
                        totals[k] = totals.get(k, 0.0) + v * len(x)
                    n += len(x)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v / n:.3f}" for k, v in totals.items()})
                if bar is not None:
                    bar.close()
                if n == 0:
                    raise ValueError("train_data is empty")
                assert net is not None
                record = {"epoch": float(epoch + 1), **{k: v / n for k, v in totals.items()}}
                if val_data is not None:
                    net.eval()
                    val = self._evaluate(net, val_data, val_labels)
                    net.train()
                    record.update({f"val_{k}": v for k, v in val.items()})
                    if best is None or val["loss"] < best[0]:
                        best = (val["loss"], copy.deepcopy(net.state_dict()))
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                history.append(record)
                if val_data is not None and bad_epochs >= patience:
                    break
        assert net is not None
        if best is not None:
            net.load_state_dict(best[1])
        net.eval()
        self.network_ = net
        self.history_ = history
        self.in_channels_ = in_channels
        if self.modality == "sequence":
            self.max_length_ = max_len
        if not hasattr(self, "output_scale_"):
            self.output_scale_ = 1.0
        return self

    # ------------------------------------------------------------------ explaining
    def explain(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        """Masks for ``inputs`` from one forward pass of the trained explainer network.

        Parameters
        ----------
        inputs : torch.Tensor
            Images (B, C, H, W) or token ids (B, T) (0 = trailing padding).
        target : None or "predicted"
            The network explains what it was trained on (the model's prediction, or the label);
            other targets cannot be honoured by an amortised explainer.

        Returns
        -------
        Explanation
            ``values``: masks in [0, 1], (B, H, W) per pixel or (B, T) per token (padding = 0).
        """
        self.check_is_fitted()
        if target is not None and not (isinstance(target, str) and target == "predicted"):
            raise ValueError(
                "MaskExplainer explains what its network was trained on "
                f"(target={self.target!r}); explain(target=...) must be None, "
                f"got {target!r}"
            )
        x = self._check_x(inputs)
        x = x.to(model_device(self.model))
        net = self.network_
        mode = net.training
        net.eval()
        try:
            with torch.no_grad():
                masks = torch.cat(
                    [
                        self._mask(net, x[i : i + self.batch_size])
                        for i in range(0, len(x), self.batch_size)
                    ]
                )
        finally:
            net.train(mode)
        return Explanation(
            values=masks,
            target=None,
            method=self.method,
            params=self._params(),
            meta={"modality": self.modality, "trained_target": self.target},
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the trained network, its config and the settings (safetensors + JSON)."""
        self.check_is_fitted()
        tensors = {f"network.{k}": v for k, v in self.network_.state_dict().items()}
        meta = {
            "params": self._params(),
            "network": network_config(self.network_),
            "in_channels": self.in_channels_,
            "output_scale": self.output_scale_,
            "max_length": getattr(self, "max_length_", None),
            "history": self.history_,
        }
        return save_tensors(path, tensors, meta, FORMAT, FORMAT_VERSION)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: nn.Module,
        progress: bool | None = None,
    ) -> MaskExplainer:
        """Rebuild a saved MaskExplainer for ``model`` (never unpickles anything)."""
        tensors, meta = load_tensors(path, FORMAT, FORMAT_VERSION)
        params = dict(meta["params"])
        modality = params.pop("modality")
        self = cls(model, modality, progress=progress, **params)
        net = build_network(meta["network"])
        # cast before loading: loading float64 weights into float32 parameters would round them
        net.to(device=model_device(model), dtype=model_dtype(model)).eval()
        state = {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        net.load_state_dict(state)
        self.network_ = net
        self.history_ = meta.get("history", [])
        self.in_channels_ = int(meta["in_channels"])
        self.output_scale_ = float(meta["output_scale"])
        if meta.get("max_length") is not None:
            self.max_length_ = int(meta["max_length"])
        return self
