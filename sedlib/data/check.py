"""``check-data``: what a local dataset folder holds compared with its configuration, before anything runs.

For every split of every ``local`` dataset: clips named in the metadata but missing on disk, audio files the
metadata does not name, unreadable audio, the sample rates and channel counts found, and the total hours.
Audio files match metadata rows by the name ``resample`` gives them (``<stem>.wav``), as the validated
metadata does later.

Policy (the same as ``validate-metadata`` applies later, docs/data.md): training splits proceed with a warning
and the count of missing clips (real DESED copies always miss some YouTube clips); scored splits (roles
``validation`` and ``test``) are an error when ground-truth clips are missing, unless
``evaluation.missing_audio`` is ``drop``: then they are scored on the clips present and the dropped clips are
listed here and in eval_psds.json. Unreadable files, a missing folder or metadata file, and audio without
labels in a scored split are errors.

Output: a table on stdout and a JSON report (``--out``); exit status 1 when any split has an error.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import soundfile as sf

from sedlib.config import SCORED_ROLES, load_config
from sedlib.data.metadata import parse_soft, parse_strong, parse_weak
from sedlib.data.resample import list_audio
from sedlib.io import write_json
from sedlib.progress import Progress

log = logging.getLogger(__name__)

MISSING_AUDIO_POLICIES = ("error", "drop")


def listed_clips(metadata: Path, labels: str) -> list[str]:
    """Clip names of a strong, soft or weak metadata TSV, in file order (each once)."""
    rows = {"strong": parse_strong, "soft": parse_soft, "weak": parse_weak}[labels](metadata)
    return list(dict.fromkeys(row.filename for row in rows))


def audio_facts(files: list[Path], label: str) -> tuple[dict[str, sf._SoundFileInfo], list[dict[str, str]]]:
    """({resampled name: header info}, [{file, error}] of unreadable or empty files), reading headers only."""
    infos, unreadable = {}, []
    for path in Progress(files, label):
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            unreadable.append({"file": path.name, "error": str(exc).strip()})
            continue
        if info.frames == 0:
            unreadable.append({"file": path.name, "error": "no samples"})
            continue
        infos[f"{path.stem}.wav"] = info
    return infos, unreadable


def check_split(root: Path, name: str, split: dict, missing_audio: str) -> dict[str, Any]:
    """The report of one split (see the module docstring); ``status``: ok | warning | drop | error."""
    scored = split["role"] in SCORED_ROLES
    report: dict[str, Any] = {"role": split["role"], "labels": split["labels"], "audio_dir": str(root / split["audio"]),
                              "metadata": str(root / split["metadata"]) if split.get("metadata") else None,
                              "errors": [], "warnings": []}  # fmt: skip
    try:
        files = list_audio(root / split["audio"])
    except FileNotFoundError as exc:
        report["errors"].append(str(exc))
        files = []
    infos, report["unreadable"] = audio_facts(files, f"check-data {name}")
    report["n_audio"] = len(infos) + len(report["unreadable"])
    report["sample_rates"] = dict(sorted(Counter(str(i.samplerate) for i in infos.values()).items()))
    report["channels"] = dict(sorted(Counter(str(i.channels) for i in infos.values()).items()))
    report["hours"] = round(sum(i.frames / i.samplerate for i in infos.values()) / 3600, 4)
    if report["unreadable"]:
        report["errors"].append(f"{len(report['unreadable'])} unreadable audio files")
    listed: list[str] = []
    if report["metadata"]:
        try:
            listed = listed_clips(Path(report["metadata"]), split["labels"])
        except (FileNotFoundError, ValueError) as exc:
            report["errors"].append(str(exc))
    names = set(infos) | {f"{Path(u['file']).stem}.wav" for u in report["unreadable"]}
    report["n_listed"] = len(listed)
    report["missing"] = [clip for clip in listed if clip not in names]
    report["not_in_metadata"] = sorted(names - set(listed)) if report["metadata"] else []
    if report["missing"]:
        text = f"{len(report['missing'])} of {len(listed)} clips named in the metadata have no audio"
        if not scored:
            report["warnings"].append(f"{text}; training proceeds without them")
        elif missing_audio == "drop":
            report["warnings"].append(f"{text}; scored on the clips present (evaluation.missing_audio: drop)")
        else:
            report["errors"].append(f"{text} (a scored split; evaluation.missing_audio: drop scores the clips present)")
    if report["not_in_metadata"]:
        text = f"{len(report['not_in_metadata'])} audio files are not named in the metadata"
        (report["errors"] if scored else report["warnings"]).append(text + ("" if scored else "; left out"))
    if report["errors"]:
        report["status"] = "error"
    elif scored and report["missing"]:
        report["status"] = "drop"
    else:
        report["status"] = "warning" if report["warnings"] else "ok"
    return report


def check_datasets(datasets: dict[str, dict], missing_audio: str = "error") -> dict[str, Any]:
    """The report of every split of the ``local`` datasets of a (validated) ``datasets`` section."""
    if missing_audio not in MISSING_AUDIO_POLICIES:
        raise ValueError(f"evaluation.missing_audio: expected one of {MISSING_AUDIO_POLICIES}, got {missing_audio!r}")
    report: dict[str, Any] = {"missing_audio": missing_audio, "datasets": {}}
    for ds_name, ds in datasets.items():
        if ds["source"] != "local":
            log.info("datasets.%s: source '%s', not checked (only local datasets are)", ds_name, ds["source"])
            continue
        root = Path(ds["root"])
        splits = {s: check_split(root, f"{ds_name}/{s}", split, missing_audio) for s, split in ds["splits"].items()}
        report["datasets"][ds_name] = {"root": str(root), "splits": splits}
    statuses = [s["status"] for ds in report["datasets"].values() for s in ds["splits"].values()]
    report["ok"] = "error" not in statuses
    return report


def table(report: dict[str, Any]) -> str:
    """Plain-text table of a report, then its errors and warnings (every missing clip of a scored split)."""
    header = ("split", "role", "status", "listed", "audio", "missing", "unlisted", "unreadable", "rates Hz", "channels",
              "hours")
    rows = [header]
    notes = []
    for ds_name, ds in report["datasets"].items():
        for s_name, s in ds["splits"].items():
            ref = f"{ds_name}/{s_name}"
            rows.append((ref, s["role"], s["status"], str(s["n_listed"]), str(s["n_audio"]), str(len(s["missing"])),
                         str(len(s["not_in_metadata"])), str(len(s["unreadable"])), ",".join(s["sample_rates"]) or "-",
                         ",".join(s["channels"]) or "-", f"{s['hours']:.2f}"))  # fmt: skip
            notes += [f"ERROR {ref}: {e}" for e in s["errors"]] + [f"warning {ref}: {w}" for w in s["warnings"]]
            if s["role"] in SCORED_ROLES and s["missing"]:
                notes.append(f"  {ref}: missing ground-truth clips: {' '.join(s['missing'])}")
            notes += [f"  {ref}: unreadable {u['file']}: {u['error']}" for u in s["unreadable"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + notes + [f"data check: {'ok' if report['ok'] else 'FAILED'}"])


def configure_check_data(parser: argparse.ArgumentParser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--configfile", type=Path, help="workflow configuration YAML: checks its local datasets")
    source.add_argument("--config-json",
                        help='{"datasets": {name: section}, "missing_audio": "error" | "drop"} (the rule)')
    parser.add_argument("--out", type=Path, default=Path("results/data_check.json"), help="JSON report to write")

    def run(args: argparse.Namespace) -> int:
        if args.configfile:
            config = load_config(args.configfile)
            datasets, missing_audio = config["datasets"], config["evaluation"]["missing_audio"]
        else:
            cfg = json.loads(args.config_json)
            datasets, missing_audio = cfg["datasets"], cfg["missing_audio"]
        report = check_datasets(datasets, missing_audio)
        print(table(report), flush=True)
        write_json(args.out, report)
        log.info("wrote %s", args.out)
        return 0 if report["ok"] else 1

    return run
