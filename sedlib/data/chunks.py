"""MAESTRO Real recordings (minutes long, soft strong labels) cut into 10 s chunks as the DCASE 2024 baseline does.

The baseline (DCASE-REPO/DESED_task, recipes/dcase2024_task4_baseline/dprep/download_prep_maestro.py) cuts each
development recording into ``window`` s chunks every ``hop`` s (1 s for train, 5 s for validation, lines
133-136), keeps the last partial chunk (``get_chunks_indx``, lines 17-23), names a chunk
``{recording}-{onset cs:06d}-{offset cs:06d}`` (centiseconds, truncated; line 98) and clips every event
overlapping the chunk to it, shifted to the chunk's start (``get_current_annotation``, lines 65-83).

``chunk-maestro`` turns MAESTRO's development folder (``development_audio/<scene>/<recording>.wav``,
``development_annotation/<scene>/<recording>.txt``: tab-separated ``onset offset event_label confidence``,
no header) into the baseline's layout under an output root (``LAYOUT``): chunk audio, one soft metadata TSV
per partition and the recordings' durations. Unlike the baseline, a chunk without events gets an event-less
row (DESED convention), so the metadata names every chunk that has audio. The same functions lay out the
MAESTRO-like synthetic dataset (sedlib.data.synth_maestro).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sedlib.data.audio_names import is_audio_name
from sedlib.data.metadata import DURATION_COLUMNS, SOFT_COLUMNS, parse_soft
from sedlib.io import atomic_path, write_text
from sedlib.options import POSITIVE
from sedlib.progress import Progress

log = logging.getLogger(__name__)

SoftEvent = tuple[float, float, str, float]  # (onset s, offset s, label, confidence in [0, 1])

WINDOW_SECONDS = 10.0  # chunk length (s), download_prep_maestro.py:162


@dataclass(frozen=True)
class Partition:
    audio: str  # chunk folder, relative to the output root
    metadata: str  # soft metadata TSV, relative to the output root
    hop_seconds: float  # chunk hop (s)


# The baseline's output layout (download_prep_maestro.py:148-176; hops at lines 133 and 136).
LAYOUT = {
    "train": Partition("audio/maestro_real_train", "metadata/maestro_real_train.tsv", 1.0),
    "validation": Partition("audio/maestro_real_validation", "metadata/maestro_real_validation.tsv", 5.0),
}
RECORDING_DURATIONS = "metadata/maestro_real_durations.tsv"  # 'filename duration' (s) of the whole recordings
CHUNK_NAME = re.compile(r"^(?P<recording>.+)-(?P<onset>\d{6,})-(?P<offset>\d{6,})$")


@dataclass(frozen=True)
class Chunk:
    name: str  # file stem, see chunk_name
    audio: np.ndarray  # (samples,) or (samples, channels)
    events: list[SoftEvent]  # times relative to the chunk (s)


def chunk_bounds(n_samples: int, sample_rate: int, window_seconds: float, hop_seconds: float) -> list[tuple[int, int]]:
    """[(start, stop)] sample bounds of a recording's chunks, the baseline's ``get_chunks_indx``.

    Full windows every hop, then one partial chunk from the next hop to the end when the last full window ends
    before it. As in the baseline, a recording no longer than ``window - hop`` gives no chunk.
    """
    window, hop = int(window_seconds * sample_rate), int(hop_seconds * sample_rate)
    if window < 1 or hop < 1:
        raise ValueError(f"chunk window ({window_seconds} s) and hop ({hop_seconds} s) must be at least one sample")
    n_full = max((n_samples - window + hop) // hop, 0)
    bounds = [(i * hop, i * hop + window) for i in range(n_full)]
    if (n_full - 1) * hop + window < n_samples and n_samples - n_full * hop > 0:
        bounds.append((n_full * hop, n_samples))
    return bounds


def chunk_name(recording: str, start: int, stop: int, sample_rate: int) -> str:
    """'{recording}-{onset:06d}-{offset:06d}' of sample bounds, times in centiseconds truncated (the baseline's)."""
    return f"{recording}-{int(start / sample_rate * 100):06d}-{int(stop / sample_rate * 100):06d}"


def chunk_id(name: str) -> str:
    """A chunk's id: its audio file name without the extension (an id stays as it is)."""
    return name[: name.rfind(".")] if is_audio_name(name) else name


def parse_chunk_name(name: str) -> tuple[str, float, float]:
    """(recording, onset s, offset s) of a chunk name or file name (an audio extension is ignored)."""
    match = CHUNK_NAME.match(chunk_id(name))
    if match is None or int(match["onset"]) >= int(match["offset"]):
        raise ValueError(
            f"chunk name {name!r}: expected '<recording>-<onset>-<offset>' with onset < offset in centiseconds, "
            "6 digits each (e.g. cafe_restaurant_00-000100-001100.wav)"
        )
    return match["recording"], int(match["onset"]) / 100, int(match["offset"]) / 100


def events_in_chunk(events: list[SoftEvent], start_s: float, stop_s: float) -> list[SoftEvent]:
    """Events overlapping [start_s, stop_s), clipped to it and shifted to its start; sorted by onset."""
    inside = [
        (round(max(0.0, onset - start_s), 6), round(min(stop_s, offset) - start_s, 6), label, confidence)
        for onset, offset, label, confidence in events
        if onset < stop_s and start_s < offset
    ]
    return sorted(inside, key=lambda event: event[0])


def chunk_recording(
    recording: str, audio: np.ndarray, sample_rate: int, events: list[SoftEvent], window_seconds: float,
    hop_seconds: float,
) -> list[Chunk]:
    """The chunks of one recording: audio (samples,) or (samples, channels) at sample_rate Hz, events in s."""
    return [
        Chunk(chunk_name(recording, start, stop, sample_rate), audio[start:stop],
              events_in_chunk(events, start / sample_rate, stop / sample_rate))
        for start, stop in chunk_bounds(len(audio), sample_rate, window_seconds, hop_seconds)
    ]


def merge_chunk_events(chunk_events: dict[str, list[SoftEvent]]) -> dict[str, list[SoftEvent]]:
    """recording -> its events from chunk name -> chunk events: shifted back, overlapping or touching events
    of one label and confidence merged (the inverse of chunking, as the baseline rebuilds recordings)."""
    by_key: dict[tuple[str, str, float], list[tuple[float, float]]] = {}
    for name, events in chunk_events.items():
        recording, onset_s, _ = parse_chunk_name(name)
        for onset, offset, label, confidence in events:
            by_key.setdefault((recording, label, confidence), []).append((onset_s + onset, onset_s + offset))
        by_key.setdefault((recording, "", 0.0), [])  # recordings without events are kept
    merged: dict[str, list[SoftEvent]] = {}
    for (recording, label, confidence), spans in sorted(by_key.items()):
        events = merged.setdefault(recording, [])
        current: list[float] | None = None
        for onset, offset in sorted(spans):
            if current is not None and onset <= current[1] + 1e-6:
                current[1] = max(current[1], offset)
                continue
            if current is not None:
                events.append((round(current[0], 6), round(current[1], 6), label, confidence))
            current = [onset, offset]
        if current is not None:
            events.append((round(current[0], 6), round(current[1], 6), label, confidence))
    return {recording: sorted(events) for recording, events in merged.items()}


# ----------------------------------------------------------------------------- writing the layout
def write_chunks(chunks: list[Chunk], audio_dir: Path, sample_rate: int, subtype: str = "PCM_16") -> list[dict]:
    """Write each chunk as ``audio_dir/<name>.wav``; return manifest entries {path (file name), bytes, sha256}."""
    entries = []
    for chunk in chunks:
        buffer = io.BytesIO()
        sf.write(buffer, chunk.audio, sample_rate, subtype=subtype, format="WAV")
        data = buffer.getvalue()
        (audio_dir / f"{chunk.name}.wav").write_bytes(data)
        entries.append({"path": f"{chunk.name}.wav", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return entries


def soft_metadata_text(chunk_events: dict[str, list[SoftEvent]]) -> str:
    """Soft metadata TSV text of chunk name -> events, sorted by file name; a chunk without events gets an
    event-less row."""
    lines = ["\t".join(SOFT_COLUMNS)]
    for name in sorted(chunk_events):
        events = chunk_events[name]
        lines += [f"{name}.wav\t{on!r}\t{off!r}\t{label}\t{conf!r}" for on, off, label, conf in events]
        if not events:
            lines.append(f"{name}.wav\t\t\t\t")
    return "\n".join(lines) + "\n"


def durations_text(durations: dict[str, float]) -> str:
    """'filename duration' TSV text of file name -> seconds, sorted by name."""
    return "\n".join(["\t".join(DURATION_COLUMNS)] + [f"{k}\t{durations[k]!r}" for k in sorted(durations)]) + "\n"


# ----------------------------------------------------------------------------- MAESTRO development data
def read_annotation(path: Path) -> list[SoftEvent]:
    """Events of a MAESTRO annotation file (``onset offset event_label confidence``, no header)."""
    events = []
    for row in parse_soft(path, header=False):
        if row.label is None:
            continue
        if row.onset < 0 or row.offset <= row.onset:
            raise ValueError(f"{path}:{row.line}: expected 0 <= onset < offset, got onset {row.onset} s, "
                             f"offset {row.offset} s")
        events.append((row.onset, row.offset, row.label, row.confidence))
    return events


def read_split_list(path: Path) -> list[str]:
    """Recording stems of a baseline split CSV (a header line such as 'train' or 'val', then one file per line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    stems = [Path(line.split(",")[0]).stem for line in lines[1:] if line]
    if not stems:
        raise ValueError(f"{path}: expected a header line and one recording per line, got no recording")
    return stems


def development_files(development_dir: Path) -> dict[str, tuple[Path, Path]]:
    """recording stem -> (audio, annotation) of a MAESTRO development folder; every recording needs both."""
    audio = {p.stem: p for p in sorted((development_dir / "development_audio").rglob("*.wav"))}
    notes = {p.stem: p for p in sorted((development_dir / "development_annotation").rglob("*.txt"))}
    if not audio:
        raise FileNotFoundError(
            f"{development_dir}: no development_audio/<scene>/<recording>.wav found (the MAESTRO Real development "
            "folder holds development_audio/ and development_annotation/)"
        )
    unpaired = sorted(set(audio) ^ set(notes))
    if unpaired:
        raise ValueError(f"{development_dir}: recordings without both audio (development_audio/) and annotation "
                         f"(development_annotation/): {unpaired}")
    return {stem: (audio[stem], notes[stem]) for stem in audio}


def chunk_development(
    development_dir: Path, out_root: Path, split_lists: dict[str, Path], window_seconds: float = WINDOW_SECONDS,
) -> dict[str, int]:
    """Write the baseline's chunked layout (LAYOUT) of the recordings each partition's split list names.

    split_lists: partition ('train', 'validation') -> split CSV. Chunk audio keeps the recording's rate,
    channels and sample format. Returns partition -> number of chunks.
    """
    files = development_files(development_dir)
    partitions = {part: read_split_list(path) for part, path in split_lists.items()}
    unlisted = sorted(set(files) - {stem for stems in partitions.values() for stem in stems})
    if unlisted:
        log.info("%d recordings are in no split list, left out: %s", len(unlisted), ", ".join(unlisted))
    seen: dict[str, str] = {}
    for part, stems in partitions.items():
        for stem in stems:
            if stem not in files:
                raise ValueError(f"{split_lists[part]}: recording {stem!r} is not in {development_dir}")
            if stem in seen:
                raise ValueError(f"recording {stem!r} is listed in both the {seen[stem]} and the {part} split lists")
            seen[stem] = part
    durations: dict[str, float] = {}
    counts = {}
    for part, stems in partitions.items():
        layout = LAYOUT[part]
        chunk_events: dict[str, list[SoftEvent]] = {}
        with atomic_path(out_root / layout.audio, is_dir=True) as audio_dir:
            for stem in Progress(stems, f"chunk-maestro {part}"):
                audio_path, annotation = files[stem]
                info = sf.info(str(audio_path))
                audio, sample_rate = sf.read(str(audio_path), dtype="int16" if info.subtype == "PCM_16" else "float32")
                chunks = chunk_recording(stem, audio, sample_rate, read_annotation(annotation), window_seconds,
                                         layout.hop_seconds)
                if not chunks:
                    log.warning("%s: %.2f s, too short for a %s s chunk; left out", audio_path, len(audio) / sample_rate,
                                window_seconds)
                write_chunks(chunks, audio_dir, sample_rate, info.subtype)
                chunk_events.update({chunk.name: chunk.events for chunk in chunks})
                durations[audio_path.name] = len(audio) / sample_rate
        write_text(out_root / layout.metadata, soft_metadata_text(chunk_events))
        counts[part] = len(chunk_events)
        log.info("%s: %d recordings -> %d chunks in %s", part, len(stems), len(chunk_events), out_root / layout.audio)
    write_text(out_root / RECORDING_DURATIONS, durations_text(durations))
    return counts


def configure_chunk_maestro(parser: argparse.ArgumentParser):
    parser.add_argument("--development-dir", type=Path, required=True,
                        help="MAESTRO Real development folder (development_audio/, development_annotation/)")
    parser.add_argument("--out-root", type=Path, required=True,
                        help="dataset root: audio/maestro_real_{train,validation}/ and metadata/ are written there")
    parser.add_argument("--train-split", type=Path, required=True, help="baseline dprep/train_split.csv")
    parser.add_argument("--validation-split", type=Path, required=True, help="baseline dprep/validation_split.csv")
    parser.add_argument("--window-seconds", type=POSITIVE, default=WINDOW_SECONDS, help="chunk length (s)")

    def run(args: argparse.Namespace) -> int:
        split_lists = {"train": args.train_split, "validation": args.validation_split}
        chunk_development(args.development_dir, args.out_root, split_lists, args.window_seconds)
        return 0

    return run
