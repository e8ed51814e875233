"""Embedding cache (``cache-embeddings``): frozen backbone frame embeddings of a split, for stage 1.

``results/embeddings/{backbone}/{dataset}/{split}.npy``: float16 (N, D, E_max), rows as the split's feature
cache, E_max = T_max' // k for the backbone's ``frames_per_embedding`` k of its frontend stream
(ATST-Frame: the ATST mel, k = 4: 250 per 10 s, one per 40 ms). Each clip is embedded in consecutive 10 s
chunks: chunk c is the window of stream frames [1000 c, 1000 c + 1001) (the 1001 frames of a 10 s window
starting at 10 c s at a 10 ms hop, shorter at the end), normalised on its own by the frontend's ``normalize``
and embedded to 250 frames at [250 c, 250 c + 250). A clip of at most 10 s (zero-padded to 10 s in the feature
cache) is therefore embedded exactly as the model embeds its 1001-frame input on the fly. Chunks after the
first that hold less than one embedding frame of the clip's true frames stay zero.

Sidecar ``{split}.json``: backbone file and its sha256, the frontend parameters, the feature index's
sha256 (row order), shape and layout, so a consumer can check what the array was computed from.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from sedlib.devices import resolve_device
from sedlib.features.cache import INDEX_FILE, FeatureCache, open_feature_cache
from sedlib.features.frontends import MelFrontend, build_frontend
from sedlib.io import atomic_path, sha256_file, write_json
from sedlib.models.backbone import Backbone
from sedlib.models.checkpoint import load_backbone
from sedlib.progress import Progress

log = logging.getLogger(__name__)


def chunk_layout(n_frames: int, clip_frames: int, patch_frames: int) -> list[tuple[int, int, int]]:
    """(first stream frame, end frame, first embedding) of each chunk of an ``n_frames`` wide feature array.

    Chunks start every ``clip_frames - 1`` frames (1000 for 10 s), rounded down to whole embedding frames of
    ``patch_frames`` stream frames, and span up to ``clip_frames`` frames (1001); chunks too short for one
    embedding frame are dropped.
    """
    stride = (clip_frames - 1) // patch_frames * patch_frames
    return [
        (start, min(start + clip_frames, n_frames), start // patch_frames)
        for start in range(0, n_frames, stride)
        if n_frames - start >= patch_frames
    ]


@torch.inference_mode()
def embed_cache(
    cache: FeatureCache,
    backbone: Backbone,
    frontend: MelFrontend,
    out: np.ndarray,
    clip_frames: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> None:
    """Fill ``out`` (N, D, T_max' // frames_per_embedding) with the frame embeddings of every cached clip."""
    backbone = backbone.to(device).eval()
    frontend = frontend.to(device)
    mel, n_frames, step = cache.mel(backbone.frontend), cache.n_frames(backbone.frontend), backbone.frames_per_embedding
    layout = chunk_layout(mel.shape[-1], clip_frames, step)
    # rows of the clips long enough to reach each chunk
    chunk_rows = [np.flatnonzero(n_frames - start >= step) if start else np.arange(len(cache))
                  for start, _, _ in layout]  # fmt: skip
    progress = Progress(label="cache-embeddings", total=sum(map(len, chunk_rows)), unit="clip windows")
    for (start, stop, first_embedding), rows in zip(layout, chunk_rows):
        for first in range(0, len(rows), batch_size):
            batch_rows = rows[first : first + batch_size]
            feats = torch.from_numpy(np.ascontiguousarray(mel[batch_rows, :, start:stop])).to(device)
            embeddings = backbone(frontend.normalize(feats))  # (b, D, E)
            out[batch_rows, :, first_embedding : first_embedding + embeddings.shape[-1]] = (
                embeddings.to(torch.float16).cpu().numpy()
            )
            progress.advance(len(batch_rows))
    progress.close()


def build_embedding_cache(
    features_dir: Path, backbone_path: Path, out_path: Path, frontends_cfg: dict, clip_seconds: float,
    batch_size: int = 32, device: torch.device | str = "cpu",
) -> dict:
    """Write ``out_path`` (.npy) and its ``.json`` sidecar for the feature cache in ``features_dir``;
    ``frontends_cfg``: frontend sections by name, among them the one that the backbone's kind reads."""
    cache = open_feature_cache(features_dir)
    backbone = load_backbone(backbone_path)
    if backbone.frontend not in frontends_cfg:
        raise ValueError(f"{backbone_path}: a {backbone.kind} backbone reads frontends.{backbone.frontend}, not given")
    frontend_cfg = frontends_cfg[backbone.frontend]
    frontend = build_frontend(backbone.frontend, frontend_cfg)
    clip_frames = frontend.n_frames(int(round(clip_seconds * frontend.sample_rate)))
    shape = (len(cache), backbone.embed_dim, cache.mel(backbone.frontend).shape[-1] // backbone.frames_per_embedding)
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        embed_cache(cache, backbone, frontend, out, clip_frames, batch_size, device)
        out.flush()
        del out
    meta = {
        "shape": list(shape),
        "dtype": "float16",
        "backbone_file": str(backbone_path),
        "backbone_sha256": sha256_file(backbone_path),
        "backbone_kind": backbone.kind,
        "backbone_config": backbone.hparams,
        "frontend": frontend.params(),
        "features_dir": str(features_dir),
        "index_sha256": sha256_file(Path(features_dir) / INDEX_FILE),
        "chunk_frames": clip_frames,
        "embedding_hop_seconds": backbone.embedding_hop(frontend_cfg),
    }
    write_json(sidecar_path(out_path), meta)
    return meta


def sidecar_path(embedding_path: str | Path) -> Path:
    return Path(embedding_path).with_suffix(".json")


def open_embeddings(path: str | Path) -> tuple[np.ndarray, dict]:
    """(memory-mapped float16 (N, D, E_max) array, sidecar metadata)."""
    path = Path(path)
    meta_path = sidecar_path(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"embedding sidecar not found: {meta_path}")
    meta = json.loads(meta_path.read_text())
    array = np.load(path, mmap_mode="r")
    if list(array.shape) != meta["shape"]:
        raise ValueError(f"{path}: shape {array.shape} differs from its sidecar {meta_path} ({meta['shape']})")
    return array, meta


def configure_cache_embeddings(parser: argparse.ArgumentParser):
    parser.add_argument("--features-dir", required=True, type=Path, help="the split's feature cache folder")
    parser.add_argument("--backbone", required=True, type=Path, help="backbone file (results/backbone/{name}.pt)")
    parser.add_argument("--out", required=True, type=Path, help="embedding array (.npy; sidecar .json beside it)")
    parser.add_argument("--config-json", required=True,
                        help='{"frontends": {<name>: the section the backbone reads}, "clip_seconds": s}')
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=32, help="chunks per backbone batch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        torch.set_num_threads(args.threads)
        meta = build_embedding_cache(args.features_dir, args.backbone, args.out, cfg["frontends"], cfg["clip_seconds"],
                                     args.batch_size, resolve_device(args.device))
        log.info("wrote %s %s", args.out, meta["shape"])
        return 0

    return run
