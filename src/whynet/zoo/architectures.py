"""Architectures of whynet's own reference models (weights under ``whynet/zoo/weights``).

Every model keeps its layers as named attributes so that explainers can address them by dotted
name (``"features.block3"``), uses non-inplace activations, and ends in a linear ``head`` applied
to a flat feature vector (what representer points need).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

__all__ = ["FashionCNN", "CanvasCNN", "SentimentGRU", "SmilesRegressor", "conv_block"]


def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """conv 3x3 -> BatchNorm -> ReLU (non-inplace) [-> MaxPool 2x2]."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class BlockCNN(nn.Module):
    """Four conv blocks (``features.block1..4``), global average ``pool``, ``flatten``, ``head``.

    ``pools[i]`` says whether block i+1 ends in a 2x2 max-pool. Representer points read the
    head's input (``embed``); clustering and influence read the named blocks.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int],
        pools: tuple[bool, bool, bool, bool],
        n_classes: int = 10,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        c_in = 1
        for i, (w, pool) in enumerate(zip(widths, pools), start=1):
            self.features.add_module(f"block{i}", conv_block(c_in, w, pool=pool))
            c_in = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: flat feature vectors (B, widths[-1])."""
        return self.flatten(self.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class FashionCNN(BlockCNN):
    """Fashion-MNIST classifier: input (B, 1, 28, 28) in [0, 1], output logits (B, 10).

    Layers: ``features.block1`` (24x14x14), ``features.block2`` (48x7x7), ``features.block3``
    (96x7x7), ``features.block4`` (128x7x7, last conv block), ``pool`` (global average pool),
    ``flatten`` (B, 128) and ``head`` = Linear(128, 10).
    """

    def __init__(self, widths: tuple[int, int, int, int] = (24, 48, 96, 128)) -> None:
        super().__init__(widths, pools=(True, True, False, False))


class CanvasCNN(BlockCNN):
    """Classifier of ``whynet.data.canvas`` images: input (B, 1, 64, 64) in [0, 1], logits (B, 10).

    Fully convolutional ``features`` (``block1`` 16x32x32, ``block2`` 32x16x16, ``block3``
    64x8x8, ``block4`` 128x8x8 = last conv block, ``features.block4.0`` = last conv), then
    ``pool`` (global average pool), ``flatten`` and ``head`` = Linear(128, 10).
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__(widths, pools=(True, True, True, False))


def _lengths(ids: torch.Tensor) -> torch.Tensor:
    # number of non-padding tokens; padding (id 0) may only trail. At least 1 for packing.
    return (ids != 0).sum(dim=1).clamp_min(1).cpu()


class SentimentGRU(nn.Module):
    """Review polarity: token ids (B, T) int64, 0 = padding (trailing) -> logits (B, 2).

    ``embedding`` (padding_idx 0) -> ``dropout`` -> bidirectional ``gru`` over the packed sequence
    (padding is ignored) -> concatenated final states (B, 2H) -> ``head`` = Linear(2H, 2).
    Classes: 0 = rotten, 1 = fresh. :meth:`forward_embedded` takes embeddings directly.
    """

    def __init__(
        self, vocab_size: int, embed_dim: int = 64, hidden: int = 64, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def encode(self, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Flat features (B, 2H) from embeddings (B, T, E) and lengths (B,)."""
        packed = pack_padded_sequence(
            self.dropout(emb), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)  # (2, B, H)
        return torch.cat([h[0], h[1]], dim=1)

    def forward_embedded(self, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(emb, lengths))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embedding(ids), _lengths(ids))


class SmilesRegressor(nn.Module):
    """SMILES2vec-style regressor (Goh et al., 2017): char ids (B, T), 0 = padding -> (B, 1).

    ``embedding`` (padding_idx 0) -> ``conv`` (Conv1d, 'same' length) -> ``act`` (ReLU) ->
    bidirectional ``gru`` over the packed sequence -> final states (B, 2H) -> ``head`` =
    Linear(2H, 1). The output is ``head(...) * target_std + target_mean`` in the target's units.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 32,
        channels: int = 64,
        kernel: int = 5,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv = nn.Conv1d(embed_dim, channels, kernel, padding=kernel // 2)
        self.act = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 1)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def encode(self, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (
            torch.arange(emb.shape[1], device=emb.device)[None, :] < lengths.to(emb.device)[:, None]
        ).unsqueeze(1)
        z = self.act(self.conv(emb.transpose(1, 2))) * mask  # (B, C, T), zero on padding
        packed = pack_padded_sequence(
            self.dropout(z.transpose(1, 2)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)
        return torch.cat([h[0], h[1]], dim=1)

    def forward_embedded(self, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(emb, lengths)) * self.target_std + self.target_mean

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embedding(ids), _lengths(ids))
