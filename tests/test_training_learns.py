"""Regression guard: stage-1 training of the shipped embedded model learns (frame AUC clearly above chance).

A short supervised-plus-mean-teacher run (``sedlib.training.run.train``, stage 1) of the CRNN and frontends of
``workflow_config.yaml`` on a small synthetic set made by the pipeline's own generator (3 classes, 10 s
clips), with a randomly initialised backbone (its embeddings carry no class knowledge, so the CNN branch and
the heads must learn). The exported teacher's frame-level macro ROC AUC on held-out clips must clear a threshold
set from measurements with several seeds (see THRESHOLD).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from sedlib.config import load_config
from sedlib.data.labels import encode_strong
from sedlib.data.metadata import events_by_file, read_strong, write_durations
from sedlib.data.synth import synthesize_dataset
from sedlib.features.cache import build_feature_cache
from sedlib.features.embeddings import build_embedding_cache
from sedlib.models import build_backbone
from sedlib.models.checkpoint import load_sed_model, save_backbone
from sedlib.evaluation.scoring import load_wave
from sedlib.features.frontends import build_frontends
from sedlib.models.windowing import predict_clip
from sedlib.training.run import train

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Alarm_bell_ringing", "Blender", "Dog"]
SIZES = {"train": 48, "val": 16}
# Teacher frame AUC after 60 optimizer steps (stage-1 checkpoint selected on the validation BCE), measured
# 2026-11-30 with member seeds 1-5 for the shipped CRNN (1-layer GRU, no dropout, widths [8, 16, 32, 32, 32]):
# 0.910, 0.901, 0.887, 0.957, 0.940 (chance: 0.5; the previous 2-layer CRNN: 0.892-0.978). The threshold sits
# 0.137 below the lowest; the suite runs seed 1 (about 10 s of training on one core).
THRESHOLD = 0.75
STEPS = 60


def frame_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro ROC AUC over classes (Mann-Whitney U with tie correction) of (C, N) scores and binary targets."""
    aucs = []
    for s, t in zip(scores, targets.astype(bool)):
        if t.all() or not t.any():
            continue
        ranks = np.empty(len(s))
        order = np.argsort(s, kind="mergesort")
        ranks[order] = np.arange(1, len(s) + 1)
        for value in np.unique(s[np.diff(np.sort(s), prepend=np.nan) == 0]):  # average ranks of ties
            ranks[s == value] = ranks[s == value].mean()
        n_pos, n_neg = t.sum(), (~t).sum()
        aucs.append((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


def test_frame_auc_of_known_rankings():
    targets = np.array([[0, 0, 1, 1]])
    assert frame_auc(np.array([[0.1, 0.2, 0.3, 0.4]]), targets) == 1.0
    assert frame_auc(np.array([[0.4, 0.3, 0.2, 0.1]]), targets) == 0.0
    assert frame_auc(np.array([[0.5, 0.5, 0.5, 0.5]]), targets) == 0.5


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Synthesized 16 kHz splits with validated-format metadata, feature caches and random-backbone embeddings."""
    config = load_config(REPO / "workflow_config.yaml")
    root = tmp_path_factory.mktemp("learns")
    dataset = {
        "classes": CLASSES,
        "synthetic": dict(config["datasets"]["desed"]["synthetic"], sample_rate=16000, sizes=SIZES),
        "splits": {
            "train": {"audio": "audio/train", "metadata": "meta/train.tsv", "labels": "strong", "role": "synthetic"},
            "val": {"audio": "audio/val", "metadata": "meta/val.tsv", "labels": "strong", "role": "validation"},
        },
    }
    synthesize_dataset(dataset, seed=7, root=root / "raw", threads=1)
    torch.manual_seed(0)
    backbone = root / "backbone.pt"
    save_backbone(backbone, build_backbone(config["model"], config["frontends"]), {"source": "random"})
    splits = []
    for name, split in dataset["splits"].items():
        audio = root / "raw" / split["audio"]
        durations = root / name / "durations.tsv"
        write_durations(durations, {p.name: 10.0 for p in sorted(audio.glob("*.wav"))})
        build_feature_cache(durations, audio, root / name / "features", config["frontends"], 10.0)
        build_embedding_cache(root / name / "features", backbone, root / name / "emb.npy", config["frontends"], 10.0)
        splits.append({"dataset": "small", "split": name, "role": split["role"], "labels": "strong",
                       "features": str(root / name / "features"), "embeddings": str(root / name / "emb.npy"),
                       "metadata": str(root / "raw" / split["metadata"])})  # fmt: skip
    return config, root, splits, backbone


def run_config(config: dict, seed: int) -> dict:
    stage = dict(config["training"]["stage1"], batch_sizes={"synthetic": 8}, epochs=STEPS // (SIZES["train"] // 8))
    return {
        "stage": 1, "member": {"name": f"s{seed}", "seed": seed}, "audio": config["audio"],
        "frontends": config["frontends"], "model": config["model"],
        "training": {**{k: config["training"][k] for k in ("accumulate_grad_batches", "num_workers", "devices",
                                                           "precision")},
                     "accelerator": "cpu", "strategy": "auto", "stage": stage},
        "classes": CLASSES, "datasets": {"small": {"labelled": CLASSES, "aliases": {}}}, "median_window": [7] * len(CLASSES),
    }  # fmt: skip


def teacher_frame_auc(model_file: Path, root: Path) -> float:
    model, info = load_sed_model(model_file, which="teacher")
    model.eval()
    frontends = build_frontends(info["config"]["frontends"])
    events = events_by_file(read_strong(root / "raw" / "meta" / "val.tsv"))
    scores, targets = [], []
    for path in sorted((root / "raw" / "audio" / "val").glob("*.wav")):
        logits = predict_clip(model, frontends, torch.from_numpy(load_wave(path, 16000)))
        scores.append(logits.numpy())
        frame_hop = frontends.crnn.hop_length * model.time_pooling / frontends.crnn.sample_rate
        targets.append(encode_strong(events.get(path.name, []), CLASSES, logits.shape[1], frame_hop))
    return frame_auc(np.concatenate(scores, axis=1), np.concatenate(targets, axis=1))


@pytest.mark.parametrize("seed", [1])
def test_stage1_training_learns(small_set, tmp_path, seed):
    config, root, splits, backbone = small_set
    torch.set_num_threads(1)
    train(run_config(config, seed), {"splits": splits, "backbone": str(backbone)}, tmp_path / "run")
    auc = teacher_frame_auc(tmp_path / "run" / "model.pt", root)
    print(f"seed {seed}: teacher frame AUC {auc:.3f} after {STEPS} steps")
    assert auc > THRESHOLD, f"training does not learn: frame AUC {auc:.3f} <= {THRESHOLD} after {STEPS} steps"
