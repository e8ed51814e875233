"""Post-processing of score tables: reading score folders, class selection, per-class median filter,
thresholding into events. Score tables (sed_scores_eval's format) and writing them:
:mod:`sedlib.evaluation.score_tables`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import median_filter
from sed_scores_eval.base_modules.io import read_sed_scores
from sed_scores_eval.base_modules.scores import validate_score_dataframe

Event = tuple[float, float, str]


def table_classes(table: pd.DataFrame) -> list[str]:
    """Class columns of a score table (validated)."""
    return validate_score_dataframe(table)[1]


def select_classes(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The score table with only the class columns ``classes`` (in that order), e.g. one dataset's classes of a
    joint model's table. Raises ValueError naming the missing classes."""
    available = table_classes(table)
    missing = [c for c in classes if c not in available]
    if missing:
        raise ValueError(f"score table: no column for classes {missing} (has {available})")
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
