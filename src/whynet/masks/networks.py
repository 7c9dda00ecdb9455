"""Default explainer networks g of Phillips, Goh & Hodas (2019): inputs -> mask logits.

The paper leaves the architecture open ("a secondary network"); these are small defaults that
train in minutes on 2 CPU cores. Each network is rebuilt from a JSON config
(:func:`build_network`), which is what :meth:`MaskExplainer.save` stores beside the weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["ImageMaskNet", "SequenceMaskNet", "build_network", "network_config"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(1, c_out), nn.ReLU()
    )


def _init_out(layer: nn.Conv2d | nn.Linear, bias: float) -> None:
    # zero weights + constant bias: every mask starts at sigmoid(bias), whatever the input
    nn.init.zeros_(layer.weight)
    assert layer.bias is not None
    nn.init.constant_(layer.bias, bias)


class ImageMaskNet(nn.Module):
    """A small encoder-decoder (U-Net-like) giving one mask logit per input pixel.

    Encoder: ``depth`` stride-2 conv blocks (widths ``width * 2**k``); decoder: bilinear
    upsampling back to each skip's size, concatenation with the skip, a conv block; a final 1x1
    conv gives the logits at the input's full resolution (any H, W).

    Parameters
    ----------
    in_channels : int
        Channels of the model's input.
    width : int
        Channels of the first block.
    depth : int
        Number of downsampling steps.
    init_bias : float
        Initial bias of the output logit; sigmoid(2) = 0.88 starts near "keep everything", so the
        frozen model's prediction is preserved at step 0 and sparsity removes pixels from there.
    """

    def __init__(
        self, in_channels: int = 1, width: int = 16, depth: int = 3, init_bias: float = 2.0
    ) -> None:
        super().__init__()
        self.config = {
            "kind": "image",
            "in_channels": in_channels,
            "width": width,
            "depth": depth,
            "init_bias": init_bias,
        }
        self.stem = _block(in_channels, width, 1)
        widths = [width * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList(_block(widths[k], widths[k + 1], 2) for k in range(depth))
        self.up = nn.ModuleList(
            _block(widths[k + 1] + widths[k], widths[k], 1) for k in reversed(range(depth))
        )
        self.out = nn.Conv2d(width, 1, 1)
        _init_out(self.out, init_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, H, W) for images (B, C, H, W)."""
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        z = skips.pop()
        for block in self.up:
            skip = skips.pop()
            z = F.interpolate(z, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            z = block(torch.cat([z, skip], dim=1))
        return self.out(z)[:, 0]


class SequenceMaskNet(nn.Module):
    """One mask logit per token from the (detached) token embeddings of the frozen model.

    ``kind="gru"``: a bidirectional GRU over the packed non-padding prefix, then a linear map of
    each position's two states; ``kind="conv"``: two 1-D convolutions (kernel ``kernel``).

    Parameters
    ----------
    embed_dim : int
        Width of the model's embedding vectors.
    hidden : int
        GRU hidden size per direction (or conv channels).
    kind : {"gru", "conv"}
    kernel : int
        Conv kernel width (``kind="conv"`` only).
    init_bias : float
        Initial output bias (see :class:`ImageMaskNet`).
    """

    def __init__(
        self,
        embed_dim: int,
        hidden: int = 32,
        kind: str = "gru",
        kernel: int = 5,
        init_bias: float = 2.0,
    ) -> None:
        super().__init__()
        if kind not in ("gru", "conv"):
            raise ValueError(f"sequence explainer kind must be 'gru' or 'conv', got {kind!r}")
        self.config = {
            "kind": "sequence",
            "embed_dim": embed_dim,
            "hidden": hidden,
            "net": kind,
            "kernel": kernel,
            "init_bias": init_bias,
        }
        self.net = kind
        if kind == "gru":
            self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * hidden, 1)
        else:
            self.conv = nn.Sequential(
                nn.Conv1d(embed_dim, hidden, kernel, padding=kernel // 2),
                nn.ReLU(),
                nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2),
                nn.ReLU(),
            )
            self.out = nn.Linear(hidden, 1)
        _init_out(self.out, init_bias)

    def forward(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, T) from embeddings (B, T, E) and a (B, T) bool non-padding mask."""
        emb = emb * valid.unsqueeze(-1).to(emb.dtype)
        if self.net == "gru":
            lengths = valid.sum(1).clamp_min(1).cpu()
            packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
            z, _ = self.gru(packed)
            z, _ = pad_packed_sequence(z, batch_first=True, total_length=emb.shape[1])
        else:
            z = self.conv(emb.transpose(1, 2)).transpose(1, 2)
        return self.out(z)[..., 0]


def network_config(net: nn.Module) -> dict[str, Any]:
    """The JSON config that rebuilds ``net`` with :func:`build_network` (default nets only)."""
    config = getattr(net, "config", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"cannot save a custom explainer network of type {type(net).__name__}: "
            "give it a JSON-serialisable `config` dict understood by build_network"
        )
    return dict(config)


def build_network(config: dict[str, Any]) -> nn.Module:
    """Rebuild a default explainer network from its config."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind == "image":
        return ImageMaskNet(**config)
    if kind == "sequence":
        net = config.pop("net", "gru")
        return SequenceMaskNet(kind=net, **config)
    raise ValueError(f"unknown explainer network config kind {kind!r}")


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring mask values, per image (B,) for m (B, H, W)."""
    dh = (m[:, 1:, :] - m[:, :-1, :]).abs().flatten(1).mean(1)
    dw = (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw
