"""The strong-logits file (HDF5): one member's predictions or the ensemble's soft pseudo-labels of a split.

Layout of ``results/iter{i}/pseudo_labels/{member|ensemble}/{dataset}/{split}.h5``:

- dataset ``logits``: float32 (N, C, T_max), pre-sigmoid strong logits on the output frame grid
  (``frame_hop`` seconds per frame, 156 frames per 10 s clip). Frames ``t >= n_frames[i]`` of clip ``i`` are
  padding, stored as 0 and never meaningful.
- dataset ``n_frames``: int32 (N,), the true number of output frames of each clip (1 <= n_frames <= T_max).
- dataset ``filenames``: (N,) utf-8 strings, unique, in the row order of the split's feature cache.
- attrs ``classes`` (JSON list of C names), ``frame_hop`` (seconds), ``average`` (``member`` for one network's
  predictions, ``logits`` or ``probabilities`` for an ensemble, see :mod:`sedlib.pseudo.ensemble`),
  ``provenance`` (JSON object: iteration, members with checkpoint paths and sha256, source files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from sedlib.io import atomic_path

FORMAT = "sedlib.logits/1"
AVERAGES = ("member", "logits", "probabilities")


@dataclass(frozen=True)
class LogitsFile:
    """Contents of a logits file; see the module docstring for shapes and units."""

    filenames: list[str]
    logits: np.ndarray  # float32 (N, C, T_max)
    n_frames: np.ndarray  # int32 (N,)
    classes: list[str]
    frame_hop: float  # seconds per output frame
    average: str  # member | logits | probabilities
    provenance: dict[str, Any]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {name: row for row, name in enumerate(self.filenames)})

    def clip(self, filename: str) -> np.ndarray:
        """(C, n_frames) logits of one clip, padding removed."""
        row = self.index[filename]
        return self.logits[row, :, : self.n_frames[row]]


def _check(
    source: str,
    filenames: Sequence[str],
    logits: np.ndarray,
    n_frames: np.ndarray,
    classes: Sequence[str],
    frame_hop: float,
    average: str,
    provenance: Any,
) -> None:
    """Raise ValueError naming ``source`` and the field when the contents break the format."""

    def fail(name: str, message: str) -> None:
        raise ValueError(f"{source}: field '{name}': {message}")

    if logits.ndim != 3 or logits.dtype != np.float32:
        fail("logits", f"expected float32 (N, C, T_max), got {logits.dtype} with shape {logits.shape}")
    n, c, t_max = logits.shape
    if len(filenames) != n:
        fail("filenames", f"expected {n} names (one per row of logits), got {len(filenames)}")
    if len(set(filenames)) != n:
        fail("filenames", "names must be unique")
    if n_frames.shape != (n,) or not np.issubdtype(n_frames.dtype, np.integer):
        fail("n_frames", f"expected integer ({n},), got {n_frames.dtype} with shape {n_frames.shape}")
    if n and (n_frames.min() < 1 or n_frames.max() > t_max):
        fail("n_frames", f"expected values in [1, {t_max}], got [{n_frames.min()}, {n_frames.max()}]")
    if len(classes) != c or len(set(classes)) != c or not all(isinstance(x, str) for x in classes):
        fail("classes", f"expected {c} unique class names (axis 1 of logits), got {list(classes)}")
    if not (isinstance(frame_hop, float) and frame_hop > 0):
        fail("frame_hop", f"expected a positive number of seconds, got {frame_hop!r}")
    if average not in AVERAGES:
        fail("average", f"expected one of {list(AVERAGES)}, got {average!r}")
    if not isinstance(provenance, dict):
        fail("provenance", f"expected a JSON object, got {type(provenance).__name__}")
    if not np.isfinite(logits).all():
        fail("logits", "contains NaN or infinite values")


def write_logits(
    path: str | os.PathLike,
    filenames: Sequence[str],
    logits: np.ndarray,
    n_frames: np.ndarray,
    classes: Sequence[str],
    frame_hop: float,
    provenance: dict[str, Any],
    average: str,
) -> None:
    """Write a logits file atomically; frames past each clip's ``n_frames`` are stored as 0.

    logits: float32 (N, C, T_max); n_frames: (N,) true output frames; frame_hop in seconds.
    """
    logits = np.asarray(logits)
    n_frames = np.asarray(n_frames, dtype=np.int32)
    filenames = [str(name) for name in filenames]
    frame_hop = float(frame_hop)
    _check(str(path), filenames, logits, n_frames, list(classes), frame_hop, average, provenance)
    valid = (np.arange(logits.shape[2]) < n_frames[:, None])[:, None, :]  # (N, 1, T_max)
    logits = np.where(valid, logits, np.float32(0.0))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["format"] = FORMAT
        h5.create_dataset("logits", data=logits)
        h5.create_dataset("n_frames", data=n_frames)
        h5.create_dataset("filenames", data=filenames, dtype=h5py.string_dtype("utf-8"))
        h5.attrs["classes"] = json.dumps(list(classes))
        h5.attrs["frame_hop"] = frame_hop
        h5.attrs["average"] = average
        h5.attrs["provenance"] = json.dumps(provenance, sort_keys=True)


def read_logits(path: str | os.PathLike) -> LogitsFile:
    """Read and validate a logits file (loaded into memory); ValueError names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: logits file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 logits file ({exc})") from exc
    with h5:
        if h5.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: field 'format': expected '{FORMAT}', got {h5.attrs.get('format')!r}")
        for name in ("logits", "n_frames", "filenames"):
            if not isinstance(h5.get(name), h5py.Dataset):
                raise ValueError(f"{path}: field '{name}': dataset missing")
        for name in ("classes", "frame_hop", "average", "provenance"):
            if name not in h5.attrs:
                raise ValueError(f"{path}: field '{name}': attribute missing")
        if h5py.check_string_dtype(h5["filenames"].dtype) is None or h5["filenames"].ndim != 1:
            raise ValueError(f"{path}: field 'filenames': expected a 1-D dataset of strings, got {h5['filenames'].dtype}")
        logits = h5["logits"][()]
        n_frames = h5["n_frames"][()]
        filenames = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in h5["filenames"][()]]
        classes = _json_attr(path, h5, "classes")
        provenance = _json_attr(path, h5, "provenance")
        frame_hop = h5.attrs["frame_hop"]
        frame_hop = float(frame_hop) if isinstance(frame_hop, (float, np.floating)) else frame_hop
        average = str(h5.attrs["average"])
    if not isinstance(classes, list):
        raise ValueError(f"{path}: field 'classes': expected a JSON list, got {type(classes).__name__}")
    _check(str(path), filenames, logits, n_frames, classes, frame_hop, average, provenance)
    return LogitsFile(filenames, logits, n_frames.astype(np.int32), classes, frame_hop, average, provenance)


def _json_attr(path: Path, h5: h5py.File, name: str) -> Any:
    try:
        return json.loads(h5.attrs[name])
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: field '{name}': expected JSON text ({exc})") from exc
