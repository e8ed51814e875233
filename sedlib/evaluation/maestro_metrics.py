"""MAESTRO Real evaluation (DCASE 2024 Task 4): segment-based mpAUC, mAUC and F1 on full recordings, with
percentile bootstrap intervals over recordings.

Definitions (DCASE-REPO/DESED_task recipes/dcase2024_task4_baseline/local/sed_trainer_pretrained.py,
``on_test_epoch_end`` lines 1155-1260, with sed_scores_eval 0.0.4's ``segment_based`` module):

- ground truth: the chunk metadata's events of the scored classes with confidence > 0.5, on the recording
  timeline, overlapping same-class events merged (:mod:`sedlib.evaluation.chunk_merge`);
- scores: the chunks' median-filtered tables overlap-averaged onto the recording (the baseline instead averages
  the chunks' 1 s segment means, ``_get_segment_scores_and_overlap_add``);
- the recording is cut into 1 s segments; a segment is positive for a class when one of its events overlaps it,
  and its score is the maximum score of the frames overlapping it;
- mpAUC: per class the area under the segment ROC up to a false positive rate of 0.1, divided by 0.1
  (``segment_based.auroc(max_fpr=0.1)``), averaged over classes; mAUC: the whole area; segment F1: at the
  decision threshold (score above it), macro average over classes (``segment_based.fscore``), micro also given.

sed_scores_eval needs events of every class: a scored class without events in the evaluated recordings is left
out of every metric and listed (``classes_without_events``). Bootstrap: as many recordings as evaluated drawn
with replacement (``numpy.random.default_rng(seed)``, sorted recordings, so every model on a split shares the
draws); the per-recording segment statistics are computed once and re-accumulated per draw. In a draw, a class
without positive (or without negative) segments has no AUC / F1 and is left out of that draw's means.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sed_scores_eval.base_modules.precision_recall import single_fscore_from_intermediate_statistics
from sed_scores_eval.base_modules.roc import auroc_from_intermediate_statistics
from sed_scores_eval.segment_based.intermediate_statistics import (
    accumulated_intermediate_statistics_from_deltas,
    intermediate_statistics_deltas,
)

from sedlib.evaluation.chunk_merge import SoftEvent, merge_chunk_tables, recording_durations, recording_ground_truth
from sedlib.evaluation.postprocess import Event, table_classes

SEGMENT_SECONDS = 1.0  # sed_trainer_pretrained.py line 1206 (segment_length = 1.0)
MAX_FPR = 0.1  # line 1237 (auroc(..., max_fpr=0.1)), the mpAUC of the DCASE 2024 ranking
MIN_CONFIDENCE = 0.5  # lines 1163-1164 (confidence > 0.5)
METRICS = ("mpauc", "mauc", "segment_f1")
Interval = Callable[[np.ndarray], list[float]]  # bootstrap samples -> [low, high] ([] without samples)
Deltas = dict[str, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]]  # recording -> class -> segment stats


def segment_deltas(
    tables: Mapping[str, pd.DataFrame], ground_truth: Mapping[str, list[Event]], durations: Mapping[str, float]
) -> Deltas:
    """sed_scores_eval's per-recording statistics of the 1 s segments (every class of the tables needs events)."""
    return intermediate_statistics_deltas(
        scores=dict(tables), ground_truth=dict(ground_truth), audio_durations=dict(durations),
        segment_length=SEGMENT_SECONDS,
    )


def segment_metrics(deltas: Deltas, threshold: float, draw: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """``{"mpauc" | "mauc" | "segment_f1": {class: value}}`` of every recording of ``deltas`` or of the resampled
    set ``draw`` (indices into the sorted recordings; a recording drawn k times counts k times). A class without
    positive or without negative segments gets NaN."""
    recordings = sorted(deltas)
    draw = np.arange(len(recordings)) if draw is None else draw
    stats = accumulated_intermediate_statistics_from_deltas(
        {f"{recordings[i]}#{k}": deltas[recordings[i]] for k, i in enumerate(draw)}
    )
    defined = {c: s for c, s in stats.items() if 0 < s[1]["n_ref"] < s[1]["n_sys"][0]}
    values = {name: dict.fromkeys(stats, np.nan) for name in METRICS}
    if defined:
        mpauc, _ = auroc_from_intermediate_statistics(defined, max_fpr=MAX_FPR)
        mauc, _ = auroc_from_intermediate_statistics(defined)
        f1, *_ = single_fscore_from_intermediate_statistics(defined, threshold)
        for name, per_class in zip(METRICS, (mpauc, mauc, f1)):
            values[name].update({c: float(per_class[c]) for c in defined})
    return values


def class_mean(per_class: Mapping[str, float]) -> float:
    """Mean over the classes with a value (NaN when none has)."""
    values = np.array([v for v in per_class.values() if not np.isnan(v)])
    return float(values.mean()) if len(values) else np.nan


def evaluate_recordings(
    tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    durations: Mapping[str, float],
    threshold: float,
    bootstrap: Mapping[str, int],
    confidence_interval: Interval,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """mpAUC, mAUC and segment F1 of recording score tables: the JSON parts and the (n,) bootstrap samples of
    each metric (``bootstrap``: ``{"n", "seed"}``)."""
    classes = table_classes(next(iter(tables.values())))
    present = {label for events in ground_truth.values() for _, _, label in events}
    scored = [c for c in classes if c in present]
    if not scored:
        raise ValueError(f"MAESTRO ground truth has no events (confidence > {MIN_CONFIDENCE}) of the classes {classes}")
    deltas = segment_deltas({r: t[["onset", "offset", *scored]] for r, t in tables.items()}, ground_truth, durations)
    full = segment_metrics(deltas, threshold)
    rng = np.random.default_rng(bootstrap["seed"])
    n = len(deltas)
    draws = [segment_metrics(deltas, threshold, rng.integers(0, n, size=n)) for _ in range(bootstrap["n"])]
    samples = {name: np.array([class_mean(draw[name]) for draw in draws]) for name in METRICS}
    parts: dict[str, Any] = {"classes_without_events": [c for c in classes if c not in present]}
    for name in METRICS:
        finite = samples[name][np.isfinite(samples[name])]
        parts[name] = {
            "value": class_mean(full[name]),
            "ci95": confidence_interval(finite),
            "bootstrap_std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
            "per_class": {c: None if np.isnan(full[name].get(c, np.nan)) else full[name][c] for c in classes},
        }
    stats = accumulated_intermediate_statistics_from_deltas(deltas)
    parts["segment_f1"] = {"threshold": threshold, **parts["segment_f1"],
                           "micro": float(single_fscore_from_intermediate_statistics(stats, threshold)[0]["micro_average"])}
    return parts, samples


def evaluate_chunks(
    chunk_tables: Mapping[str, pd.DataFrame],
    chunk_events: Mapping[str, Sequence[SoftEvent]],
    chunk_durations: Mapping[str, float],
    threshold: float,
    bootstrap: Mapping[str, int],
    confidence_interval: Interval,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON entry and bootstrap samples of one model on a chunked MAESTRO split.

    ``chunk_tables``: post-processed score tables of every chunk of ``chunk_durations`` (s), restricted to the
    scored classes; ``chunk_events``: the split's soft metadata (:func:`chunk_merge.read_soft_events`).
    """
    missing = sorted(set(chunk_durations) - set(chunk_tables))
    if missing:
        raise ValueError(f"no score table for {len(missing)} chunks, e.g. {missing[:3]}")
    classes = table_classes(next(iter(chunk_tables.values())))
    tables = merge_chunk_tables({chunk: chunk_tables[chunk] for chunk in chunk_durations})
    durations = recording_durations(chunk_durations)
    ground_truth = recording_ground_truth(chunk_events, chunk_durations, classes, MIN_CONFIDENCE)
    parts, samples = evaluate_recordings(tables, ground_truth, durations, threshold, bootstrap, confidence_interval)
    entry = {
        "recordings": len(tables),
        "chunks": len(chunk_durations),
        "events": sum(len(events) for events in ground_truth.values()),
        "hours": sum(durations.values()) / 3600.0,
        **parts,
    }
    return entry, samples
