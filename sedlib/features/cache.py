"""Feature cache of a split (``cache-features``): the frontends' linear mel spectrograms as .npy arrays.

Layout (docs/architecture.md "Feature cache"), one folder per split, one stream per frontend section that the
run needs (``crnn`` always, plus the section each configured backbone kind reads, sedlib.models.backbone):
- ``crnn_mel.npy`` float32 (N, 128, T_max): linear magnitude mel (power 1), before dB; 626 frames per 10 s;
- ``atst_mel.npy`` float32 (N, 64, T_max'): linear power mel (power 2), before dB; 1001 frames per 10 s;
- ``{stream}_mel.npy`` likewise for any other frontend section;
- ``index.tsv``: ``filename duration n_crnn [n_{stream} ...]`` per row (true duration in s, true frame counts),
  written last: its presence marks the cache complete. A stream cached by its own job (the workflow caches each
  backbone frontend's stream separately, so adding one re-runs nothing else) has ``{stream}_index.tsv`` instead.
Clips shorter than ``audio.clip_seconds`` are zero-padded to it; longer ones are kept whole and the arrays
are as wide as the longest clip (T_max = frames of max(clip_seconds, longest clip)); frames past a clip's
padded length are zero. Clips are processed in batches of equal padded length, so every clip's features are
exactly those of the clip alone (centred STFT, per-clip normalisation later in ``normalize()``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sedlib.data.metadata import read_durations
from sedlib.features.frontends import build_frontends
from sedlib.io import atomic_path
from sedlib.progress import Progress

log = logging.getLogger(__name__)

INDEX_FILE = "index.tsv"
DURATION_TOLERANCE_S = 0.02  # s: durations.tsv vs the 16 kHz file's length


def mel_file(stream: str) -> str:
    """File name of a stream's array: 'crnn_mel.npy', 'atst_mel.npy', ..."""
    return f"{stream}_mel.npy"


def index_columns(streams: list[str]) -> list[str]:
    return ["filename", "duration", *(f"n_{stream}" for stream in streams)]


@dataclass
class FeatureCache:
    """An opened feature cache: memory-mapped arrays and the index, row i of each array = row i of the index."""

    directory: Path
    mels: dict[str, np.ndarray]  # stream -> (N, n_mels, T_max) float32, memory-mapped
    frames: dict[str, np.ndarray]  # stream -> (N,) true frames
    filenames: list[str]
    durations: np.ndarray  # (N,) seconds
    rows: dict[str, int] = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return len(self.filenames)

    def mel(self, stream: str) -> np.ndarray:
        """(N, n_mels, T_max) array of ``stream``."""
        if stream not in self.mels:
            raise ValueError(
                f"{self.directory}: no '{stream}' features (cached: {sorted(self.mels)}); the cache holds the streams "
                "of the configured backbones' frontends"
            )
        return self.mels[stream]

    def n_frames(self, stream: str) -> np.ndarray:
        """(N,) true frames of ``stream``."""
        self.mel(stream)
        return self.frames[stream]

    @property
    def crnn(self) -> np.ndarray:
        return self.mel("crnn")

    @property
    def n_crnn(self) -> np.ndarray:
        return self.n_frames("crnn")

    @property
    def atst(self) -> np.ndarray:
        return self.mel("atst")

    @property
    def n_atst(self) -> np.ndarray:
        return self.n_frames("atst")

    def row(self, filename: str) -> int:
        """Row of ``filename`` in the arrays."""
        try:
            return self.rows[filename]
        except KeyError:
            raise ValueError(f"{self.directory / INDEX_FILE}: no row for file '{filename}'") from None


def read_table(path: Path, columns: list[str]) -> list[list[str]]:
    """Rows of a tab-separated file whose header is exactly ``columns``."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header != columns:
            raise ValueError(f"{path}: line 1: expected the tab-separated header {columns}, got {header}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(columns):
                raise ValueError(f"{path}: line {line}: expected {len(columns)} tab-separated fields, got {row}")
            rows.append(row)
    return rows


def _read_index(path: Path) -> tuple[list[str], list[list[str]]]:
    """(streams, rows) of an index file ``filename duration n_<stream> ...``."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, newline="") as handle:
        header = next(csv.reader(handle, delimiter="\t"), [])
    streams = [column[2:] for column in header[2:] if column.startswith("n_")]
    if not streams:
        raise ValueError(f"{path}: line 1: expected the header 'filename duration n_<stream> ...', got {header}")
    return streams, read_table(path, index_columns(streams))


def open_feature_cache(directory: str | Path) -> FeatureCache:
    """Open a split's feature cache (arrays memory-mapped read-only); checks that arrays and indexes agree.

    ``index.tsv`` lists the streams built with the CRNN stream; a stream built on its own has its
    ``{stream}_index.tsv`` (same clips, same order).
    """
    directory = Path(directory)
    streams, rows = _read_index(directory / INDEX_FILE)
    if "crnn" not in streams:
        raise ValueError(f"{directory / INDEX_FILE}: line 1: expected the column n_crnn, got streams {streams}")
    filenames = [r[0] for r in rows]
    frames = {stream: np.array([int(r[2 + k]) for r in rows]) for k, stream in enumerate(streams)}
    for path in sorted(directory.glob(f"*_{INDEX_FILE}")):
        own_streams, own_rows = _read_index(path)
        if [r[0] for r in own_rows] != filenames:
            raise ValueError(f"{path}: lists other clips (or another order) than {directory / INDEX_FILE}")
        frames.update({stream: np.array([int(r[2 + k]) for r in own_rows]) for k, stream in enumerate(own_streams)})
    mels = {stream: np.load(directory / mel_file(stream), mmap_mode="r") for stream in frames}
    for stream, array in mels.items():
        if array.ndim != 3 or array.shape[0] != len(rows):
            raise ValueError(
                f"{directory / mel_file(stream)}: shape {array.shape}, expected ({len(rows)}, mels, frames) as the index"
            )
    return FeatureCache(
        directory=directory,
        mels=mels,
        frames=frames,
        filenames=filenames,
        durations=np.array([float(r[1]) for r in rows]),
        rows={name: i for i, name in enumerate(filenames)},
    )


def stream_index_file(stream: str) -> str:
    """Index of a stream built without the CRNN stream: '{stream}_index.tsv'."""
    return f"{stream}_{INDEX_FILE}"


def build_feature_cache(
    durations_file: Path, audio_dir: Path, out_dir: Path, frontends_cfg: dict, clip_seconds: float, batch_size: int = 16
) -> FeatureCache | None:
    """Compute the mel features of every clip listed in ``durations_file`` into ``out_dir``: one stream per
    section of ``frontends_cfg`` (``crnn`` first; the others in the given order). With ``crnn`` the frame counts
    of every stream go to ``index.tsv``; without it each stream gets its own ``{stream}_index.tsv``, so a stream
    can be added to a cache (a backbone of a new kind) without touching the others. Returns the opened cache
    (without ``crnn``: None)."""
    streams = sorted(frontends_cfg, key=lambda name: name != "crnn")
    frontends = build_frontends(frontends_cfg, streams)
    sample_rate = frontends[streams[0]].sample_rate
    clip_samples = int(round(clip_seconds * sample_rate))
    entries = list(read_durations(durations_file).items())
    if not entries:
        raise ValueError(f"{durations_file}: lists no clips")
    n_samples = []
    for filename, duration in entries:
        path = audio_dir / filename
        if not path.is_file():
            raise FileNotFoundError(f"{durations_file}: audio file of '{filename}' not found: {path}")
        info = sf.info(path)
        if info.samplerate != sample_rate or info.channels != 1:
            raise ValueError(
                f"{path}: expected mono {sample_rate} Hz audio, got {info.samplerate} Hz, {info.channels} channels"
            )
        frames = info.frames
        if abs(frames / sample_rate - duration) > DURATION_TOLERANCE_S:
            raise ValueError(
                f"{durations_file}: '{filename}' is listed as {duration} s but {path} has {frames / sample_rate:.3f} s"
            )
        n_samples.append(frames)
    padded = [max(n, clip_samples) for n in n_samples]
    n_rows = len(entries)
    with contextlib.ExitStack() as stack:
        tmps = {stream: stack.enter_context(atomic_path(out_dir / mel_file(stream))) for stream in streams}
        arrays = {
            stream: np.lib.format.open_memmap(
                tmps[stream], mode="w+", dtype=np.float32, shape=(n_rows, fe.n_mels, fe.n_frames(max(padded)))
            )
            for stream, fe in frontends.items()
        }
        progress = Progress(label=f"cache-features {audio_dir}", total=n_rows, unit="clips")
        for length in sorted(set(padded)):
            group = [i for i, p in enumerate(padded) if p == length]
            for first in range(0, len(group), batch_size):
                rows = group[first : first + batch_size]
                batch = np.zeros((len(rows), length), dtype=np.float32)
                for j, row in enumerate(rows):
                    wave = sf.read(audio_dir / entries[row][0], dtype="float32")[0]
                    batch[j, : len(wave)] = wave
                with torch.inference_mode():
                    wave_batch = torch.from_numpy(batch)
                    for stream, fe in frontends.items():
                        mel = fe.mel(wave_batch).numpy()  # (b, n_mels, frames of this padded length)
                        arrays[stream][rows, :, : mel.shape[-1]] = mel
                progress.advance(len(rows))
            log.info("%d clips of %.2f s done", len(group), length / sample_rate)
        progress.close()
        for array in arrays.values():
            array.flush()
        del arrays
    indexes = {INDEX_FILE: streams} if "crnn" in streams else {stream_index_file(s): [s] for s in streams}
    for name, columns in indexes.items():
        index_rows = [
            [filename, f"{n / sample_rate:.6f}", *(str(frontends[s].n_frames(n)) for s in columns)]
            for (filename, _), n in zip(entries, n_samples)
        ]
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text("\n".join("\t".join(r) for r in [index_columns(columns), *index_rows]) + "\n")
    return open_feature_cache(out_dir) if "crnn" in streams else None


def configure_cache_features(parser: argparse.ArgumentParser):
    parser.add_argument("--durations", required=True, type=Path, help="split's durations.tsv (filename duration)")
    parser.add_argument("--audio-dir", required=True, type=Path, help="split's 16 kHz mono audio folder")
    parser.add_argument("--out-dir", required=True, type=Path, help="feature cache folder to write")
    parser.add_argument("--config-json", required=True,
                        help='{"frontends": the sections to cache (crnn + those the backbones read), "audio": config.audio}')
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per frontend batch")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        torch.set_num_threads(args.threads)
        build_feature_cache(args.durations, args.audio_dir, args.out_dir, cfg["frontends"],
                                    cfg["audio"]["clip_seconds"], args.batch_size)
        log.info("wrote %s: %s", args.out_dir, sorted(cfg["frontends"]))
        return 0

    return run
