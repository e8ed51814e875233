"""Frequency warping of the transformer's input (ATST-SED stage 2, ``train/local/rrc_module.py``).

The published ``RandomResizeCrop(virtual_crop_scale=(1, 1.0), freq_scale=(0.6, 1.0), time_scale=(1.0, 1.0))``
applied to normalised ATST mels (B, F, T): one draw per call keeps a band of ``h = int(U(min_scale, 1) * F)``
consecutive mel bins starting at a uniform bin ``i`` (0 <= i <= F - h), over the full time axis, and resizes it
back to F bins (bicubic, ``align_corners=True``; the time axis keeps its size, so it is unchanged).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def freq_warp(x: torch.Tensor, min_scale: float, rng: np.random.Generator) -> torch.Tensor:
    """(B, F, T) -> (B, F, T): the same random band of ``min_scale``..1 of the F bins, stretched to F bins."""
    n_bins, n_frames = x.shape[-2:]
    height = int(np.clip(int(rng.uniform(min_scale, 1.0) * n_bins), 1, n_bins))
    start = int(rng.integers(0, n_bins - height + 1))
    band = x[:, start : start + height, :].unsqueeze(1)
    warped = F.interpolate(band.float(), size=(n_bins, n_frames), mode="bicubic", align_corners=True)
    return warped.squeeze(1).to(x.dtype)
