"""DESED metadata: parsers, writers, validation of a split against its audio, and the seeded weak split.

Formats (tab-separated, one header line, times and durations in seconds):

- strong: ``filename onset offset event_label``; a clip without events is one row whose onset, offset and
  label are all empty (DESED convention; read as NaN, as ``sed_scores_eval`` expects).
- weak: ``filename event_labels`` with comma-separated labels (empty: no target class in the clip).
- soft: ``filename onset offset event_label confidence`` (MAESTRO Real's soft strong labels, chunked as the
  DCASE 2024 baseline does; sedlib.data.chunks): a strong row plus the share of annotators, in [0, 1], who
  marked the event; an event-less clip row leaves all four fields empty.
- durations: ``filename duration``.

Validation policy (documented in docs/data.md): format errors, unknown labels, bad times and contradictions
are errors; harmless redundancy is dropped with a warning; events may end up to ``END_WARN_S`` past the
clip end with a warning (real DESED annotations do). A metadata filename names its audio exactly, or by
stem when only the extension changed by resampling (``x.flac`` -> ``x.wav``). Clip-set mismatches between
labels and audio are errors for scored splits (roles ``validation`` and ``test``; with
``missing_audio="drop"`` labelled clips without audio are dropped from them with a warning); a training
split's validated copy keeps only clips that have both, with a warning, unless that loses every clip or more
than ``max_unmatched_fraction`` of them (an error).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sedlib.data.audio_names import is_audio_name, resampled_name
from sedlib.config import SCORED_ROLES
from sedlib.io import atomic_path
from sedlib.options import FRACTION, SEED

log = logging.getLogger(__name__)

STRONG_COLUMNS = ("filename", "onset", "offset", "event_label")
SOFT_COLUMNS = (*STRONG_COLUMNS, "confidence")
WEAK_COLUMNS = ("filename", "event_labels")
DURATION_COLUMNS = ("filename", "duration")
END_SILENT_S = 0.01  # s: overrun past the clip end accepted silently (times are given to the millisecond)
END_WARN_S = 0.2  # s: overrun accepted with a warning; beyond it the event is an error
PROVIDED_DURATION_TOLERANCE_S = 0.1  # s: provided vs measured duration difference reported as a warning
MAX_LISTED = 5  # examples quoted in one warning or error message
MAX_UNMATCHED_FRACTION = 0.05  # default share of a training split's clips that may lack labels or audio


# ----------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class StrongRow:
    line: int
    filename: str
    onset: float  # s, NaN for an event-less clip row
    offset: float  # s, NaN for an event-less clip row
    label: str | None  # None for an event-less clip row
    confidence: float = 1.0  # soft labels: share of annotators who marked the event, in [0, 1]; NaN when event-less


@dataclass(frozen=True)
class WeakRow:
    line: int
    filename: str
    labels: tuple[str, ...]


def _read_rows(path: str | Path, columns: tuple[str, ...], header: bool = True) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank data line; checks the header (when ``header``) and the column count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata file not found")
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None
    expected = "\t".join(columns)
    if header and (not lines or lines[0].strip() != expected):
        got = repr(lines[0]) if lines else "an empty file"
        raise ValueError(f"{path}:1: expected the header line {expected!r}, got {got}")
    rows = []
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(
                f"{path}:{number}: expected {len(columns)} tab-separated columns ({', '.join(columns)}), "
                f"got {len(fields)}: {line!r}"
            )
        if not fields[0].strip():
            raise ValueError(f"{path}:{number}: empty filename")
        rows.append((number, [f.strip() for f in fields]))
    return rows


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{path}:{line}: column '{column}' must be a finite number of seconds, got {text!r}")
    return value


def parse_strong(path: str | Path) -> list[StrongRow]:
    """Rows of a strong-label TSV with their line numbers; format errors raise ValueError naming file:line."""
    path = Path(path)
    rows = []
    for line, (filename, onset, offset, label) in _read_rows(path, STRONG_COLUMNS):
        if not (onset or offset or label):
            rows.append(StrongRow(line, filename, math.nan, math.nan, None))
            continue
        if not (onset and offset and label):
            raise ValueError(
                f"{path}:{line}: onset, offset and event_label must all be set (an event) or all be empty "
                f"(a clip without events), got onset={onset!r} offset={offset!r} event_label={label!r}"
            )
        rows.append(
            StrongRow(line, filename, _number(path, line, "onset", onset), _number(path, line, "offset", offset), label)
        )
    return rows


def _confidence(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also rejects NaN and infinities
        raise ValueError(
            f"{path}:{line}: column 'confidence' must be a number in [0, 1] (share of annotators), got {text!r}"
        )
    return value


def parse_soft(path: str | Path, header: bool = True) -> list[StrongRow]:
    """Rows of a soft-label TSV (strong rows with a confidence) with their line numbers; errors name file:line.

    header=False reads MAESTRO's own annotation files (``onset offset event_label confidence``, no header, no
    filename column): every row's filename is then the file's stem.
    """
    path = Path(path)
    columns = SOFT_COLUMNS if header else SOFT_COLUMNS[1:]
    rows = []
    for line, fields in _read_rows(path, columns, header):
        filename, onset, offset, label, confidence = fields if header else [path.stem, *fields]
        if not (onset or offset or label or confidence):
            rows.append(StrongRow(line, filename, math.nan, math.nan, None, math.nan))
            continue
        if not (onset and offset and label and confidence):
            raise ValueError(
                f"{path}:{line}: onset, offset, event_label and confidence must all be set (an event) or all be "
                f"empty (a clip without events), got onset={onset!r} offset={offset!r} event_label={label!r} "
                f"confidence={confidence!r}"
            )
        rows.append(StrongRow(line, filename, _number(path, line, "onset", onset),
                              _number(path, line, "offset", offset), label, _confidence(path, line, confidence)))
    return rows


def parse_weak(path: str | Path) -> list[WeakRow]:
    """Rows of a weak-label TSV with their line numbers; format errors raise ValueError naming file:line."""
    path = Path(path)
    rows = []
    for line, (filename, labels) in _read_rows(path, WEAK_COLUMNS):
        names = tuple(name.strip() for name in labels.split(",")) if labels else ()
        if any(not name for name in names):
            raise ValueError(f"{path}:{line}: empty label in the comma-separated list {labels!r}")
        rows.append(WeakRow(line, filename, names))
    return rows


def read_strong(path: str | Path) -> pd.DataFrame:
    """DataFrame[filename, onset, offset, event_label] (s); event-less clips have NaN onset/offset/label."""
    return _strong_table(parse_strong(path))


def read_soft(path: str | Path) -> pd.DataFrame:
    """DataFrame[filename, onset, offset, event_label, confidence]; event-less clips have NaN in the last four."""
    return _soft_table(parse_soft(path))


def read_weak(path: str | Path) -> pd.DataFrame:
    """DataFrame[filename, event_labels] where event_labels is a list of class names (possibly empty)."""
    return _weak_table(parse_weak(path))


def _strong_table(rows: list[StrongRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "filename": [r.filename for r in rows],
            "onset": np.array([r.onset for r in rows], dtype=np.float64),
            "offset": np.array([r.offset for r in rows], dtype=np.float64),
            "event_label": [np.nan if r.label is None else r.label for r in rows],
        },
        columns=list(STRONG_COLUMNS),
    )


def _soft_table(rows: list[StrongRow]) -> pd.DataFrame:
    table = _strong_table(rows)
    table["confidence"] = np.array([r.confidence for r in rows], dtype=np.float64)
    return table


def _weak_table(rows: list[WeakRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {"filename": [r.filename for r in rows], "event_labels": [list(r.labels) for r in rows]},
        columns=list(WEAK_COLUMNS),
    )


def read_durations(path: str | Path) -> dict[str, float]:
    """filename -> duration (s) of a durations TSV; durations must be positive, filenames unique."""
    path = Path(path)
    durations: dict[str, float] = {}
    for line, (filename, text) in _read_rows(path, DURATION_COLUMNS):
        value = _number(path, line, "duration", text)
        if value <= 0:
            raise ValueError(f"{path}:{line}: duration of {filename} must be > 0 s, got {text!r}")
        if filename in durations:
            raise ValueError(f"{path}:{line}: {filename} is listed twice")
        durations[filename] = value
    return durations


def events_by_file(strong: pd.DataFrame) -> dict[str, list[tuple[float, float, str]]]:
    """filename -> [(onset, offset, label), ...] of a read_strong table; event-less clips map to []."""
    return _events_by_file(strong, STRONG_COLUMNS)


def soft_events_by_file(soft: pd.DataFrame) -> dict[str, list[tuple[float, float, str, float]]]:
    """filename -> [(onset, offset, label, confidence), ...] of a read_soft table; event-less clips map to []."""
    return _events_by_file(soft, SOFT_COLUMNS)


def _events_by_file(table: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, list[tuple]]:
    events: dict[str, list[tuple]] = {}
    for filename, onset, offset, label, *extra in table[list(columns)].itertuples(index=False):
        clip = events.setdefault(filename, [])
        if isinstance(label, str):
            clip.append((float(onset), float(offset), label, *map(float, extra)))
    return events


# ----------------------------------------------------------------------------- writing
def _format_time(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def write_strong(path: str | Path, table: pd.DataFrame) -> None:
    """Write a strong table (read_strong layout) atomically; NaN rows become event-less clip rows."""
    lines = ["\t".join(STRONG_COLUMNS)]
    for filename, onset, offset, label in table[list(STRONG_COLUMNS)].itertuples(index=False):
        text = label if isinstance(label, str) else ""
        lines.append(f"{filename}\t{_format_time(onset)}\t{_format_time(offset)}\t{text}")
    _write_lines(path, lines)


def write_soft(path: str | Path, table: pd.DataFrame) -> None:
    """Write a soft table (read_soft layout) atomically; NaN rows become event-less clip rows."""
    lines = ["\t".join(SOFT_COLUMNS)]
    for filename, onset, offset, label, confidence in table[list(SOFT_COLUMNS)].itertuples(index=False):
        text = label if isinstance(label, str) else ""
        lines.append(f"{filename}\t{_format_time(onset)}\t{_format_time(offset)}\t{text}\t{_format_time(confidence)}")
    _write_lines(path, lines)


def write_weak(path: str | Path, table: pd.DataFrame) -> None:
    """Write a weak table (read_weak layout) atomically."""
    lines = ["\t".join(WEAK_COLUMNS)]
    lines += [f"{name}\t{','.join(labels)}" for name, labels in table[list(WEAK_COLUMNS)].itertuples(index=False)]
    _write_lines(path, lines)


def write_durations(path: str | Path, durations: dict[str, float]) -> None:
    """Write ``filename duration`` (s) atomically, in the mapping's order."""
    _write_lines(path, ["\t".join(DURATION_COLUMNS)] + [f"{k}\t{repr(float(v))}" for k, v in durations.items()])


def _write_lines(path: str | Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


WRITERS = {"strong": write_strong, "soft": write_soft, "weak": write_weak}  # label kind -> table writer


# ----------------------------------------------------------------------------- validation
@dataclass
class ValidatedMetadata:
    """The validated table (read_strong / read_weak layout) and what validation found."""

    table: pd.DataFrame
    labels: str
    n_clips: int
    n_events: int  # strong, soft: event rows; weak: clip labels
    class_counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def _listed(items) -> str:
    items = list(items)
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(map(str, items[:MAX_LISTED])) + more


def validate_metadata(
    metadata: str | Path,
    labels: str,
    classes: list[str],
    measured_durations: str | Path | None = None,
    provided_durations: str | Path | None = None,
    scored: bool = False,
    max_unmatched_fraction: float = MAX_UNMATCHED_FRACTION,
    missing_audio: str = "error",
) -> ValidatedMetadata:
    """Check a split's metadata against its classes and audio; return the validated table.

    metadata: strong, soft or weak TSV (``labels`` says which). measured_durations: durations.tsv written by
    ``resample`` (the audio actually present, exact lengths). provided_durations: the split's own durations
    file, if any. The clip set and the clip lengths come from the measured file when given, else from the
    provided one; with neither, only the metadata itself is checked. scored: the split is scored
    (validation/test role), so labels and audio must cover exactly the same clips. max_unmatched_fraction: the
    share of a training split's clips (labelled or with audio) that may lack the other before it is an error.
    missing_audio "drop" lets a scored split's labelled clips without audio be dropped (evaluation.missing_audio).
    The validated table names clips by their audio file.
    """
    metadata = Path(metadata)
    if labels not in ("strong", "soft", "weak"):
        raise ValueError(f"{metadata}: label kind '{labels}' cannot be validated (expected strong, soft or weak)")
    warnings: list[str] = []
    measured = read_durations(measured_durations) if measured_durations else None
    provided = read_durations(provided_durations) if provided_durations else None
    if measured is not None and provided is not None:
        warnings += _compare_durations(Path(provided_durations), provided, measured)
    durations = measured if measured is not None else provided
    known = set(classes)

    if labels in ("strong", "soft"):
        parse = parse_strong if labels == "strong" else parse_soft
        rows = _check_strong_rows(metadata, parse(metadata), known, warnings)
    else:
        rows = _check_weak_rows(metadata, parse_weak(metadata), known, warnings)
    if not rows:
        raise ValueError(f"{metadata}: no data rows after the header; a labelled split needs at least one clip")
    if durations is not None:
        clips = list(dict.fromkeys(r.filename for r in rows))
        audio_names = _match_clips(metadata, clips, durations, scored, max_unmatched_fraction, warnings,
                                   drop_missing=missing_audio == "drop")
        rows = [replace(r, filename=audio_names[r.filename]) for r in rows if r.filename in audio_names]
        if labels != "weak":
            _check_event_ends(metadata, rows, durations, warnings)

    n_clips = len({r.filename for r in rows})
    if labels != "weak":
        table = (_strong_table if labels == "strong" else _soft_table)(rows)
        names = [r.label for r in rows if r.label is not None]
    else:
        table = _weak_table(rows)
        names = [name for r in rows for name in r.labels]
    counts = {c: names.count(c) for c in classes}
    return ValidatedMetadata(table, labels, n_clips, len(names), counts, warnings)


def _check_strong_rows(path: Path, rows: list[StrongRow], known: set[str], warnings: list[str]) -> list[StrongRow]:
    seen: dict[tuple, int] = {}
    duplicates = []
    kept = []
    for r in rows:
        if r.label is not None:
            if r.label not in known:
                raise ValueError(f"{path}:{r.line}: unknown label {r.label!r}; expected one of {sorted(known)}")
            if r.onset < 0:
                raise ValueError(f"{path}:{r.line}: negative onset {r.onset} s")
            if r.offset <= r.onset:
                raise ValueError(f"{path}:{r.line}: offset {r.offset} s must be greater than onset {r.onset} s")
        key = (r.filename, r.onset, r.offset, r.label, r.confidence) if r.label is not None else (r.filename, None)
        if key in seen:
            duplicates.append(f"line {r.line} (= line {seen[key]})")
            continue
        seen[key] = r.line
        kept.append(r)
    if duplicates:
        warnings.append(f"{path}: {len(duplicates)} exact duplicate rows dropped: {_listed(duplicates)}")
    empty_rows = {r.filename: r.line for r in kept if r.label is None}
    for r in kept:
        if r.label is not None and r.filename in empty_rows:
            raise ValueError(
                f"{path}:{empty_rows[r.filename]}: {r.filename} has an event-less row but also an event "
                f"at line {r.line}"
            )
    return kept


def _check_weak_rows(path: Path, rows: list[WeakRow], known: set[str], warnings: list[str]) -> list[WeakRow]:
    by_file: dict[str, WeakRow] = {}
    duplicates, repeated = [], []
    for r in rows:
        unknown = [name for name in r.labels if name not in known]
        if unknown:
            raise ValueError(f"{path}:{r.line}: unknown label(s) {unknown}; expected one of {sorted(known)}")
        labels = tuple(dict.fromkeys(r.labels))
        if len(labels) != len(r.labels):
            repeated.append(f"line {r.line}")
        r = WeakRow(r.line, r.filename, labels)
        previous = by_file.get(r.filename)
        if previous is not None:
            if set(previous.labels) != set(labels):
                raise ValueError(
                    f"{path}:{r.line}: {r.filename} is listed again with other labels than at line {previous.line}"
                )
            duplicates.append(f"line {r.line} (= line {previous.line})")
            continue
        by_file[r.filename] = r
    if duplicates:
        warnings.append(f"{path}: {len(duplicates)} duplicate rows dropped: {_listed(duplicates)}")
    if repeated:
        warnings.append(f"{path}: repeated labels within a row removed at {_listed(repeated)}")
    return list(by_file.values())


def _check_event_ends(path: Path, rows: list[StrongRow], durations: dict[str, float], warnings: list[str]) -> None:
    overruns = []
    for r in rows:
        duration = durations.get(r.filename)
        if r.label is None or duration is None:
            continue  # clips without audio are handled by the clip-set check
        excess = r.offset - duration
        if r.onset >= duration or excess > END_WARN_S:
            raise ValueError(
                f"{path}:{r.line}: event {r.label} [{r.onset}, {r.offset}] s lies past the end of {r.filename} "
                f"({duration} s); at most {END_WARN_S} s of overrun is accepted"
            )
        if excess > END_SILENT_S:
            overruns.append((excess, r.line))
    if overruns:
        worst = max(overruns)
        warnings.append(
            f"{path}: {len(overruns)} events end past their clip (by at most {worst[0]:.3f} s, line {worst[1]}); "
            "kept unchanged"
        )


def _match_clips(
    path: Path, clips: list[str], durations: dict[str, float], scored: bool, max_unmatched_fraction: float,
    warnings: list[str], drop_missing: bool = False,
) -> dict[str, str]:
    """metadata filename -> audio filename of every labelled clip that has audio; mismatches per the policy."""
    matched: dict[str, str] = {}
    for clip in clips:
        if clip in durations:
            matched[clip] = clip
        elif is_audio_name(clip) and resampled_name(clip) in durations:
            matched[clip] = resampled_name(clip)
    by_audio: dict[str, str] = {}
    for clip, audio in matched.items():
        if audio in by_audio:
            raise ValueError(f"{path}: {by_audio[audio]} and {clip} both name the audio file {audio}")
        by_audio[audio] = clip
    renamed = [f"{clip} -> {audio}" for clip, audio in matched.items() if clip != audio]
    if renamed:
        warnings.append(f"{path}: {len(renamed)} filenames matched their resampled audio by stem: {_listed(renamed)}")
    missing = [c for c in clips if c not in matched]
    unlabelled = [a for a in durations if a not in by_audio]
    problems = []
    if missing:
        problems.append(f"{len(missing)} labelled clips have no audio: {_listed(missing)}")
    if unlabelled:
        problems.append(f"{len(unlabelled)} clips with audio have no label row: {_listed(unlabelled)}")
    if missing and scored and drop_missing:
        dropped = problems.pop(0)
        warnings.append(f"{path}: {dropped}; dropped, the clips present are scored (evaluation.missing_audio: drop)")
        missing = []
    if problems and scored:
        hint = " (evaluation.missing_audio: drop scores the clips present)" if missing else ""
        raise ValueError(
            f"{path}: a scored split needs labels for exactly its audio clips; " + "; ".join(problems) + hint
        )
    hint = ("filenames must equal the audio file names, or differ only in an audio extension changed by "
            "resampling (x.flac -> x.wav)")
    if not matched:
        raise ValueError(f"{path}: no labelled clip has audio, the validated split would be empty ({hint}); "
                         + "; ".join(problems))
    n_lost, n_total = len(missing) + len(unlabelled), len(clips) + len(unlabelled)
    if n_lost > max_unmatched_fraction * n_total:
        raise ValueError(
            f"{path}: {n_lost} of {n_total} clips ({n_lost / n_total:.1%}) lack labels or audio, more than "
            f"max_unmatched_fraction {max_unmatched_fraction:.1%} of the split ({hint}); " + "; ".join(problems)
        )
    for problem in problems:
        warnings.append(f"{path}: {problem}; left out of the validated metadata")
    return matched


def _compare_durations(path: Path, provided: dict[str, float], measured: dict[str, float]) -> list[str]:
    warnings = []
    only_provided = [c for c in provided if c not in measured]
    if only_provided:
        warnings.append(f"{path}: {len(only_provided)} clips have no audio: {_listed(only_provided)}")
    off = [
        (abs(provided[c] - measured[c]), c)
        for c in provided
        if c in measured and abs(provided[c] - measured[c]) > PROVIDED_DURATION_TOLERANCE_S + 1e-9
    ]
    if off:
        worst = max(off)
        warnings.append(
            f"{path}: {len(off)} provided durations differ from the audio by more than "
            f"{PROVIDED_DURATION_TOLERANCE_S} s (at most {worst[0]:.3f} s, {worst[1]}); the audio's lengths are used"
        )
    return warnings


# ----------------------------------------------------------------------------- weak split
def split_weak(table: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded partition of a weak table into (train, val); val gets round(val_fraction * clips) clips.

    Rows keep their original order within each part. val_fraction 0 gives an empty val part.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    n = len(table)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} clips leaves no training clip")
    order = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, dtype=bool)
    is_val[order[:n_val]] = True
    return table[~is_val].reset_index(drop=True), table[is_val].reset_index(drop=True)


# ----------------------------------------------------------------------------- commands
def configure_validate_metadata(parser: argparse.ArgumentParser):
    parser.add_argument("--metadata", required=True, help="the split's metadata TSV (strong, soft or weak)")
    parser.add_argument("--durations", required=True, help="durations.tsv measured by `resample`")
    parser.add_argument(
        "--provided-durations", nargs="?", const=None, default=None, help="the split's own durations TSV, if any"
    )
    parser.add_argument(
        "--config-json", required=True,
        help='{"classes": [...], "split": {"labels": ..., "role": ..., ...}, "missing_audio": "drop" (optional)}',
    )
    parser.add_argument("--out", required=True, help="validated copy (same format)")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        split = cfg["split"]
        result = validate_metadata(
            args.metadata,
            split["labels"],
            cfg["classes"],
            measured_durations=args.durations,
            provided_durations=args.provided_durations or None,
            scored=split["role"] in SCORED_ROLES,
            max_unmatched_fraction=split.get("max_unmatched_fraction", MAX_UNMATCHED_FRACTION),
            missing_audio=cfg.get("missing_audio", "error"),
        )
        for warning in result.warnings:
            log.warning(warning)
        WRITERS[result.labels](args.out, result.table)
        log.info(
            "%s: %d clips, %d %s, per class %s -> %s",
            args.metadata,
            result.n_clips,
            result.n_events,
            "clip labels" if result.labels == "weak" else "events",
            result.class_counts,
            args.out,
        )
        return 0

    return run


def configure_split_weak(parser: argparse.ArgumentParser):
    parser.add_argument("--metadata", required=True, help="validated weak metadata.tsv")
    parser.add_argument("--val-fraction", type=FRACTION, required=True, help="fraction of clips for validation")
    parser.add_argument("--seed", type=SEED, required=True, help="root seed of the configuration")
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--val-out", required=True)

    def run(args: argparse.Namespace) -> int:
        train, val = split_weak(read_weak(args.metadata), args.val_fraction, args.seed)
        write_weak(args.train_out, train)
        write_weak(args.val_out, val)
        log.info("%s: %d train / %d val clips (seed %d)", args.metadata, len(train), len(val), args.seed)
        return 0

    return run
