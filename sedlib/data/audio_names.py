"""Audio file names: which suffixes are audio, and the name a file gets once resampled (its stem + .wav)."""

from __future__ import annotations

from pathlib import PurePath

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")


def is_audio_name(name: str) -> bool:
    """Whether ``name`` ends in one of AUDIO_SUFFIXES (case-insensitive)."""
    return PurePath(name).suffix.lower() in AUDIO_SUFFIXES


def resampled_name(name: str) -> str:
    """The output name ``resample`` gives an input file: 'x.flac' -> 'x.wav'."""
    return PurePath(name).stem + ".wav"
