"""Mixup within the groups of a training batch (ATST-SED ``desed_task/data_augm.py``, soft labels).

One coin per batch decides whether mixup fires (probability ``p``); when it does, every group of at least
two items draws its own coefficient ``c ~ Beta(alpha, alpha)`` and permutation, and item ``i`` becomes
``c * x[i] + (1 - c) * x[perm[i]]``. The same draw is applied to every tensor of the group (CRNN mel, ATST
mel, labels, pseudo-labels), so inputs and targets stay consistent. Mels are mixed linear, before dB and
normalisation, as in the published code. Soft labels are the same convex combination (already in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Mix:
    """One mixup draw for a group of ``len(perm)`` items."""

    perm: torch.Tensor  # (n,) int64, partner of each item within the group
    coef: float  # weight of the item itself, in [0, 1]


def draw_mix(n: int, alpha: float, rng: np.random.Generator, datasets: np.ndarray | None = None) -> Mix:
    """Coefficient ~ Beta(alpha, alpha) and a random permutation of ``n`` items; with ``datasets`` (n,) (each
    item's dataset index) the permutation pairs items of the same dataset only (DCASE 2024 Task 4: mixup never
    mixes a DESED clip with a MAESTRO chunk)."""
    coef = float(rng.beta(alpha, alpha))
    if datasets is None or len(np.unique(datasets)) == 1:
        return Mix(torch.from_numpy(rng.permutation(n)).long(), coef)
    perm = np.arange(n)
    for value in np.unique(datasets):
        rows = np.flatnonzero(datasets == value)
        perm[rows] = rows[rng.permutation(len(rows))]
    return Mix(torch.from_numpy(perm).long(), coef)


def draw_group_mixes(
    groups: Sequence[slice], p: float, alpha: float, rng: np.random.Generator, datasets: np.ndarray | None = None
) -> list[Mix | None] | None:
    """None when the batch's coin says no mixup; else one draw per group (None for groups of < 2 items).
    ``datasets`` (B,): each batch row's dataset index (see draw_mix)."""
    if rng.random() >= p:
        return None
    return [draw_mix(g.stop - g.start, alpha, rng, None if datasets is None else datasets[g])
            if g.stop - g.start >= 2 else None for g in groups]  # fmt: skip


def mix(x: torch.Tensor, m: Mix) -> torch.Tensor:
    """``m.coef * x + (1 - m.coef) * x[m.perm]`` along the first axis."""
    return m.coef * x + (1.0 - m.coef) * x[m.perm.to(x.device)]


def mix_groups(
    tensors: Mapping[str, torch.Tensor], groups: Sequence[slice], mixes: Sequence[Mix | None]
) -> dict[str, torch.Tensor]:
    """New tensors in which each group's rows are mixed with that group's draw (other rows unchanged)."""
    out = {}
    for name, x in tensors.items():
        y = x.clone()
        for group, m in zip(groups, mixes):
            if m is not None:
                y[group] = mix(x[group], m)
        out[name] = y
    return out
