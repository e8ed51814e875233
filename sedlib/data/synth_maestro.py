"""Embedded synthetic MAESTRO-Real-like dataset (``synthesize`` with ``synthetic.kind: maestro``).

MAESTRO Real: recordings of a few minutes in five acoustic scenes, 17 sound classes, *soft* strong labels
(the share of annotators who marked an event), cut into 10 s chunks for training (DCASE 2024 Task 4). Here:
``sizes[split]`` recordings per split, each ``recording_seconds`` long, scenes in turn (``scenes``), named
``<scene>_NN`` like MAESTRO's files; every scene has its own background and its own classes (SCENES). Events
(``events_per_minute``, class-typical lengths, same-class events never overlapping) are mixed at a random
SNR (``snr_db``) over the background at ``background_db`` dBFS RMS, then room reverberation (indoor scenes)
and microphone colouration (sedlib.data.synth) are applied.

Soft labels mimic MAESTRO's: ``ANNOTATORS`` simulated annotators each mark an event with a probability that
rises with its SNR (a logistic curve centred on the middle of ``snr_db``), and its confidence is the share
who did; an event nobody marks stays in the audio, unlabelled. Recordings are partitioned by split within each
scene (every scene's recording numbers are shuffled across the splits), then chunked as the DCASE 2024
baseline does (sedlib.data.chunks): hop ``LAYOUT['validation'].hop_seconds`` (5 s) for scored splits (roles
validation and test), ``LAYOUT['train'].hop_seconds`` (1 s) for the others. Metadata: soft TSVs (one row per
chunk event, event-less rows for empty chunks), the recordings' durations in ``RECORDING_DURATIONS``.

Each recording draws from clip_rng(seed, split, index) and the recording numbers from (seed, scene), so
output is byte-identical across runs and worker counts. As for the DESED-like data, the raw tree is written
to a temporary folder, moved into place, and ``manifest.json`` is its last file.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sedlib.config import SCORED_ROLES
from sedlib.data.chunks import (LAYOUT, RECORDING_DURATIONS, WINDOW_SECONDS, SoftEvent, chunk_recording,
                                durations_text, soft_metadata_text, write_chunks)
from sedlib.data.resample import to_pcm16
from sedlib.data.synth import (F32, PEAK_LIMIT, TWO_PI, EventClass, _active_rms, _colored_noise, _filter,
                               _harmonics, _normalized, _place, _ramp, _resonator, _sequence, _slow_curve, _time,
                               _white, blender, clip_rng, dishes, microphone, room_reverb, speech, traffic,
                               ventilation)
from sedlib.io import atomic_path, remove_stale_temporaries, sha256_json, write_json, write_text
from sedlib.progress import Progress

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "sedlib.synthetic-maestro/1"
ANNOTATORS = 5  # simulated annotators per event: confidences are multiples of 1/5
AGREEMENT_SLOPE_DB = 2.5  # dB: width of the logistic curve P(an annotator marks the event | SNR)


# ----------------------------------------------------------------------------- event classes
# Each generator maps (rng, samples, rate in Hz) to a float32 (samples,) signal active over its whole length.
def furniture_dragging(rng, n, sr):
    """Scrape: band noise with stick-slip roughness over a low body resonance."""
    noise = _filter(_white(rng, n), sr, "band", [rng.uniform(150, 400), rng.uniform(1500, 4000)])
    body = _resonator(noise, sr, rng.uniform(80, 250), rng.uniform(20, 60))
    rough = F32(0.2) + np.abs(_slow_curve(rng, n, sr, rng.uniform(15, 40)))
    return (_normalized(noise) + F32(rng.uniform(0.5, 1.5)) * _normalized(body)) * rough * _ramp(n, sr, 0.05, 0.1)


def children_voices(rng, n, sr):
    """Children's speech: the speech generator with a high pitch and short vocal tract."""
    return speech(rng, n, sr, f0_hz=(250, 420), formant_scale=(1.2, 1.45))


def coffee_machine(rng, n, sr):
    """Espresso machine: buzzing vibration pump (mains-locked harmonics) and steam hiss."""
    pump_hz = 2 * (50.0 if rng.random() < 0.5 else 60.0)
    pump = _harmonics(np.full(n, pump_hz, dtype=F32), sr, [k**-0.7 for k in range(1, 17)], rng)
    hiss = _filter(_white(rng, n), sr, "high", rng.uniform(3000, 6000))
    hiss *= F32(0.6) + F32(0.4) * _slow_curve(rng, n, sr, rng.uniform(0.5, 2))
    x = _normalized(pump) + F32(rng.uniform(0.3, 1.2)) * _normalized(hiss)
    return x * _ramp(n, sr, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3))


def footsteps(rng, n, sr):
    """Steps at a walking pace: low heel thuds followed by a softer toe tap."""
    pace = rng.uniform(1.4, 2.2)  # steps per second
    length = min(int(0.12 * sr), n)
    t = _time(length, sr)
    thud = _filter(_white(rng, length), sr, "band", [rng.uniform(60, 200), rng.uniform(800, 2500)])
    kernel = thud * np.exp(-t / F32(rng.uniform(0.01, 0.03)))
    toe = int(rng.uniform(0.03, 0.06) * sr)
    kernel[toe:] += F32(0.4) * kernel[: length - toe]
    times = np.arange(rng.uniform(0, 0.3), n / sr, 1.0 / pace)
    positions = np.minimum(((times + rng.uniform(-0.03, 0.03, len(times)).clip(0)) * sr).astype(int), n - 1)
    return _place(n, positions, kernel, rng.uniform(0.5, 1.0, len(positions)))


def large_vehicle(rng, n, sr):
    """Bus or truck: diesel firing harmonics (25-50 Hz) over a low rumble, swelling as it passes."""
    t = _time(n, sr)
    f0 = F32(rng.uniform(25, 50)) * (1 + F32(0.1) * _slow_curve(rng, n, sr, 0.3))
    engine = _harmonics(f0, sr, [k**-0.5 for k in range(1, 21)], rng)
    rumble = _filter(_colored_noise(rng, n, 2.0), sr, "low", rng.uniform(200, 600))
    swell = np.exp(F32(-0.5) * ((t - F32(rng.uniform(0.3, 0.7) * n / sr)) / F32(n / sr / 3)) ** 2)
    return (_normalized(engine) + _normalized(rumble)) * (F32(0.3) + swell) * _ramp(n, sr, 0.3, 0.3)


def car(rng, n, sr):
    """Passing car: engine hum and tyre noise swelling to the pass, with a Doppler pitch drop at it."""
    t = _time(n, sr)
    passing, width = F32(rng.uniform(0.3, 0.7) * n / sr), F32(n / sr / 4)
    doppler = 1 + F32(0.06) * np.tanh(-(t - passing) / (F32(0.3) * width))
    engine = _harmonics(F32(rng.uniform(60, 140)) * doppler, sr, [1.0, 0.6, 0.4, 0.3, 0.2], rng)
    tyres = _filter(_colored_noise(rng, n, 1.0), sr, "band", [300, rng.uniform(2000, 5000)])
    swell = F32(0.1) + np.exp(F32(-0.5) * ((t - passing) / width) ** 2)
    return (F32(0.5) * _normalized(engine) + _normalized(tyres)) * swell * _ramp(n, sr, 0.2, 0.2)


def brakes_squeaking(rng, n, sr):
    """Squeal: a high tone (1.5-6 kHz) with vibrato and weak harmonics, wavering in level."""
    t = _time(n, sr)
    f = F32(rng.uniform(1500, 6000)) * (1 + F32(0.01) * np.sin(TWO_PI * F32(rng.uniform(4, 12)) * t)
                                        + F32(0.02) * _slow_curve(rng, n, sr, 2))
    x = _harmonics(f, sr, [1.0, rng.uniform(0.1, 0.5), rng.uniform(0.0, 0.2)], rng)
    return x * (F32(0.6) + F32(0.4) * _slow_curve(rng, n, sr, 3)) * _ramp(n, sr, 0.02, 0.05)


def cash_register_beeping(rng, n, sr):
    """Scanner beeps: short pure tones at one pitch (1.8-4 kHz) at irregular intervals."""
    f = rng.uniform(1800, 4000)

    def beep(length, start):
        return np.sin(TWO_PI * F32(f) * _time(length, sr)) * _ramp(length, sr, 0.005, 0.01)

    return _sequence(rng, n, sr, (0.06, 0.15), (0.3, 1.5), 0.2, (1.0, 2.5), beep)


def announcement(rng, n, sr):
    """Public address: a two-tone chime, then speech band-limited to a loudspeaker's 300-3400 Hz."""
    chime = min(int(rng.uniform(0.6, 1.0) * sr), n // 3)
    half = chime // 2
    tones = [rng.uniform(500, 900)]
    tones.append(tones[0] * rng.choice([0.75, 0.8, 1.25]))
    t = _time(chime - half, sr)
    ding = [np.sin(TWO_PI * F32(f) * t[: length]) * np.exp(-t[: length] / F32(0.25))
            for f, length in zip(tones, (half, chime - half))]
    voice = _filter(_filter(speech(rng, n - chime, sr), sr, "high", 300, order=4), sr, "low", 3400, order=4)
    return np.concatenate([_normalized(np.concatenate(ding)), _normalized(voice)])


def shopping_cart(rng, n, sr):
    """Rolling cart: wheel rumble plus a dense metallic rattle."""
    rumble = _filter(_white(rng, n), sr, "band", [60, 400]) * (1 + F32(0.5) * _slow_curve(rng, n, sr, 8))
    length = int(0.05 * sr)
    t = _time(length, sr)
    kernel = sum(np.sin(TWO_PI * F32(rng.uniform(2000, 6000)) * t) * np.exp(-t / F32(rng.uniform(0.005, 0.015)))
                 for _ in range(3))
    positions = rng.integers(0, n, rng.poisson(rng.uniform(20, 60) * n / sr) + 1)
    rattle = _place(n, positions, kernel, rng.uniform(0.2, 1.0, len(positions)))
    return (_normalized(rumble) + F32(rng.uniform(0.5, 1.5)) * _normalized(rattle)) * _ramp(n, sr, 0.1, 0.1)


def _metro(rng, n, sr, approaching: bool):
    """Train: traction-motor whine and wheel rumble; braking (pitch falls, level rises) or accelerating away."""
    u = np.linspace(0, 1, n, dtype=F32)
    speed = 1 - F32(0.7) * u if approaching else F32(0.3) + F32(0.7) * u
    whine = _harmonics(F32(rng.uniform(300, 800)) * speed, sr, [1.0, 0.5, 0.3], rng)
    rumble = _filter(_colored_noise(rng, n, 2.0), sr, "low", rng.uniform(400, 1200))
    level = F32(0.2) + F32(0.8) * (u if approaching else 1 - u)
    x = (_normalized(rumble) + F32(rng.uniform(0.3, 0.8)) * _normalized(whine)) * level
    return x * _ramp(n, sr, 0.2, 0.2)


def metro_approaching(rng, n, sr):
    """Train arriving: the whine falls in pitch as the level rises."""
    return _metro(rng, n, sr, approaching=True)


def metro_leaving(rng, n, sr):
    """Train departing: the whine rises in pitch as the level fades."""
    return _metro(rng, n, sr, approaching=False)


def door(rng, n, sr):
    """Door: a pneumatic hiss or hinge creak, then a low thump as it closes."""
    thump = min(int(0.15 * sr), n // 2)
    body = n - thump
    if rng.random() < 0.5:
        sweep = _filter(_white(rng, body), sr, "high", rng.uniform(2000, 5000))
    else:
        f0 = F32(rng.uniform(200, 600)) * (1 + F32(0.3) * _slow_curve(rng, body, sr, 3))
        sweep = _harmonics(f0, sr, [1.0, 0.7, 0.5, 0.3], rng)
    t = _time(thump, sr)
    knock = np.sin(TWO_PI * F32(rng.uniform(60, 120)) * t) * np.exp(-t / F32(0.04))
    knock[: int(0.003 * sr)] += _white(rng, int(0.003 * sr))
    return np.concatenate([F32(0.5) * _normalized(sweep) * _ramp(body, sr, 0.05, 0.02), _normalized(knock)])


def wind_blowing(rng, n, sr):
    """Gusts: low-passed noise with a slowly varying level and a faint whistle."""
    noise = _filter(_colored_noise(rng, n, 1.5), sr, "low", rng.uniform(400, 1200))
    whistle = _resonator(_white(rng, n), sr, rng.uniform(400, 1200), rng.uniform(20, 80))
    gusts = F32(0.6) + F32(0.5) * _slow_curve(rng, n, sr, rng.uniform(0.3, 1.0))
    x = _normalized(noise) + F32(rng.uniform(0.05, 0.3)) * _normalized(whistle)
    return x * gusts * _ramp(n, sr, 0.5, 0.5)


def birds_singing(rng, n, sr):
    """Song: phrases of chirps (fast pitch sweeps between 2 and 7 kHz), some trilled."""

    def chirp(length, start):
        u = np.linspace(0, 1, length, dtype=F32)
        f_start, f_end = rng.uniform(2000, 7000, 2)
        trill = 1 + F32(rng.uniform(0, 0.05)) * np.sin(TWO_PI * F32(rng.uniform(20, 60)) * _time(length, sr))
        f = (F32(f_start) + F32(f_end - f_start) * u) * trill
        return _harmonics(f, sr, [1.0, 0.2], rng) * _ramp(length, sr, 0.005, 0.01)

    return _sequence(rng, n, sr, (0.04, 0.2), (0.03, 0.15), 0.2, (0.3, 1.0), chirp)


# MAESTRO Real's 17 classes, spelled as DCASE-REPO/DESED_task recipes/dcase2024_task4_baseline/local/classes_dict.py
# lines 23-43; durations (s) are class-typical ranges.
EVENT_CLASSES: dict[str, EventClass] = {
    "cutlery and dishes": EventClass((0.3, 3.0), dishes),
    "furniture dragging": EventClass((0.5, 4.0), furniture_dragging),
    "people talking": EventClass((2.0, 15.0), speech),
    "children voices": EventClass((1.0, 8.0), children_voices),
    "coffee machine": EventClass((5.0, 20.0), coffee_machine),
    "footsteps": EventClass((2.0, 10.0), footsteps),
    "large_vehicle": EventClass((5.0, 20.0), large_vehicle),
    "car": EventClass((3.0, 12.0), car),
    "brakes_squeaking": EventClass((0.5, 4.0), brakes_squeaking),
    "cash register beeping": EventClass((1.0, 6.0), cash_register_beeping),
    "announcement": EventClass((3.0, 12.0), announcement),
    "shopping cart": EventClass((2.0, 10.0), shopping_cart),
    "metro leaving": EventClass((5.0, 20.0), metro_leaving),
    "metro approaching": EventClass((5.0, 20.0), metro_approaching),
    "door opens/closes": EventClass((0.5, 3.0), door),
    "wind_blowing": EventClass((5.0, 25.0), wind_blowing),
    "birds_singing": EventClass((1.0, 10.0), birds_singing),
}


# ----------------------------------------------------------------------------- scenes
def babble(rng, n, sr):
    """Distant crowd: speech-band noise with a syllable-rate level flutter."""
    x = _filter(_colored_noise(rng, n, 1.0), sr, "band", [200, 3000])
    return x * (F32(1.0) + F32(0.5) * _slow_curve(rng, n, sr, rng.uniform(3, 5)))


def breeze(rng, n, sr):
    """Soft outdoor air noise, slowly varying."""
    x = _filter(_colored_noise(rng, n, 1.5), sr, "low", rng.uniform(300, 800))
    return x * (F32(1.0) + F32(0.3) * _slow_curve(rng, n, sr, 0.2))


@dataclass(frozen=True)
class Scene:
    background: tuple  # (generator, relative level) parts, each (rng, samples, rate) -> (samples,)
    indoor: bool  # room reverberation on the events
    classes: tuple[str, ...]  # the classes whose events occur in the scene


SCENES: dict[str, Scene] = {
    "cafe_restaurant": Scene(((babble, 1.0), (ventilation, 0.4)), True,
                             ("cutlery and dishes", "furniture dragging", "people talking", "children voices",
                              "coffee machine", "footsteps")),
    "city_center": Scene(((traffic, 1.0), (babble, 0.4)), False,
                         ("people talking", "children voices", "footsteps", "large_vehicle", "car", "brakes_squeaking",
                          "birds_singing", "wind_blowing")),
    "grocery_store": Scene(((ventilation, 1.0), (babble, 0.6)), True,
                           ("people talking", "children voices", "footsteps", "cash register beeping",
                            "announcement", "shopping cart")),
    "metro_station": Scene(((traffic, 0.6), (ventilation, 1.0), (babble, 0.5)), True,
                           ("people talking", "children voices", "footsteps", "announcement", "metro leaving",
                            "metro approaching", "door opens/closes")),
    "residential_area": Scene(((breeze, 1.0), (traffic, 0.3)), False,
                              ("people talking", "children voices", "footsteps", "car", "large_vehicle",
                               "birds_singing", "wind_blowing", "door opens/closes")),
}


def scene_background(rng, n, sr, scene: Scene) -> np.ndarray:
    """(n,) the scene's background: its parts at their relative levels over a low pink noise floor."""
    x = F32(0.2) * _colored_noise(rng, n, 1.0)
    for make, level in scene.background:
        x += F32(level) * _normalized(make(rng, n, sr))
    return x


# ----------------------------------------------------------------------------- recordings
@dataclass(frozen=True)
class RecordingJob:
    seed: int
    split: str
    index: int
    name: str  # <scene>_NN
    scene: str
    classes: tuple[str, ...]  # the dataset's classes that occur in the scene
    params: tuple  # (sample_rate, recording_seconds, events_per_minute, snr_db, background_db) as tuples
    hop_seconds: float  # chunk hop (s)
    audio_dir: str  # chunk folder


def draw_events(rng, classes, seconds: float, events_per_minute) -> list[tuple[float, float, str]]:
    """[(onset s, offset s, label)] sorted by onset, times to the millisecond; same-class events never overlap."""
    events: list[tuple[float, float, str]] = []
    for _ in range(rng.poisson(rng.uniform(*events_per_minute) * seconds / 60)):
        label = classes[rng.integers(len(classes))]
        lo, hi = EVENT_CLASSES[label].seconds
        duration = round(float(np.exp(rng.uniform(np.log(lo), np.log(min(hi, seconds))))), 3)
        for _ in range(10):
            onset = round(float(rng.uniform(0, seconds - duration)), 3)
            if all(l != label or onset >= off or onset + duration <= on for on, off, l in events):
                events.append((onset, round(onset + duration, 3), label))
                break
    return sorted(events)


def agreement(rng, snr_db: float, snr_range) -> float:
    """Confidence of an event: the share of ANNOTATORS who mark it, each with a probability rising with SNR."""
    p_mark = 1 / (1 + np.exp(-(snr_db - np.mean(snr_range)) / AGREEMENT_SLOPE_DB))
    return int(rng.binomial(ANNOTATORS, p_mark)) / ANNOTATORS


def render_recording(job: RecordingJob) -> tuple[np.ndarray, list[SoftEvent]]:
    """(samples,) float mixture in [-1, 1] and its labelled events [(onset s, offset s, label, confidence)]."""
    sr, recording_seconds, events_per_minute, snr_db, background_db = job.params
    rng = clip_rng(job.seed, job.split, job.index)
    seconds = round(float(rng.uniform(*recording_seconds)), 2)
    n = int(round(seconds * sr))
    scene = SCENES[job.scene]
    events = draw_events(rng, job.classes, seconds, events_per_minute) if job.classes else []
    background = scene_background(rng, n, sr, scene)
    bg_rms = 10 ** (rng.uniform(*background_db) / 20)
    background *= F32(bg_rms / (np.sqrt(np.mean(np.square(background, dtype=np.float64))) + 1e-12))
    foreground = np.zeros(n, dtype=F32)
    labelled = []
    for onset, offset, label in events:
        start, stop = int(round(onset * sr)), min(int(round(offset * sr)), n)
        signal = EVENT_CLASSES[label].make(rng, stop - start, sr)
        snr = rng.uniform(*snr_db)
        foreground[start:stop] += F32(bg_rms * 10 ** (snr / 20) / _active_rms(signal)) * signal
        confidence = agreement(rng, snr, snr_db)
        if confidence > 0:
            labelled.append((onset, offset, label, confidence))
    if scene.indoor:
        foreground = room_reverb(rng, foreground, sr)
    mixture = microphone(rng, foreground + background, sr)
    peak = np.max(np.abs(mixture))
    if peak > PEAK_LIMIT:
        mixture *= PEAK_LIMIT / peak
    return mixture, labelled


@dataclass(frozen=True)
class RecordingResult:
    seconds: float  # recording length (s)
    events: dict[str, list[SoftEvent]]  # chunk name -> its events
    chunk_seconds: dict[str, float]  # chunk file name -> length (s)
    files: list[dict]  # manifest entries of the chunk files, paths relative to the split's audio folder


def _write_recording(job: RecordingJob) -> RecordingResult:
    """Render, chunk and write one recording."""
    mixture, events = render_recording(job)
    sr = job.params[0]
    chunks = chunk_recording(job.name, to_pcm16(mixture), sr, events, WINDOW_SECONDS, job.hop_seconds)
    return RecordingResult(len(mixture) / sr, {chunk.name: chunk.events for chunk in chunks},
                           {f"{chunk.name}.wav": len(chunk.audio) / sr for chunk in chunks},
                           write_chunks(chunks, Path(job.audio_dir), sr))


def recording_names(scenes: list[str], sizes: dict[str, int], seed: int) -> dict[str, list[tuple[str, str]]]:
    """split -> [(recording name, scene)]: scenes in turn; each scene's numbers shuffled across the splits."""
    per_scene = {scene: [] for scene in scenes}  # scene -> [(split, index)] in configuration order
    for split, size in sizes.items():
        for index in range(size):
            per_scene[scenes[index % len(scenes)]].append((split, index))
    names: dict[str, list[tuple[str, str]]] = {split: [("", "")] * size for split, size in sizes.items()}
    for scene, slots in per_scene.items():
        numbers = np.random.default_rng([seed, zlib.crc32(scene.encode())]).permutation(len(slots))
        for (split, index), number in zip(slots, numbers):
            names[split][index] = (f"{scene}_{number:02d}", scene)
    return names


def synthesize_maestro(dataset: dict, seed: int, root: str | Path, threads: int = 1) -> dict:
    """Write every split of a MAESTRO-like dataset under ``root`` (chunked); return the manifest (written last).

    dataset: ``config["datasets"][name]`` with ``synthetic.kind: maestro``; split paths are relative to root.
    """
    root = Path(root)
    synth = dataset.get("synthetic") or {}
    required = ("sizes", "scenes", "recording_seconds", "events_per_minute", "snr_db", "background_db")
    missing = [k for k in required if k not in synth]
    if missing:
        raise ValueError(f"datasets.<name>.synthetic: missing field(s) {missing} (required for kind maestro)")
    unknown = [c for c in dataset["classes"] if c not in EVENT_CLASSES]
    if unknown:
        raise ValueError(f"datasets.<name>.classes: no MAESTRO-like generator for {unknown}; known: {list(EVENT_CLASSES)}")
    scenes = list(synth["scenes"])
    unknown = [s for s in scenes if s not in SCENES]
    if unknown or not scenes:
        raise ValueError(f"datasets.<name>.synthetic.scenes: unknown scene(s) {unknown}; expected some of {list(SCENES)}")
    sizes = {}
    for split, cfg in dataset["splits"].items():
        if cfg["labels"] != "soft":
            raise ValueError(f"datasets.<name>.splits.{split}.labels: kind maestro writes soft labels, got "
                             f"'{cfg['labels']}'")
        sizes[split] = synth["sizes"].get(split, 0)
        if sizes[split] < len(scenes):
            raise ValueError(f"datasets.<name>.synthetic.sizes.{split}: {sizes[split]} recordings; expected at least "
                             f"one per scene ({len(scenes)})")
    lo, hi = synth["recording_seconds"]
    if not WINDOW_SECONDS <= lo <= hi:
        raise ValueError(f"datasets.<name>.synthetic.recording_seconds: expected {WINDOW_SECONDS} <= min <= max, "
                         f"got {[lo, hi]}")
    sample_rate = synth.get("sample_rate", 44100)
    params = (sample_rate, (lo, hi), tuple(synth["events_per_minute"]), tuple(synth["snr_db"]),
              tuple(synth["background_db"]))
    names = recording_names(scenes, sizes, seed)
    started = time.perf_counter()
    for stale in remove_stale_temporaries(root):
        log.info("removed %s, left by an interrupted run", stale)
    with atomic_path(root, is_dir=True) as tmp:
        jobs = []
        for split, cfg in dataset["splits"].items():
            (tmp / cfg["audio"]).mkdir(parents=True, exist_ok=True)
            hop = LAYOUT["validation" if cfg["role"] in SCORED_ROLES else "train"].hop_seconds
            for index, (name, scene) in enumerate(names[split]):
                classes = tuple(c for c in dataset["classes"] if c in SCENES[scene].classes)
                jobs.append(RecordingJob(seed, split, index, name, scene, classes, params, hop, str(tmp / cfg["audio"])))
        if threads > 1:
            with ProcessPoolExecutor(max_workers=threads) as pool:
                results = list(Progress(pool.map(_write_recording, jobs), "synthesize maestro", total=len(jobs)))
        else:
            results = [_write_recording(job) for job in Progress(jobs, "synthesize maestro")]
        files = [{**entry, "path": f"{dataset['splits'][job.split]['audio']}/{entry['path']}"}
                 for job, result in zip(jobs, results) for entry in result.files]
        texts = {RECORDING_DURATIONS: durations_text({f"{job.name}.wav": r.seconds for job, r in zip(jobs, results)})}
        for split, cfg in dataset["splits"].items():
            own = [r for job, r in zip(jobs, results) if job.split == split]
            texts[cfg["metadata"]] = soft_metadata_text({name: ev for r in own for name, ev in r.events.items()})
            if cfg.get("durations"):
                texts[cfg["durations"]] = durations_text({name: s for r in own for name, s in r.chunk_seconds.items()})
        for relative, text in texts.items():
            write_text(tmp / relative, text)
            data = text.encode()
            files.append({"path": relative, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {
            "format": MANIFEST_FORMAT,
            "seed": seed,
            "config_sha256": sha256_json({"seed": seed, "dataset": dataset}),
            "sample_rate": sample_rate,
            "recordings": {split: [name for name, _ in names[split]] for split in dataset["splits"]},
            "files": files,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("synthesized %d MAESTRO-like recordings (%d chunk files) under %s in %.1f s (%d workers)", len(jobs),
             sum(len(r.files) for r in results), root, time.perf_counter() - started, threads)
    return manifest
