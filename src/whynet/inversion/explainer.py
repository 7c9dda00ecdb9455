"""Guided feature inversion (Du, Liu, Song, Hu, "Towards Explanation of DNN-based Prediction
with Guided Feature Inversion", KDD 2018).

Stage 1 (class-agnostic, Eq. 5) finds channel weights ``omega >= 0`` of a basis layer whose mask
keeps the image's features at the inversion layer: the foreground evidence. Stage 2
(class-discriminative, Eq. 6) starts from that ``omega`` and refines it so that the masked image
keeps the target class's probability while its complement loses it.

Batching: a batch of images is optimised jointly with the *sum* of independent per-image losses.
The model runs in eval mode (no batch statistics), the mask normalisation is per image and Adam is
elementwise, so each image's ``omega`` follows exactly the trajectory it would follow alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from whynet.core import (
    Explainer,
    Interval,
    ModelInputs,
    Options,
    OutputSpec,
    Target,
    batch_len,
    blend,
    capture,
    concat,
    constraint,
    forward,
    main_tensor,
    predict_logits,
    reference,
    resolve_layer,
    run_model,
    with_main,
)
from whynet.core.image import REFERENCES
from whynet.core.layout import tokens_to_grid
from whynet.core.params import CALLABLE
from whynet.inversion.masks import basis_mask, phi_bg

_LAYER = constraint(str, error=TypeError, desc="a dotted layer name")
_POSITIVE = constraint(Interval(float, 0, None, "neither"))
_NON_NEGATIVE = constraint(Interval(float, 0, None))
_STEPS = constraint(Interval(int, 0, None))


class _Adam:
    """Adam (Kingma & Ba 2015, Alg. 1), elementwise, the update of ``torch.optim.Adam``.

    Written out because it is four lines and constructing a ``torch.optim`` optimiser imports
    ``torch._dynamo`` (seconds on a loaded 2-core machine, per process). It is not a training
    loop (core's :func:`~whynet.core.training.train` fits a module over batches): GFI optimises
    one weight vector per image, projected onto ``omega >= 0`` after every step with the moments
    kept, and guarded per image (see :meth:`GuidedFeatureInversion._optimise`).
    """

    def __init__(
        self, param: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.param, self.betas, self.eps, self.t = param, betas, eps, 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    def step(self, grad: torch.Tensor, lr: float) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / (1 - b2**self.t) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-lr / (1 - b1**self.t))


class GuidedFeatureInversion(Explainer):
    """Two-stage guided feature inversion masks (Du et al. 2018, Sec. 3).

    Parameters
    ----------
    model : nn.Module
        A CNN classifier returning logits.
    inversion_layer : str
        Layer ``l0`` whose features stage 1 reconstructs (the paper: the last pooling layer
        before the classifier, VGG-19 pool5).
    basis_layer : str
        Layer ``l1`` whose channels span the mask, hooked on its (post-ReLU) output; must have
        spatial dimensions (B, K, h, w) (the paper: conv5_4 after its ReLU), or be a vision
        transformer's patch tokens (B, 1 + h*w, K), laid out on their grid (CLS dropped).
    background : "blur", "zero", float or tensor
        The reference ``p`` of ``Phi`` (the paper: a Gaussian-blurred copy of the input, in the
        model's input space).
    blur_sigma : float, optional
        Blur sigma in pixels; default ``max(H, W) / 16`` (not given in the paper).
    stage1_steps, stage2_steps : int
        Adam steps of each stage (paper: 10 and 70).
    lr : float
        Adam learning rate (1e-2); stage 2 halves it every ``lr_halve_every`` steps (10).
    gamma : float
        L1 weight on omega in stage 1 (10).
    lam : float
        Weight of the background term ``P_c(Phi_bg)`` in stage 2 (1).
    delta : float
        L1 weight on omega in stage 2 (1; the paper used 10 on VOC).
    omega_init : float
        Initial value of every channel weight (0.1).
    eps : float
        Maps with a value range ``<= eps`` normalise to zeros (no division by zero).
    basis_transform : callable, optional
        Applied to the captured basis output, for models whose activation is a reused module or
        a function (EfficientNet: ``basis_layer="_bn1"``, ``basis_transform=F.relu6`` gives the
        post-activation head conv).
    batch_size : int
        Images optimised jointly.
    progress : bool, optional
        Progress bar over batches (default: on a terminal).
    output : int, str or callable, optional
        The class scores among a multi-output model's outputs (``whynet.core.select_output``).

    Inputs may be a mapping for ``model(**batch)`` (an HF ``BatchEncoding``); its
    ``pixel_values`` are masked, its other entries passed on unchanged.
    """

    method = "inversion"
    _parameter_constraints = {
        "inversion_layer": _LAYER,
        "basis_layer": _LAYER,
        "background": constraint(
            Options(REFERENCES),
            Interval(float),
            torch.Tensor,
            desc=f"one of {REFERENCES}, a float or a tensor",
        ),
        "blur_sigma": constraint(Interval(float, 0, None, "neither"), None),
        "stage1_steps": _STEPS,
        "stage2_steps": _STEPS,
        "lr": _POSITIVE,
        "gamma": _NON_NEGATIVE,
        "lam": _NON_NEGATIVE,
        "delta": _NON_NEGATIVE,
        "omega_init": _POSITIVE,
        "lr_halve_every": constraint(Interval(int, 1, None)),
        "eps": _NON_NEGATIVE,
        "basis_transform": constraint(
            CALLABLE, None, error=TypeError, desc="callable (e.g. torch.nn.functional.relu6)"
        ),
    }
    _input_ndim = 4
    _token_inputs = False

    def __init__(
        self,
        model: nn.Module,
        inversion_layer: str,
        basis_layer: str,
        *,
        background: str | float | torch.Tensor = "blur",
        blur_sigma: float | None = None,
        stage1_steps: int = 10,
        stage2_steps: int = 70,
        lr: float = 1e-2,
        gamma: float = 10.0,
        lam: float = 1.0,
        delta: float = 1.0,
        omega_init: float = 0.1,
        lr_halve_every: int = 10,
        eps: float = 1e-12,
        basis_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
        output: OutputSpec = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress, output=output)
        self.inversion_layer = inversion_layer
        self.basis_layer = basis_layer
        self.background = background
        self.blur_sigma = blur_sigma
        self.stage1_steps = stage1_steps
        self.stage2_steps = stage2_steps
        self.lr = lr
        self.gamma = gamma
        self.lam = lam
        self.delta = delta
        self.omega_init = omega_init
        self.lr_halve_every = lr_halve_every
        self.eps = eps
        self.basis_transform = basis_transform
        self._check_params()

    # -- the two stages ------------------------------------------------------------------------

    def _reference(self, x: ModelInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, detached basis activations and inversion features of the original images."""
        (b,) = run_model(
            self.model,
            x,
            layers=[self.basis_layer, self.inversion_layer],
            batch_size=batch_len(x),
            output=self.output,
        )
        logits, basis, feats = b.output, b.acts[self.basis_layer], b.acts[self.inversion_layer]
        if self.basis_transform is not None:
            basis = self.basis_transform(basis)
        if basis.dim() == 3:  # ViT patch tokens (B, 1 + h*w, K) -> (B, K, h, w)
            try:
                basis = tokens_to_grid(basis)
            except ValueError as e:
                raise ValueError(
                    f"basis layer {self.basis_layer!r} outputs tokens {tuple(basis.shape)}: {e}"
                ) from None
        if basis.dim() != 4:
            raise ValueError(
                f"basis layer {self.basis_layer!r} must have spatial dimensions "
                f"(B, K, h, w) or be patch tokens (B, 1 + h*w, K); its output has shape "
                f"{tuple(basis.shape)} (pass basis_transform= to reshape it)"
            )
        return logits, basis, feats

    def _on(self, x: ModelInputs, images: torch.Tensor) -> ModelInputs:
        """The model's inputs with these images (the other entries of a mapping repeated for a
        batch of foreground + background copies)."""
        n = batch_len(x)
        if images.shape[0] != n:
            x = concat([x] * (images.shape[0] // n))
        return with_main(x, images)

    def _background(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.blur_sigma if self.blur_sigma is not None else max(x.shape[-2:]) / 16.0
        return reference(x, self.background, sigma, name="background")

    def _inverted_features(self, inputs: ModelInputs) -> torch.Tensor:
        with capture(self.model, self.inversion_layer, keep_graph=True) as cap:
            forward(self.model, inputs)
        return cap[self.inversion_layer]

    def _optimise(
        self, omega: torch.Tensor, steps: int, halve: bool, loss_fn: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam on the sum of per-image losses; omega clamped >= 0 in place after each step
        (the moments are kept). Returns the final omega and the (B, steps) loss history."""
        omega = omega.detach().clone().requires_grad_(True)
        adam = _Adam(omega)
        history = torch.zeros(omega.shape[0], steps, dtype=torch.float64, device=omega.device)
        for t in range(steps):
            lr = self.lr * 0.5 ** (t // self.lr_halve_every) if halve else self.lr
            losses = loss_fn(omega)  # (B,), independent per image
            history[:, t] = losses.detach().double()
            (grad,) = torch.autograd.grad(losses.sum(), omega)
            with torch.no_grad():
                before = omega.detach().clone()
                adam.step(grad, lr)
                omega.clamp_(min=0.0)
                # guard: a step that would clamp all of an image's weights to 0 (an empty,
                # degenerate mask the normalisation cannot undo) is not taken for that image
                dead = (omega == 0).all(1) & (before != 0).any(1)
                omega[dead] = before[dead]
        return omega.detach(), history

    def stage1(
        self,
        inputs: ModelInputs,
        basis: torch.Tensor,
        feats: torch.Tensor,
        background: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-agnostic inversion (Eq. 5): ``||f(Phi) - f(x)||^2 + gamma ||omega||_1``.

        Takes no target: the class is unknown to this stage by construction.
        """
        x = main_tensor(inputs)
        size = (x.shape[-2], x.shape[-1])
        omega0 = torch.full(basis.shape[:2], self.omega_init, dtype=basis.dtype, device=x.device)

        def loss(omega: torch.Tensor) -> torch.Tensor:
            m = basis_mask(omega, basis, size, self.eps)
            diff = self._inverted_features(self._on(inputs, blend(x, m, background))) - feats
            return diff.flatten(1).pow(2).sum(1) + self.gamma * omega.abs().sum(1)

        return self._optimise(omega0, self.stage1_steps, False, loss)

    def stage2(
        self,
        inputs: ModelInputs,
        basis: torch.Tensor,
        background: torch.Tensor,
        omega: torch.Tensor,
        target: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-discriminative refinement (Eq. 6):
        ``-P_c(Phi) + lam P_c(Phi_bg) + delta ||omega||_1`` with softmax probabilities."""
        x = main_tensor(inputs)
        size = (x.shape[-2], x.shape[-1])
        b = x.shape[0]
        idx = target.view(-1, 1)

        def loss(omega: torch.Tensor) -> torch.Tensor:
            m = basis_mask(omega, basis, size, self.eps)
            both = torch.cat([blend(x, m, background), phi_bg(x, m, background)])
            prob = self._predict(self._on(inputs, both)).softmax(-1)
            p_fg = prob[:b].gather(1, idx).squeeze(1)
            p_bg = prob[b:].gather(1, idx).squeeze(1)
            return -p_fg + self.lam * p_bg + self.delta * omega.abs().sum(1)

        return self._optimise(omega, self.stage2_steps, True, loss)

    # -- the template's hooks -----------------------------------------------------------------

    def _check_inputs(self, inputs: Any) -> Any:
        x = super()._check_inputs(inputs)  # a floating (B, C, H, W) batch
        resolve_layer(self.model, self.inversion_layer)
        resolve_layer(self.model, self.basis_layer)
        return x

    def _explain_batch(self, inputs: ModelInputs, target: Target) -> dict[str, Any]:
        """Masks explaining ``target`` (default: the predicted class) for a chunk of images.

        Returns ``values``: (B, H, W) stage-2 masks in [0, 1]; ``target``: the classes
        explained; extras ``stage1_mask`` (B, H, W), ``omega`` (B, K) final weights,
        ``omega_stage1`` (B, K), ``stage1_loss`` (B, stage1_steps) and ``stage2_loss``
        (B, stage2_steps) per-image losses before each step, ``prob_kept`` / ``prob_removed``
        (B,) target probabilities of ``Phi`` and ``Phi_bg`` with the final mask.
        """
        x = main_tensor(inputs)
        size = (x.shape[-2], x.shape[-1])
        logits, basis, feats = self._reference(inputs)
        tb = target.classes_for(logits)
        bg = self._background(x)
        omega1, loss1 = self.stage1(inputs, basis, feats, bg)
        omega2, loss2 = self.stage2(inputs, basis, bg, omega1, tb)
        m1 = basis_mask(omega1, basis, size, self.eps)
        m2 = basis_mask(omega2, basis, size, self.eps)
        b = x.shape[0]
        both = torch.cat([blend(x, m2, bg), phi_bg(x, m2, bg)]).detach()
        prob = predict_logits(
            self.model, self._on(inputs, both), batch_size=len(both), output=self.output
        ).softmax(-1)
        prob = prob.gather(1, tb.repeat(2).view(-1, 1)).squeeze(1)
        return {
            "values": m2,
            "target": tb,
            "stage1_mask": m1,
            "omega": omega2,
            "omega_stage1": omega1,
            "stage1_loss": loss1,
            "stage2_loss": loss2,
            "prob_kept": prob[:b],
            "prob_removed": prob[b:],
        }

    def _explained_layer(self) -> str:
        return self.basis_layer

    def _meta(self) -> dict[str, Any]:
        return {"inversion_layer": self.inversion_layer}
