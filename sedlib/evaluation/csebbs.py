"""cSEBBs post-processing: change-detection-based sound event bounding boxes (Ebbers et al., Interspeech 2024),
tuned on a validation split and applied to score tables, as an optional extra (``pip install 'sedlib[sebbs]'``).

A thin adapter around the authors' ``sebbs`` package (AGPL-3.0, imported only here and only when a function
needs it). Per class, cSEBBs finds change points of the score curve with a step filter (``step_filter_length``
seconds), merges neighbouring segments whose gap is shallow (``merge_threshold_abs`` / ``merge_threshold_rel``)
and gives each resulting box one confidence (its mean score). The boxes are written back as sed_scores_eval score
tables (``sebbs.utils.sed_scores_from_sebbs``): a box's confidence over its extent, :data:`OUTSIDE_SCORE`
elsewhere, so the project's PSDS code scores them like median-filtered tables.

Tuning is a grid search over the three hyper-parameters that keeps, per class, the combination with the best
single-class PSDS of the chosen scenario on the validation clips that have events (the published test's
convention, :func:`sedlib.evaluation.metrics.clips_with_events`). It is the search of ``sebbs.csebbs.tune`` +
``select_best_psds`` (classwise, either the absolute or the relative merge threshold per combination), done
here because ``tune`` of sebbs 1.0.2 builds its predictors without ``sound_classes`` and fails in
``select_best_psds`` (``len(None)``), and so that the PSDS is the project's exact fast one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from sedlib.evaluation.metrics import (SCENARIOS, clips_with_events, psds, read_durations, read_ground_truth,
                                      require_every_class)
from sedlib.evaluation.postprocess import read_score_dir, select_classes, table_classes
from sedlib.evaluation.score_tables import write_score_dir
from sedlib.io import sha256_file, write_json

FORMAT = "sedlib.csebbs/1"
# Score outside every box. sebbs writes -inf (never detected), which the fast PSDS rejects (finite scores only).
# -1 is below every confidence (a mean of probabilities, in [0, 1]), so the boxes are detected at the same
# thresholds; it adds one operating point, threshold -1, where every clip is one detection of every class. That
# point is on no PSD-ROC unless nearly every clip has events of a class (the clips without them make its eFPR far
# above max_efpr), so the PSDS equals sed_scores_eval's on sebbs' -inf tables (tests/test_csebbs.py).
OUTSIDE_SCORE = -1.0
CRITERIA = ("psds1", "psds2")
HYPER_PARAMETERS = ("step_filter_length", "merge_threshold_abs", "merge_threshold_rel")


def _sebbs():
    """The ``sebbs`` package's csebbs and utils modules; a clear error naming the extra when it is missing."""
    try:
        from sebbs import csebbs, utils
    except ImportError as exc:
        raise RuntimeError(
            "cSEBBs post-processing needs the optional extra sedlib[sebbs] and the sebbs package (AGPL-3.0): "
            "pip install -e '.[sebbs]' && pip install --no-deps sebbs==1.0.2 (README, 'cSEBBs'), "
            "or set evaluation.csebbs.enabled: false"
        ) from exc
    return csebbs, utils


def grid(step_filter_lengths: Sequence[float], merge_thresholds_abs: Sequence[float],
         merge_thresholds_rel: Sequence[float]) -> list[tuple[float, float, float]]:
    """(step_filter_length s, merge_threshold_abs, merge_threshold_rel) candidates: every step length with either
    an absolute or a relative merge threshold, the other one unlimited (sebbs' ``either_abs_or_rel_threshold``)."""
    merges = [(a, math.inf) for a in merge_thresholds_abs] + [(math.inf, r) for r in merge_thresholds_rel]
    return [(float(step), float(a), float(r)) for step in step_filter_lengths for a, r in merges]


def _predictor(params: Mapping[str, Any], classes: Sequence[str]):
    """sebbs ``CSEBBsPredictor`` of per-class (or global) hyper-parameters."""
    csebbs, _ = _sebbs()
    return csebbs.CSEBBsPredictor(**{k: params[k] for k in HYPER_PARAMETERS}, sound_classes=list(classes))


def sebb_tables(
    tables: Mapping[str, pd.DataFrame], params: Mapping[str, Any], durations: Mapping[str, float]
) -> dict[str, pd.DataFrame]:
    """cSEBBs of raw (sigmoid, unfiltered) score tables as score tables covering ``[0, duration]`` s per clip.

    ``params``: ``{step_filter_length, merge_threshold_abs, merge_threshold_rel}``, each one number or
    ``{class: number}``; ``durations``: ``{clip: seconds}`` for every clip of ``tables``.
    """
    if not tables:
        raise ValueError("cSEBBs: no score tables")
    missing = sorted(set(tables) - set(durations))
    if missing:
        raise ValueError(f"cSEBBs: no duration for {len(missing)} clips, e.g. {missing[:3]}")
    _, utils = _sebbs()
    classes = table_classes(next(iter(tables.values())))
    boxes = _predictor(params, classes).predict(dict(tables))
    return {
        clip: utils.sed_scores_from_sebbs(boxes[clip], classes, float(durations[clip]), fill_value=OUTSIDE_SCORE)
        for clip in tables
    }


def tune(
    tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list],
    durations: Mapping[str, float],
    criterion: str,
    candidates: Sequence[tuple[float, float, float]],
) -> dict[str, Any]:
    """Per class, the candidate with the best single-class ``criterion`` PSDS on the clips with events.

    Returns ``{step_filter_length: {class: s}, merge_threshold_abs: {class: x}, merge_threshold_rel: {class: x},
    validation_psds: {class: value}, grid: [{params, psds, per_class}, ...]}``; ties keep the earlier candidate.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"cSEBBs criterion '{criterion}': expected one of {', '.join(CRITERIA)}")
    if not candidates:
        raise ValueError("cSEBBs: an empty hyper-parameter grid")
    gt, dur = clips_with_events(ground_truth, durations)
    missing = sorted(set(gt) - set(tables))
    if missing:
        raise ValueError(f"cSEBBs tuning: no score table for {len(missing)} annotated clips, e.g. {missing[:3]}")
    raw = {clip: tables[clip] for clip in gt}
    classes = table_classes(next(iter(raw.values())))
    require_every_class(gt, classes)  # a class without validation events has no PSDS to tune on
    best: dict[str, tuple[float, tuple[float, float, float]]] = {}
    searched = []
    for candidate in candidates:
        result = psds(sebb_tables(raw, dict(zip(HYPER_PARAMETERS, candidate)), dur), gt, dur, SCENARIOS[criterion])
        searched.append({"params": list(candidate), "psds": result.value, "per_class": result.per_class})
        for c in classes:
            if c not in best or result.per_class[c] > best[c][0]:
                best[c] = (result.per_class[c], candidate)
    tuned: dict[str, Any] = {
        name: {c: best[c][1][k] for c in classes} for k, name in enumerate(HYPER_PARAMETERS)
    }
    return {**tuned, "validation_psds": {c: best[c][0] for c in classes}, "grid": searched}


def _json_number(x: float) -> float | None:
    """JSON has no infinity: an unlimited merge threshold is written as null."""
    return None if math.isinf(x) else x


def _from_json_number(x: float | None) -> float:
    return math.inf if x is None else float(x)


def write_params(path: str | Path, tuned: Mapping[str, Any], criterion: str, provenance: Mapping[str, Any]) -> None:
    """Write the tuned hyper-parameters (``tune``'s result) as JSON, atomically; unlimited thresholds as null."""
    document = {
        "format": FORMAT,
        "criterion": criterion,
        **{name: {c: _json_number(v) for c, v in tuned[name].items()} for name in HYPER_PARAMETERS},
        "validation_psds": tuned["validation_psds"],
        "grid": [{**entry, "params": [_json_number(v) for v in entry["params"]]} for entry in tuned["grid"]],
        "provenance": dict(provenance),
    }
    write_json(path, document)


def read_params(path: str | Path) -> dict[str, dict[str, float]]:
    """``{step_filter_length, merge_threshold_abs, merge_threshold_rel: {class: value}}`` of a :func:`write_params`
    file (null read back as unlimited)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cSEBBs parameters {path} do not exist")
    document = json.loads(path.read_text())
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format': expected '{FORMAT}', got {document.get('format')!r}")
    return {name: {c: _from_json_number(v) for c, v in document[name].items()} for name in HYPER_PARAMETERS}


# ----------------------------------------------------------------------------- commands
def configure_tune_csebbs(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("--scores", required=True, help="raw score folder of the validation split")
    parser.add_argument("--metadata", required=True, help="strong ground truth of the validation split (TSV)")
    parser.add_argument("--durations", required=True, help="durations.tsv of the validation split")
    parser.add_argument("--config-json", required=True,
                        help="the config's evaluation.csebbs section plus 'classes': the split's scored classes (JSON)")
    parser.add_argument("--out", required=True, help="tuned parameters (JSON) to write")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        candidates = grid(cfg["step_filter_lengths"], cfg["merge_thresholds_abs"], cfg["merge_thresholds_rel"])
        durations = read_durations(args.durations)
        tables = {clip: select_classes(t, cfg["classes"]) for clip, t in read_score_dir(args.scores, clips=sorted(durations)).items()}
        tuned = tune(tables, read_ground_truth(args.metadata), durations, cfg["criterion"], candidates)
        provenance = {"scores": args.scores, "metadata": args.metadata, "metadata_sha256": sha256_file(args.metadata),
                      "durations": args.durations, "durations_sha256": sha256_file(args.durations)}
        write_params(args.out, tuned, cfg["criterion"], provenance)
        return 0

    return run


def configure_apply_csebbs(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("--params", required=True, help="tuned parameters written by tune-csebbs")
    parser.add_argument("--scores", required=True, help="raw score folder to post-process")
    parser.add_argument("--durations", required=True, help="durations.tsv of the scored split")
    parser.add_argument("--out", required=True, help="score folder of the cSEBBs tables to write")

    def run(args: argparse.Namespace) -> int:
        durations, params = read_durations(args.durations), read_params(args.params)
        classes = list(params[HYPER_PARAMETERS[0]])  # the tuned classes (the tuning split's scored classes)
        tables = {clip: select_classes(t, classes) for clip, t in read_score_dir(args.scores, clips=sorted(durations)).items()}
        write_score_dir(args.out, sebb_tables(tables, params, durations))
        return 0

    return run
