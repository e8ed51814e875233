"""Sound event detection in any audio file with a trained model (``infer`` command).

Each file (any format libsndfile reads, any sample rate and channel count) is down-mixed to mono by the
channel mean, resampled with soxr to the model's rate, predicted in 10 s windows by
``sedlib.models.windowing.predict_clip`` (features normalised by the same frontends as in training: the
CRNN per-clip min-max and the ATST dB scaling), turned into sigmoid scores, median-filtered per class and
thresholded (score > threshold) into events on the 64 ms output grid. Events lie within [0, duration].

Outputs: a DESED event table (``filename onset offset event_label``, seconds), optionally the raw score
tables (sed_scores_eval format, before median filtering) and an activity PNG per file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import soundfile as sf

from sedlib.config import load_config
from sedlib.evaluation.postprocess import class_thresholds, detect_events, events_dataframe, postprocess_table
from sedlib.evaluation.score_tables import probabilities, score_table, write_score_dir
from sedlib.evaluation.scoring import clip_id, load_predictor, load_wave, predict_logits
from sedlib.io import atomic_path
from sedlib.options import POSITIVE, POSITIVE_INT, PROBABILITY
from sedlib.progress import Progress
from sedlib.devices import resolve_device

log = logging.getLogger(__name__)

DEFAULT_MEDIAN_WINDOW = 7  # frames, every class: the published default (configs/desed.yaml has the tuned ones)


def read_thresholds(path: str | Path, classes: Sequence[str]) -> dict[str, float]:
    """Per-class thresholds from JSON (``{class: value}``) or TSV (``event_label threshold``) covering ``classes``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file {path} does not exist")
    if path.suffix.lower() == ".json":
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object {{class: threshold}}")
    else:
        table = pd.read_csv(path, sep="\t")
        if list(table.columns[:2]) != ["event_label", "threshold"]:
            raise ValueError(f"{path}: header: expected 'event_label<TAB>threshold', got {list(table.columns)}")
        values = dict(zip(table["event_label"], table["threshold"]))
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise ValueError(f"{path}: unknown classes {unknown}; the model's classes are {list(classes)}")
    thresholds = dict(zip(classes, class_thresholds(values, classes).tolist()))
    bad = {c: v for c, v in thresholds.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"{path}: thresholds must lie in [0, 1], got {bad}")
    return thresholds


def median_windows(values: Sequence[int] | None, n_classes: int) -> list[int]:
    """Per-class median windows (frames): one value for every class, or one per class."""
    if not values:
        return [DEFAULT_MEDIAN_WINDOW] * n_classes
    if len(values) == 1:
        return list(values) * n_classes
    if len(values) != n_classes:
        raise ValueError(f"--median-window: expected 1 or {n_classes} values (one per class), got {len(values)}")
    return list(values)


def infer_files(
    paths: Sequence[str | Path],
    checkpoint: str | Path,
    which: str = "teacher",
    window_s: float = 10.0,
    hop_s: float = 5.0,
    device: str = "auto",
    config: dict | None = None,
    classes: list[str] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Raw score tables (sigmoid, unfiltered) ``{clip: table}`` and ``{clip: audio basename}`` of audio files."""
    dev = resolve_device(device)
    model, frontends, info = load_predictor(checkpoint, which, dev, config, classes)
    tables, names = {}, {}
    paths = list(map(Path, paths))
    progress = Progress(label=f"infer ({len(paths)} files)", total=sum(map(header_seconds, paths)), unit="s of audio")
    for path in paths:
        clip = clip_id(path.name)
        if clip in tables:
            raise ValueError(f"{path}: another input has the same name stem '{clip}' (outputs would collide)")
        wave = load_wave(path, frontends.crnn.sample_rate)
        logits = predict_logits(model, frontends, wave, window_s, hop_s, dev, on_progress=progress.advance)
        if logits.shape[1] == 0:
            raise ValueError(f"{path}: {len(wave)} samples is shorter than one output frame ({info['frame_hop']} s)")
        duration = len(wave) / frontends.crnn.sample_rate
        tables[clip] = score_table(probabilities(logits), info["classes"], info["frame_hop"], duration)
        names[clip] = path.name
        log.info("%s: %.2f s, %d frames", path, duration, logits.shape[1])
    progress.close()
    return tables, names


def header_seconds(path: Path) -> float:
    """Duration (s) from an audio file's header; 0 when unreadable (``load_wave`` then reports the error)."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0.0


def detect(
    tables: Mapping[str, pd.DataFrame],
    names: Mapping[str, str],
    threshold: float | Mapping[str, float],
    windows: Sequence[int],
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """DESED event table (filename = audio basename) and the median-filtered tables."""
    filtered = {clip: postprocess_table(table, windows) for clip, table in tables.items()}
    events = {clip: detect_events(table, threshold) for clip, table in filtered.items()}
    table = events_dataframe(events)
    table["filename"] = table["filename"].map(names)
    return table, filtered


def configure_infer(parser: argparse.ArgumentParser):
    parser.add_argument("audio", nargs="+", help="audio files (any length, sample rate and channel count)")
    parser.add_argument("--checkpoint", required=True, help="model.pt, or an ATST-SED checkpoint with --config")
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--config", help="workflow config YAML describing an ATST-SED checkpoint (model, frontends, classes)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=PROBABILITY, default=0.5, help="decision threshold for every class")
    group.add_argument("--thresholds", help="per-class thresholds: JSON {class: value} or TSV event_label/threshold")
    parser.add_argument("--median-window", type=POSITIVE_INT, nargs="+",
                        help=f"frames (64 ms): one value or one per class (default {DEFAULT_MEDIAN_WINDOW})")
    parser.add_argument("--window-seconds", type=POSITIVE, default=10.0, help="model window (s)")
    parser.add_argument("--hop-seconds", type=POSITIVE, default=5.0, help="window hop for long audio (s)")
    parser.add_argument("--out", required=True, help="event table to write (TSV)")
    parser.add_argument("--scores-dir", help="also write raw score tables (sed_scores_eval format) here")
    parser.add_argument("--plot", help="also write an activity PNG per file into this folder")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:i]")

    def run(args: argparse.Namespace) -> int:
        config = classes = None
        if args.config:
            config = load_config(args.config)
            class_lists = {tuple(ds["classes"]) for ds in config["datasets"].values()}
            if len(class_lists) != 1:
                raise ValueError(f"{args.config}: datasets have different class lists; cannot name the outputs")
            classes = list(class_lists.pop())
        tables, names = infer_files(args.audio, args.checkpoint, args.which, args.window_seconds, args.hop_seconds,
                                    args.device, config, classes)
        model_classes = list(next(iter(tables.values())).columns[2:])
        threshold = read_thresholds(args.thresholds, model_classes) if args.thresholds else args.threshold
        events, filtered = detect(tables, names, threshold, median_windows(args.median_window, len(model_classes)))
        with atomic_path(args.out) as tmp:
            events.to_csv(tmp, sep="\t", index=False, float_format="%.3f")
        if args.scores_dir:
            write_score_dir(args.scores_dir, tables)
        if args.plot:
            from sedlib.evaluation.plots import activity_figure

            for clip, table in filtered.items():
                activity_figure(table, Path(args.plot) / f"{clip}.png", names[clip], None, threshold)
        log.info("%d events in %d files -> %s", len(events), len(tables), args.out)
        return 0

    return run
