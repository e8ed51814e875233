"""Convert a split's audio to mono PCM16 WAV at the target rate (``resample`` command).

Every readable audio file of the input folder (any format libsndfile reads, any rate and channel count) is
down-mixed by the channel mean and resampled with soxr at quality 'HQ' (20-bit precision, more than the
16-bit output keeps). Outputs keep the input basename with a .wav suffix. Files already converted (right rate,
one channel, expected length, newer than the input) are skipped; outputs whose input disappeared are removed.
``durations.tsv`` (``filename duration``, seconds from the real sample count) is written last.
Input checks (:func:`read_mono`, also used by ``infer`` and ``score``): non-finite samples are an error; float
samples beyond full scale are clipped and a truncated WAV data chunk is read as far as it goes, with warnings.
"""

from __future__ import annotations

import argparse
import logging
import struct
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from sedlib.data.audio_names import AUDIO_SUFFIXES, is_audio_name, resampled_name
from sedlib.data.metadata import write_durations
from sedlib.io import atomic_path
from sedlib.progress import Progress

log = logging.getLogger(__name__)

SOXR_QUALITY = "HQ"


def list_audio(folder: str | Path) -> list[Path]:
    """Audio files of ``folder`` (by suffix, case-insensitive), sorted by name; other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: audio folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_audio_name(p.name))


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples,) float32 channel mean of an audio file and its rate (Hz).

    Missing file -> FileNotFoundError; unreadable, empty or non-finite (NaN / inf) audio -> ValueError naming the
    file (and the first bad sample's time). Samples beyond full scale (float files) are clipped to [-1, 1] and a
    WAV whose data chunk is shorter than its header declares is read as far as it goes, each with a warning.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: audio file does not exist")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"{path}: unreadable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise ValueError(f"{path}: audio file has no samples")
    bad = ~np.isfinite(data)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1)))
        raise ValueError(
            f"{path}: {int(bad.sum())} non-finite samples (NaN or inf), the first at {first / rate:.3f} s "
            f"(frame {first})"
        )
    over = int(np.count_nonzero(np.abs(data) > 1.0))
    if over:
        log.warning("%s: %d samples beyond full scale (|x| > 1) clipped to [-1, 1]", path, over)
        np.clip(data, -1.0, 1.0, out=data)
    missing = wav_missing_bytes(path)
    if missing:
        log.warning("%s: the WAV data chunk is %d bytes shorter than its header declares (truncated file?); "
                    "read the %d frames present", path, missing, data.shape[0])
    return data.mean(axis=1), int(rate)


def wav_missing_bytes(path: str | Path) -> int:
    """Bytes the ``data`` chunk of a RIFF/WAVE file declares beyond the end of the file (0 for other files)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:] != b"WAVE":
            return 0
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk, length = struct.unpack("<4sI", handle.read(8))
            if chunk == b"data":
                # 0 and 0xFFFFFFFF mean "unknown" (streamed writers): nothing is declared.
                return 0 if length in (0, 0xFFFFFFFF) else max(0, position + 8 + length - size)
            position += 8 + length + (length & 1)
    return 0


def resample_mono(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """(samples,) float32 at ``target_rate`` with soxr (quality SOXR_QUALITY); length round(n * target / rate)."""
    if rate == target_rate:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, rate, target_rate, quality=SOXR_QUALITY).astype(np.float32, copy=False)


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """int16 samples of a float wave in [-1, 1) (scale 32768, clipped), the inverse of soundfile's reading."""
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def expected_length(n_samples: int, rate: int, target_rate: int) -> int:
    """Samples after resampling n_samples from rate to target_rate (as soxr produces them)."""
    return int(round(n_samples * target_rate / rate))


def convert_file(src: str | Path, dst: str | Path, target_rate: int) -> tuple[int, bool]:
    """Convert one file unless ``dst`` is already a valid conversion; return (output samples, converted?)."""
    src, dst = Path(src), Path(dst)
    try:
        info = sf.info(str(src))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"{src}: unreadable audio file ({exc})") from exc
    if info.frames == 0:
        raise ValueError(f"{src}: audio file has no samples")
    n_expected = expected_length(info.frames, info.samplerate, target_rate)
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
        try:
            out = sf.info(str(dst))
            if out.samplerate == target_rate and out.channels == 1 and abs(out.frames - n_expected) <= 1:
                return out.frames, False
        except (sf.LibsndfileError, RuntimeError):
            pass  # a damaged output is recomputed
    wave, rate = read_mono(src)
    resampled = resample_mono(wave, rate, target_rate)
    with atomic_path(dst) as tmp:
        sf.write(str(tmp), to_pcm16(resampled), target_rate, subtype="PCM_16", format="WAV")
    return len(resampled), True


def _convert_job(job: tuple[str, str, int]) -> tuple[int, bool]:
    return convert_file(*job)


def resample_folder(src_dir: str | Path, out_dir: str | Path, durations_path: str | Path, target_rate: int,
                    threads: int = 1) -> dict[str, float]:
    """Convert every audio file of ``src_dir`` into ``out_dir``; write ``durations_path`` last; return it.

    Durations (s) are output samples / target_rate, keyed by the output filename (input basename + .wav).
    """
    sources = list_audio(src_dir)
    if not sources:
        raise ValueError(f"{src_dir}: no audio files (expected one of {', '.join(AUDIO_SUFFIXES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [resampled_name(src.name) for src in sources]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"{src_dir}: several inputs would be written to the same output name: {clashes[:5]}")
    for stale in sorted(set(p.name for p in out_dir.glob("*.wav")) - set(names)):
        log.info("removing %s: its input is gone", out_dir / stale)
        (out_dir / stale).unlink()
    jobs = [(str(src), str(out_dir / name), target_rate) for src, name in zip(sources, names)]
    if threads > 1:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            chunk = max(1, len(jobs) // (8 * threads))
            done = pool.map(_convert_job, jobs, chunksize=chunk)
            results = list(Progress(done, f"resample {src_dir}", total=len(jobs)))
    else:
        results = [_convert_job(job) for job in Progress(jobs, f"resample {src_dir}")]
    durations = {name: n / target_rate for name, (n, _) in zip(names, results)}
    write_durations(durations_path, durations)
    n_converted = sum(converted for _, converted in results)
    log.info("%s: %d files (%d converted, %d up to date) -> %s at %d Hz", src_dir, len(jobs), n_converted,
             len(jobs) - n_converted, out_dir, target_rate)
    return durations


def configure_resample(parser: argparse.ArgumentParser):
    parser.add_argument("--audio", required=True, help="input audio folder of the split")
    parser.add_argument("--out-dir", required=True, help="output folder (mono PCM16 WAV)")
    parser.add_argument("--durations", required=True, help="durations.tsv, written last")
    parser.add_argument("--sample-rate", type=int, required=True, help="target rate (Hz)")
    parser.add_argument("--threads", type=int, default=1, help="parallel worker processes")

    def run(args: argparse.Namespace) -> int:
        resample_folder(args.audio, args.out_dir, args.durations, args.sample_rate, args.threads)
        return 0

    return run
