"""MAESTRO chunks back onto their recordings: chunk names, recording ground truth from soft chunk metadata,
recording durations, and chunk score tables averaged onto the recording timeline.

MAESTRO Real recordings (minutes long) are cut into chunks of 10 s at a hop of 5 s (validation), the last,
shorter chunk kept, named ``{recording}-{onset:06d}-{offset:06d}`` with onset and offset in centiseconds of the
recording (DCASE-REPO/DESED_task recipes/dcase2024_task4_baseline/dprep/download_prep_maestro.py, lines 17-23
and 86-99). Their metadata rows ``filename onset offset event_label confidence`` hold each recording event
clipped to the chunk, in seconds relative to the chunk's onset; ``confidence`` (in [0, 1]) is the annotators'
agreement. Times are seconds throughout and rounded to 6 decimals (sed_scores_eval's ``time_decimals``) where
chunk and recording time are added.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from sed_scores_eval.base_modules.scores import create_score_dataframe

from sedlib.data.chunks import SoftEvent, chunk_id, parse_chunk_name
from sedlib.data.metadata import read_soft, soft_events_by_file
from sedlib.evaluation.postprocess import Event, table_classes

TIME_DECIMALS = 6
DURATION_TOLERANCE_S = 0.05  # measured chunk duration vs. its name's offset - onset (names truncate to 10 ms)


class Chunk(NamedTuple):
    recording: str
    onset: float  # s in the recording
    offset: float  # s in the recording


def chunk_of(name: str) -> Chunk:
    """Recording and bounds (s) of a chunk id or audio file name (sedlib.data.chunks.parse_chunk_name)."""
    return Chunk(*parse_chunk_name(name))


# ----------------------------------------------------------------------------- ground truth
def read_soft_events(metadata_tsv: str | Path) -> dict[str, list[SoftEvent]]:
    """``{chunk id: [(onset s, offset s, label, confidence), ...]}`` of a soft metadata TSV (read and checked by
    sedlib.data.metadata.read_soft; chunks listed without events map to [])."""
    return {chunk_id(name): events for name, events in soft_events_by_file(read_soft(metadata_tsv)).items()}


def merge_overlapping_events(events: Iterable[Event]) -> list[Event]:
    """Events with every group of overlapping or touching same-class events joined, sorted by (label, onset)
    (the baseline's ``_merge_overlapping_events``, sed_trainer_pretrained.py lines 1386-1403)."""
    merged: list[list] = []
    for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0], e[1])):
        if merged and merged[-1][2] == label and onset <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset)
        else:
            merged.append([onset, offset, label])
    return [tuple(e) for e in merged]


def recording_ground_truth(
    chunk_events: Mapping[str, Sequence[SoftEvent]], chunks: Iterable[str], classes: Sequence[str],
    min_confidence: float,
) -> dict[str, list[Event]]:
    """``{recording: [(onset s, offset s, label), ...]}`` on the recording timeline, every recording of ``chunks``.

    Keeps the events of ``classes`` with confidence strictly above ``min_confidence``, shifts them by their chunk's
    onset and merges overlapping same-class events, so the clipped pieces of one event in overlapping chunks
    become that event again (the baseline's ``_merge_maestro_ground_truth``, lines 1366-1383). Recordings without
    such events get an empty list.
    """
    unknown = sorted(set(chunk_events) - set(chunks))
    if unknown:
        raise ValueError(f"soft metadata lists {len(unknown)} chunks without a duration, e.g. {unknown[:3]}")
    wanted = set(classes)
    shifted: dict[str, list[Event]] = {chunk_of(chunk).recording: [] for chunk in chunks}
    for chunk, events in chunk_events.items():
        start = chunk_of(chunk)
        shifted[start.recording] += [
            (round(start.onset + on, TIME_DECIMALS), round(start.onset + off, TIME_DECIMALS), label)
            for on, off, label, confidence in events
            if label in wanted and confidence > min_confidence
        ]
    return {recording: merge_overlapping_events(events) for recording, events in sorted(shifted.items())}


def recording_durations(chunk_durations: Mapping[str, float]) -> dict[str, float]:
    """``{recording: s}``: the latest chunk end (name onset + measured duration) of each recording.

    Raises ValueError when a chunk's measured duration differs from its name's by more than DURATION_TOLERANCE_S.
    """
    ends: dict[str, float] = {}
    for chunk, duration in chunk_durations.items():
        start = chunk_of(chunk)
        if abs(duration - (start.offset - start.onset)) > DURATION_TOLERANCE_S:
            raise ValueError(f"chunk {chunk}: measured duration {duration} s, its name says "
                             f"{start.offset - start.onset:.2f} s")
        ends[start.recording] = max(ends.get(start.recording, 0.0), round(start.onset + duration, TIME_DECIMALS))
    return dict(sorted(ends.items()))


# ----------------------------------------------------------------------------- scores
def merge_chunk_tables(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``{recording: score table}``: chunk score tables (times relative to the chunk) on the recording timeline.

    The recording's frame boundaries are every chunk's frame boundaries shifted by its onset; the score of each
    resulting interval is the mean over the chunks whose frames cover it (overlap averaging). Chunk tables that
    agree where they overlap therefore merge into exactly the table they were cut from. Raises ValueError on
    differing class columns or on a part of a recording, from 0 s to its last chunk's end, no chunk covers.
    """
    if not tables:
        raise ValueError("merge chunk tables: no score tables")
    per_recording: dict[str, list[tuple[float, pd.DataFrame]]] = defaultdict(list)
    classes = None
    for chunk, table in tables.items():
        own = table_classes(table)
        if classes is None:
            classes = own
        elif own != classes:
            raise ValueError(f"score table of {chunk}: classes {own}, expected {classes}")
        start = chunk_of(chunk)
        per_recording[start.recording].append((start.onset, table))
    return {recording: _merge_recording(recording, parts, classes) for recording, parts in sorted(per_recording.items())}


def _merge_recording(recording: str, parts: list[tuple[float, pd.DataFrame]], classes: list[str]) -> pd.DataFrame:
    """Overlap-average of one recording's chunk tables ``[(chunk onset s, table), ...]``."""
    stamps = [np.round(onset + np.append(t["onset"].to_numpy(), t["offset"].to_numpy()[-1]), TIME_DECIMALS)
              for onset, t in parts]
    bounds = np.unique(np.concatenate(stamps))  # (K + 1,) the recording's interval boundaries
    total = np.zeros((len(bounds) - 1, len(classes)))
    count = np.zeros(len(bounds) - 1)
    for (_, table), chunk_bounds in zip(parts, stamps):
        first, last = np.searchsorted(bounds, chunk_bounds[[0, -1]])
        intervals = np.arange(first, last)
        frame = np.searchsorted(chunk_bounds, bounds[intervals], side="right") - 1  # the chunk frame of each
        total[intervals] += table[classes].to_numpy(dtype=np.float64)[frame]
        count[intervals] += 1
    uncovered = np.flatnonzero(count == 0)
    if bounds[0] > 0 or uncovered.size:
        gap = (0.0, bounds[0]) if bounds[0] > 0 else (bounds[uncovered[0]], bounds[uncovered[0] + 1])
        raise ValueError(f"recording {recording}: no chunk score table covers {gap[0]:.3f}-{gap[1]:.3f} s")
    return create_score_dataframe(total / count[:, None], bounds, classes)
