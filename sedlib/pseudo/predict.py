"""Strong logits of one trained member for every clip of the training splits (``predict-logits``).

Input: a stage-2 ``model.pt`` and the split's feature cache (linear mels, see :mod:`sedlib.features.cache`).
The network that predicts is the member's **teacher** (EMA weights) by default, or its student
(``pseudo_labels.network``; the published DCASE 2024 winner's ``store_predictions`` defaults to the student).

Every clip is cut into model-input windows of ``audio.clip_seconds`` (626 CRNN mel frames and 1001 frames of the
backbone's frontend stream, the ATST mel for ATST-Frame; 156 output frames per 10 s). A clip of at most that
length is one window (the cache zero-pads it to 10 s, as training sees it). A longer clip gets windows every
``hop_seconds`` rounded down to the crop grid, the last one ending at or after the clip's end (zero-padded past
the cached width); window starts are multiples of the crop grid (ATST-Frame: 0.32 s = 20 CRNN mel frames, 32
ATST mel frames, 5 output frames), as training crops, so every window's output frames land exactly on the clip's
frame grid. Each window is normalised on its own by the frontends' ``normalize`` (like a training crop);
overlapping windows' logits are averaged. Frames past a clip's true length (``n_frames = n_crnn //
time_pooling``) are padding.

Runs in eval mode under ``torch.inference_mode``, in a fixed window order; results do not depend on the
batch size beyond float rounding.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sedlib.features.cache import open_feature_cache
from sedlib.features.frontends import Frontends, build_frontends, frames_per_clip
from sedlib.config import split_ref
from sedlib.io import sha256_file
from sedlib.options import paired_lengths
from sedlib.models.checkpoint import load_sed_model
from sedlib.models.crnn import CRNN
from sedlib.devices import resolve_device
from sedlib.progress import Progress
from sedlib.pseudo.store import write_logits

log = logging.getLogger(__name__)


def crop_grid_samples(frontends_cfg: dict, time_pooling: int, stream: str, frames_per_embedding: int) -> int:
    """Samples of the crop grid: the least common multiple of the CRNN output hop (mel hop x time pooling)
    and the backbone's embedding hop (hop of its frontend ``stream`` x frames per embedding); ATST-Frame:
    lcm(1024, 640) = 5120 samples = 0.32 s at 16 kHz (BEATs' 0.16 s embeddings: lcm(1024, 2560), also 0.32 s)."""
    embedding_hop = frontends_cfg[stream]["hop_length"] * frames_per_embedding
    return math.lcm(frontends_cfg["crnn"]["hop_length"] * time_pooling, embedding_hop)


def window_starts(n_out: int, window_out: int, grid_out: int, hop_grids: int) -> list[int]:
    """Output-frame offsets (multiples of ``grid_out``) of the windows covering ``n_out`` output frames."""
    last = max(0, math.ceil((n_out - window_out) / grid_out)) * grid_out
    starts = list(range(0, last, hop_grids * grid_out))
    return starts + [last]


def _window(rows: np.ndarray, start: int, length: int) -> np.ndarray:
    """rows[:, start:start + length], zero-padded past the array's end: (F, length) float32."""
    part = np.asarray(rows[:, start : start + length], dtype=np.float32)
    if part.shape[1] < length:
        part = np.pad(part, ((0, 0), (0, length - part.shape[1])))
    return part


@torch.inference_mode()
def predict_logits(
    model: CRNN,
    frontends: Frontends,
    crnn_mel: np.ndarray,
    backbone_mel: np.ndarray,
    n_frames: np.ndarray,
    clip_seconds: float,
    hop_seconds: float,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Strong logits (N, C, max(156, n_frames.max())) float32 of every clip; frames >= n_frames[i] are 0.

    crnn_mel (N, n_mels, T) and backbone_mel (N, n_mels', T') are the cached linear features of the CRNN and
    of the backbone's frontend stream (``model.backbone.frontend``); n_frames (N,) the true output frames per clip.
    """
    if model.backbone is None:
        raise ValueError("predict-logits needs a stage-2 model with its backbone (it runs on the cached features)")
    model.eval().to(device)
    stream = model.backbone.frontend
    frontends_cfg = {"crnn": frontends.crnn.cfg, stream: frontends[stream].cfg}
    pool = model.time_pooling
    grid = crop_grid_samples(frontends_cfg, pool, stream, model.backbone.frames_per_embedding)
    crnn_hop, in_hop = frontends.crnn.hop_length, frontends[stream].hop_length
    grid_crnn, grid_in, grid_out = grid // crnn_hop, grid // in_hop, grid // (crnn_hop * pool)
    win_crnn = frames_per_clip(frontends_cfg["crnn"], clip_seconds)
    win_in = frames_per_clip(frontends_cfg[stream], clip_seconds)
    win_out = win_crnn // pool
    if not 0 < hop_seconds <= clip_seconds:
        raise ValueError(f"pseudo_labels.hop_seconds: expected a value in (0, {clip_seconds}] s, got {hop_seconds}")
    hop_grids = max(1, int(round(hop_seconds * frontends.crnn.sample_rate)) // grid)

    jobs = [(i, s) for i, n in enumerate(n_frames) for s in window_starts(int(n), win_out, grid_out, hop_grids)]
    t_max = max([win_out, *(s + win_out for _, s in jobs)])
    total = np.zeros((len(n_frames), model.n_classes, t_max), dtype=np.float64)
    count = np.zeros((len(n_frames), 1, t_max), dtype=np.float64)
    progress = Progress(label="predict-logits", total=len(jobs), unit="windows")
    for first in range(0, len(jobs), batch_size):
        batch = jobs[first : first + batch_size]
        crnn = np.stack([_window(crnn_mel[i], s // grid_out * grid_crnn, win_crnn) for i, s in batch])
        feats = np.stack([_window(backbone_mel[i], s // grid_out * grid_in, win_in) for i, s in batch])
        crnn_t = frontends.crnn.normalize(torch.from_numpy(crnn).to(device))
        feats_t = frontends[stream].normalize(torch.from_numpy(feats).to(device))
        logits = model(crnn_t, atst_feats=feats_t).strong_logits.double().cpu().numpy()  # (B, C, win_out)
        for (i, s), clip_logits in zip(batch, logits):
            total[i, :, s : s + win_out] += clip_logits
            count[i, :, s : s + win_out] += 1.0
        progress.advance(len(batch))
    progress.close()
    out_width = max(win_out, int(n_frames.max(initial=0)))
    mean = total[:, :, :out_width] / np.maximum(count[:, :, :out_width], 1.0)
    valid = np.arange(out_width) < np.asarray(n_frames)[:, None, None]
    return np.where(valid, mean, 0.0).astype(np.float32)


def predict_split(
    model_path: str | Path,
    feature_dir: str | Path,
    output: str | Path,
    network: str,
    hop_seconds: float,
    batch_size: int,
    device: str,
    provenance: dict,
) -> None:
    """Predict every clip of a cached split with one member's network and write its logits file."""
    model, info = load_sed_model(model_path, which=network)
    config = info["config"]
    stream = model.backbone.frontend
    dev = resolve_device(device)
    frontends = build_frontends(config["frontends"], ["crnn", stream]).to(dev)
    cache = open_feature_cache(feature_dir)
    n_frames = np.asarray(cache.n_crnn, dtype=np.int64) // model.time_pooling
    logits = predict_logits(
        model, frontends, cache.crnn, cache.mel(stream), n_frames, config["audio"]["clip_seconds"], hop_seconds,
        batch_size, dev,
    )  # fmt: skip
    index_file = Path(feature_dir) / "index.tsv"
    provenance = {
        **provenance,
        "network": network,
        "checkpoint": str(model_path),
        "checkpoint_sha256": sha256_file(model_path),
        "features": str(feature_dir),
        "features_index_sha256": sha256_file(index_file),
        "hop_seconds": hop_seconds,
    }
    write_logits(output, cache.filenames, logits, n_frames, info["classes"], info["frame_hop"], provenance, "member")
    log.info("%s: logits %s of %d clips -> %s", model_path, logits.shape, len(n_frames), output)


def configure_predict_logits(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("--model", required=True, help="stage-2 model.pt of the member")
    parser.add_argument("--features", nargs="+", required=True, help="feature cache folder of each split")
    parser.add_argument("--output", nargs="+", required=True, help="member logits file (.h5) of each split")
    parser.add_argument("--config-json", required=True, help='{"network": "teacher"|"student", "hop_seconds": s}')
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--member", required=True)
    parser.add_argument("--splits", nargs="+", required=True, help="dataset/split of each split (provenance)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | gpu | cuda[:i]")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch")

    def run(args: argparse.Namespace) -> int:
        """One job per member: every training split, in the order given (one model load, one torch import)."""
        cfg = json.loads(args.config_json)
        paired_lengths("predict-logits", args, "features", ["output", "splits"])
        if any(ref.count("/") != 1 for ref in args.splits):
            raise ValueError(f"predict-logits: --splits: expected dataset/split values, got {args.splits}")
        refs = [split_ref(ref) for ref in args.splits]
        torch.set_num_threads(args.threads)
        if resolve_device(args.device).type == "cuda":
            # CUDA has non-deterministic kernels; the CPU ones used here are deterministic, and the call would
            # import torch._inductor (1.7 s of a 12 s job, between the iterations on the embedded default)
            torch.use_deterministic_algorithms(True, warn_only=True)
        for features, output, (dataset, split) in zip(args.features, args.output, refs):
            provenance = {"iteration": args.iteration, "member": args.member, "dataset": dataset, "split": split}
            predict_split(
                args.model, features, output, cfg["network"], cfg["hop_seconds"], args.batch_size, args.device,
                provenance,
            )  # fmt: skip
        return 0

    return run
