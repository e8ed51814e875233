"""Evaluation metrics on post-processed score tables: PSDS1/PSDS2 (every threshold, sed_scores_eval's
definitions computed by :mod:`sedlib.evaluation.fast_psds`), bootstrapped confidence intervals, per-class PSDS,
collar-based event F1 and the psds_eval cross-check of strongly labelled splits; MAESTRO's mpAUC of softly
labelled (chunked) splits (:mod:`sedlib.evaluation.maestro_metrics`). Each split is scored on its dataset's
scored classes only (the joint model's tables have every dataset's classes).

Units: times in seconds, eFPR in false positives per hour, median windows in output frames.
The methodology and the ``eval_psds.json`` schema are documented in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from psds_eval import PSDSEval
from sed_scores_eval import collar_based, intersection_based
from sed_scores_eval.base_modules.io import read_audio_durations, read_ground_truth_events

from sedlib.config import output_classes, scored_classes, split_ref, validate_config
from sedlib.data.check import listed_clips
from sedlib.evaluation import maestro_metrics
from sedlib.evaluation.chunk_merge import read_soft_events
from sedlib.evaluation.claims import procedure_claims
from sedlib.evaluation.fast_psds import DetectionTrees, IntersectionDeltas, PSDSScenario, intersection_deltas, psd_roc
from sedlib.evaluation.postprocess import (
    Event,
    events_at_thresholds,
    events_dataframe,
    postprocess_tables,
    read_score_dir,
    select_classes,
    table_classes,
)
from sedlib.io import atomic_path, sha256_file, sha256_json, write_json

FORMAT = "sedlib.eval_psds/2"
PACKAGES = ("sedlib", "torch", "numpy", "pandas", "scipy", "sed_scores_eval", "psds_eval", "snakemake")
CONFIDENCE = 0.95
PSDS_EVAL_DEFAULT_CTTC = 0.3  # psds_eval needs a value even when alpha_ct = 0 (it is then unused)


SCENARIOS = {
    "psds1": PSDSScenario(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0),
    "psds2": PSDSScenario(dtc_threshold=0.1, gtc_threshold=0.1, cttc_threshold=0.3, alpha_ct=0.5, alpha_st=1.0),
}


class PSDSResult(NamedTuple):
    value: float
    per_class: dict[str, float]  # single-class PSDS: area under the class's TPR-vs-eFPR curve / max_efpr
    etpr: np.ndarray  # PSD-ROC: effective TPR ...
    efpr: np.ndarray  # ... against effective FPR (per hour)


# ----------------------------------------------------------------------------- ground truth
def read_ground_truth(metadata_tsv: str | Path) -> dict[str, list[Event]]:
    """``{clip: [(onset s, offset s, label), ...]}`` of a DESED strong TSV; clip = filename without extension.

    Rows with an empty label (clips without events) give an empty list.
    """
    if not Path(metadata_tsv).is_file():
        raise FileNotFoundError(f"ground truth {metadata_tsv} does not exist")
    return {clip: [tuple(e) for e in events] for clip, events in read_ground_truth_events(metadata_tsv).items()}


def read_durations(durations_tsv: str | Path) -> dict[str, float]:
    """``{clip: duration s}`` of a ``filename duration`` TSV."""
    if not Path(durations_tsv).is_file():
        raise FileNotFoundError(f"durations {durations_tsv} does not exist")
    return read_audio_durations(durations_tsv)


def clips_with_events(
    ground_truth: Mapping[str, list[Event]], durations: Mapping[str, float]
) -> tuple[dict[str, list[Event]], dict[str, float]]:
    """Ground truth and durations restricted to the clips with at least one event (as the published test).

    ATST-SED drops clips without events from the test set (``tsv.dropna()``), so they are not scored and
    their durations do not count in the false-positive rate. Every annotated clip needs a duration.
    """
    missing = sorted(set(ground_truth) - set(durations))
    if missing:
        raise ValueError(f"durations: no duration for {len(missing)} annotated clips, e.g. {missing[:3]}")
    kept = {clip: list(events) for clip, events in sorted(ground_truth.items()) if events}
    if not kept:
        raise ValueError("ground truth has no events: nothing to evaluate")
    return kept, {clip: float(durations[clip]) for clip in kept}


def require_every_class(ground_truth: Mapping[str, list[Event]], classes: Sequence[str]) -> None:
    """PSDS averages per-class TPRs: raise ValueError unless every class has a ground-truth event."""
    present = {label for events in ground_truth.values() for _, _, label in events}
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"ground truth has no events of classes {missing}: per-class PSDS is undefined")
    unknown = sorted(present - set(classes))
    if unknown:
        raise ValueError(f"ground truth has classes {unknown} that the scores do not have ({list(classes)})")


# ----------------------------------------------------------------------------- PSDS
def psds_deltas(
    tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    durations: Mapping[str, float],
    scenario: PSDSScenario,
    trees: DetectionTrees | None = None,
) -> IntersectionDeltas:
    """Per-clip intersection statistics deltas over every threshold, reusable for bootstrapping.

    ``trees``: the detections of ``tables``, built once for all scenarios (default: built here for this one).
    """
    if trees is None:
        trees = DetectionTrees(tables, ground_truth, durations, [scenario])
    return intersection_deltas(trees, scenario)


def psds_from_deltas(deltas: IntersectionDeltas, draw: np.ndarray | None = None) -> PSDSResult:
    """PSDS of the deltas' clips, or of the resampled clip set ``draw`` (indices into the sorted clips)."""
    roc = psd_roc(deltas, draw)
    return PSDSResult(roc.value, roc.per_class, roc.etpr, roc.efpr)


def psds(
    tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    durations: Mapping[str, float],
    scenario: PSDSScenario,
    reference: bool = False,
) -> PSDSResult:
    """PSDS of post-processed score tables against ground truth (clips: the tables' keys; durations in s).

    ``reference``: compute it with ``sed_scores_eval.intersection_based.psds`` itself (slow; same values).
    """
    if not reference:
        return psds_from_deltas(psds_deltas(tables, ground_truth, durations, scenario))
    value, per_class, (etpr, efpr), _ = intersection_based.psds(
        scores=dict(tables),
        ground_truth=dict(ground_truth),
        audio_durations=dict(durations),
        unit_of_time="hour",
        **asdict(scenario),
    )
    return PSDSResult(float(value), {c: float(v) for c, v in per_class.items()}, etpr, efpr)


def bootstrap_psds(deltas: IntersectionDeltas, n: int, seed: int) -> np.ndarray:
    """(n,) PSDS values on clip sets drawn with replacement (as many clips as evaluated, seeded).

    A clip drawn k times counts k times: its events, its detections and its duration. The draws depend only on
    ``n``, ``seed`` and the sorted clips, so models evaluated on the same split share them (paired samples).
    """
    n_clips = len(deltas.trees.clips)  # sorted clip ids
    rng = np.random.default_rng(seed)
    return np.array([psds_from_deltas(deltas, rng.integers(0, n_clips, size=n_clips)).value for _ in range(n)])


def confidence_interval(values: np.ndarray, level: float = CONFIDENCE) -> list[float]:
    """Percentile bootstrap interval [low, high] at ``level``; empty list when there are no values."""
    if len(values) == 0:
        return []
    tail = (1.0 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


# ----------------------------------------------------------------------------- F1 and psds_eval
def collar_f1(
    tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    threshold: float,
    onset_collar: float,
    offset_collar_rate: float,
) -> dict[str, Any]:
    """Collar-based event F1 at one threshold (sed_eval / DCASE definition).

    Onset within ``onset_collar`` s; offset within max(``onset_collar`` s, ``offset_collar_rate`` x event length).
    """
    f, _, _, _ = collar_based.fscore(
        scores=dict(tables),
        ground_truth=dict(ground_truth),
        threshold=threshold,
        onset_collar=onset_collar,
        offset_collar=onset_collar,
        offset_collar_rate=offset_collar_rate,
    )
    classes = [c for c in f if c not in ("macro_average", "micro_average")]
    return {
        "macro": float(f["macro_average"]),
        "micro": float(f["micro_average"]),
        "per_class": {c: float(f[c]) for c in classes},
    }


def operating_thresholds(n: int) -> np.ndarray:
    """(n,) thresholds (2k + 1) / (2n), k = 0..n-1, as the published test (n = 50: 0.01, 0.03, ..., 0.99)."""
    return (2 * np.arange(n) + 1) / (2 * n)


def detection_tables(tables: Mapping[str, pd.DataFrame], thresholds: Sequence[float]) -> list[pd.DataFrame]:
    """One DESED detection table (filename = clip id) per threshold."""
    per_clip = {clip: events_at_thresholds(table, np.asarray(thresholds)) for clip, table in tables.items()}
    return [events_dataframe({clip: events[k] for clip, events in per_clip.items()}) for k in range(len(thresholds))]


def psds_eval_value(
    detections: Sequence[pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    durations: Mapping[str, float],
    scenario: PSDSScenario,
) -> float:
    """PSDS by psds_eval from a finite set of operating points (detection tables), staircase area."""
    gt = events_dataframe(ground_truth)
    meta = pd.DataFrame({"filename": list(durations), "duration": list(durations.values())})
    cttc = PSDS_EVAL_DEFAULT_CTTC if scenario.cttc_threshold is None else scenario.cttc_threshold
    evaluator = PSDSEval(
        dtc_threshold=scenario.dtc_threshold,
        gtc_threshold=scenario.gtc_threshold,
        cttc_threshold=cttc,
        ground_truth=gt,
        metadata=meta,
    )
    with warnings.catch_warnings():
        # psds_eval warns for every duplicate operating point, about its deprecated pandas calls and NaN rates
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        for k, det in enumerate(detections):
            evaluator.add_operating_point(det, info={"name": f"op{k:02d}"})
        result = evaluator.psds(alpha_ct=scenario.alpha_ct, alpha_st=scenario.alpha_st, max_efpr=scenario.max_efpr)
    return float(result.value)


# ----------------------------------------------------------------------------- one model on one split
@contextlib.contextmanager
def stopwatch(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the seconds the block takes as ``timings[key]`` (rounded to ms)."""
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 3)


def evaluate_tables(
    raw_tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    durations: Mapping[str, float],
    settings: Mapping[str, Any],
    cross_check: bool = True,
) -> tuple[dict[str, Any], dict[str, PSDSResult], dict[str, np.ndarray]]:
    """Every metric of one model's raw (sigmoid, unfiltered) score tables on one split.

    ``settings`` is the config's ``evaluation`` section; ``cross_check``: compute the psds_eval value too (else
    None). Returns the JSON entry, the PSD-ROCs and the (n,) bootstrap PSDS samples by scenario.
    """
    timings: dict[str, float] = {}
    gt, dur = clips_with_events(ground_truth, durations)
    missing = sorted(set(gt) - set(raw_tables))
    if missing:
        raise ValueError(f"no score table for {len(missing)} annotated clips, e.g. {missing[:3]}")
    with stopwatch(timings, "postprocess"):
        tables = postprocess_tables({clip: raw_tables[clip] for clip in gt}, settings["median_window"])
    require_every_class(gt, table_classes(next(iter(tables.values()))))
    entry: dict[str, Any] = {
        "clips": len(gt),
        "clips_without_events": len(durations) - len(gt),
        "events": sum(len(events) for events in gt.values()),
        "hours": sum(dur.values()) / 3600.0,
    }
    if cross_check:
        with stopwatch(timings, "psds_eval_tables"):
            detections = detection_tables(tables, operating_thresholds(settings["psds_eval_thresholds"]))
    boot = settings["bootstrap"]
    rocs, bootstrap = {}, {}
    with stopwatch(timings, "psds_detections"):
        trees = DetectionTrees(tables, gt, dur, list(SCENARIOS.values()))
    for name, scenario in SCENARIOS.items():
        with stopwatch(timings, name):
            deltas = psds_deltas(tables, gt, dur, scenario, trees)
            result = psds_from_deltas(deltas)
        with stopwatch(timings, f"{name}_bootstrap"):
            samples = bootstrap_psds(deltas, boot["n"], boot["seed"])
        reference = None
        if cross_check:
            with stopwatch(timings, f"{name}_psds_eval"):
                reference = psds_eval_value(detections, gt, dur, scenario)
        entry[name] = {
            "value": result.value,
            "ci95": confidence_interval(samples),
            "bootstrap_std": float(np.std(samples, ddof=1)) if len(samples) > 1 else None,
            "per_class": result.per_class,
            "psds_eval": reference,
        }
        rocs[name] = result
        bootstrap[name] = samples
    f1 = settings["f1"]
    with stopwatch(timings, "f1"):
        entry["f1"] = {
            "threshold": f1["threshold"],
            **collar_f1(tables, gt, f1["threshold"], f1["onset_collar"], f1["offset_collar_rate"]),
        }
    entry["seconds"] = timings
    return entry, rocs, bootstrap


def postprocessed_psds(
    tables: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list[Event]],
    durations: Mapping[str, float],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """PSDS1/PSDS2 (value, ci95, per class) of score tables post-processed elsewhere (cSEBBs: no median filter),
    on the clips with events; the bootstrap draws are those of :func:`evaluate_tables` (same seed and clips)."""
    gt, dur = clips_with_events(ground_truth, durations)
    tables = {clip: tables[clip] for clip in gt}
    trees = DetectionTrees(tables, gt, dur, list(SCENARIOS.values()))
    boot = settings["bootstrap"]
    entry = {}
    for name, scenario in SCENARIOS.items():
        deltas = psds_deltas(tables, gt, dur, scenario, trees)
        result = psds_from_deltas(deltas)
        samples = bootstrap_psds(deltas, boot["n"], boot["seed"])
        entry[name] = {"value": result.value, "ci95": confidence_interval(samples), "per_class": result.per_class}
    return entry


# ----------------------------------------------------------------------------- provenance
def code_version(repo: str | Path) -> dict[str, Any]:
    """``{"commit": sha | "unknown", "dirty": bool | None}`` of the git checkout at ``repo`` (tracked files)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed distribution versions ('not installed' when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_manifest(splits: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """``{"dataset/split": {"durations": {path, sha256}, "metadata": {path, sha256}}}`` of the evaluated splits."""
    return {
        ref: {kind: {"path": str(paths[kind]), "sha256": sha256_file(paths[kind])} for kind in ("durations", "metadata")}
        for ref, paths in splits.items()
    }


def dropped_clips(splits: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """``{"dataset/split": [clip file names]}``: clips of each split's ``listed`` metadata that its validated
    metadata lacks (empty lists when nothing was dropped)."""
    dropped = {}
    for ref, paths in splits.items():
        if paths.get("listed"):
            kept = set(listed_clips(Path(paths["metadata"]), "strong"))
            dropped[ref] = [clip for clip in listed_clips(Path(paths["listed"]), "strong") if clip not in kept]
    return dropped


# ----------------------------------------------------------------------------- command
class SplitTruth(NamedTuple):
    """What one evaluation split is scored against."""

    metric: str  # "psds" (strong labels) | "mpauc" (soft labels: MAESTRO chunks)
    classes: list[str]  # the dataset's scored classes: the score tables' columns used
    windows: list[int]  # median filter (frames) of each of those classes
    ground_truth: dict  # psds: {clip: [Event]}; mpauc: {chunk: [SoftEvent]}
    durations: dict[str, float]  # s per clip (chunk)
    clips: list[str]  # the score tables read: clips with events (psds), every chunk (mpauc)


def split_truth(ref: str, paths: Mapping[str, str], config: dict) -> SplitTruth:
    """The ground truth of an evaluation split and how it is scored (by its dataset's label kind and classes)."""
    dataset, split = split_ref(ref)
    classes = scored_classes(config, dataset)
    every_class = output_classes(config)
    windows = [config["evaluation"]["median_window"][every_class.index(c)] for c in classes]
    durations = read_durations(paths["durations"])
    if config["datasets"][dataset]["splits"][split]["labels"] == "soft":
        return SplitTruth("mpauc", classes, windows, read_soft_events(paths["metadata"]), durations, sorted(durations))
    ground_truth = read_ground_truth(paths["metadata"])
    clips = sorted(c for c, events in ground_truth.items() if events)
    return SplitTruth("psds", classes, windows, ground_truth, durations, clips)


def cross_checked(scores: Sequence[Mapping[str, Any]], which: str) -> list[bool]:
    """Which score entries get the psds_eval cross-check (``evaluation.psds_eval_models``): all, the ensembles,
    the last evaluated iteration's ensemble, or none."""
    last = max((int(score["iteration"]) for score in scores), default=0)
    return [
        which == "all"
        or (which == "ensembles" and score["model"] == "ensemble")
        or (which == "last_ensemble" and score["model"] == "ensemble" and int(score["iteration"]) == last)
        for score in scores
    ]


def _evaluate_job(job: tuple[dict, SplitTruth, dict, bool]) -> tuple[dict, dict, dict]:
    score, truth, settings, cross_check = job
    timings: dict[str, float] = {}
    with stopwatch(timings, "read_scores"):
        tables = {clip: select_classes(t, truth.classes) for clip, t in read_score_dir(score["dir"], truth.clips).items()}
    if truth.metric == "psds":
        split_settings = {**settings, "median_window": truth.windows}
        entry, rocs, bootstrap = evaluate_tables(tables, truth.ground_truth, truth.durations, split_settings, cross_check)
        if "csebbs" in score:  # cSEBBs-post-processed tables of the same model and split, beside the median filter
            csebbs = {clip: select_classes(t, truth.classes) for clip, t in read_score_dir(score["csebbs"]["dir"], sorted(tables)).items()}
            entry["csebbs"] = {"params": score["csebbs"]["params"],
                               **postprocessed_psds(csebbs, truth.ground_truth, truth.durations, split_settings)}
        entry = {"metric": truth.metric, **entry, "seconds": {**timings, **entry["seconds"]}}
        return entry, {name: (r.etpr, r.efpr, r.value) for name, r in rocs.items()}, bootstrap
    with stopwatch(timings, "postprocess"):
        tables = postprocess_tables(tables, truth.windows)
    with stopwatch(timings, "mpauc"):
        entry, bootstrap = maestro_metrics.evaluate_chunks(
            tables, truth.ground_truth, truth.durations, settings["f1"]["threshold"], settings["bootstrap"],
            confidence_interval,
        )
    return {"metric": truth.metric, **entry, "seconds": timings}, {}, bootstrap


def evaluate_all(
    inputs: Mapping[str, Any], config: dict, jobs: int = 1
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """The eval_psds.json document and PSD-ROCs (keyed 'iter{i}/{model}/{dataset}/{split}/{scenario}').

    ``inputs``: ``{"splits": {"ds/split": {"metadata": tsv, "durations": tsv, "listed": tsv}},
    "scores": [{"iteration": i, "model": name, "split": "ds/split", "dir": score folder}, ...]}``; ``listed``
    (optional): the split's original metadata, whose clips missing from the validated ``metadata`` were dropped
    for want of audio (``evaluation.missing_audio: drop``) and are listed under ``missing_audio``.
    """
    start_all = time.perf_counter()
    settings = config["evaluation"]
    truth = {ref: split_truth(ref, paths, config) for ref, paths in inputs["splits"].items()}
    checks = cross_checked(inputs["scores"], settings["psds_eval_models"])
    work = [(score, truth[score["split"]], settings, check) for score, check in zip(inputs["scores"], checks)]
    if jobs > 1 and len(work) > 1:
        # the cross-checked entries take several times longer: first, so that the workers finish together
        order = sorted(range(len(work)), key=lambda k: not checks[k])
        with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
            done = dict(zip(order, pool.map(_evaluate_job, [work[k] for k in order])))
        outputs = [done[k] for k in range(len(work))]
    else:
        outputs = [_evaluate_job(job) for job in work]

    results: dict[str, Any] = {}
    rocs, bootstrap = {}, {}
    for score, (entry, entry_rocs, entry_bootstrap) in zip(inputs["scores"], outputs):
        iteration = f"iter{score['iteration']}"
        results.setdefault(iteration, {}).setdefault(score["model"], {})[score["split"]] = entry
        for name, roc in entry_rocs.items():
            rocs[f"{iteration}/{score['model']}/{score['split']}/{name}"] = roc
        for name, samples in entry_bootstrap.items():
            bootstrap[iteration, score["model"], score["split"], name] = samples
    members = [m["name"] for m in config["training"]["members"]]
    document = {
        "format": FORMAT,
        "config_sha256": sha256_json(config),
        "data_manifest_sha256": sha256_json(data_manifest(inputs["splits"])),
        "data_manifest": data_manifest(inputs["splits"]),
        "code_version": code_version(Path(__file__).resolve().parents[2]),
        "packages": package_versions(),
        "methodology": {
            "scenarios": {name: asdict(s) for name, s in SCENARIOS.items()},
            "unit_of_time": "hour",
            "median_window_frames": list(settings["median_window"]),
            "splits": {ref: {"metric": t.metric, "classes": t.classes, "median_window_frames": t.windows}
                       for ref, t in truth.items()},
            "clips": "clips with at least one ground-truth event (as the published test)",
            "bootstrap": {**settings["bootstrap"], "method": "percentile, clips drawn with replacement",
                          "confidence": CONFIDENCE,
                          "paired": "every model on a split uses the same draws (claims' difference_ci95)"},
            "f1": {**settings["f1"], "offset_collar_seconds_min": settings["f1"]["onset_collar"]},
            "psds_eval_thresholds": {"n": settings["psds_eval_thresholds"], "values": "(2k + 1) / (2n), k = 0 .. n - 1"},
            "mpauc": {"segment_seconds": maestro_metrics.SEGMENT_SECONDS, "max_fpr": maestro_metrics.MAX_FPR,
                      "min_confidence": maestro_metrics.MIN_CONFIDENCE, "f1_threshold": settings["f1"]["threshold"],
                      "recordings": "chunk score tables overlap-averaged onto their recordings; bootstrap draws "
                                    "recordings"},
        },
        "missing_audio": {"policy": settings["missing_audio"], "dropped": dropped_clips(inputs["splits"])},
        "results": results,
        "claims": procedure_claims(results, bootstrap, members, confidence_interval),
        "timings": {"total_seconds": round(time.perf_counter() - start_all, 3), "jobs": jobs},
    }
    return document, rocs


def write_rocs(path: str | Path, rocs: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> None:
    """HDF5 of PSD-ROCs: group per key with datasets ``etpr``, ``efpr`` (per hour) and attribute ``psds``."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for key, (etpr, efpr, value) in rocs.items():
            group = handle.create_group(key)
            group.create_dataset("etpr", data=np.asarray(etpr, dtype=np.float64))
            group.create_dataset("efpr", data=np.asarray(efpr, dtype=np.float64))
            group.attrs["psds"] = value


def read_rocs(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """PSD-ROCs written by :func:`write_rocs`, keyed 'iter{i}/{model}/{dataset}/{split}/{scenario}'."""
    import h5py

    if not Path(path).is_file():
        raise FileNotFoundError(f"PSD-ROC file {path} does not exist")
    rocs = {}
    with h5py.File(path, "r") as handle:

        def visit(name, node):
            if isinstance(node, h5py.Group) and "etpr" in node:
                rocs[name] = (node["etpr"][()], node["efpr"][()], float(node.attrs["psds"]))

        handle.visititems(visit)
    return rocs


def configure_evaluate(parser: argparse.ArgumentParser):
    parser.add_argument("--config-json", required=True, help="the validated workflow configuration (JSON)")
    parser.add_argument("--inputs-json", required=True, help="evaluated splits and score folders (JSON)")
    parser.add_argument("--out", required=True, help="eval_psds.json")
    parser.add_argument("--roc-out", required=True, help="HDF5 of every PSD-ROC (for the plots)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (one model/split per process)")

    def run(args: argparse.Namespace) -> int:
        config = validate_config(json.loads(args.config_json), source="--config-json")
        document, rocs = evaluate_all(json.loads(args.inputs_json), config, jobs=args.jobs)
        write_rocs(args.roc_out, rocs)
        write_json(args.out, document)
        return 0

    return run
