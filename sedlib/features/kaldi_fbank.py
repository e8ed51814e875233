"""Kaldi-compatible log-mel filterbank in torch only (no torchaudio), and the BEATs input features made from it.

``KaldiFbank`` computes ``torchaudio.compliance.kaldi.fbank`` for the options BEATs uses (its other options
at their defaults), from the Kaldi definition:
- frames of ``frame_length`` (25 ms = 400 samples) every ``frame_shift`` (10 ms = 160 samples), snip edges:
  ``1 + (samples - 400) // 160`` frames (998 for 10 s at 16 kHz), no frame for input shorter than 400 samples;
- per frame: remove the DC offset (subtract the frame mean), pre-emphasis ``x[n] - 0.97 x[n-1]`` with
  ``x[-1] = x[0]``, Povey window ``(0.5 - 0.5 cos(2 pi n / (N - 1))) ** 0.85``, zero padding to the next power
  of two (512), power spectrum ``|rfft|**2`` (257 bins); dither 0 (deterministic);
- ``n_mels`` triangular filters equally spaced on the Kaldi mel scale ``1127 ln(1 + f / 700)`` between
  ``low_freq`` (20 Hz) and ``high_freq`` (0 -> Nyquist), slopes linear in mel, evaluated at the 256 bins
  ``k * sample_rate / 512``, k < 256 (the Nyquist bin gets weight 0);
- natural log of ``max(energy, float32 eps)``.
The spectrum and filters are computed in float64 (torchaudio uses float32; float64 keeps weak bands exact),
the result is float32.

``BEATsFbank`` is ``BEATs.preprocess`` (DESED_task recipes/dcase2024_task4_baseline/local/beats/BEATs.py:135-154)
with time last: the waveform is scaled by 2**15 (int16 range), Kaldi fbank with 128 bins at 16 kHz, 25 ms / 10 ms, then
``(fbank - 15.41663) / (2 * 6.55582)``.
"""

from __future__ import annotations

import torch
from torch import nn

FLOAT32_EPS = torch.finfo(torch.float32).eps  # torchaudio.compliance.kaldi._get_epsilon: log floor
POVEY_EXPONENT = 0.85
BEATS_WAVEFORM_SCALE = 2**15  # BEATs.py:143 ``waveform.unsqueeze(0) * 2**15``
BEATS_FBANK_MEAN = 15.41663  # BEATs.py:138 ``fbank_mean`` default
BEATS_FBANK_STD = 6.55582  # BEATs.py:139 ``fbank_std`` default
BEATS_SAMPLE_RATE = 16000  # BEATs.py:147
BEATS_N_MELS = 128  # BEATs.py:146
BEATS_FRAME_SHIFT_MS = 10.0  # BEATs.py:149


def kaldi_mel(freq: torch.Tensor) -> torch.Tensor:
    """Kaldi mel scale: 1127 ln(1 + f / 700), f in Hz."""
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) float64 triangular filters on the Kaldi mel scale, peak 1, zero at Nyquist.

    ``high_freq <= 0`` counts from the Nyquist frequency (Kaldi's convention: 0 -> Nyquist).
    """
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"mel bands need 0 <= low_freq < high_freq <= {nyquist} Hz, got {low_freq} .. {high} Hz")
    mel_low, mel_high = (float(kaldi_mel(torch.tensor(f, dtype=torch.float64))) for f in (low_freq, high))
    edges = torch.linspace(mel_low, mel_high, n_mels + 2, dtype=torch.float64)  # (n_mels + 2,) filter edges in mel
    bin_mel = kaldi_mel(torch.arange(n_fft // 2, dtype=torch.float64) * sample_rate / n_fft).unsqueeze(1)
    rising = (bin_mel - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - bin_mel) / (edges[2:] - edges[1:-1])
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_fft // 2, n_mels)
    return torch.cat([banks, banks.new_zeros(1, n_mels)])


class KaldiFbank(nn.Module):
    """Waveform (B, samples) or (samples,) -> natural-log mel energies (B, frames, n_mels) float32.

    frames = 1 + (samples - window) // shift (snip edges); ``waveform_scale`` multiplies the input first.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 23,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        preemphasis: float = 0.97,
        waveform_scale: float = 1.0,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        # the sizes in samples exactly as torchaudio.compliance.kaldi computes them (int truncation)
        self.window_length = int(sample_rate * frame_length_ms * 0.001)
        self.frame_shift = int(sample_rate * frame_shift_ms * 0.001)
        if self.window_length < 2 or self.frame_shift < 1:
            raise ValueError(f"frame_length_ms {frame_length_ms} / frame_shift_ms {frame_shift_ms} are too short "
                             f"at {sample_rate} Hz")
        self.n_fft = 1 << (self.window_length - 1).bit_length()  # round to a power of two
        self.low_freq, self.high_freq, self.preemphasis = low_freq, high_freq, preemphasis
        self.waveform_scale = waveform_scale
        hann = torch.hann_window(self.window_length, periodic=False, dtype=torch.float64)
        self.register_buffer("window", hann.pow(POVEY_EXPONENT), persistent=False)
        banks = kaldi_mel_banks(n_mels, self.n_fft, sample_rate, low_freq, high_freq)
        self.register_buffer("mel_banks", banks, persistent=False)

    def n_frames(self, n_samples: int) -> int:
        """Frames of ``n_samples`` samples (snip edges): 998 for 160000 samples at 16 kHz."""
        return 0 if n_samples < self.window_length else 1 + (n_samples - self.window_length) // self.frame_shift

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        batched = waveform if waveform.dim() == 2 else waveform.unsqueeze(0)
        if batched.dim() != 2:
            raise ValueError(f"KaldiFbank expects a waveform (B, samples) or (samples,), got {tuple(waveform.shape)}")
        n_frames = self.n_frames(batched.shape[-1])
        if n_frames == 0:
            raise ValueError(f"KaldiFbank needs at least {self.window_length} samples, got {batched.shape[-1]}")
        samples = batched.to(torch.float64) * self.waveform_scale
        frames = samples.unfold(-1, self.window_length, self.frame_shift)  # (B, frames, window)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - self.preemphasis * previous) * self.window.double()  # float64 even after a module .to()
        power = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)  # (B, frames, n_fft // 2 + 1)
        energies = power @ self.mel_banks.double()
        return energies.clamp(min=FLOAT32_EPS).log().to(torch.float32)


# The published BEATs fbank as a ``frontends`` section (config keys of sedlib/features/frontends.py; samples, Hz).
BEATS_FRONTEND = {"sample_rate": BEATS_SAMPLE_RATE, "n_fft": 512, "win_length": 400, "hop_length": 160,
                  "f_min": 20.0, "f_max": BEATS_SAMPLE_RATE / 2, "n_mels": BEATS_N_MELS}


class BEATsFbank(nn.Module):
    """BEATs input features, with the frontend API of sedlib/features/frontends.py (time last), the frontend of
    section ``frontends.beats`` (``cfg``: that section; default: the published settings, BEATS_FRONTEND):
    ``mel(wave)``: waveform (B, samples) at 16 kHz in [-1, 1] -> log fbank (B, n_mels, frames), the cached quantity;
    ``normalize(fbank)``: ``(fbank - 15.41663) / (2 * 6.55582)``; ``forward`` = normalize(mel(wave)).
    ``win_length`` / ``hop_length`` are Kaldi's frame length / shift in samples, ``f_min`` / ``f_max`` its
    ``low_freq`` / ``high_freq``; ``n_fft`` must be Kaldi's FFT size, the next power of two of ``win_length``.
    """

    def __init__(self, cfg: dict | None = None):
        super().__init__()
        self.cfg = dict(cfg or BEATS_FRONTEND)
        sample_rate = int(self.cfg["sample_rate"])
        self.kaldi = KaldiFbank(sample_rate=sample_rate, n_mels=int(self.cfg["n_mels"]),
                                frame_length_ms=1000.0 * self.cfg["win_length"] / sample_rate,
                                frame_shift_ms=1000.0 * self.cfg["hop_length"] / sample_rate,
                                low_freq=float(self.cfg["f_min"]), high_freq=float(self.cfg["f_max"]),
                                waveform_scale=BEATS_WAVEFORM_SCALE)
        sizes = {"win_length": self.kaldi.window_length, "hop_length": self.kaldi.frame_shift, "n_fft": self.kaldi.n_fft}
        wrong = [f"{key} {self.cfg[key]} (Kaldi: {value})" for key, value in sizes.items() if self.cfg[key] != value]
        if wrong:
            raise ValueError(f"frontends.beats: {', '.join(wrong)}; n_fft must be the next power of two of win_length")
        self.sample_rate, self.n_mels, self.hop_length = sample_rate, self.kaldi.n_mels, self.kaldi.frame_shift

    def params(self) -> dict:
        """Every setting that determines the features (for provenance sidecars and cache keys)."""
        return {"kind": "kaldi_fbank", "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "frame_length": self.kaldi.window_length, "frame_shift": self.kaldi.frame_shift,
                "n_fft": self.kaldi.n_fft, "window": "povey", "preemphasis": self.kaldi.preemphasis,
                "low_freq": self.kaldi.low_freq, "high_freq": self.kaldi.high_freq,
                "waveform_scale": BEATS_WAVEFORM_SCALE, "mean": BEATS_FBANK_MEAN, "std": BEATS_FBANK_STD}

    def n_frames(self, n_samples: int) -> int:
        """Frames of ``n_samples`` samples: 998 for 10 s (snip edges)."""
        return self.kaldi.n_frames(n_samples)

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        return self.kaldi(wave).transpose(1, 2)

    def normalize(self, fbank: torch.Tensor) -> torch.Tensor:
        return (fbank - BEATS_FBANK_MEAN) / (2 * BEATS_FBANK_STD)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.mel(wave))
