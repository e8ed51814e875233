"""``pretrain-backbone``: supervised clip tagging of the tiny ATST-Frame, standing in for AudioSet pretraining.

The embedded configuration has no access to the published AudioSet-pretrained ATST-Frame, so the backbone
is trained here on the ``pretrain`` split (weak labels; with own data, a strongly labelled training split,
whose events give the clip tags) with a clip head: mean over the frame embeddings ->
Linear -> sigmoid, binary cross-entropy, AdamW. This gives stage 1's frozen embeddings information about
the sound classes. Inputs are the split's cached ATST mel features, normalised by ``ATSTFrontend``; clips
longer than 10 s are cropped at a random offset each epoch (evaluated on their first 10 s). A seeded
``val_fraction`` of the clips is held out; macro mAP on train and held-out clips is measured before and after
training and stored in the backbone file's provenance (``log``) to show that the backbone learned.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sedlib.data.metadata import STRONG_COLUMNS, parse_strong, parse_weak
from sedlib.features.cache import FeatureCache, open_feature_cache
from sedlib.devices import resolve_device
from sedlib.features.frontends import ATSTFrontend
from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.checkpoint import save_backbone

log = logging.getLogger(__name__)


def clip_tags(metadata: Path) -> dict[str, set[str]]:
    """Class names present in each clip of a weak or strong metadata TSV (told apart by the header)."""
    with open(metadata, encoding="utf-8") as f:
        header = f.readline().strip()
    if header != "\t".join(STRONG_COLUMNS):
        return {row.filename: set(row.labels) for row in parse_weak(metadata)}
    tags: dict[str, set[str]] = {}
    for row in parse_strong(metadata):
        tags.setdefault(row.filename, set()).update([row.label] if row.label else [])
    return tags


def read_weak_targets(metadata: Path, cache: FeatureCache) -> tuple[np.ndarray, list[str], np.ndarray]:
    """((N, C) float32 targets in feature-cache row order, sorted class names, rows that have labels) from a weak
    or strong TSV. Cached clips without labels (a training split's audio that validation left out) are skipped."""
    labels = clip_tags(metadata)
    missing = [name for name in cache.filenames if name not in labels]
    if len(missing) == len(cache):
        raise ValueError(f"{metadata}: no labels for any of the {len(cache)} cached clips, e.g. {missing[:3]}")
    if missing:
        log.warning("%s: no labels for %d cached clips (left out), e.g. %s", metadata, len(missing), missing[:3])
    classes = sorted({label for names in labels.values() for label in names})
    index = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(cache), len(classes)), dtype=np.float32)
    rows = np.array([row for row, filename in enumerate(cache.filenames) if filename in labels], dtype=np.int64)
    for row in rows:
        targets[row, [index[label] for label in labels[cache.filenames[row]]]] = 1.0
    return targets, classes, rows


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro average precision over the classes that have at least one positive; (N, C) inputs."""
    aps = []
    for c in range(targets.shape[1]):
        positives = targets[:, c] > 0
        if not positives.any():
            continue
        hits = positives[np.argsort(-scores[:, c], kind="stable")]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(precision[hits].mean()))
    return float(np.mean(aps)) if aps else float("nan")


class ClipTagger(nn.Module):
    """ATST-Frame + clip head: mean over frames -> Linear -> logits (B, C)."""

    def __init__(self, backbone: ATSTFrame, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(feats).mean(dim=-1))


class TaggingData:
    """Normalised 10 s crops of the cached ATST mel features, with their clip targets."""

    def __init__(
        self, cache: FeatureCache, targets: np.ndarray, frontend: ATSTFrontend, clip_frames: int, patch_frames: int
    ):
        self.cache, self.targets, self.frontend = cache, torch.from_numpy(targets), frontend
        self.clip_frames, self.patch_frames = clip_frames, patch_frames

    def batch(self, rows: np.ndarray, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (b, n_mels, clip_frames) cropped at a random whole-patch offset (offset 0 without generator)."""
        crops = []
        for row in rows:
            spare = max(0, int(self.cache.n_atst[row]) - self.clip_frames) // self.patch_frames
            offset = 0
            if generator is not None and spare:
                offset = self.patch_frames * int(torch.randint(spare + 1, (1,), generator=generator))
            crops.append(self.cache.atst[row, :, offset : offset + self.clip_frames])
        feats = torch.from_numpy(np.stack(crops).astype(np.float32, copy=False))
        return self.frontend.normalize(feats), self.targets[rows]


@torch.inference_mode()
def evaluate(model: ClipTagger, data: TaggingData, rows: np.ndarray, batch_size: int, device: torch.device | str) -> float:
    model.eval()
    scores = [torch.sigmoid(model(data.batch(rows[i : i + batch_size], None)[0].to(device))).cpu()
              for i in range(0, len(rows), batch_size)]
    return mean_average_precision(torch.cat(scores).numpy(), data.targets[rows].numpy())


def pretrain_backbone(
    features_dir: Path, metadata: Path, out: Path, backbone_cfg: dict, atst_cfg: dict, clip_seconds: float, seed: int,
    val_fraction: float = 0.2, device: torch.device | str = "cpu",
) -> dict:
    """Train the backbone of ``backbone_cfg`` sizes with ``backbone_cfg["pretrain"]``; write our backbone file."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cache = open_feature_cache(features_dir)
    targets, classes, labelled = read_weak_targets(metadata, cache)
    frontend = ATSTFrontend(atst_cfg)
    backbone = ATSTFrame.from_config(backbone_cfg, atst_cfg["n_mels"])
    model = ClipTagger(backbone, len(classes)).to(device)
    clip_frames = frontend.n_frames(int(round(clip_seconds * frontend.sample_rate)))
    data = TaggingData(cache, targets, frontend, clip_frames, backbone.patch_frames)
    order = labelled[torch.randperm(len(labelled), generator=generator).numpy()]
    n_val = int(round(val_fraction * len(labelled)))
    val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
    if len(train_rows) == 0:
        raise ValueError(f"{features_dir}: too few clips ({len(labelled)}) to hold out {val_fraction:.0%} and train")
    hp = backbone_cfg["pretrain"]
    batch_size = hp["batch_size"]
    def measure() -> dict:
        return {"train_map": evaluate(model, data, train_rows, batch_size, device),
                "val_map": evaluate(model, data, val_rows, batch_size, device)}

    before = measure()
    log.info("before: train mAP %.3f, held-out mAP %.3f", before["train_map"], before["val_map"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"])
    loss_fn = nn.BCEWithLogitsLoss()
    epochs = []
    for epoch in range(hp["epochs"]):
        model.train()
        permutation = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        losses = []
        for first in range(0, len(permutation), batch_size):
            feats, batch_targets = data.batch(permutation[first : first + batch_size], generator)
            loss = loss_fn(model(feats.to(device)), batch_targets.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        val_map = evaluate(model, data, val_rows, batch_size, device)
        epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_map": val_map})
        log.info("epoch %d: loss %.4f, held-out mAP %.3f", epoch + 1, epochs[-1]["loss"], val_map)
    after = measure()
    log.info("after: train mAP %.3f, held-out mAP %.3f", after["train_map"], after["val_map"])
    training_log = {"before": before, "after": after, "epochs": epochs, "classes": classes,
                    "n_train": len(train_rows), "n_val": len(val_rows), "seconds": time.perf_counter() - started}
    provenance = {"source": "pretrain", "features_dir": str(features_dir), "metadata": str(metadata), "seed": seed,
                  "pretrain": hp, "log": training_log}
    save_backbone(out, backbone.cpu(), provenance)
    return training_log


def configure_pretrain_backbone(parser: argparse.ArgumentParser):
    parser.add_argument("--features-dir", required=True, type=Path, help="feature cache of the pretrain split")
    parser.add_argument("--metadata", required=True, type=Path,
                        help="labels of the pretrain split: weak (filename event_labels) or strong")
    parser.add_argument("--out", required=True, type=Path, help="backbone file to write (results/backbone/backbone.pt)")
    parser.add_argument("--config-json", required=True,
                        help='{"backbone": model.backbone, "atst_frontend": frontends.atst, '
                             '"clip_seconds": audio.clip_seconds, "seed": seed}')
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        torch.set_num_threads(args.threads)
        result = pretrain_backbone(args.features_dir, args.metadata, args.out, cfg["backbone"], cfg["atst_frontend"],
                                   cfg["clip_seconds"], cfg["seed"], device=resolve_device(args.device))
        log.info("wrote %s in %.1f s (held-out mAP %.3f -> %.3f)", args.out, result["seconds"],
                 result["before"]["val_map"], result["after"]["val_map"])
        return 0

    return run
