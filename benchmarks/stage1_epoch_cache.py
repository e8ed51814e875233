"""Stage-1 epoch with cached frozen-backbone embeddings vs the frozen backbone computed on the fly.

One stage-1-style epoch: batches of ``training.stage1.batch_sizes`` clips from the four training groups
(ATST-SED order strong_real, synthetic, weak, unlabeled), ``min(len_g // batch_g)`` steps, each step =
per-clip normalisation of the cached CRNN mels, student forward + BCE loss + backward + Adam step, teacher
forward (no grad) and EMA update. The two variants differ only in where the backbone frames come from:
- cached: the float16 embedding cache (``sedlib.features.embeddings``), read from disk;
- on the fly: cached ATST mels -> ``ATSTFrontend.normalize`` -> frozen ATST-Frame (no grad, eval). It is
  computed once per step and shared by student and teacher (the published code runs it in both), which
  favours the on-the-fly variant.
Times are CPU seconds of this process (``time.process_time``, one torch thread), which other jobs on a
shared machine disturb less than wall-clock time. Both read the CRNN mels from the feature cache, so the
ratio isolates the backbone. The time spent obtaining the backbone frames is also reported on its own: the
epoch ratio is bounded by the CRNN head's share of the cached epoch.

Two sizes: the embedded default (tiny backbone, slim CRNN; full epoch both ways) and the published sizes
(ATST-Frame 768/12/12, CRNN filters [16, 32, 64, 128 x 4], 128 GRU units). For the published sizes an
epoch is too slow on a CPU: ``--published-steps`` steps of each variant are timed and the epoch is
extrapolated linearly; its embedding cache is filled with random float16 values (the timing of reading it does not
depend on the values). Data: stand-in 10 s noise clips in the configured group sizes (the synthetic
dataset's ``sizes``; weak minus its ``val_fraction``), run through the real feature and embedding caches.

    python benchmarks/stage1_epoch_cache.py            # writes benchmarks/results/stage1_epoch_cache.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sedlib.config import TRAIN_ROLES, load_config, splits_with_role, stage_batch_sizes
from sedlib.features.cache import FeatureCache, build_feature_cache
from sedlib.features.embeddings import build_embedding_cache, open_embeddings
from sedlib.features.frontends import build_frontends
from sedlib.io import write_json
from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.checkpoint import save_backbone
from sedlib.models.crnn import CRNN

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_CRNN = {"filters": [16, 32, 64, 128, 128, 128, 128], "rnn_hidden": 128}
PUBLISHED_BACKBONE = {"embed_dim": 768, "depth": 12, "num_heads": 12}


def group_sizes(config: dict) -> dict[str, int]:
    """Training clips per role in the embedded synthetic dataset (weak: the train part of its partition)."""
    sizes = {}
    for role in TRAIN_ROLES:
        total = 0
        for dataset, split in splits_with_role(config, role):
            n = config["datasets"][dataset]["synthetic"]["sizes"][split]
            if role == "weak":
                n -= int(round(n * config["datasets"][dataset]["splits"][split]["val_fraction"]))
            total += n
        sizes[role] = total
    return sizes


def make_group_cache(root: Path, n_clips: int, config: dict, rng: np.random.Generator) -> FeatureCache:
    """Feature cache of ``n_clips`` stand-in 10 s clips (noise), built by the real cache code."""
    audio = root / "audio_16k"
    audio.mkdir(parents=True)
    samples = int(config["audio"]["clip_seconds"] * config["audio"]["sample_rate"])
    lines = ["filename\tduration"]
    for i in range(n_clips):
        wave = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        sf.write(audio / f"{i:04d}.wav", wave, config["audio"]["sample_rate"], subtype="PCM_16")
        lines.append(f"{i:04d}.wav\t{config['audio']['clip_seconds']}")
    (root / "durations.tsv").write_text("\n".join(lines) + "\n")
    return build_feature_cache(root / "durations.tsv", audio, root / "features", config["frontends"],
                               config["audio"]["clip_seconds"])


def run_epoch(
    caches, embeddings, batch_sizes, n_steps, student, teacher, backbone, frontends, seed
) -> tuple[float, float]:
    """(CPU seconds for ``n_steps`` stage-1 steps, of which CPU seconds spent obtaining backbone frames);
    ``embeddings`` None = backbone on the fly."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    orders = {role: rng.permutation(len(caches[role])) for role in caches}
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.train()
    teacher.train()
    frames_s = 0.0
    started = time.process_time()
    for step in range(n_steps):
        crnn, frames = [], []
        for role, cache in caches.items():
            rows = np.sort(orders[role][step * batch_sizes[role] : (step + 1) * batch_sizes[role]])
            crnn.append(torch.from_numpy(cache.crnn[rows][:, :, :626]))
            frames_started = time.process_time()
            if embeddings is not None:
                frames.append(torch.from_numpy(embeddings[role][rows][:, :, :250].astype(np.float32)))
            else:
                with torch.no_grad():
                    frames.append(backbone(frontends.atst.normalize(torch.from_numpy(cache.atst[rows][:, :, :1001]))))
            frames_s += time.process_time() - frames_started
        crnn_feats, frames = frontends.crnn.normalize(torch.cat(crnn)), torch.cat(frames)
        out = student(crnn_feats, embeddings=frames)
        with torch.no_grad():
            teacher_out = teacher(crnn_feats, embeddings=frames)
        loss = torch.nn.functional.binary_cross_entropy(out.strong, (teacher_out.strong > 0.5).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(0.999).add_(s, alpha=0.001)
    return time.process_time() - started, frames_s


def measure(name, caches, embeddings, batch_sizes, n_steps, crnn_cfg, backbone, frontends, steps_timed) -> dict:
    """Both variants over ``steps_timed`` steps (the whole epoch unless fewer), extrapolated to ``n_steps``."""
    torch.manual_seed(0)
    student = CRNN(10, filters=crnn_cfg["filters"], pooling=crnn_cfg["pooling"], rnn_hidden=crnn_cfg["rnn_hidden"],
                   embed_dim=backbone.embed_dim)
    teacher = copy.deepcopy(student)
    backbone.eval().requires_grad_(False)
    timed = min(n_steps, steps_timed)

    def epoch(source, steps, seed=0):
        return run_epoch(caches, source, batch_sizes, steps, copy.deepcopy(student), copy.deepcopy(teacher), backbone,
                         frontends, seed)

    epoch(embeddings, 1, seed=1)  # warm-up (allocator, lazy initialisation)
    scale = n_steps / timed
    (cached_s, cached_frames_s), (fly_s, fly_frames_s) = epoch(embeddings, timed), epoch(None, timed)
    result = {
        "backbone": backbone.hparams,
        "crnn": {"filters": crnn_cfg["filters"], "rnn_hidden": crnn_cfg["rnn_hidden"]},
        "steps_timed": timed,
        "extrapolated": timed < n_steps,
        "cached_epoch_s": round(cached_s * scale, 3),
        "on_the_fly_epoch_s": round(fly_s * scale, 3),
        "speedup": round(fly_s / cached_s, 2),
        # the part the cache replaces: obtaining the backbone frames (read float16 vs normalise + backbone)
        "frames_cached_epoch_s": round(cached_frames_s * scale, 3),
        "frames_on_the_fly_epoch_s": round(fly_frames_s * scale, 3),
        "frames_speedup": round(fly_frames_s / cached_frames_s, 1),
        # the published stage 1 runs the backbone inside both student and teacher: one more backbone pass per step
        "on_the_fly_published_double_pass_epoch_s": round((fly_s + fly_frames_s) * scale, 3),
        "speedup_vs_published_double_pass": round((fly_s + fly_frames_s) / cached_s, 2),
        "head_share_of_cached_epoch": round(1 - cached_frames_s / cached_s, 3),
    }
    print(f"{name}: cached {result['cached_epoch_s']:.1f} s/epoch, "
          f"on the fly {result['on_the_fly_epoch_s']:.1f} s/epoch"
          f"{' (extrapolated from %d of %d steps)' % (timed, n_steps) if timed < n_steps else ''}: "
          f"{result['speedup']}x (backbone frames alone: {result['frames_speedup']}x)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "workflow_config.yaml")
    parser.add_argument("--published-steps", type=int, default=3,
                        help="steps timed (each variant) at the published size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stage1_epoch_cache.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    sizes = group_sizes(config)
    batch_sizes = stage_batch_sizes(config, 1)
    n_steps = min(sizes[r] // batch_sizes[r] for r in batch_sizes if batch_sizes[r])
    frontends = build_frontends(config["frontends"])
    rng = np.random.default_rng(0)
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": args.threads, "torch": torch.__version__},
        "epoch": {"clips_per_group": sizes, "batch_sizes": batch_sizes, "steps": n_steps,
                  "clips_per_step": sum(batch_sizes.values())},
    }
    with tempfile.TemporaryDirectory(prefix="stage1_bench_") as tmp:
        tmp = Path(tmp)
        caches = {role: make_group_cache(tmp / role, sizes[role], config, rng) for role in batch_sizes}
        feature_bytes = sum((c.directory / name).stat().st_size
                            for c in caches.values() for name in ("crnn_mel.npy", "atst_mel.npy"))

        torch.manual_seed(0)
        tiny = ATSTFrame.from_config(config["model"]["backbone"], config["frontends"]["atst"]["n_mels"])
        save_backbone(tmp / "tiny.pt", tiny, {"source": "benchmark"})
        tiny_emb = {}
        for role, cache in caches.items():
            build_embedding_cache(cache.directory, tmp / "tiny.pt", tmp / f"{role}_tiny.npy",
                                  config["frontends"]["atst"], config["audio"]["clip_seconds"])
            tiny_emb[role] = open_embeddings(tmp / f"{role}_tiny.npy")[0]
        results["embedded"] = measure("embedded", caches, tiny_emb, batch_sizes, n_steps, config["model"]["crnn"], tiny,
                                      frontends, steps_timed=n_steps)
        results["embedded"]["embedding_cache_bytes"] = sum((tmp / f"{r}_tiny.npy").stat().st_size for r in caches)

        big = ATSTFrame(**PUBLISHED_BACKBONE)
        big_emb = {}
        for role, cache in caches.items():
            array = np.lib.format.open_memmap(tmp / f"{role}_big.npy", mode="w+", dtype=np.float16,
                                              shape=(len(cache), big.embed_dim, cache.atst.shape[-1] // 4))
            array[:] = rng.standard_normal(array.shape, dtype=np.float32).astype(np.float16)
            array.flush()
            big_emb[role] = np.load(tmp / f"{role}_big.npy", mmap_mode="r")
        published_crnn = dict(config["model"]["crnn"], **PUBLISHED_CRNN)
        results["published"] = measure("published", caches, big_emb, batch_sizes, n_steps, published_crnn, big,
                                       frontends, steps_timed=args.published_steps)
        results["published"]["embedding_cache_bytes"] = sum((tmp / f"{r}_big.npy").stat().st_size for r in caches)
        results["feature_cache_bytes"] = feature_bytes
    results["target_speedup"] = 5.0
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
