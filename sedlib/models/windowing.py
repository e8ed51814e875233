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

from typing import Callable, Sequence

import torch

from sedlib.data.labels import n_output_frames


def window_layout(n_samples: int, window: int, hop: int) -> int:
    """Number of windows of ``window`` samples, ``hop`` apart, needed to cover ``n_samples`` samples."""
    if n_samples <= window:
        return 1
    return 1 + -(-(n_samples - window) // hop)


@torch.inference_mode()
def predict_clips(model, frontends, waves: Sequence[torch.Tensor], window_s: float = 10.0, hop_s: float = 5.0,
                  batch_size: int = 8, on_progress: Callable[[float], None] | None = None) -> list[torch.Tensor]:
    """[(C, frames_i)] strong logits of mono waveforms ``waves[i]`` (samples_i,) at the frontends' sample rate.

    ``model``: a CRNN in eval mode (``forward(crnn_feats, atst_feats=...) -> SEDOutput``, ``time_pooling``);
    ``frontends``: ``sedlib.features.frontends.Frontends`` with ``crnn`` and the backbone's frontend. The windows
    of all waves, in order, are computed ``batch_size`` at a time on the waves' device: a batch may hold windows of
    several clips (a 10 s clip alone in a batch ran 30 ms on the embedded default, 21 ms in batches of 8).
    Every window is normalised on its own, so a clip's logits do not depend on its batch beyond float rounding.
    ``on_progress(seconds)``, if given, is called after each batch with the seconds of audio newly covered
    (they add up to the waves' total duration).
    """
    for wave in waves:
        if wave.ndim != 1 or wave.numel() == 0:
            raise ValueError(f"expected a non-empty mono waveform (samples,), got shape {tuple(wave.shape)}")
    sample_rate, mel_hop = frontends.crnn.sample_rate, frontends.crnn.hop_length
    backbone_frontend = frontends[model.backbone.frontend]
    frame_samples = mel_hop * model.time_pooling
    window = int(round(window_s * sample_rate))
    hop_frames = max(1, int(round(hop_s * sample_rate / frame_samples)))
    hop = hop_frames * frame_samples
    windows, order = [], []  # per wave (n_windows, window) views; (wave, window) of every window in order
    for i, wave in enumerate(waves):
        n_windows = window_layout(wave.numel(), window, hop)
        padded = torch.nn.functional.pad(wave, (0, (n_windows - 1) * hop + window - wave.numel()))
        windows.append(padded.unfold(0, window, hop))
        order += [(i, k) for k in range(n_windows)]
    sums: list[torch.Tensor | None] = [None] * len(waves)
    counts: list[torch.Tensor | None] = [None] * len(waves)
    covered = [0] * len(waves)
    for first in range(0, len(order), batch_size):
        members = order[first : first + batch_size]
        batch = torch.stack([windows[i][k] for i, k in members])
        logits = model(frontends.crnn(batch), atst_feats=backbone_frontend(batch)).strong_logits  # (b, C, F)
        n_classes, window_frames = logits.shape[1:]
        newly = 0
        for (i, k), window_logits in zip(members, logits):
            if sums[i] is None:
                total = (len(windows[i]) - 1) * hop_frames + window_frames
                sums[i], counts[i] = logits.new_zeros(n_classes, total), logits.new_zeros(total)
            start = k * hop_frames
            sums[i][:, start : start + window_frames] += window_logits
            counts[i][start : start + window_frames] += 1
            end = min(waves[i].numel(), k * hop + window)
            newly, covered[i] = newly + end - covered[i], end
        if on_progress is not None:
            on_progress(newly / sample_rate)
    return [
        (total / count)[:, : n_output_frames(wave.numel() / sample_rate, mel_hop, sample_rate, model.time_pooling)]
        for wave, total, count in zip(waves, sums, counts)
    ]


def predict_clip(model, frontends, wave: torch.Tensor, window_s: float = 10.0, hop_s: float = 5.0,
                 batch_size: int = 8, on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """(C, frames) strong logits of one mono waveform ``wave`` (samples,): :func:`predict_clips` of one wave."""
    return predict_clips(model, frontends, [wave], window_s, hop_s, batch_size, on_progress)[0]
