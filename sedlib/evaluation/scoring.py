"""Score tables of one model, or of the ensemble, on the evaluation splits (``score`` command).

One job scores every split of one network: the model is loaded once (and torch, sed_scores_eval imported
once); about 3 s of a 7 s single-split job on the embedded default were imports and loading.

Model: every clip of a split's durations file is read from the 16 kHz folder, predicted with
``sedlib.models.windowing.predict_clips`` (10 s windows, overlap-averaged logits, normalised by the frontends
exactly as in training) and written as

- a logits file (``sedlib.pseudo.store`` format, ``average='member'``): the exact pre-sigmoid logits, which the
  ensemble averages;
- a score folder: one sed_scores_eval table per clip (``{clip}.tsv``: onset, offset in seconds and one sigmoid
  probability column per class), **before** median filtering (``evaluate`` post-processes).

Ensemble: the members' logits files are averaged with ``sedlib.pseudo.ensemble.average_logits`` (mode
``pseudo_labels.average``: mean of logits, or mean of probabilities stored as logits), then written the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from sedlib.data.resample import read_mono, resample_mono
from sedlib.evaluation.score_tables import probabilities, score_table, write_score_dir
from sedlib.features.frontends import Frontends, build_frontends
from sedlib.io import sha256_file
from sedlib.options import paired_lengths
from sedlib.models.checkpoint import load_sed_model
from sedlib.models.windowing import predict_clip, predict_clips
from sedlib.pseudo.ensemble import average_files
from sedlib.devices import resolve_device
from sedlib.progress import Progress
from sedlib.pseudo.store import read_logits, write_logits

log = logging.getLogger(__name__)

# clips read and windows predicted together by ``score`` (10 s clips of the embedded default: 21 ms each in
# batches of 8 against 30 ms one at a time; larger batches were no faster on 1 thread)
CLIPS_PER_BATCH = 8


def clip_id(filename: str) -> str:
    """Clip identifier of an audio filename: the name without its extension (sed_scores_eval's convention)."""
    return filename.rsplit(".", 1)[0]


def read_split_durations(durations_tsv: str | Path) -> dict[str, float]:
    """``{filename: seconds}`` of a split's durations file (``filename duration``)."""
    path = Path(durations_tsv)
    if not path.is_file():
        raise FileNotFoundError(f"durations file {path} does not exist")
    table = pd.read_csv(path, sep="\t")
    if list(table.columns[:2]) != ["filename", "duration"]:
        raise ValueError(f"{path}: header: expected 'filename<TAB>duration', got {list(table.columns)}")
    return dict(zip(table["filename"].astype(str), table["duration"].astype(float)))


def load_wave(path: str | Path, sample_rate: int) -> np.ndarray:
    """(samples,) float32 mono audio of any file at ``sample_rate`` Hz (channel mean, soxr resampling)."""
    wave, rate = read_mono(path)
    return resample_mono(wave, rate, sample_rate)


def predict_logits(
    model: torch.nn.Module, frontends: Frontends, wave: np.ndarray, window_s: float, hop_s: float, device: torch.device,
    on_progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """(C, frames) float32 strong logits of a mono wave (samples,) at the frontends' rate, any length;
    ``on_progress(seconds)``: see ``predict_clip``."""
    wave_t = torch.from_numpy(np.ascontiguousarray(wave)).to(device)
    logits = predict_clip(model, frontends, wave_t, window_s, hop_s, on_progress=on_progress)
    return logits.float().cpu().numpy()


def load_predictor(
    model_file: str | Path, which: str, device: torch.device, config: dict | None = None, classes: list[str] | None = None
) -> tuple[torch.nn.Module, Frontends, dict]:
    """(model in eval mode, frontends, info) of a model file (an ATST-SED checkpoint needs config + classes)."""
    model, info = load_sed_model(model_file, which=which, config=config, classes=classes)
    frontends = build_frontends(info["config"]["frontends"], ["crnn", model.backbone.frontend])
    return model.to(device), frontends.to(device), info


def pad_logits(logits: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, T_max) float32 zero-padded stack of (C, frames_i) arrays and the (N,) true frame counts."""
    n_frames = np.array([x.shape[1] for x in logits], dtype=np.int32)
    stacked = np.zeros((len(logits), logits[0].shape[0], int(n_frames.max())), dtype=np.float32)
    for row, x in enumerate(logits):
        stacked[row, :, : x.shape[1]] = x
    return stacked, n_frames


def tables_from_logits(
    filenames: Sequence[str],
    logits: Sequence[np.ndarray],
    durations: Mapping[str, float],
    classes: Sequence[str],
    frame_hop: float,
) -> dict[str, pd.DataFrame]:
    """``{clip: score table}`` of sigmoid probabilities; ``logits[i]`` (C, frames) of ``filenames[i]``."""
    return {
        clip_id(name): score_table(probabilities(x), classes, frame_hop, durations[name])
        for name, x in zip(filenames, logits)
    }


class SplitOutputs(NamedTuple):
    """One scored split of a ``score`` job: its clips (``durations``), the model's input audio folder (16 kHz;
    None for the ensemble) or the members' logits files of the split (ensemble), and the two outputs."""

    durations: str | Path
    logits_out: str | Path
    scores_out: str | Path
    audio_dir: str | Path | None = None
    member_logits: Sequence[str | Path] = ()


def score_model(
    model_file: str | Path,
    which: str,
    splits: Sequence[SplitOutputs],
    window_s: float,
    hop_s: float,
    device: str,
    provenance: dict,
) -> None:
    """Predict every clip of each split with one network; write the split's logits file and score folder."""
    dev = resolve_device(device)
    model, frontends, info = load_predictor(model_file, which, dev)
    checkpoint_sha256 = sha256_file(model_file)
    for split in splits:
        durations = read_split_durations(split.durations)
        filenames = sorted(durations)
        logits = []
        with Progress(label=f"score {split.audio_dir}", total=len(filenames)) as progress:
            for first in range(0, len(filenames), CLIPS_PER_BATCH):
                waves = []
                for name in filenames[first : first + CLIPS_PER_BATCH]:
                    path = Path(split.audio_dir) / name
                    if not path.is_file():
                        raise FileNotFoundError(f"{split.durations}: lists {name}, but {path} does not exist")
                    waves.append(torch.from_numpy(load_wave(path, frontends.crnn.sample_rate)).to(dev))
                batch = predict_clips(model, frontends, waves, window_s, hop_s, batch_size=CLIPS_PER_BATCH)
                logits += [x.float().cpu().numpy() for x in batch]
                progress.advance(len(waves))
        stacked, n_frames = pad_logits(logits)
        split_provenance = {
            **provenance,
            "network": which,
            "checkpoint": str(model_file),
            "checkpoint_sha256": checkpoint_sha256,
            "durations": str(split.durations),
            "durations_sha256": sha256_file(split.durations),
            "window_seconds": window_s,
            "hop_seconds": hop_s,
        }
        write_logits(split.logits_out, filenames, stacked, n_frames, info["classes"], info["frame_hop"],
                     split_provenance, "member")  # fmt: skip
        tables = tables_from_logits(filenames, logits, durations, info["classes"], info["frame_hop"])
        write_score_dir(split.scores_out, tables)
        log.info("%s (%s): %d clips -> %s", model_file, which, len(filenames), split.scores_out)


def score_ensemble(
    member_logits: Sequence[str | Path],
    mode: str,
    iteration: int,
    durations_tsv: str | Path,
    logits_out: str | Path,
    scores_out: str | Path,
) -> None:
    """Average the members' logits files of one split (``mode``: logits | probabilities); write the ensemble's
    logits and scores."""
    average_files(member_logits, logits_out, mode, iteration)
    ensemble = read_logits(logits_out)
    durations = read_split_durations(durations_tsv)
    missing = sorted(set(ensemble.filenames) - set(durations))
    if missing:
        raise ValueError(f"{durations_tsv}: no duration for {len(missing)} scored clips, e.g. {missing[:3]}")
    clips = [ensemble.clip(name) for name in ensemble.filenames]
    write_score_dir(
        scores_out, tables_from_logits(ensemble.filenames, clips, durations, ensemble.classes, ensemble.frame_hop)
    )
    log.info("ensemble of %d members (%s): %d clips -> %s", len(member_logits), mode, len(clips), scores_out)


def split_outputs(args: argparse.Namespace) -> list[SplitOutputs]:
    """The scored splits of the command line: ``--durations``, ``--logits-out``, ``--scores-out`` and
    ``--audio-dir`` (model) give one value per split, in the same order; ``--member-logits`` (ensemble) gives
    the members' files split after split (members x splits values)."""
    paired = ["logits_out", "scores_out", *(["audio_dir"] if args.model_file else [])]
    n = paired_lengths("score", args, "durations", paired)
    members: list[Sequence[str]] = [()] * n
    if args.member_logits:
        if len(args.member_logits) % n:
            raise ValueError(f"score: --member-logits: {len(args.member_logits)} files is not a whole number of "
                             f"members for each of the {n} splits")  # fmt: skip
        per_split = len(args.member_logits) // n
        members = [args.member_logits[k * per_split : (k + 1) * per_split] for k in range(n)]
    audio = args.audio_dir or [None] * n
    return [SplitOutputs(*paths) for paths in zip(args.durations, args.logits_out, args.scores_out, audio, members)]


def configure_score(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-file", help="model.pt (or an ATST-SED checkpoint) to predict with")
    source.add_argument("--member-logits", nargs="+",
                        help="members' logits files to average (ensemble): every member's file of the first split, "
                             "then of the second, ...")
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher", help="network of --model-file")
    parser.add_argument("--audio-dir", nargs="+", help="16 kHz audio folder of each split (with --model-file)")
    parser.add_argument("--durations", nargs="+", required=True, help="durations.tsv of each split (the clips to score)")
    parser.add_argument("--config-json", required=True,
                        help='{"window_seconds", "hop_seconds"} (model) or {"average"} (ensemble)')
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--logits-out", nargs="+", required=True, help="logits file (.h5) to write, per split")
    parser.add_argument("--scores-out", nargs="+", required=True, help="score folder to write, per split")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | gpu | cuda[:i]")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        if args.model_file and not args.audio_dir:
            raise ValueError("score: --audio-dir is required with --model-file")
        splits = split_outputs(args)
        if args.member_logits:
            for split in splits:
                score_ensemble(split.member_logits, cfg["average"], args.iteration, split.durations,
                               split.logits_out, split.scores_out)  # fmt: skip
            return 0
        torch.set_num_threads(args.threads)
        score_model(args.model_file, args.which, splits, cfg["window_seconds"], cfg["hop_seconds"], args.device,
                    {"iteration": args.iteration})  # fmt: skip
        return 0

    return run
