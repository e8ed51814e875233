"""ATST-SED CRNN: CNN on the 128-mel branch + backbone frame embeddings -> BiGRU -> strong and weak heads.

State-dict keys as the published ``desed_task/nnet/CRNN_e2e.py`` (CNN ``activation: cg``):
``cnn.cnn.conv{i}``, ``cnn.cnn.batchnorm{i}``, ``cnn.cnn.cg{i}.linear``, ``rnn.rnn.*``, ``cat_tf``, ``dense``,
``dense_softmax`` and the backbone under ``atst_frame.atst.*`` (for every backbone kind, sedlib.models.backbone).

Shapes for a 10 s clip: CRNN mel (B, 128, 626) -> 7 blocks of Conv3x3 -> BatchNorm -> context gating ->
dropout -> AvgPool (time x freq pools [[2,2],[2,2],[1,2]x5]) -> (B, C_cnn, 156, 1): 156 frames of 64 ms.
Backbone frames (B, D, E) (ATST-Frame: 250 of 40 ms) are adaptive-average-pooled to 156 frames, concatenated
with the CNN output and projected back to C_cnn by ``cat_tf`` (no activation), then a 2-layer BiGRU, dropout,
strong head ``dense`` (sigmoid) and attention pooling ``dense_softmax`` (softmax over classes, clamped to
[1e-7, 1]; over the item's labelled classes only when a class mask is given): weak = sum_t strong * att / sum_t att.

BatchNorm momentum. The published ``CNN.py`` builds ``nn.BatchNorm2d(nOut, eps=0.001, momentum=0.99)``.
That value reads like Keras' momentum (weight of the OLD running average, i.e. torch 0.01), but torch's
``momentum`` is the weight of the NEW batch: running = (1 - 0.99) * running + 0.99 * batch, so the published
running statistics are essentially those of the latest training batch. ``bn_momentum`` is passed to torch
unchanged; the default 0.99 reproduces the published behaviour (set 0.01 for the Keras-style average).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from sedlib.models.backbone import Backbone
from sedlib.models.gru import bidirectional_gru


class SEDOutput(NamedTuple):
    strong: torch.Tensor  # (B, C, frames) probabilities
    weak: torch.Tensor  # (B, C) probabilities
    strong_logits: torch.Tensor  # (B, C, frames) pre-sigmoid


class ContextGating(nn.Module):
    """x * sigmoid(Linear over channels), on (B, C, T, F)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x * torch.sigmoid(gate)


class CNN(nn.Module):
    """(B, 1, frames, n_mels) -> (B, filters[-1], frames // prod(time pools), n_mels // prod(freq pools))."""

    def __init__(self, filters: list[int], pooling: list[list[int]], dropout: float, bn_momentum: float):
        super().__init__()
        self.cnn = nn.Sequential()
        for i, (n_out, pool) in enumerate(zip(filters, pooling)):
            n_in = 1 if i == 0 else filters[i - 1]
            self.cnn.add_module(f"conv{i}", nn.Conv2d(n_in, n_out, kernel_size=3, stride=1, padding=1))
            self.cnn.add_module(f"batchnorm{i}", nn.BatchNorm2d(n_out, eps=1e-3, momentum=bn_momentum))
            self.cnn.add_module(f"cg{i}", ContextGating(n_out))
            self.cnn.add_module(f"dropout{i}", nn.Dropout(dropout))
            self.cnn.add_module(f"pooling{i}", nn.AvgPool2d(tuple(pool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last activations: the same values, 20 % less time for this CNN on one CPU thread (measured:
        # forward + backward, batch 32, 32 mels; docs/training.md "Embedded default")
        return self.cnn(x.contiguous(memory_format=torch.channels_last))


class BidirectionalGRU(nn.Module):
    def __init__(self, n_in: int, n_hidden: int, num_layers: int):
        super().__init__()
        self.rnn = nn.GRU(n_in, n_hidden, num_layers=num_layers, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_in) -> (B, T, 2 * n_hidden); on CPU with gradients the backward is sedlib.models.gru's."""
        return bidirectional_gru(x, self.rnn)


class BackboneWrapper(nn.Module):
    """Holds the backbone as ``.atst`` so that its keys are ``atst_frame.atst.*`` as in ATST-SED."""

    def __init__(self, atst: Backbone):
        super().__init__()
        self.atst = atst

    def forward(self, backbone_feats: torch.Tensor) -> torch.Tensor:
        return self.atst(backbone_feats)


class CRNN(nn.Module):
    """``forward(crnn_feats (B, n_mels, T), atst_feats (B, n_mels', T') | embeddings (B, D, E)) -> SEDOutput``.

    ``atst_feats``: the backbone's normalised frontend features (its kind's ``frontend``; ATST mel for ATST-Frame).
    """

    def __init__(
        self,
        n_classes: int,
        n_mels: int = 128,
        filters: list[int] = (16, 32, 64, 128, 128, 128, 128),
        pooling: list[list[int]] = ((2, 2), (2, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2)),
        dropout: float = 0.5,
        rnn_hidden: int = 128,
        rnn_layers: int = 2,
        bn_momentum: float = 0.99,
        backbone: Backbone | None = None,
        embed_dim: int | None = None,
    ):
        super().__init__()
        if len(filters) != len(pooling):
            raise ValueError(
                f"CRNN needs one pooling pair per conv block: {len(filters)} filters, {len(pooling)} pools"
            )
        freq_left = n_mels // math.prod(p[1] for p in pooling)
        if freq_left != 1:
            raise ValueError(
                f"frequency pooling {[p[1] for p in pooling]} must reduce {n_mels} mel bins to 1, got {freq_left}"
            )
        if backbone is None and embed_dim is None:
            raise ValueError("CRNN needs a backbone or, for embeddings-only use, embed_dim")
        embed_dim = backbone.embed_dim if backbone is not None else embed_dim
        self.n_classes = n_classes
        self.time_pooling = math.prod(p[0] for p in pooling)
        self.cnn = CNN(list(filters), [list(p) for p in pooling], dropout, bn_momentum)
        n_cnn = filters[-1]
        self.atst_frame = BackboneWrapper(backbone) if backbone is not None else None
        self.cat_tf = nn.Linear(n_cnn + embed_dim, n_cnn)
        self.rnn = BidirectionalGRU(n_cnn, rnn_hidden, rnn_layers)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(2 * rnn_hidden, n_classes)
        self.dense_softmax = nn.Linear(2 * rnn_hidden, n_classes)

    @property
    def backbone(self) -> Backbone | None:
        return self.atst_frame.atst if self.atst_frame is not None else None

    def forward(
        self,
        crnn_feats: torch.Tensor,
        atst_feats: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        class_mask: torch.Tensor | None = None,
    ) -> SEDOutput:
        """``class_mask`` (B, C), nonzero for the classes an item is labelled for: attention pooling attends only
        to those (DCASE 2024 baseline desed_task/nnet/CRNN.py, masked_fill of the softmax input by -1e30)."""
        if (atst_feats is None) == (embeddings is None):
            raise ValueError(
                "give exactly one of atst_feats (backbone run here) or embeddings (cached backbone output)"
            )
        if atst_feats is not None:
            if self.atst_frame is None:
                raise ValueError("this CRNN has no backbone: pass cached embeddings instead of atst_feats")
            embeddings = self.atst_frame(atst_feats)
        x = self.cnn(crnn_feats.transpose(1, 2).unsqueeze(1))  # (B, C_cnn, frames, 1)
        x = x.squeeze(-1)  # (B, C_cnn, frames)
        frames = x.shape[-1]
        if embeddings.shape[-1] != frames:
            embeddings = F.adaptive_avg_pool1d(embeddings, frames)
        x = self.cat_tf(torch.cat((x, embeddings), dim=1).transpose(1, 2))  # (B, frames, C_cnn)
        x = self.dropout(self.rnn(x))
        strong_logits = self.dense(x)  # (B, frames, C)
        strong = torch.sigmoid(strong_logits)
        attention_logits = self.dense_softmax(x)
        if class_mask is not None:
            attention_logits = attention_logits.masked_fill(class_mask[:, None, :] == 0, -1e30)
        attention = torch.softmax(attention_logits, dim=-1).clamp(min=1e-7, max=1.0)
        weak = (strong * attention).sum(1) / attention.sum(1)
        return SEDOutput(strong.transpose(1, 2), weak, strong_logits.transpose(1, 2))
