"""Strong predictions for audio of any length: 10 s windows, overlap-averaged logits on the output frame grid.

The model sees ``window_s`` seconds (10 s: 626 CRNN mel frames and the backbone's frontend frames, 1001 ATST mel
frames for ATST-Frame -> 156 output frames of 64 ms).
Window starts are multiples of the output frame hop (hop_length x time pooling = 1024 samples = 64 ms),
so frame j of window k is exactly global frame ``k * hop_frames + j``; ``hop_s`` is rounded to the nearest
multiple of 64 ms (5 s -> 78 frames = 4.992 s). The last window (and any clip shorter than a window) is
zero-padded; every window is normalised on its own by the frontends. Where windows overlap, logits are
averaged; the result is trimmed to the clip's true frame count, ``sedlib.data.labels.n_output_frames``
(``(1 + samples // hop_length) // time_pooling``, the grid that training labels use).
"""

from __future__ import annotations

from typing import Callable

import torch

from sedlib.data.labels import n_output_frames


def window_layout(n_samples: int, window: int, hop: int) -> int:
    """Number of windows of ``window`` samples, ``hop`` apart, needed to cover ``n_samples`` samples."""
    if n_samples <= window:
        return 1
    return 1 + -(-(n_samples - window) // hop)


@torch.inference_mode()
def predict_clip(model, frontends, wave: torch.Tensor, window_s: float = 10.0, hop_s: float = 5.0,
                 batch_size: int = 8, on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """(C, frames) strong logits of a mono waveform ``wave`` (samples,) at the frontends' sample rate.

    ``model``: a CRNN in eval mode (``forward(crnn_feats, atst_feats=...) -> SEDOutput``, ``time_pooling``);
    ``frontends``: ``sedlib.features.frontends.Frontends`` with ``crnn`` and the backbone's frontend. Windows are
    computed ``batch_size`` at a time on
    ``wave``'s device. ``on_progress(seconds)``, if given, is called after each batch with the seconds of
    ``wave`` newly covered (they add up to its duration).
    """
    if wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(f"expected a non-empty mono waveform (samples,), got shape {tuple(wave.shape)}")
    sample_rate, mel_hop = frontends.crnn.sample_rate, frontends.crnn.hop_length
    backbone_frontend = frontends[model.backbone.frontend]
    frame_samples = mel_hop * model.time_pooling
    window = int(round(window_s * sample_rate))
    hop_frames = max(1, int(round(hop_s * sample_rate / frame_samples)))
    hop = hop_frames * frame_samples
    n_samples = wave.numel()
    n_windows = window_layout(n_samples, window, hop)
    padded = torch.nn.functional.pad(wave, (0, (n_windows - 1) * hop + window - n_samples))
    windows = padded.unfold(0, window, hop)  # (n_windows, window)
    logits_sum = counts = None
    covered = 0
    for first in range(0, n_windows, batch_size):
        batch = windows[first : first + batch_size]
        logits = model(frontends.crnn(batch), atst_feats=backbone_frontend(batch)).strong_logits  # (b, C, F)
        if logits_sum is None:
            n_classes, window_frames = logits.shape[1:]
            total = (n_windows - 1) * hop_frames + window_frames
            logits_sum = logits.new_zeros(n_classes, total)
            counts = logits.new_zeros(total)
        for k, window_logits in enumerate(logits, start=first):
            start = k * hop_frames
            logits_sum[:, start : start + window_frames] += window_logits
            counts[start : start + window_frames] += 1
        if on_progress is not None:
            end = min(n_samples, (first + len(batch) - 1) * hop + window)
            on_progress((end - covered) / sample_rate)
            covered = end
    n_frames = n_output_frames(n_samples / sample_rate, mel_hop, sample_rate, model.time_pooling)
    return (logits_sum / counts)[:, :n_frames]
