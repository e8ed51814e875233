"""Embedded synthetic DESED-like dataset (``synthesize`` command).

Writes 10 s soundscapes (PCM16 WAV at ``synthetic.sample_rate``) and DESED-format metadata for every split of
a dataset whose ``source`` is ``synthetic``. Each of the ten DESED classes is a procedurally generated sound
with its own spectral and temporal signature and per-event random variation (pitch, rate, bandwidth,
envelope); see docs/data.md for the list. Events (1-4 per clip by default, class-typical lengths within
``event_seconds``, overlaps allowed but never with the same class) are mixed at a random SNR (``snr_db``) over
a per-clip background at ``background_db`` dBFS RMS.

Two recording domains mirror DESED: splits with role ``synthetic`` or ``validation`` are "synthetic" (dry
events over noise/hum/room-tone backgrounds); all others are "real" (other background types, room reverberation,
microphone colouration, occasional soft clipping), so strong_real, weak, unlabeled, devtest, eval and tagging
differ from the synthetic training data as DESED's recorded clips do.

Every clip is drawn from its own ``numpy.random.Generator`` seeded by (seed, crc32(split), index), so a clip
does not depend on other splits' sizes nor on the number of worker processes, and output is byte-identical
across runs. The whole raw tree is written to a temporary folder and moved into place; ``manifest.json`` (files,
sizes, sha256, seed, configuration hash) is its last file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import scipy.fft as sfft
from scipy.signal import butter, lfilter, oaconvolve, sosfilt

from sedlib.data.metadata import DURATION_COLUMNS, STRONG_COLUMNS, WEAK_COLUMNS
from sedlib.data.resample import to_pcm16
from sedlib.io import atomic_path, remove_stale_temporaries, sha256_json, write_json
from sedlib.progress import Progress

log = logging.getLogger(__name__)

SYNTHETIC_DOMAIN_ROLES = ("synthetic", "validation")
PEAK_LIMIT = 0.98  # mixtures louder than this are scaled down as a whole (SNRs are kept)
MANIFEST_FORMAT = "sedlib.synthetic/1"


# ----------------------------------------------------------------------------- signal primitives
# Signals are float32 (samples,) arrays: numpy's float32 transcendental functions are several times faster.
F32 = np.float32
TWO_PI = F32(2 * np.pi)


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) unit-variance white noise (uniform distribution)."""
    return (rng.random(n, dtype=F32) - F32(0.5)) * F32(np.sqrt(12.0))


def _time(n: int, sr: int) -> np.ndarray:
    """(n,) sample times in seconds."""
    return np.arange(n, dtype=F32) / F32(sr)


def _ramp(n: int, sr: int, attack_s: float, release_s: float) -> np.ndarray:
    """(n,) envelope: raised-cosine attack and release (s) around a flat top."""
    env = np.ones(n, dtype=F32)
    a = min(int(attack_s * sr), n // 2)
    r = min(int(release_s * sr), n - a)
    if a:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a, dtype=F32) / F32(a))
    if r:
        env[n - r :] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1, dtype=F32) / F32(r))
    return env


def _filter(x: np.ndarray, sr: int, kind: str, freq, order: int = 2) -> np.ndarray:
    """Butterworth low/high/band-pass of x; freq in Hz (a pair for band), clipped below Nyquist."""
    freq = np.clip(np.asarray(freq, dtype=float), 10.0, 0.45 * sr)
    return sosfilt(butter(order, freq, btype=kind, fs=sr, output="sos").astype(x.dtype), x)


def _resonator(x: np.ndarray, sr: int, freq: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonance at freq (Hz) with bandwidth (Hz), gain about 1 at the peak."""
    r = np.exp(-np.pi * bandwidth / sr)
    a = np.array([1.0, -2.0 * r * np.cos(2 * np.pi * freq / sr), r * r], dtype=x.dtype)
    return lfilter(np.array([1.0 - r], dtype=x.dtype), a, x)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(len(x),) linear convolution of x with kernel, truncated to x's length."""
    n = len(x)
    if len(kernel) <= 4096:
        return oaconvolve(x, kernel)[:n]
    size = sfft.next_fast_len(n + len(kernel) - 1, real=True)
    return sfft.irfft(sfft.rfft(x, size) * sfft.rfft(kernel, size), size)[:n]


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / (np.std(x) + F32(1e-12))


def _colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """(n,) unit-RMS noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown)."""
    size = sfft.next_fast_len(n, real=True)
    spectrum = sfft.rfft(_white(rng, size))
    f = np.arange(len(spectrum), dtype=F32)
    f[0] = 1.0
    return _normalized(sfft.irfft(spectrum * f ** F32(-exponent / 2.0), size)[:n])


def _slow_curve(rng: np.random.Generator, n: int, sr: int, rate_hz: float, step: int = 32) -> np.ndarray:
    """(n,) smooth random curve in [-1, 1]: random knots every 1/rate_hz s, cosine-interpolated.

    The curve is computed every ``step`` samples and linearly interpolated (it varies at most at 30 Hz).
    """
    n_knots = int(n / sr * rate_hz) + 2
    knots = rng.uniform(-1.0, 1.0, n_knots)
    position = np.arange(n // step + 2) * (step * rate_hz / sr)
    i = np.minimum(position.astype(np.int64), n_knots - 2)
    w = 0.5 - 0.5 * np.cos(np.pi * (position - i))
    coarse = (knots[i] * (1 - w) + knots[i + 1] * w).astype(F32)
    fine = coarse[:-1, None] + np.diff(coarse)[:, None] * (np.arange(step, dtype=F32) / F32(step))
    return fine.reshape(-1)[:n]


def _cycles(f0: np.ndarray, sr: int) -> np.ndarray:
    """(n,) float32 phase in cycles, wrapped to [0, 1), of an instantaneous frequency f0 (n,) in Hz.

    Accumulated in float64, so long tones keep their pitch exactly.
    """
    cycles = np.cumsum(f0.astype(np.float64))
    cycles *= 1.0 / sr
    cycles -= np.floor(cycles)
    return cycles.astype(F32)


def _harmonics(f0: np.ndarray, sr: int, amplitudes, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics k*f0(t) (f0 (n,) in Hz) with the given amplitudes; harmonics near Nyquist dropped.

    amplitudes: K constants or K (n,) time-varying weights.
    """
    cycles = _cycles(f0, sr)
    top = float(np.max(f0))
    x = np.zeros(len(f0), dtype=F32)
    partial = np.empty_like(x)
    for k, amp in enumerate(amplitudes, start=1):
        if k * top > 0.45 * sr:
            break
        np.multiply(cycles, TWO_PI * F32(k), out=partial)
        partial += F32(rng.uniform(0, 2 * np.pi))
        np.sin(partial, out=partial)
        partial *= amp if isinstance(amp, np.ndarray) else F32(amp)
        x += partial
    return x


def _place(n: int, positions: np.ndarray, kernel: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """(n,) sum of ``kernel`` copies starting at ``positions`` (samples) scaled by ``gains`` (truncated at n)."""
    impulses = np.zeros(n, dtype=F32)
    np.add.at(impulses, positions, gains.astype(F32))
    return _convolve(impulses, kernel.astype(F32))


def _active_rms(x: np.ndarray, frame: int = 1024) -> float:
    """RMS over the frames within 20 dB of the loudest one (the loudness of an impulsive sound when on)."""
    n_frames = len(x) // frame
    if n_frames < 2:
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)
    energy = np.mean(np.square(x[: n_frames * frame], dtype=np.float64).reshape(n_frames, frame), axis=1)
    return float(np.sqrt(np.mean(energy[energy >= 0.01 * energy.max()])) + 1e-12)


# ----------------------------------------------------------------------------- event classes
# Each generator maps (rng, samples, rate in Hz) to a float32 (samples,) signal active over its whole length.
def alarm_bell(rng, n, sr):
    """Struck bell (inharmonic decaying partials, repeated strikes) or electronic beeping (gated tones)."""
    if rng.random() < 0.5:
        f = rng.uniform(500, 1800)
        ratios = np.array([1.0, 1.19, 1.5, 2.0, 2.74, 3.76]) * rng.uniform(0.97, 1.03, 6)
        tau = rng.uniform(0.08, 0.5)
        t = _time(min(int(5 * tau * sr), n), sr)
        kernel = sum(
            F32(rng.uniform(0.3, 1.0)) * np.sin(TWO_PI * F32(f * r) * t) * np.exp(-t * F32(np.sqrt(r) / tau))
            for r in ratios
        )
        rate = rng.uniform(3, 16)
        times = np.arange(0.0, n / sr, 1.0 / rate)
        times += rng.uniform(0, 0.15 / rate, len(times))
        positions = np.minimum((times * sr).astype(int), n - 1)
        x = _place(n, positions, kernel, rng.uniform(0.6, 1.0, len(positions)))
    else:
        t = _time(n, sr)
        rate, duty = rng.uniform(1.5, 8), rng.uniform(0.3, 0.7)
        gate = oaconvolve(((t * F32(rate)) % 1.0 < duty).astype(F32), np.hanning(int(0.004 * sr)).astype(F32),
                          mode="same") / F32(0.002 * sr)
        f = np.full(n, rng.uniform(1200, 3800), dtype=F32)
        if rng.random() < 0.4:  # two-tone alarm: alternate pitch every other beep
            f[(t * F32(rate / 2)) % 1.0 < 0.5] *= F32(rng.uniform(0.75, 0.9))
        x = gate * _harmonics(f, sr, [1.0, 0.0, rng.uniform(0.1, 0.4)], rng)
    return x * _ramp(n, sr, 0.003, 0.05)


def blender(rng, n, sr):
    """Motor harmonics with load-dependent speed drift plus broadband noise amplitude-modulated at motor rate."""
    f0 = F32(rng.uniform(90, 320)) * (1 + F32(rng.uniform(0.03, 0.12)) * _slow_curve(rng, n, sr, rng.uniform(0.5, 2)))
    tilt = rng.uniform(0.5, 1.2)
    motor = _harmonics(f0, sr, [k**-tilt for k in range(1, 9)], rng)
    noise = _filter(_white(rng, n), sr, "band", [rng.uniform(300, 1200), rng.uniform(3000, 9000)])
    am = 1 + F32(rng.uniform(0.3, 0.8)) * _harmonics(f0 / F32(int(rng.integers(2, 6))), sr, [1.0], rng)
    x = _normalized(motor) + F32(rng.uniform(0.6, 2.0)) * am * _normalized(noise)
    return x * _ramp(n, sr, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3))


def cat(rng, n, sr):
    """Meow: harmonic tone with a rise-fall pitch glide and a moving formant ("m-ee-ow")."""
    u = np.linspace(0, 1, n, dtype=F32)
    f_start, peak_at = rng.uniform(350, 650), rng.uniform(0.2, 0.6)
    contour = np.interp(u, [0, peak_at, 1], [f_start, f_start * rng.uniform(1.2, 1.8), f_start * rng.uniform(0.6, 1.0)])
    f0 = contour.astype(F32) * (1 + F32(0.01) * np.sin(TWO_PI * F32(rng.uniform(4, 8)) * _time(n, sr)))
    fc = np.interp(u, [0, peak_at, 1], [rng.uniform(600, 1000), rng.uniform(1800, 3200), rng.uniform(900, 1500)])
    fc, bw = fc.astype(F32), F32(rng.uniform(400, 900))
    weights = [np.exp(-(((F32(k) * f0) - fc) / bw) ** 2) + F32(0.15 / k) for k in range(1, 13)]
    x = _harmonics(f0, sr, weights, rng) + F32(0.05) * _filter(_white(rng, n), sr, "high", 3000)
    return x * _ramp(n, sr, rng.uniform(0.04, 0.15), rng.uniform(0.1, 0.3))


def dishes(rng, n, sr):
    """Clinks: impacts exciting a few high, fast-decaying resonances (one object per event) plus clicks."""
    partials = rng.uniform(1500, 9000, int(rng.integers(3, 7)))
    taus = rng.uniform(0.01, 0.07, len(partials))
    length = min(int(5 * taus.max() * sr), n)
    t = _time(length, sr)
    kernel = sum(
        F32(rng.uniform(0.3, 1.0)) * np.sin(TWO_PI * F32(f) * t) * np.exp(-t / F32(tau))
        for f, tau in zip(partials, taus)
    )
    click = int(0.002 * sr)
    kernel[:click] += F32(rng.uniform(0.5, 1.5)) * _white(rng, click)
    last = n - length  # the last impact rings until the end of the event
    n_hits = max(int(round(n / sr * rng.uniform(2, 8))), 2 if last > 0.2 * length else 1)
    positions = np.unique(np.concatenate([[0, last], rng.uniform(0, last, max(n_hits - 2, 0))]).astype(int))
    return _place(n, positions, kernel, rng.uniform(0.3, 1.0, len(positions)))


def _sequence(rng, n, sr, unit_s, gap_s, pause_p, pause_s, make_unit) -> np.ndarray:
    """(n,) units (barks, syllables) of unit_s length separated by gap_s (pause_s with probability pause_p).

    make_unit(length, start) -> (length,) signal. The last unit is stretched to end with the event.
    """
    x = np.zeros(n, dtype=F32)
    start = 0
    while start < n:
        length = min(int(rng.uniform(*unit_s) * sr), n - start)
        gap = int(rng.uniform(*(pause_s if rng.random() < pause_p else gap_s)) * sr)
        if start + length + gap + int(unit_s[0] * sr) > n:
            length = n - start
        x[start : start + length] = make_unit(length, start)
        start += length + gap
    return x


def dog(rng, n, sr):
    """Barks in a burst: short harmonic calls with a falling pitch, a formant bump and a noisy rasp."""
    base, fc, rasp = rng.uniform(280, 800), F32(rng.uniform(600, 1800)), F32(rng.uniform(0.2, 0.7))

    def bark(length, start):
        u = np.linspace(0, 1, length, dtype=F32)
        f0 = F32(base * rng.uniform(0.9, 1.1)) * (1 - F32(rng.uniform(0.2, 0.4)) * u)
        weights = [np.exp(-((F32(k) * f0 - fc) / F32(800.0)) ** 2) + F32(0.3 / k) for k in range(1, 11)]
        call = _harmonics(f0, sr, weights, rng)
        call += rasp * np.std(call) * _normalized(_filter(_white(rng, length), sr, "band", [500, 4000]))
        return call * np.exp(-u * F32(rng.uniform(1.5, 4))) * _ramp(length, sr, rng.uniform(0.005, 0.015), 0.02)

    return _sequence(rng, n, sr, (0.1, 0.3), (0.08, 0.4), 0.0, (0.0, 0.0), bark)


def shaver(rng, n, sr):
    """Electric shaver / toothbrush: rectangular buzz pulse train (90-280 Hz) with a resonance, plus hiss."""
    t = _time(n, sr)
    f0 = F32(rng.uniform(90, 280)) * (1 + F32(rng.uniform(0.005, 0.02)) * np.sin(TWO_PI * F32(rng.uniform(3, 8)) * t))
    cycle = _cycles(f0, sr)
    duty = F32(rng.uniform(0.1, 0.4))
    buzz = _filter((cycle < duty).astype(F32) - duty, sr, "high", rng.uniform(150, 500))
    buzz = buzz + F32(rng.uniform(0.5, 2.0)) * _resonator(buzz, sr, rng.uniform(2000, 5000), rng.uniform(200, 800))
    x = _normalized(buzz) + F32(rng.uniform(0.05, 0.3)) * _normalized(_filter(_white(rng, n), sr, "high", 4000))
    if rng.random() < 0.3:  # pulsing toothbrush mode
        x *= F32(0.6) + F32(0.4) * np.sign(np.sin(TWO_PI * F32(rng.uniform(1.5, 4)) * t))
    return x * _ramp(n, sr, rng.uniform(0.02, 0.1), rng.uniform(0.02, 0.1))


def frying(rng, n, sr):
    """Sizzle: crackling random impulses (heavy-tailed amplitudes) through short bright kernels, plus hiss."""
    positions = rng.integers(0, n, rng.poisson(rng.uniform(30, 300) * n / sr) + 1)
    length = int(rng.uniform(0.002, 0.006) * sr)
    kernel = _filter(_white(rng, length), sr, "high", rng.uniform(1500, 5000))
    kernel *= np.exp(-np.linspace(0, 5, length, dtype=F32))
    crackle = _place(n, positions, kernel, rng.pareto(2.5, len(positions)) + 0.2)
    hiss = _filter(_white(rng, n), sr, "band", [rng.uniform(2000, 6000), rng.uniform(7000, 16000)])
    hiss *= 1 + F32(rng.uniform(0.3, 0.6)) * _slow_curve(rng, n, sr, rng.uniform(0.5, 2))
    x = _normalized(crackle) + F32(rng.uniform(0.3, 1.0)) * _normalized(hiss)
    return x * _ramp(n, sr, rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5))


def running_water(rng, n, sr):
    """Band-passed noise with slow swell and flutter, plus rising-chirp bubbles."""
    noise = _filter(_white(rng, n), sr, "band", [rng.uniform(200, 800), rng.uniform(2000, 6000)])
    noise *= 1 + F32(rng.uniform(0.2, 0.5)) * _slow_curve(rng, n, sr, rng.uniform(0.3, 3))
    noise *= 1 + F32(0.15) * _slow_curve(rng, n, sr, rng.uniform(10, 30))
    n_bubbles = int(rng.poisson(rng.uniform(10, 80) * n / sr)) + 1
    length = int(0.02 * sr)
    t = _time(length, sr)
    f = rng.uniform(400, 2500, (n_bubbles, 1)).astype(F32) * (1 + F32(rng.uniform(0.1, 0.3)) * t / t[-1])
    decay = rng.uniform(0.003, 0.01, (n_bubbles, 1)).astype(F32)
    bubbles = np.sin(TWO_PI * np.cumsum(f, axis=1) / F32(sr)) * np.exp(-t / decay)
    bubbles *= rng.uniform(0.2, 1.0, (n_bubbles, 1)).astype(F32)
    padded = np.zeros(n + length, dtype=F32)
    np.add.at(padded, rng.integers(0, max(n - length, 1), n_bubbles)[:, None] + np.arange(length), bubbles)
    x = _normalized(noise) + F32(rng.uniform(0.3, 1.2)) * _normalized(padded[:n])
    return x * _ramp(n, sr, rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5))


VOWEL_FORMANTS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


def speech(rng, n, sr, f0_hz=(90, 250), formant_scale=(0.9, 1.2)):
    """Syllables: glottal pulse train with a pitch contour through vowel formants, some with fricative onsets.

    The speaker's pitch (Hz) and formant scale are drawn from the f0_hz and formant_scale ranges.
    """
    speaker_f0, formant_scale = rng.uniform(*f0_hz), rng.uniform(*formant_scale)

    def syllable(length, start):
        u = np.linspace(0, 1, length, dtype=F32)
        declination = 1.1 - 0.25 * start / n
        f0 = F32(speaker_f0 * declination * rng.uniform(0.9, 1.2)) * (1 + F32(rng.uniform(-0.15, 0.15)) * u)
        cycle = _cycles(f0, sr)
        source = lfilter(np.array([1.0], F32), np.array([1.0, -0.9], F32), cycle - F32(0.5))
        f1, f2, f3 = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))] * formant_scale
        voiced = (
            _resonator(source, sr, f1, rng.uniform(60, 120))
            + F32(0.5) * _resonator(source, sr, f2, rng.uniform(80, 150))
            + F32(0.25) * _resonator(source, sr, f3, rng.uniform(100, 200))
        )
        unit = _normalized(voiced)
        if rng.random() < 0.6:  # fricative consonant at the syllable onset
            fric = min(int(rng.uniform(0.03, 0.09) * sr), length // 2)
            noise = _filter(_white(rng, fric), sr, "high", rng.uniform(2500, 6000))
            unit[:fric] = F32(rng.uniform(0.3, 1.0)) * _normalized(noise)
        return unit * _ramp(length, sr, rng.uniform(0.01, 0.03), rng.uniform(0.02, 0.05))

    return _sequence(rng, n, sr, (0.1, 0.3), (0.02, 0.1), 0.15, (0.15, 0.4), syllable)


def vacuum_cleaner(rng, n, sr):
    """Steady broadband airflow noise, a spinning-up tonal whine and low motor hum."""
    t = _time(n, sr)
    noise = _filter(_colored_noise(rng, n, rng.uniform(0.3, 1.0)), sr, "low", rng.uniform(4000, 9000))
    noise *= 1 + F32(rng.uniform(0.05, 0.2)) * _slow_curve(rng, n, sr, rng.uniform(0.3, 1.5))
    spin = 1 - F32(0.5) * np.exp(-t / F32(rng.uniform(0.1, 0.6)))
    whine_f = F32(rng.uniform(700, 3000)) * spin * (1 + F32(0.005) * np.sin(TWO_PI * F32(rng.uniform(3, 7)) * t))
    whine = _harmonics(whine_f, sr, [1.0, rng.uniform(0.1, 0.4)], rng)
    hum = _harmonics(np.full(n, rng.uniform(100, 200), dtype=F32), sr, [1.0, 0.5, 0.3, 0.2], rng)
    x = _normalized(noise) + F32(rng.uniform(0.2, 0.6)) * whine + F32(rng.uniform(0.05, 0.2)) * hum
    return x * _ramp(n, sr, rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6))


@dataclass(frozen=True)
class EventClass:
    seconds: tuple[float, float]  # class-typical duration range (s), intersected with event_seconds
    make: Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, samples, rate) -> (samples,) signal


EVENT_CLASSES: dict[str, EventClass] = {
    "Alarm_bell_ringing": EventClass((1.0, 6.0), alarm_bell),
    "Blender": EventClass((2.0, 10.0), blender),
    "Cat": EventClass((0.4, 1.8), cat),
    "Dishes": EventClass((0.3, 2.0), dishes),
    "Dog": EventClass((0.3, 2.5), dog),
    "Electric_shaver_toothbrush": EventClass((1.0, 8.0), shaver),
    "Frying": EventClass((3.0, 10.0), frying),
    "Running_water": EventClass((2.0, 10.0), running_water),
    "Speech": EventClass((0.5, 6.0), speech),
    "Vacuum_cleaner": EventClass((3.0, 10.0), vacuum_cleaner),
}


# ----------------------------------------------------------------------------- backgrounds and domains
def synthetic_background(rng, n, sr):
    """Coloured noise (pink..brown) with optional mains hum and low room tone."""
    x = _colored_noise(rng, n, rng.uniform(0.5, 2.0))
    if rng.random() < 0.5:
        mains = 50.0 if rng.random() < 0.5 else 60.0
        x += F32(rng.uniform(0.05, 0.3)) * _harmonics(np.full(n, mains, dtype=F32), sr, [1.0, 0.5, 0.3, 0.2], rng)
    if rng.random() < 0.5:
        room = _filter(_white(rng, n), sr, "low", rng.uniform(100, 500))
        room *= 1 + F32(0.3) * _slow_curve(rng, n, sr, 0.3)
        x += F32(rng.uniform(0.5, 2.0)) * _normalized(room)
    return x


def traffic(rng, n, sr):
    """Low rumble with one to three passing-vehicle swells."""
    t = _time(n, sr)
    centres = rng.uniform(-0.2, 1.2, int(rng.integers(1, 4))) * (n / sr)
    swell = sum(np.exp(F32(-0.5) * ((t - F32(c)) / F32(rng.uniform(0.8, 2.5))) ** 2) for c in centres)
    return _filter(_colored_noise(rng, n, 2.0), sr, "low", rng.uniform(300, 1500)) * (F32(0.3) + swell)


def ventilation(rng, n, sr):
    """Band noise with a blade-pass tone."""
    part = _normalized(_filter(_colored_noise(rng, n, 1.0), sr, "band", [100, rng.uniform(1500, 4000)]))
    return part + F32(0.3) * _harmonics(np.full(n, rng.uniform(60, 200), dtype=F32), sr, [1.0, 0.4], rng)


def real_background(rng, n, sr):
    """A low noise floor plus one or two of: traffic swells, ventilation, distant music, ticking clock."""
    x = F32(0.3) * _colored_noise(rng, n, rng.uniform(0.0, 1.0))
    t = _time(n, sr)
    for kind in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
        if kind == 0:
            part = traffic(rng, n, sr)
        elif kind == 1:
            part = ventilation(rng, n, sr)
        elif kind == 2:  # distant music: changing chords of soft tones
            change = rng.uniform(1.0, 2.5)
            roots = (110 * 2 ** (rng.integers(0, 24, int(n / sr / change) + 2) / 12)).astype(F32)
            f = roots[(t / F32(change)).astype(int)]
            part = _filter(sum(_harmonics(f * F32(r), sr, [1.0, 0.3], rng) for r in (1.0, 1.26, 1.5)), sr, "low", 1500)
        else:  # ticking clock
            positions = (np.arange(rng.uniform(0, 0.5), n / sr, 1.0 / rng.choice([1.0, 2.0])) * sr).astype(int)
            tick = _filter(_white(rng, int(0.003 * sr)), sr, "band", [1000, 3000])
            part = _place(n, positions, tick, np.ones(len(positions)))
        x += F32(rng.uniform(0.5, 1.5)) * _normalized(part)
    return x


def room_reverb(rng, x, sr):
    """Convolve x with a synthetic room response: direct path plus exponentially decaying noise tail."""
    rt60 = rng.uniform(0.2, 0.9)
    t = _time(int(rt60 * sr), sr)
    tail = _white(rng, len(t)) * np.exp(F32(-6.9 / rt60) * t)
    tail[: int(0.005 * sr)] = 0.0
    ir = F32(10 ** (-rng.uniform(0, 10) / 20)) * tail / np.sqrt(np.sum(tail**2))
    ir[0] = 1.0
    return _convolve(x, ir)


def microphone(rng, x, sr):
    """Device colouration: high-pass, low-pass, a resonance, and occasional soft clipping."""
    y = _filter(x, sr, "high", rng.uniform(60, 300))
    y = _filter(y, sr, "low", rng.uniform(4000, 12000))
    y = y + F32(rng.uniform(-0.4, 0.8)) * _resonator(y, sr, rng.uniform(800, 4000), rng.uniform(300, 1200))
    if rng.random() < 0.15:
        drive = rng.uniform(2, 6)
        peak = np.max(np.abs(y)) + F32(1e-12)
        y = np.tanh(F32(drive) * y / peak) / F32(np.tanh(drive)) * peak
    return y


# ----------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class ClipJob:
    seed: int
    split: str
    index: int
    domain: str  # "synthetic" | "real"
    classes: tuple[str, ...]
    params: tuple  # (sample_rate, clip_seconds, events_per_clip, event_seconds, snr_db, background_db) as tuples
    path: str  # output WAV


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The clip's own generator: depends only on (seed, split name, index)."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def draw_events(rng, classes, clip_ms, events_per_clip, event_seconds) -> list[tuple[int, int, str]]:
    """[(onset_ms, offset_ms, label)] sorted by onset; same-class events never overlap."""
    events: list[tuple[int, int, str]] = []
    for _ in range(rng.integers(events_per_clip[0], events_per_clip[1] + 1)):
        label = classes[rng.integers(len(classes))]
        lo, hi = EVENT_CLASSES[label].seconds
        lo, hi = max(lo, event_seconds[0]), min(hi, event_seconds[1], clip_ms / 1000)
        lo = min(lo, hi)
        dur_ms = int(round(1000 * np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        for _ in range(10):
            onset = int(rng.integers(0, clip_ms - dur_ms + 1))
            if all(l != label or onset >= off or onset + dur_ms <= on for on, off, l in events):
                events.append((onset, onset + dur_ms, label))
                break
    return sorted(events)


def render_clip(job: ClipJob) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """(samples,) float mixture in [-1, 1] and its events [(onset_ms, offset_ms, label)]."""
    sr, clip_seconds, events_per_clip, event_seconds, snr_db, background_db = job.params
    rng = clip_rng(job.seed, job.split, job.index)
    n = int(round(clip_seconds * sr))
    events = draw_events(rng, job.classes, int(round(clip_seconds * 1000)), events_per_clip, event_seconds)
    real = job.domain == "real"
    background = (real_background if real else synthetic_background)(rng, n, sr)
    bg_rms = 10 ** (rng.uniform(*background_db) / 20)
    background *= F32(bg_rms / (np.sqrt(np.mean(np.square(background, dtype=np.float64))) + 1e-12))
    foreground = np.zeros(n, dtype=F32)
    for onset_ms, offset_ms, label in events:
        start, stop = int(round(onset_ms * sr / 1000)), min(int(round(offset_ms * sr / 1000)), n)
        signal = EVENT_CLASSES[label].make(rng, stop - start, sr)
        gain = bg_rms * 10 ** (rng.uniform(*snr_db) / 20) / _active_rms(signal)
        foreground[start:stop] += F32(gain) * signal
    if real:
        foreground = room_reverb(rng, foreground, sr)
    mixture = foreground + background
    if real:
        mixture = microphone(rng, mixture, sr)
    peak = np.max(np.abs(mixture))
    if peak > PEAK_LIMIT:
        mixture *= PEAK_LIMIT / peak
    return mixture, events


def _write_clip(job: ClipJob) -> tuple[str, int, str, list[tuple[int, int, str]]]:
    """Render and write one clip; return (path, bytes, sha256, events)."""
    mixture, events = render_clip(job)
    buffer = io.BytesIO()
    sf.write(buffer, to_pcm16(mixture), job.params[0], subtype="PCM_16", format="WAV")
    data = buffer.getvalue()
    Path(job.path).write_bytes(data)
    return job.path, len(data), hashlib.sha256(data).hexdigest(), events


# ----------------------------------------------------------------------------- dataset
def synthesize_dataset(dataset: dict, seed: int, root: str | Path, threads: int = 1) -> dict:
    """Write every split of a synthetic dataset under ``root``; return the manifest (also written last).

    dataset: ``config["datasets"][name]`` (classes, synthetic, splits); split paths are relative to root.
    """
    root = Path(root)
    synth = dataset.get("synthetic") or {}
    missing = [k for k in ("sizes", "events_per_clip", "event_seconds", "snr_db", "background_db") if k not in synth]
    if missing:
        raise ValueError(f"datasets.<name>.synthetic: missing field(s) {missing}")
    unknown = [c for c in dataset["classes"] if c not in EVENT_CLASSES]
    if unknown:
        raise ValueError(f"datasets.<name>.classes: no synthetic generator for {unknown}; known: {list(EVENT_CLASSES)}")
    unsized = [s for s in dataset["splits"] if s not in synth["sizes"]]
    if unsized:
        raise ValueError(f"datasets.<name>.synthetic.sizes: no size for split(s) {unsized}")
    lo, hi = synth["events_per_clip"]
    if not 1 <= lo <= hi:
        raise ValueError(f"datasets.<name>.synthetic.events_per_clip: expected 1 <= min <= max, got {[lo, hi]}")
    sample_rate, clip_seconds = synth.get("sample_rate", 44100), synth.get("clip_seconds", 10.0)
    params = (sample_rate, clip_seconds, (lo, hi), tuple(synth["event_seconds"]), tuple(synth["snr_db"]),
              tuple(synth["background_db"]))
    classes = tuple(dataset["classes"])
    started = time.perf_counter()
    for stale in remove_stale_temporaries(root):
        log.info("removed %s, left by an interrupted run", stale)
    with atomic_path(root, is_dir=True) as tmp:
        jobs = []
        for split, cfg in dataset["splits"].items():
            (tmp / cfg["audio"]).mkdir(parents=True, exist_ok=True)
            domain = "synthetic" if cfg["role"] in SYNTHETIC_DOMAIN_ROLES else "real"
            for index in range(synth["sizes"][split]):
                path = tmp / cfg["audio"] / f"{split}_{index:05d}.wav"
                jobs.append(ClipJob(seed, split, index, domain, classes, params, str(path)))
        if threads > 1:
            with ProcessPoolExecutor(max_workers=threads) as pool:
                results = list(Progress(pool.map(_write_clip, jobs, chunksize=8), "synthesize", total=len(jobs)))
        else:
            results = [_write_clip(job) for job in Progress(jobs, "synthesize")]
        files = [
            {"path": Path(path).relative_to(tmp).as_posix(), "bytes": size, "sha256": digest}
            for path, size, digest, _ in results
        ]
        files += _write_metadata(tmp, dataset["splits"], jobs, results, clip_seconds)
        manifest = {
            "format": MANIFEST_FORMAT,
            "seed": seed,
            "config_sha256": sha256_json({"seed": seed, "dataset": dataset}),
            "sample_rate": sample_rate,
            "clip_seconds": clip_seconds,
            "splits": {split: synth["sizes"][split] for split in dataset["splits"]},
            "files": files,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("synthesized %d clips under %s in %.1f s (%d workers)", len(jobs), root, time.perf_counter() - started,
             threads)
    return manifest


def _write_metadata(root: Path, splits: dict, jobs: list[ClipJob], results: list, clip_seconds: float) -> list[dict]:
    """Write each split's strong/weak metadata and durations files; return their manifest entries."""
    per_split: dict[str, list[tuple[str, list]]] = {}
    for job, (path, _, _, events) in zip(jobs, results):
        per_split.setdefault(job.split, []).append((Path(path).name, events))
    written = []
    for split, cfg in splits.items():
        clips = per_split.get(split, [])
        tables = {}
        if cfg["labels"] == "strong":
            rows = [f"{name}\t{on / 1000:.3f}\t{off / 1000:.3f}\t{label}" for name, events in clips
                    for on, off, label in events]
            tables[cfg["metadata"]] = ["\t".join(STRONG_COLUMNS)] + rows
        elif cfg["labels"] == "weak":
            rows = [f"{name}\t{','.join(sorted({label for _, _, label in events}))}" for name, events in clips]
            tables[cfg["metadata"]] = ["\t".join(WEAK_COLUMNS)] + rows
        elif cfg["labels"] != "none":
            raise ValueError(f"splits.{split}.labels: '{cfg['labels']}' cannot be synthesized (strong, weak or none)")
        if cfg.get("durations"):
            tables[cfg["durations"]] = ["\t".join(DURATION_COLUMNS)] + [f"{name}\t{clip_seconds}" for name, _ in clips]
        for relative, lines in tables.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            data = ("\n".join(lines) + "\n").encode()
            path.write_bytes(data)
            written.append({"path": relative, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return written


def configure_synthesize(parser: argparse.ArgumentParser):
    """DESED-like clips, or MAESTRO-like chunked recordings when ``synthetic.kind`` is maestro (synth_maestro)."""
    parser.add_argument("--config-json", required=True, help='{"seed": root seed, "dataset": datasets.<name>}')
    parser.add_argument("--root", required=True, help="raw root to (re)create; manifest.json is written last")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        if cfg["dataset"].get("synthetic", {}).get("kind", "desed") == "maestro":
            from sedlib.data.synth_maestro import synthesize_maestro as synthesize
        else:
            synthesize = synthesize_dataset
        synthesize(cfg["dataset"], int(cfg["seed"]), args.root, args.threads)
        return 0

    return run
