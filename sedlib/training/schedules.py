"""Step-wise schedules of ATST-SED (``train/local/scheduler.py``, ``ExponentialWarmup``).

Steps are counted in optimizer steps. As in the published scheduler, the factor used while taking the
``n``-th optimizer step is evaluated at ``n`` (1-based: the first step uses ``n = 1``).

- Ramp-up (learning rate of both stages and the consistency weight): ``exp(-5 (1 - min(n, R) / R)^2)``,
  1 when ``R = 0``.
- Stage 1 learning rate: ramp-up, then constant (published ``cos_down=False``).
- Stage 2 learning rate: ramp-up for ``n < R``, then cosine decay from 1 to ``final`` reached at the last
  step ``N``: ``final + (1 - final) (cos(pi (n - R) / (N - R)) + 1) / 2`` (published ``min_lr_scaler=0.1``).
"""

from __future__ import annotations

import math

import torch

RAMPUP_EXPONENT = -5.0


def exp_rampup(step: int, rampup_steps: int) -> float:
    """Exponential ramp-up factor in (0, 1] at optimizer step ``step`` (1-based) of ``rampup_steps``."""
    if rampup_steps <= 0:
        return 1.0
    phase = 1.0 - min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(RAMPUP_EXPONENT * phase * phase)


def lr_factor(step: int, rampup_steps: int, total_steps: int, cosine_final: float | None) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (1-based).

    ``cosine_final`` None: ramp-up then constant (stage 1); a number: ramp-up then cosine decay to it at
    ``total_steps`` (stage 2).
    """
    if cosine_final is None or step < rampup_steps:
        return exp_rampup(step, rampup_steps)
    span = total_steps - rampup_steps
    progress = 1.0 if span <= 0 else min((step - rampup_steps) / span, 1.0)
    return cosine_final + (1.0 - cosine_final) * (math.cos(math.pi * progress) + 1.0) / 2.0


def lr_scheduler(
    optimizer: torch.optim.Optimizer, rampup_steps: int, total_steps: int, cosine_final: float | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step scheduler multiplying every group's initial lr by :func:`lr_factor` (stepped per optimizer step)."""

    def factor(scheduler_steps: int) -> float:
        # LambdaLR evaluates at 0 on construction (the first optimizer step, n = 1), then after each step.
        return lr_factor(scheduler_steps + 1, rampup_steps, total_steps, cosine_final)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
