"""Mel frontends of the two ATST-SED branches, in torch only (no torchaudio), by config section name
(and BEATs' Kaldi fbank, section ``beats``: sedlib.features.kaldi_fbank).

Both reproduce the ``torchaudio.transforms.MelSpectrogram`` settings of the published code
(ATST-SED ``desed_task/dataio/datasets_atst_sed.py``): centred STFT with reflect padding
(``1 + samples // hop`` frames), one-sided spectrum, HTK mel scale, triangular filters without area
normalisation (torchaudio's ``norm=None, mel_scale="htk"`` defaults).

- CRNN branch: Hamming window, **symmetric** (``wkwargs={"periodic": False}``), power 1 (magnitude);
  16 kHz, n_fft = win = 2048, hop 256, 0-8000 Hz, 128 mel -> 626 frames per 10 s (16 ms hop).
  ``normalize``: 20 log10(max(x, 1e-5)), clamp [-50, 80], per-clip min-max to [0, 1]
  (``TorchScaler("instance", "minmax", dims=[1, 2])``: (x - min) / (max - min + 1e-8)).
- ATST branch: Hann window, periodic (torchaudio default), power 2; 16 kHz, n_fft = win = 1024,
  hop 160, 60-7800 Hz, 64 mel -> 1001 frames per 10 s (10 ms hop).
  ``normalize``: 10 log10(max(x, 1e-10)), top_db 80, clamp [-50, 80],
  ``(x + 79.6482) / (50.6842 + 79.6482) * 2 - 1`` (``ATSTNorm``).

Deviation from the published code, on purpose: torchaudio's ``AmplitudeToDB(top_db=80)`` applied to a
3-D (B, F, T) batch uses ONE cut-off for the whole batch (max over every clip of the batch), so a clip's
features depend on which clips share its batch. We apply top_db **per clip**: a clip's features must be a
function of the clip alone, so that cached features equal on-the-fly ones, inference on one file equals
inference in a batch, and every window of a long recording is normalised on its own. With one clip per
batch (the published inference) both agree exactly.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from sedlib.features.kaldi_fbank import BEATsFbank

ATST_DB_MIN = -79.6482  # ATSTNorm MinMax constants (published)
ATST_DB_MAX = 50.6842


def hz_to_mel_htk(freq: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq / 700.0)


def mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, f_min: float, f_max: float, n_mels: int) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) float32 triangular HTK-mel filters, peak 1, no area normalisation."""
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(
        float(hz_to_mel_htk(torch.tensor(f_min, dtype=torch.float64))),
        float(hz_to_mel_htk(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz_points = mel_to_hz_htk(mel_points)
    widths = hz_points[1:] - hz_points[:-1]  # (n_mels + 1,)
    slopes = hz_points.unsqueeze(0) - freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class MelFrontend(nn.Module, abc.ABC):
    """Waveform (B, samples) float32 -> linear mel (B, n_mels, 1 + samples // hop)."""

    window_name: str
    periodic: bool
    power: float

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.sample_rate = int(cfg["sample_rate"])
        self.n_fft = int(cfg["n_fft"])
        self.win_length = int(cfg["win_length"])
        self.hop_length = int(cfg["hop_length"])
        self.n_mels = int(cfg["n_mels"])
        window_fn = {"hamming": torch.hamming_window, "hann": torch.hann_window}[self.window_name]
        self.register_buffer("window", window_fn(self.win_length, periodic=self.periodic), persistent=False)
        self.register_buffer(
            "fbank",
            mel_filterbank(self.sample_rate, self.n_fft, cfg["f_min"], cfg["f_max"], self.n_mels),
            persistent=False,
        )

    def params(self) -> dict:
        """Every setting that determines the features (for provenance sidecars and cache keys)."""
        return {**self.cfg, "window": self.window_name, "periodic": self.periodic, "power": self.power,
                "center": True, "pad_mode": "reflect", "mel_scale": "htk", "norm": None}

    def n_frames(self, n_samples: int) -> int:
        """Frames of a centred STFT of ``n_samples`` samples."""
        return 1 + n_samples // self.hop_length

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        spec = torch.stft(
            wave.to(self.window.dtype),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()
        if self.power != 1.0:
            spec = spec.pow(self.power)
        return torch.matmul(self.fbank.T, spec)  # (B, n_mels, frames)

    @abc.abstractmethod
    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        """Linear mel (B, n_mels, frames) -> normalised network input of the same shape, per clip."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.mel(wave))


class CRNNFrontend(MelFrontend):
    """CNN-branch features: magnitude mel -> dB -> per-clip min-max in [0, 1]."""

    window_name, periodic, power = "hamming", False, 1.0

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        db = (20.0 * torch.log10(torch.clamp(mel, min=1e-5))).clamp(-50.0, 80.0)
        low = db.amin(dim=(-2, -1), keepdim=True)
        high = db.amax(dim=(-2, -1), keepdim=True)
        return (db - low) / (high - low + 1e-8)


class ATSTFrontend(MelFrontend):
    """Transformer-branch features: power mel -> dB (top_db 80 per clip) -> ATSTNorm scale (about [-1, 1])."""

    window_name, periodic, power = "hann", True, 2.0

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - 80.0).clamp(-50.0, 80.0)
        return (db - ATST_DB_MIN) / (ATST_DB_MAX - ATST_DB_MIN) * 2.0 - 1.0


# Frontend class of each ``config["frontends"]`` section; a backbone kind names the section it reads. BEATsFbank
# (Kaldi fbank, section ``beats``) has the same API: cfg, params(), n_frames(), mel(), normalize(), sample_rate,
# n_mels, hop_length.
FRONTENDS: dict[str, type[MelFrontend] | type[BEATsFbank]] = {"crnn": CRNNFrontend, "atst": ATSTFrontend,
                                                              "beats": BEATsFbank}


class Frontends:
    """Built frontends by section name (``frontends["atst"]`` or ``frontends.atst``); iterating yields the frontends."""

    def __init__(self, by_name: dict[str, MelFrontend] | None = None, **named: MelFrontend):
        self._by_name = {**(by_name or {}), **named}

    def __getitem__(self, name: str) -> MelFrontend:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no frontend '{name}' (built: {sorted(self._by_name)})") from None

    def __getattr__(self, name: str) -> MelFrontend:
        by_name = self.__dict__.get("_by_name", {})
        if name not in by_name:
            raise AttributeError(f"no frontend '{name}' (built: {sorted(by_name)})")
        return by_name[name]

    def __iter__(self):
        return iter(self._by_name.values())

    def items(self):
        return self._by_name.items()

    def to(self, device: torch.device | str) -> "Frontends":
        return Frontends({name: frontend.to(device) for name, frontend in self.items()})


def build_frontend(name: str, cfg: dict) -> MelFrontend:
    """The frontend of section ``name`` of ``config["frontends"]``."""
    if name not in FRONTENDS:
        raise ValueError(f"frontends.{name}: no frontend of that name (known: {sorted(FRONTENDS)})")
    return FRONTENDS[name](cfg)


def build_frontends(frontends_cfg: dict, names: list[str] | None = None) -> Frontends:
    """The frontends of ``names`` (default: every section of ``config["frontends"]``)."""
    return Frontends({name: build_frontend(name, frontends_cfg[name]) for name in names or frontends_cfg})


def frames_per_clip(cfg: dict, seconds: float) -> int:
    """Frames of a ``seconds`` long clip for a frontend config (626 CRNN / 1001 ATST for 10 s)."""
    return 1 + int(round(seconds * cfg["sample_rate"])) // cfg["hop_length"]
