"""Long-audio windowing: exact frame alignment with a model of known output, and a real 14.7 s recording."""

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from conftest import published_geometry
from sedlib.config import load_config
from sedlib.data.labels import n_output_frames
from sedlib.features.frontends import Frontends, build_frontends
from sedlib.models import build_sed_model
from sedlib.models.crnn import SEDOutput
from sedlib.models.windowing import predict_clip, predict_clips, window_layout

SR, HOP, POOL = 16000, 256, 4
FRAME = HOP * POOL  # samples per output frame (64 ms)


class Identity(torch.nn.Module):
    """Stand-in frontend: passes the waveform through as (B, 1, samples)."""

    sample_rate, hop_length = SR, HOP

    def forward(self, wave):
        return wave.unsqueeze(1)


class FrameMeanModel(torch.nn.Module):
    """Output frame j = mean of the input samples of frame j (+ the window's mean if ``add_window_mean``)."""

    time_pooling = POOL
    backbone = SimpleNamespace(frontend="atst")  # the frontend section whose features atst_feats carries

    def __init__(self, add_window_mean=False):
        super().__init__()
        self.add_window_mean = add_window_mean

    def forward(self, crnn_feats, atst_feats=None):
        wave = crnn_feats[:, 0]
        n_frames = (1 + wave.shape[-1] // HOP) // POOL
        padded = torch.nn.functional.pad(wave, (0, n_frames * FRAME - wave.shape[-1]))
        logits = padded.reshape(len(wave), 1, n_frames, FRAME).mean(-1)
        if self.add_window_mean:
            logits = logits + wave.mean(-1)[:, None, None]
        return SEDOutput(torch.sigmoid(logits), logits.mean(-1), logits)


IDENTITY = Frontends(crnn=Identity(), atst=Identity())


@pytest.mark.parametrize("seconds,hop_s", [(14.7, 5.0), (4.2, 5.0), (10.0, 5.0), (23.456, 3.0), (31.0, 10.0)])
def test_frames_land_on_the_global_grid(seconds, hop_s):
    n = int(round(seconds * SR))
    wave = 1.0 + torch.arange(n, dtype=torch.float64) / SR  # value = 1 + time in seconds
    logits = predict_clip(FrameMeanModel(), IDENTITY, wave, window_s=10.0, hop_s=hop_s)
    assert logits.shape == (1, n_output_frames(seconds, HOP, SR, POOL))
    whole = n // FRAME  # frames lying entirely inside the clip
    expected = 1.0 + (np.arange(whole) * FRAME + (FRAME - 1) / 2) / SR  # mean time of each frame
    assert np.abs(logits[0, :whole].numpy() - expected).max() < 1e-9


def test_overlapping_windows_are_averaged():
    seconds, hop_s = 23.456, 5.0
    n = int(round(seconds * SR))
    wave = torch.sin(torch.arange(n, dtype=torch.float64) / 700.0) + torch.arange(n, dtype=torch.float64) / n
    logits = predict_clip(FrameMeanModel(add_window_mean=True), IDENTITY, wave, 10.0, hop_s, batch_size=2)
    hop = round(hop_s * SR / FRAME) * FRAME  # 5 s -> 78 frames = 79872 samples
    k = window_layout(n, 10 * SR, hop)
    assert k == 4  # starts 0, 4.992, 9.984, 14.976 s; the last one is zero-padded past 23.456 s
    padded = torch.nn.functional.pad(wave, (0, (k - 1) * hop + 10 * SR - n))
    window_means = [float(padded[i * hop : i * hop + 10 * SR].mean()) for i in range(k)]
    frames = logits.shape[-1]
    for g in (0, 77, 78, 155, 156, 160, 233, 234, 300, frames - 2):
        covering = [i for i in range(k) if i * 78 <= g < i * 78 + 156]
        frame_mean = float(padded[g * FRAME : (g + 1) * FRAME].mean())
        expected = frame_mean + np.mean([window_means[i] for i in covering])
        assert logits[0, g].item() == pytest.approx(expected, abs=1e-9), g


@pytest.fixture(scope="module")
def long_recording(shared_data):
    wave, rate = sf.read(shared_data / "audio" / "speech_long_44k_stereo.wav", dtype="float32")
    assert rate == 44100 and wave.ndim == 2
    return torch.from_numpy(soxr.resample(wave.mean(axis=1), rate, SR).astype(np.float32))


def test_real_long_recording(repo_root, long_recording):
    config = published_geometry(load_config(repo_root / "workflow_config.yaml"))
    torch.manual_seed(0)
    model = build_sed_model(config, 10).eval()
    frontends = build_frontends(config["frontends"])
    n = long_recording.numel()
    assert abs(n / SR - 14.7) < 0.01
    logits = predict_clip(model, frontends, long_recording, 10.0, 5.0)
    assert logits.shape == (10, (1 + n // HOP) // POOL) == (10, 229)
    # independent computation: two windows (0 s and 4.992 s), each run alone, averaged where they overlap
    window = 10 * SR
    second = torch.nn.functional.pad(long_recording[78 * FRAME :], (0, window - (n - 78 * FRAME)))
    with torch.no_grad():
        direct = [model(frontends.crnn(w[None]), atst_feats=frontends.atst(w[None])).strong_logits[0]
                  for w in (long_recording[:window], second)]
    expected = torch.zeros(10, 78 + 156)
    counts = torch.zeros(78 + 156)
    for i, out in enumerate(direct):
        expected[:, i * 78 : i * 78 + 156] += out
        counts[i * 78 : i * 78 + 156] += 1
    assert torch.allclose(logits, (expected / counts)[:, :229], atol=1e-5)
    # batching windows does not change the result; hop = window gives the first window unchanged
    assert torch.allclose(predict_clip(model, frontends, long_recording, 10.0, 5.0, batch_size=1), logits, atol=1e-5)
    no_overlap = predict_clip(model, frontends, long_recording, 10.0, 10.0)
    assert torch.allclose(no_overlap[:, :156], direct[0], atol=1e-5)


def test_a_clip_of_an_exact_multiple_of_the_output_hop_has_no_frame_starting_at_its_end():
    from sedlib.evaluation.score_tables import frame_timestamps

    assert n_output_frames(10.0, 256, 16000, 4) == 156 and n_output_frames(10.0, 1024, 16000, 1) == 157
    n = n_output_frames(7.68, 1024, 16000, 1)  # the last, partial MAESTRO chunk of a 77.68 s recording
    assert n == 120
    assert frame_timestamps(n, 0.064, 7.68)[-1] == 7.68


def test_several_waves_in_one_batch_equal_each_wave_alone():
    """predict_clips batches windows of different clips together; each clip's logits are those of predict_clip,
    and on_progress adds up to the total duration."""
    waves = [torch.sin(torch.arange(int(s * SR), dtype=torch.float64) / (300.0 + 50 * k)) + k
             for k, s in enumerate((23.456, 4.2, 10.0, 14.7))]  # fmt: skip
    reported = []
    together = predict_clips(FrameMeanModel(add_window_mean=True), IDENTITY, waves, 10.0, 5.0, batch_size=3,
                             on_progress=reported.append)  # fmt: skip
    assert len(together) == len(waves) and len(reported) == 3  # 4 + 1 + 1 + 2 windows in batches of 3
    assert sum(reported) == pytest.approx(23.456 + 4.2 + 10.0 + 14.7)
    for wave, logits in zip(waves, together):
        torch.testing.assert_close(logits, predict_clip(FrameMeanModel(add_window_mean=True), IDENTITY, wave), rtol=0, atol=0)
