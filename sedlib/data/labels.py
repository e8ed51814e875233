"""Label encoding on the model's output frame grid.

The CRNN pools time by 4 after the mel hop of 256 samples at 16 kHz: one output frame is
256 * 4 / 16000 = 0.064 s, and a 10 s clip gives 156 frames (626 mel frames // 4).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def frame_hop_seconds(hop_length: int, sample_rate: int, time_pooling: int) -> float:
    """Seconds per output frame: hop (samples) * time pooling / sample rate (Hz)."""
    return hop_length * time_pooling / sample_rate


def n_output_frames(clip_seconds: float, hop_length: int, sample_rate: int, time_pooling: int) -> int:
    """Output frames of a clip that start inside it: centred STFT frames (1 + samples // hop) floor-divided by the
    time pooling, at most ceil(samples / (hop x pooling)) (a clip of an exact multiple of the output hop, e.g. a
    7.68 s MAESTRO chunk at 64 ms, has a last centred frame starting at its end: not a frame of the clip)."""
    n_samples = int(round(clip_seconds * sample_rate))
    n_mel_frames = 1 + n_samples // hop_length
    return min(n_mel_frames // time_pooling, -(-n_samples // (hop_length * time_pooling)))


def time_to_frame(seconds: float, frame_hop: float, n_frames: int, is_offset: bool) -> int:
    """Frame index of a time: floor for onsets, ceil for offsets, clipped to [0, n_frames]."""
    position = seconds / frame_hop
    index = math.ceil(position - 1e-9) if is_offset else math.floor(position + 1e-9)
    return int(min(max(index, 0), n_frames))


def encode_strong(
    events: Iterable[tuple[float, float, str]], classes: list[str], n_frames: int, frame_hop: float
) -> np.ndarray:
    """(C, n_frames) float32 targets: 1 where an event (onset, offset, label) in seconds is active."""
    index = {name: i for i, name in enumerate(classes)}
    target = np.zeros((len(classes), n_frames), dtype=np.float32)
    for onset, offset, label in events:
        start = time_to_frame(onset, frame_hop, n_frames, is_offset=False)
        stop = time_to_frame(offset, frame_hop, n_frames, is_offset=True)
        target[index[label], start:stop] = 1.0
    return target


def encode_weak(labels: Iterable[str], classes: list[str]) -> np.ndarray:
    """(C,) float32 clip-level targets: 1 for every label present."""
    index = {name: i for i, name in enumerate(classes)}
    target = np.zeros(len(classes), dtype=np.float32)
    for label in labels:
        target[index[label]] = 1.0
    return target


def encode_soft(
    events: Iterable[tuple[float, float, str, float]], classes: list[str], n_frames: int, frame_hop: float
) -> np.ndarray:
    """(C, n_frames) float32 soft targets of events (onset, offset, label, confidence), times in seconds.

    A frame of a class holds the highest confidence among that class's events covering it (0 where none does);
    frames as in encode_strong (onset frame floored, offset frame ceiled).
    """
    index = {name: i for i, name in enumerate(classes)}
    target = np.zeros((len(classes), n_frames), dtype=np.float32)
    for onset, offset, label, confidence in events:
        start = time_to_frame(onset, frame_hop, n_frames, is_offset=False)
        stop = time_to_frame(offset, frame_hop, n_frames, is_offset=True)
        row = target[index[label], start:stop]
        np.maximum(row, np.float32(confidence), out=row)
    return target
