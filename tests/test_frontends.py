"""Frontends: parity with an independent librosa computation, frame counts, per-clip normalisation."""

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from conftest import published_geometry
from sedlib.config import load_config
from sedlib.features.frontends import ATST_DB_MAX, ATST_DB_MIN, build_frontends, frames_per_clip

librosa = pytest.importorskip("librosa")


@pytest.fixture(scope="module")
def config(repo_root):
    return published_geometry(load_config(repo_root / "workflow_config.yaml"))


@pytest.fixture(scope="module")
def frontends(config):
    return build_frontends(config["frontends"])


@pytest.fixture(scope="module")
def speech(shared_data):
    wave, rate = sf.read(shared_data / "audio" / "speech_en.wav", dtype="float32")
    assert rate == 16000 and wave.shape == (160000,)
    return wave


def librosa_mel(wave, cfg, window, power):
    """Reference mel in float64: librosa STFT (centred, reflect) + librosa HTK filters without normalisation."""
    spec = np.abs(
        librosa.stft(wave.astype(np.float64), n_fft=cfg["n_fft"], hop_length=cfg["hop_length"],
                     win_length=cfg["win_length"], window=window, center=True, pad_mode="reflect")
    ) ** power
    fbank = librosa.filters.mel(sr=cfg["sample_rate"], n_fft=cfg["n_fft"], n_mels=cfg["n_mels"], fmin=cfg["f_min"],
                                fmax=cfg["f_max"], htk=True, norm=None)
    return fbank @ spec


def test_crnn_mel_matches_librosa(frontends, config, speech):
    cfg = config["frontends"]["crnn"]
    # the published CRNN branch uses torch.hamming_window(periodic=False): scipy's symmetric Hamming window
    ref = librosa_mel(speech, cfg, scipy.signal.get_window("hamming", cfg["win_length"], fftbins=False), 1.0)
    ours = frontends.crnn.mel(torch.from_numpy(speech)[None])[0].double().numpy()
    assert ours.shape == ref.shape == (128, 626)
    # measured max abs diff 8.7e-6 on values up to 72 (float32 STFT vs float64)
    assert np.abs(ours - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_atst_mel_matches_librosa(frontends, config, speech):
    cfg = config["frontends"]["atst"]
    ref = librosa_mel(speech, cfg, "hann", 2.0)  # periodic Hann, torchaudio's default window
    ours = frontends.atst.mel(torch.from_numpy(speech)[None])[0].double().numpy()
    assert ours.shape == ref.shape == (64, 1001)
    # measured: max abs diff 1.3e-4 on power values up to 712; in dB (what the model sees) 1.4e-4 dB
    assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max()
    db = lambda x: 10 * np.log10(np.maximum(x, 1e-10))  # noqa: E731
    assert np.abs(db(ours) - db(ref)).max() < 1e-3


def test_frame_counts(frontends, config):
    assert frames_per_clip(config["frontends"]["crnn"], 10.0) == 626
    assert frames_per_clip(config["frontends"]["atst"], 10.0) == 1001
    wave = torch.zeros(1, 23456)
    assert frontends.crnn.mel(wave).shape[-1] == frontends.crnn.n_frames(23456) == 1 + 23456 // 256
    assert frontends.atst.mel(wave).shape[-1] == frontends.atst.n_frames(23456) == 1 + 23456 // 160


def test_normalisation_formulas(frontends, speech):
    mel_crnn = frontends.crnn.mel(torch.from_numpy(speech)[None])
    db = (20 * torch.log10(mel_crnn.clamp(min=1e-5))).clamp(-50, 80)
    expected = (db - db.min()) / (db.max() - db.min() + 1e-8)
    assert torch.allclose(frontends.crnn.normalize(mel_crnn), expected, atol=1e-6)
    assert frontends.crnn.normalize(mel_crnn).min() == 0 and frontends.crnn.normalize(mel_crnn).max() > 0.999999

    mel_atst = frontends.atst.mel(torch.from_numpy(speech)[None])
    db = 10 * torch.log10(mel_atst.clamp(min=1e-10))
    db = torch.maximum(db, db.max() - 80).clamp(-50, 80)
    expected = (db + 79.6482) / (50.6842 + 79.6482) * 2 - 1
    assert (ATST_DB_MIN, ATST_DB_MAX) == (-79.6482, 50.6842)
    assert torch.allclose(frontends.atst.normalize(mel_atst), expected, atol=1e-6)


def test_normalisation_is_per_clip(frontends, speech):
    """A clip's features do not depend on the other clips of its batch (top_db and min-max per clip)."""
    loud = torch.from_numpy(speech)[None]
    quiet = 1e-3 * torch.roll(loud, 4000, dims=1)
    for fe in frontends:
        alone = fe(quiet)
        batched = fe(torch.cat([loud, quiet]))[1:]
        assert torch.allclose(alone, batched, atol=1e-5), type(fe).__name__
    # the published batch-wide top_db would differ here: the loud clip's max sets the quiet clip's floor
    mel = frontends.atst.mel(torch.cat([loud, quiet]))
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    assert (torch.maximum(db[1], db.max() - 80) != torch.maximum(db[1], db[1].max() - 80)).any()
