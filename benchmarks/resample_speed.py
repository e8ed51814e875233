"""Resampling 44.1 kHz -> 16 kHz: sedlib (soxr 'HQ') vs librosa.resample, on synthesized DESED-like clips.

Input: ``--clips`` 10 s soundscapes rendered by ``sedlib.data.synth`` (real-domain split, as PCM16 WAV at
44.1 kHz, stereo made by two gains of the mono mixture as many recorded DESED clips are). Timed on the decoded
channel mean (float32, in memory), each variant ``--repeats`` times, minimum reported:

- sedlib: ``sedlib.data.resample.resample_mono`` (soxr, quality 'HQ');
- librosa ``res_type='soxr_hq'`` (librosa 0.11's default: the same soxr library, through librosa);
- librosa ``res_type='polyphase'`` (scipy.signal.resample_poly);
- librosa ``res_type='fft'`` (scipy.signal.resample, FFT of the whole clip).

Also timed: the whole ``resample`` step (read, down-mix, resample, PCM16 write, durations.tsv) on the folder,
one worker. Realtime factor = audio seconds / processing seconds. Writes benchmarks/results/resample_speed.json.

    python benchmarks/resample_speed.py [--clips 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from sedlib.data import synth
from sedlib.data.resample import read_mono, resample_folder, resample_mono, to_pcm16
from sedlib.io import write_json

REPO = Path(__file__).resolve().parents[1]
SOURCE_RATE, TARGET_RATE = 44100, 16000
LIBROSA_TYPES = ("soxr_hq", "polyphase", "fft")


def make_clips(folder: Path, n_clips: int) -> list[Path]:
    params = (SOURCE_RATE, 10.0, (1, 4), (0.3, 10.0), (0.0, 18.0), (-50.0, -25.0))
    paths = []
    for index in range(n_clips):
        job = synth.ClipJob(0, "bench", index, "real", tuple(synth.EVENT_CLASSES), params, "")
        mono, _ = synth.render_clip(job)
        path = folder / f"bench_{index:03d}.wav"
        sf.write(path, to_pcm16(np.stack([mono, 0.7 * mono], axis=1)), SOURCE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def best_time(function, waves: list[np.ndarray], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for wave in waves:
            function(wave)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "audio"
        folder.mkdir()
        paths = make_clips(folder, args.clips)
        waves = [read_mono(path)[0] for path in paths]
        audio_seconds = sum(len(w) for w in waves) / SOURCE_RATE

        variants = {"sedlib_soxr_HQ": lambda w: resample_mono(w, SOURCE_RATE, TARGET_RATE)}
        for res_type in LIBROSA_TYPES:
            variants[f"librosa_{res_type}"] = (
                lambda w, r=res_type: librosa.resample(w, orig_sr=SOURCE_RATE, target_sr=TARGET_RATE, res_type=r)
            )
        reference = [resample_mono(w, SOURCE_RATE, TARGET_RATE) for w in waves]
        results = {}
        for name, function in variants.items():
            seconds = best_time(function, waves, args.repeats)
            outputs = [function(w) for w in waves[:4]]
            corr = min(
                float(np.corrcoef(a[: min(len(a), len(b))], b[: min(len(a), len(b))])[0, 1])
                for a, b in zip(outputs, reference)
            )
            results[name] = {"seconds": seconds, "realtime_factor": audio_seconds / seconds,
                             "min_correlation_with_sedlib": corr}
        ours = results["sedlib_soxr_HQ"]["seconds"]
        for name, entry in results.items():
            entry["time_ratio_vs_sedlib"] = entry["seconds"] / ours

        times = []
        for repeat in range(args.repeats):
            out = Path(tmp) / f"out{repeat}"
            start = time.perf_counter()
            resample_folder(folder, out, Path(tmp) / f"durations{repeat}.tsv", TARGET_RATE, threads=1)
            times.append(time.perf_counter() - start)

    report = {
        "benchmark": "resample_speed",
        "clips": args.clips,
        "audio_seconds": audio_seconds,
        "source_rate": SOURCE_RATE,
        "target_rate": TARGET_RATE,
        "input": "synthesized real-domain DESED-like clips, PCM16 stereo 44.1 kHz, channel mean in memory",
        "repeats": args.repeats,
        "variants": results,
        "resample_step_one_worker": {"seconds": min(times), "realtime_factor": audio_seconds / min(times)},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "versions": {"librosa": librosa.__version__, "numpy": np.__version__},
    }
    write_json(REPO / "benchmarks" / "results" / "resample_speed.json", report)
    for name, entry in results.items():
        print(f"{name:20s} {entry['seconds']:7.3f} s  x{entry['realtime_factor']:8.1f} realtime  "
              f"{entry['time_ratio_vs_sedlib']:6.2f} x sedlib  corr {entry['min_correlation_with_sedlib']:.5f}")
    step = report["resample_step_one_worker"]
    print(f"resample step (1 worker): {step['seconds']:.3f} s  x{step['realtime_factor']:.1f} realtime")


if __name__ == "__main__":
    main()
