"""Ensemble soft pseudo-labels: the average of the members' strong logits of one training split.

Two averaging modes (``pseudo_labels.average``):

- ``logits`` (default, as the DCASE 2024 winner's ``ensemble_predictions``): the arithmetic mean of the
  members' pre-sigmoid logits; the soft target of a frame is ``sigmoid(mean_k z_k)``.
- ``probabilities``: the mean of the members' sigmoid probabilities ``p = mean_k sigmoid(z_k)``, stored as
  logits ``log(p / (1 - p))`` with ``p`` clipped to ``[PROB_EPS, 1 - PROB_EPS]`` (|logit| <= 16.1), so that
  ``sigmoid`` of the stored value gives back ``p`` to within 1e-7.

Averaging is exactly independent of the members' order: the members' values of every element are sorted
before they are summed (in float64), and the result is rounded to float32 once.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit, logit

from sedlib.io import sha256_file
from sedlib.pseudo.store import LogitsFile, read_logits, write_logits

log = logging.getLogger(__name__)

MODES = ("logits", "probabilities")
PROB_EPS = 1e-7


def average_logits(member_logits: Sequence[np.ndarray], mode: str = "logits") -> np.ndarray:
    """Average K members' logits, each (N, C, T), into (N, C, T) float32 logits (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"average mode: expected one of {list(MODES)}, got {mode!r}")
    if not member_logits:
        raise ValueError("average_logits: expected at least one member's logits, got none")
    shapes = {np.shape(x) for x in member_logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"average_logits: expected equal (N, C, T) shapes, got {[np.shape(x) for x in member_logits]}")
    stacked = np.sort(np.stack([np.asarray(x, dtype=np.float64) for x in member_logits]), axis=0)
    if not np.isfinite(stacked).all():
        raise ValueError("average_logits: members' logits contain NaN or infinite values")
    if mode == "logits":
        return stacked.mean(axis=0).astype(np.float32)
    # sigmoid is monotonic, so the sorted logits give sorted probabilities: the sum stays order-independent.
    probs = np.clip(expit(stacked).mean(axis=0), PROB_EPS, 1.0 - PROB_EPS)
    return logit(probs).astype(np.float32)


def check_compatible(files: Sequence[tuple[Path, LogitsFile]]) -> None:
    """Raise ValueError unless every member file covers the same clips, classes, frame grid and lengths."""
    (ref_path, ref), *others = files
    for path, member in others:
        for name, same in (
            ("filenames", member.filenames == ref.filenames),
            ("classes", member.classes == ref.classes),
            ("frame_hop", member.frame_hop == ref.frame_hop),
            ("n_frames", np.array_equal(member.n_frames, ref.n_frames)),
            ("logits", member.logits.shape == ref.logits.shape),
        ):
            if not same:
                raise ValueError(f"{path}: field '{name}': differs from {ref_path} (members must cover the same split)")
    for path, member in files:
        if member.average != "member":
            raise ValueError(f"{path}: field 'average': expected 'member' (one network's logits), got {member.average!r}")


def average_files(member_paths: Sequence[str | Path], output: str | Path, mode: str, iteration: int) -> None:
    """Average member logits files of one split into the ensemble pseudo-label file ``output``.

    The provenance lists every member file with its sha256 and the member's own provenance (checkpoint
    path and sha256, network, feature files).
    """
    paths = [Path(p) for p in member_paths]
    if len(set(paths)) != len(paths):
        raise ValueError(f"average-pseudo-labels: member files listed twice: {[str(p) for p in paths]}")
    files = [(path, read_logits(path)) for path in paths]
    check_compatible(files)
    ref = files[0][1]
    logits = average_logits([member.logits for _, member in files], mode)
    members = sorted(
        ({"file": str(path), "sha256": sha256_file(path), **member.provenance} for path, member in files),
        key=lambda entry: entry["file"],
    )
    provenance = {"iteration": iteration, "average": mode, "members": members}
    write_logits(output, ref.filenames, logits, ref.n_frames, ref.classes, ref.frame_hop, provenance, mode)
    log.info("averaged %d members (%s) of %d clips into %s", len(files), mode, len(ref.filenames), output)


def configure_average_pseudo_labels(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("--members", nargs="+", required=True, help="member logits files (.h5) of one split")
    parser.add_argument("--output", required=True, help="ensemble pseudo-label file (.h5)")
    parser.add_argument("--iteration", type=int, required=True, help="training iteration the members belong to")
    parser.add_argument("--config-json", required=True, help="the pseudo_labels config section as JSON")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        average_files(args.members, args.output, cfg["average"], args.iteration)
        return 0

    return run
