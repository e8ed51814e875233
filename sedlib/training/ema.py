"""Mean-teacher exponential moving average of the student's parameters.

After the ``n``-th optimizer step (n >= 1): ``teacher = alpha * teacher + (1 - alpha) * student`` for every
parameter; buffers (batch-norm statistics) are not averaged, the teacher keeps its own, as in ATST-SED.
Stage 1 uses ``alpha = min(1 - 1 / (n + 1), ema_factor)`` (a true average early on), stage 2 the fixed
``ema_factor``.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_alpha(step: int, ema_factor: float, warm_start: bool) -> float:
    """Averaging weight of the teacher after optimizer step ``step`` (1-based)."""
    if not warm_start:
        return ema_factor
    return min(1.0 - 1.0 / (step + 1), ema_factor)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """In place: every teacher parameter becomes ``alpha * teacher + (1 - alpha) * student``."""
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.named_parameters())
    if teacher_params.keys() != student_params.keys():
        raise ValueError("EMA: teacher and student have different parameter names")
    for name, param in teacher_params.items():
        param.mul_(alpha).add_(student_params[name].detach().to(param.dtype), alpha=1.0 - alpha)
