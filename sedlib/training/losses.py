"""Loss terms of the two training stages and of the pseudo-label distillation.

All terms are computed in float32 outside autocast (mixed-precision runs included); shapes: strong
(B, C, T) frame probabilities/logits on the 64 ms output grid, weak (B, C) clip probabilities. Every term takes
an optional class mask (B, C) (1 = the item's dataset labels the class): means run over unmasked entries only,
so a masked class gets no gradient (heterogeneous datasets, DCASE 2024 Task 4).

- ``bce``: supervised binary cross-entropy on probabilities (ATST-SED ``BCELoss``), mean over elements.
- ``mse``: mean-teacher / ICT consistency (ATST-SED ``self_sup_loss: mse``).
- ``ict_target``: interpolation-consistency target ``clamp(c * t + (1 - c) * t[perm], 0, 1)`` of the teacher's
  predictions on unmixed inputs, with the group's mixup draw.
- ``distillation``: student strong logits vs. soft pseudo-labels ``q`` (probabilities).
  ``bce`` is the binary KL divergence ``BCE(sigmoid(z), q) - H(q)`` = ``q log(q / p) + (1 - q) log((1 - q) / (1 - p))``,
  averaged over elements: the same gradient as the BCE used by the DCASE 2024 winner, but 0 exactly when the
  student's probabilities equal the targets and positive otherwise. ``mse`` is ``MSE(sigmoid(z), q)``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sedlib.training.mixup import Mix, mix

DISTILLATION_KINDS = ("bce", "mse")


def _float32(loss):
    """Run ``loss(a, b, ...)`` on float32 copies of its two tensors with autocast disabled."""

    @functools.wraps(loss)
    def wrapper(a: torch.Tensor, b: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=a.device.type, enabled=False):
            return loss(a.float(), b.float(), *args, **kwargs)

    return wrapper


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, C) or (B, C, T) over the entries whose class is unmasked (``mask`` (B, C), 1 =
    labelled); the plain mean when ``mask`` is None. Masked classes get no gradient; an all-masked batch gives 0."""
    if mask is None:
        return values.mean()
    weights = (mask != 0).to(values.dtype).reshape(*mask.shape, *([1] * (values.ndim - mask.ndim))).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


@_float32
def bce(probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy of probabilities against (soft) targets, over the unmasked classes."""
    if mask is None:
        return F.binary_cross_entropy(probs, targets)
    return masked_mean(F.binary_cross_entropy(probs, targets, reduction="none"), mask)


@_float32
def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the unmasked classes."""
    if mask is None:
        return F.mse_loss(a, b)
    return masked_mean(F.mse_loss(a, b, reduction="none"), mask)


def ict_target(teacher_probs: torch.Tensor, m: Mix) -> torch.Tensor:
    """Teacher predictions of the unmixed items mixed like the student's inputs, clamped to [0, 1]."""
    return mix(teacher_probs.detach(), m).clamp(0.0, 1.0)


def binary_entropy(q: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-q log q - (1 - q) log(1 - q)`` in nats (0 at q in {0, 1})."""
    return -(torch.xlogy(q, q) + torch.xlogy(1.0 - q, 1.0 - q))


@_float32
def distillation(
    student_logits: torch.Tensor, targets: torch.Tensor, kind: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Distillation term of strong logits (B, C, T) against soft pseudo-labels (B, C, T) in [0, 1], over the
    unmasked classes (``mask`` (B, C))."""
    if kind not in DISTILLATION_KINDS:
        raise ValueError(f"distillation.loss: expected one of {list(DISTILLATION_KINDS)}, got {kind!r}")
    if kind == "mse":
        return masked_mean(F.mse_loss(torch.sigmoid(student_logits), targets, reduction="none"), mask)
    cross = F.binary_cross_entropy_with_logits(student_logits, targets, reduction="none")
    return masked_mean(cross - binary_entropy(targets), mask)
