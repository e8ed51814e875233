"""Resampling to mono 16 kHz PCM16: real 44.1 kHz stereo recording, formats, errors, idempotency."""

import os
import shutil

import librosa
import numpy as np
import pytest
import soundfile as sf

from sedlib.cli import main as cli_main
from sedlib.data.metadata import read_durations
from sedlib.data.resample import resample_folder

TARGET = 16000


@pytest.fixture()
def real_split(tmp_path, shared_data):
    """A split folder holding the real 44.1 kHz stereo 14.7 s recording."""
    src = tmp_path / "audio"
    src.mkdir()
    shutil.copy(shared_data / "audio" / "speech_long_44k_stereo.wav", src / "speech_long.wav")
    return src


def test_real_stereo_recording_to_16k_mono(real_split, tmp_path):
    out = tmp_path / "audio_16k"
    durations = resample_folder(real_split, out, tmp_path / "durations.tsv", TARGET)
    original, rate = sf.read(real_split / "speech_long.wav", dtype="float32")
    assert rate == 44100 and original.shape[1] == 2
    info = sf.info(out / "speech_long.wav")
    assert (info.samplerate, info.channels, info.subtype) == (TARGET, 1, "PCM_16")
    # The recording is 648444 samples = 14.704 s ("14.7 s"); the output keeps its length to within 1 sample.
    assert abs(info.frames - len(original) * TARGET / 44100) <= 1 and abs(info.frames / TARGET - 14.7) < 0.005
    assert read_durations(tmp_path / "durations.tsv") == durations == {"speech_long.wav": info.frames / TARGET}
    # Independent reference: librosa's polyphase resampler (scipy) on the channel mean.
    reference = librosa.resample(original.mean(axis=1), orig_sr=44100, target_sr=TARGET, res_type="polyphase")
    ours, _ = sf.read(out / "speech_long.wav", dtype="float32")
    n = min(len(ours), len(reference))
    correlation = np.corrcoef(ours[:n], reference[:n])[0, 1]
    assert correlation > 0.99, correlation
    # The channel mean (not one channel) went in: the two channels have different gains.
    assert np.sqrt(np.mean(ours**2)) == pytest.approx(np.sqrt(np.mean(reference[:n] ** 2)), rel=0.02)


def test_other_formats_rates_and_channels(tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    t = np.arange(22050 * 2) / 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(src / "three.flac", np.stack([tone, tone, -tone], axis=1), 22050)  # mean = tone / 3
    sf.write(src / "native.wav", tone[:16000].astype(np.float32), TARGET, subtype="FLOAT")
    (src / "notes.txt").write_text("not audio, ignored")
    durations = resample_folder(src, tmp_path / "out", tmp_path / "d.tsv", TARGET)
    assert durations == {"native.wav": 1.0, "three.wav": 2.0}
    three, rate = sf.read(tmp_path / "out" / "three.wav")
    assert rate == TARGET and three.ndim == 1 and len(three) == 32000
    assert np.max(np.abs(three[1000:-1000])) == pytest.approx(0.5 / 3, abs=2e-3)
    spectrum = np.abs(np.fft.rfft(three))
    assert np.argmax(spectrum) * TARGET / len(three) == pytest.approx(440, abs=1)


def test_corrupt_and_empty_files_are_named(tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    sf.write(src / "good.wav", np.zeros(4410, dtype=np.float32), 44100)
    (src / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(ValueError, match=r"broken\.wav: unreadable audio file"):
        resample_folder(src, tmp_path / "out", tmp_path / "d.tsv", TARGET)
    (src / "broken.wav").unlink()
    sf.write(src / "empty.wav", np.zeros(0, dtype=np.float32), 44100)
    with pytest.raises(ValueError, match=r"empty\.wav: audio file has no samples"):
        resample_folder(src, tmp_path / "out", tmp_path / "d.tsv", TARGET)
    assert not (tmp_path / "d.tsv").exists()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resample_folder(tmp_path / "nowhere", tmp_path / "out", tmp_path / "d.tsv", TARGET)


def test_idempotent_rerun_and_recomputation(tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(src / f"c{i}.wav", 0.1 * rng.standard_normal((44100, 2)), 44100, subtype="PCM_16")
    out = tmp_path / "out"
    first = resample_folder(src, out, tmp_path / "d.tsv", TARGET, threads=2)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    data = {p.name: p.read_bytes() for p in out.iterdir()}
    second = resample_folder(src, out, tmp_path / "d.tsv", TARGET, threads=1)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    # A damaged output (wrong length) is recomputed; an output whose input is gone is removed.
    sf.write(out / "c1.wav", np.zeros(100, dtype=np.int16), TARGET, subtype="PCM_16")
    os.utime(out / "c1.wav", ns=(stamps["c1.wav"] + 10**9,) * 2)
    (src / "c2.wav").unlink()
    third = resample_folder(src, out, tmp_path / "d.tsv", TARGET)
    assert third == {"c0.wav": 1.0, "c1.wav": 1.0}
    assert sorted(p.name for p in out.iterdir()) == ["c0.wav", "c1.wav"]
    assert (out / "c1.wav").read_bytes() == data["c1.wav"]  # same content as the parallel first run
    assert (out / "c0.wav").stat().st_mtime_ns == stamps["c0.wav"]


def test_resample_command(real_split, tmp_path):
    argv = ["resample", "--audio", str(real_split), "--out-dir", str(tmp_path / "o"), "--durations",
            str(tmp_path / "o.tsv"), "--sample-rate", "16000", "--threads", "1"]
    assert cli_main(argv) == 0
    assert read_durations(tmp_path / "o.tsv") == {"speech_long.wav": 235263 / 16000}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_an_error_naming_file_and_time(tmp_path, bad):
    src = tmp_path / "audio"
    src.mkdir()
    wave = np.zeros(16000, dtype=np.float32)
    wave[8000] = bad
    sf.write(src / "nan.wav", wave, TARGET, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav: 1 non-finite samples .* first at 0\.500 s"):
        resample_folder(src, tmp_path / "out", tmp_path / "d.tsv", TARGET)
    assert not (tmp_path / "d.tsv").exists()


def test_beyond_full_scale_is_clipped_with_a_warning(tmp_path, caplog):
    src = tmp_path / "audio"
    src.mkdir()
    wave = np.full(16000, 0.5, dtype=np.float32)
    wave[:3] = [1.5, -2.0, 1.01]
    sf.write(src / "loud.wav", wave, TARGET, subtype="FLOAT")
    resample_folder(src, tmp_path / "out", tmp_path / "d.tsv", TARGET)
    assert "loud.wav: 3 samples beyond full scale" in caplog.text
    out, _ = sf.read(tmp_path / "out" / "loud.wav", dtype="float32")
    assert out[0] == pytest.approx(1.0, abs=1e-4) and out[1] == -1.0


def test_truncated_wav_data_chunk_warns(tmp_path, caplog):
    src = tmp_path / "audio"
    src.mkdir()
    sf.write(src / "cut.wav", np.zeros(16000, dtype=np.float32), TARGET, subtype="PCM_16")
    full = (src / "cut.wav").read_bytes()
    (src / "cut.wav").write_bytes(full[: len(full) - 1000])
    durations = resample_folder(src, tmp_path / "out", tmp_path / "d.tsv", TARGET)
    assert "cut.wav: the WAV data chunk is 1000 bytes shorter than its header declares" in caplog.text
    assert durations == {"cut.wav": 15500 / TARGET}

