"""KaldiFbank / BEATsFbank against an independent numpy implementation of the Kaldi fbank definition."""

import math

import numpy as np
import pytest
import torch

from sedlib.features.kaldi_fbank import BEATsFbank, KaldiFbank

DB_PER_NEPER = 10 * math.log10(math.e)  # natural-log power -> dB


def numpy_kaldi_fbank(wave: np.ndarray, sr=16000, n_mels=128, win_ms=25, shift_ms=10, low=20.0, high=0.0,
                      preemph=0.97, scale=1.0) -> np.ndarray:
    """(frames, n_mels) Kaldi log-fbank written frame by frame, filter by filter, in float64."""
    x = wave.astype(np.float64) * scale
    win, shift = int(sr * win_ms / 1000), int(sr * shift_ms / 1000)
    n_fft = 1
    while n_fft < win:
        n_fft *= 2
    n = np.arange(win)
    povey = (0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))) ** 0.85

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    high = high if high > 0 else sr / 2 + high
    lo_mel, hi_mel = mel(low), mel(high)
    step = (hi_mel - lo_mel) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo_mel + m * step, lo_mel + (m + 1) * step, lo_mel + (m + 2) * step
        for k in range(n_fft // 2):  # the Nyquist bin stays 0
            bm = mel(k * sr / n_fft)
            if left < bm <= centre:
                banks[m, k] = (bm - left) / (centre - left)
            elif centre < bm < right:
                banks[m, k] = (right - bm) / (right - centre)
    out = []
    for start in range(0, len(x) - win + 1, shift):
        frame = x[start:start + win].copy()
        frame -= frame.mean()
        emphasised = np.empty_like(frame)
        emphasised[0] = frame[0] - preemph * frame[0]
        emphasised[1:] = frame[1:] - preemph * frame[:-1]
        padded = np.zeros(n_fft)
        padded[:win] = emphasised * povey
        power = np.abs(np.fft.rfft(padded)) ** 2
        out.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    return np.array(out)


def _inputs():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    return {
        "noise_400": rng.uniform(-1, 1, 400),
        "noise_4321": rng.normal(0, 0.1, 4321),
        "sine_1s": 0.5 * np.sin(2 * np.pi * 440 * t),
        "two_tones_quiet": 1e-3 * np.sin(2 * np.pi * 1000 * t[:7777]) + 1e-5 * np.sin(2 * np.pi * 6000 * t[:7777]),
        "silence_then_click": np.concatenate([np.zeros(2000), [1.0], np.zeros(1999)]),
    }


@pytest.mark.parametrize("name", list(_inputs()))
def test_matches_numpy_definition_to_1e_4_db(name):
    wave = _inputs()[name]
    ours = KaldiFbank(n_mels=128, waveform_scale=2**15)(torch.tensor(wave, dtype=torch.float32))[0].numpy()
    expected = numpy_kaldi_fbank(wave.astype(np.float32), scale=2**15)
    assert ours.shape == expected.shape == (1 + (len(wave) - 400) // 160, 128)
    assert np.max(np.abs(ours - expected)) * DB_PER_NEPER <= 1e-4


def test_other_options_match_numpy_definition():
    wave = np.random.default_rng(1).normal(0, 0.3, 8000)
    ours = KaldiFbank(sample_rate=8000, n_mels=23, frame_length_ms=32, frame_shift_ms=8, low_freq=50,
                      high_freq=-200)(torch.tensor(wave[None], dtype=torch.float32))[0].numpy()
    expected = numpy_kaldi_fbank(wave.astype(np.float32), sr=8000, n_mels=23, win_ms=32, shift_ms=8, low=50,
                                 high=-200)
    assert ours.shape == expected.shape
    assert np.max(np.abs(ours - expected)) * DB_PER_NEPER <= 1e-4


def test_batch_equals_clips_one_by_one_and_frame_count():
    fbank = KaldiFbank(n_mels=128)
    batch = torch.randn(3, 16000 * 10)
    out = fbank(batch)
    assert out.shape == (3, 998, 128) == (3, fbank.n_frames(160000), 128)
    for row in range(3):
        assert torch.equal(out[row], fbank(batch[row])[0])


def test_beats_fbank_is_normalised_time_last():
    wave = torch.from_numpy(_inputs()["sine_1s"]).float()
    frontend = BEATsFbank()
    feats = frontend(wave[None])
    raw = numpy_kaldi_fbank(wave.numpy(), scale=2**15)
    assert feats.shape == (1, 128, 98) and frontend.n_frames(16000) == 98
    assert torch.equal(frontend.normalize(frontend.mel(wave[None])), feats)
    np.testing.assert_allclose(feats[0].T.numpy(), (raw - 15.41663) / (2 * 6.55582), atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 400 samples, got 399"):
        KaldiFbank()(torch.zeros(399))
    with pytest.raises(ValueError, match=r"\(B, samples\)"):
        KaldiFbank()(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="low_freq"):
        KaldiFbank(low_freq=9000)
