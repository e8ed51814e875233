"""Score tables and their post-processing: sigmoid, per-class median filter, thresholding into events.

A score table is sed_scores_eval's format: a DataFrame with one row per output frame, columns ``onset`` and
``offset`` (seconds) followed by one probability column per class. Frame ``i`` spans
``[i * frame_hop, (i + 1) * frame_hop)`` seconds, the last frame ends at the clip's duration at the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import median_filter
from scipy.special import expit
from sed_scores_eval.base_modules.io import read_sed_scores
from sed_scores_eval.base_modules.scores import create_score_dataframe, validate_score_dataframe

from sedlib.io import atomic_path

Event = tuple[float, float, str]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of (C, frames) logits, returned as (frames, C) float64 probabilities (score-table layout)."""
    return expit(np.asarray(logits, dtype=np.float64)).T


def frame_timestamps(n_frames: int, frame_hop: float, duration: float) -> np.ndarray:
    """(n_frames + 1,) frame boundaries in seconds: ``i * frame_hop``, capped at ``duration`` (seconds).

    Raises ValueError when a frame would start at or after the end of the audio (more frames than audio).
    """
    if n_frames < 1:
        raise ValueError(f"a score table needs at least one frame, got {n_frames}")
    stamps = np.arange(n_frames + 1, dtype=np.float64) * frame_hop
    if stamps[-2] >= duration:
        raise ValueError(
            f"{n_frames} frames of {frame_hop} s start past the audio duration {duration} s "
            f"(at most {int(np.ceil(duration / frame_hop))} frames expected)"
        )
    return np.minimum(stamps, duration)


def score_table(scores: np.ndarray, classes: Sequence[str], frame_hop: float, duration: float) -> pd.DataFrame:
    """sed_scores_eval table of (frames, C) scores on the output frame grid (hop in seconds)."""
    scores = np.asarray(scores, dtype=np.float64)
    return create_score_dataframe(scores, frame_timestamps(len(scores), frame_hop, duration), list(classes))


def table_classes(table: pd.DataFrame) -> list[str]:
    """Class columns of a score table (validated)."""
    return validate_score_dataframe(table)[1]


def select_classes(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The score table with only the class columns ``classes`` (in that order), e.g. one dataset's classes of a
    joint model's table. Raises ValueError naming the missing classes."""
    missing = [c for c in classes if c not in table_classes(table)]
    if missing:
        raise ValueError(f"score table: no column for classes {missing} (has {table_classes(table)})")
    return table[["onset", "offset", *classes]]


def median_filter_scores(scores: np.ndarray, windows: Sequence[int]) -> np.ndarray:
    """Per-class median filter over time of (frames, C) scores; ``windows[c]`` in frames.

    Exactly the published post-processing: ``scipy.ndimage.median_filter`` of each class column as a
    (frames, 1) array with size (window, 1), default 'reflect' boundary mode. For even windows scipy takes the
    upper of the two middle values.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(windows):
        raise ValueError(f"median filter: {len(windows)} windows for scores of shape {scores.shape} (frames, classes)")
    return np.concatenate(
        [median_filter(scores[:, c : c + 1], size=(int(w), 1)) for c, w in enumerate(windows)], axis=1
    )


def postprocess_table(table: pd.DataFrame, windows: Sequence[int]) -> pd.DataFrame:
    """Copy of a score table with each class column median-filtered (``windows`` in frames, per class).

    Built as one float64 block (assigning the class columns would split it into one block per column, which
    makes every later ``to_numpy`` interleave them).
    """
    classes = table_classes(table)
    values = table.to_numpy(dtype=np.float64, copy=True)
    values[:, 2:] = median_filter_scores(values[:, 2:], windows)
    return pd.DataFrame(values, index=table.index, columns=table.columns)


def postprocess_tables(tables: Mapping[str, pd.DataFrame], windows: Sequence[int]) -> dict[str, pd.DataFrame]:
    """:func:`postprocess_table` of every clip's table."""
    return {clip: postprocess_table(table, windows) for clip, table in tables.items()}


def class_thresholds(threshold: float | Mapping[str, float], classes: Sequence[str]) -> np.ndarray:
    """(C,) decision thresholds from one value or a ``{class: threshold}`` mapping covering every class."""
    if isinstance(threshold, Mapping):
        missing = [c for c in classes if c not in threshold]
        if missing:
            raise ValueError(f"thresholds: no value for classes {missing}")
        return np.array([float(threshold[c]) for c in classes])
    return np.full(len(classes), float(threshold))


def events_at_thresholds(table: pd.DataFrame, thresholds: np.ndarray) -> list[list[Event]]:
    """Events (onset s, offset s, class) of one score table at each of K thresholds, sorted per threshold.

    ``thresholds``: (K,) one value per operating point, or (K, C) one per point and class. An event is a run
    of frames with score strictly above the threshold (the DESED decoder's rule); onset = start of its first
    frame, offset = end of its last frame. Identical to ``sed_scores_eval``'s ``scores_to_event_list`` at
    each threshold, vectorised over thresholds.
    """
    classes = table_classes(table)
    scores = table[classes].to_numpy()
    thresholds = np.asarray(thresholds, dtype=np.float64)
    per_class = thresholds[:, None] if thresholds.ndim == 1 else thresholds
    if per_class.ndim != 2 or per_class.shape[1] not in (1, len(classes)):
        raise ValueError(f"thresholds of shape {thresholds.shape}: expected (K,) or (K, {len(classes)})")
    active = scores[None] > per_class[:, None, :]  # (K, T, C)
    change = np.diff(np.pad(active, ((0, 0), (1, 1), (0, 0))).astype(np.int8), axis=1)  # (K, T + 1, C)
    starts = np.argwhere(change == 1)  # rows (k, frame, c)
    stops = np.argwhere(change == -1)
    starts = starts[np.lexsort((starts[:, 1], starts[:, 2], starts[:, 0]))]  # by (k, c, frame): runs pair up
    stops = stops[np.lexsort((stops[:, 1], stops[:, 2], stops[:, 0]))]
    onsets, offsets = table["onset"].to_numpy(), table["offset"].to_numpy()
    events: list[list[Event]] = [[] for _ in range(len(per_class))]
    for (k, start, c), (_, stop, _) in zip(starts.tolist(), stops.tolist()):
        events[k].append((float(onsets[start]), float(offsets[stop - 1]), classes[c]))
    return [sorted(point) for point in events]


def detect_events(table: pd.DataFrame, threshold: float | Mapping[str, float]) -> list[Event]:
    """Events of one score table where the score is strictly above the (per-class) threshold."""
    return events_at_thresholds(table, class_thresholds(threshold, table_classes(table))[None])[0]


def events_dataframe(events: Mapping[str, list[Event]], suffix: str = "") -> pd.DataFrame:
    """DESED event table (filename onset offset event_label) of ``{clip: events}``; filename = clip + suffix."""
    rows = [(f"{clip}{suffix}", on, off, label) for clip, clip_events in events.items() for on, off, label in clip_events]
    return pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])


def score_table_text(table: pd.DataFrame) -> str:
    """The TSV text of a score table, byte-identical to sed_scores_eval's ``write_sed_scores`` (pandas
    ``to_csv(sep="\\t", index=False)``: header, then each float64 as its shortest round-trip repr) in about half
    the time (5.5 ms instead of 9.8 ms for a 156 x 29 table, measured alone; Python's float repr is most of it).

    Raises ValueError for an invalid table or a non-finite value (pandas would write NaN as an empty field).
    """
    validate_score_dataframe(table)
    values = table.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("score table: non-finite values (NaN or inf) cannot be written")
    lines = ["\t".join(map(str, table.columns))]
    lines += ["\t".join(map(repr, row)) for row in values.tolist()]
    return "\n".join(lines) + "\n"


def write_score_dir(path: str | Path, tables: Mapping[str, pd.DataFrame]) -> None:
    """Write one ``{clip}.tsv`` score table per clip into the folder ``path``, atomically (all or nothing)."""
    if not tables:
        raise ValueError(f"{path}: no score tables to write")
    with atomic_path(path, is_dir=True) as tmp:
        for clip, table in tables.items():
            try:
                text = score_table_text(table)
            except ValueError as exc:
                raise ValueError(f"{path}: clip {clip}: {exc}") from None
            (tmp / f"{clip}.tsv").write_text(text)


def read_score_dir(path: str | Path, clips: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Score tables of a folder written by :func:`write_score_dir`: all clips, or exactly ``clips``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"score folder {path} does not exist")
    if clips is None:
        return read_sed_scores(path)
    missing = [clip for clip in clips if not (path / f"{clip}.tsv").is_file()]
    if missing:
        raise ValueError(f"score folder {path}: no score table for {len(missing)} clips, e.g. {missing[:3]}")
    return {clip: read_sed_scores(path / f"{clip}.tsv") for clip in clips}
