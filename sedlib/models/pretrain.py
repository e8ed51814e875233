"""``pretrain-backbone``: supervised tagging of a small backbone (any kind), standing in for AudioSet pretraining.

The embedded configuration has no access to the published AudioSet-pretrained ATST-Frame, so the backbone
is trained here on the ``pretrain`` split (with own data and no such split: the first labelled training
split) with a linear head on every frame embedding (ATST-Frame: 40 ms):

- strong labels (``filename onset offset event_label``): frame-level tagging, binary cross-entropy of the
  frame logits (B, C, T') against the events' frame targets, the stand-in for the AudioSet-*strong*
  fine-tuning of the DCASE 2024 Task 4 winner's transformers (Schmid et al., "multi-stage training" of
  frame-level ATST / BEATs / PaSST before SED fine-tuning);
- weak labels (``filename event_labels``): clip tagging, BCE of the mean frame logit (= the head applied to
  the mean embedding).

Inputs are the split's cached features of the backbone's frontend stream (ATST mel for ATST-Frame), normalised by
that frontend; clips longer than 10 s are cropped at a random whole-embedding-frame offset each epoch (targets
shift with the crop; evaluation uses the first 10 s). A seeded ``val_fraction`` of the clips is held out; clip-
level macro mAP (clip score: maximum frame probability) on train and held-out clips is measured before and after
training, held-out mAP also every ``VAL_EVERY_EPOCHS`` epochs, and stored in the backbone file's provenance
(``log``) to show that the backbone learned. AdamW with a
cosine decay to 0 over ``epochs``; the metadata's header decides the mode.
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

from sedlib.data.labels import encode_strong
from sedlib.data.metadata import STRONG_COLUMNS, parse_strong, parse_weak
from sedlib.features.cache import FeatureCache, open_feature_cache
from sedlib.devices import resolve_device
from sedlib.features.frontends import MelFrontend, build_frontend
from sedlib.models.backbone import Backbone, build_backbone
from sedlib.models.checkpoint import save_backbone

log = logging.getLogger(__name__)

VAL_EVERY_EPOCHS = 4  # held-out mAP in the log; every epoch cost ~7 % of an epoch on the embedded default
CROP_CACHE_BYTES = 1 << 30  # normalised crops kept in memory (TaggingData): 410 MB on the embedded default, well
                            # inside the pretrain_backbone rule's mem_mb (4000)


def read_targets(
    metadata: Path, cache: FeatureCache, frame_hop: float, patch_frames: int, stream: str
) -> tuple[list[np.ndarray | None], list[str], bool, np.ndarray]:
    """Per cached clip (row order) its targets, the sorted class names, whether the labels are strong, and the
    rows that have labels.

    Strong metadata: (C, n_frames // patch_frames) frame targets on the embedding grid (``frame_hop`` s; n_frames
    of the backbone's feature ``stream``, ``patch_frames`` of its frames per embedding);
    weak metadata: (C,) clip targets. The mode is read from the file's header. Cached clips without labels
    (a training split's audio that metadata validation left out) get None and are skipped, with a warning.
    """
    with open(metadata, encoding="utf-8") as f:
        strong = f.readline().rstrip("\r\n").split("\t") == list(STRONG_COLUMNS)
    if strong:
        events: dict[str, list] = {}
        for row in parse_strong(metadata):
            events.setdefault(row.filename, [])
            if row.label is not None:
                events[row.filename].append((row.onset, row.offset, row.label))
        labels = {name: {label for _, _, label in evs} for name, evs in events.items()}
    else:
        labels = {row.filename: set(row.labels) for row in parse_weak(metadata)}
    missing = [name for name in cache.filenames if name not in labels]
    if len(missing) == len(cache):
        raise ValueError(f"{metadata}: no labels for any of the {len(cache)} cached clips, e.g. {missing[:3]}")
    if missing:
        log.warning("%s: no labels for %d cached clips (left out), e.g. %s", metadata, len(missing), missing[:3])
    classes = sorted({label for names in labels.values() for label in names})
    targets: list[np.ndarray | None] = []
    n_frames = cache.n_frames(stream)
    for row, filename in enumerate(cache.filenames):
        if filename not in labels:
            targets.append(None)
        elif strong:
            targets.append(encode_strong(events[filename], classes, int(n_frames[row]) // patch_frames, frame_hop))
        else:
            targets.append(np.isin(classes, sorted(labels[filename])).astype(np.float32))
    labelled = np.array([row for row, target in enumerate(targets) if target is not None], dtype=np.int64)
    return targets, classes, strong, labelled


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


class FrameTagger(nn.Module):
    """Backbone + a linear head on every frame embedding: (B, n_mels, T) -> logits (B, C, T // frames_per_embedding)."""

    def __init__(self, backbone: Backbone, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(feats).transpose(1, 2)).transpose(1, 2)


class TaggingData:
    """Normalised 10 s crops of the cached features of one stream, with their clip or frame targets.

    A normalised crop depends only on its clip and offset (every frontend normalises per clip), so each one is
    computed once and kept in memory up to ``CROP_CACHE_BYTES``; the embedded tagging split (1600 clips, each
    exactly 10 s, so one crop each) fits. Values are bit-identical to normalising every batch anew, which took
    4.3 of 5.3 ms a batch of 16 (2 threads; 1.0 ms now). Measured on the whole job: docs/training.md.
    """

    def __init__(self, cache: FeatureCache, stream: str, targets: list[np.ndarray], strong: bool,
                 frontend: MelFrontend, clip_frames: int, patch_frames: int):  # fmt: skip
        self.mel, self.n_frames = cache.mel(stream), cache.n_frames(stream)
        self.targets, self.strong, self.frontend = targets, strong, frontend
        self.clip_frames, self.patch_frames = clip_frames, patch_frames
        self._crops: dict[tuple[int, int], torch.Tensor] = {}
        self._crop_bytes = 0

    def crop(self, row: int, start: int) -> torch.Tensor:
        """Normalised features (n_mels, clip_frames) of clip ``row`` from frame ``start``."""
        cached = self._crops.get((row, start))
        if cached is not None:
            return cached
        # a copy: the cache is a read-only memory map
        mel = np.array(self.mel[row, :, start : start + self.clip_frames], dtype=np.float32)
        crop = self.frontend.normalize(torch.from_numpy(mel)[None])[0]
        if self._crop_bytes + crop.nbytes <= CROP_CACHE_BYTES:
            self._crops[(row, start)] = crop
            self._crop_bytes += crop.nbytes
        return crop

    def batch(self, rows: np.ndarray, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (b, n_mels, clip_frames) cropped at a random whole-patch offset (offset 0 without generator),
        targets (b, C) or (b, C, clip_frames // patch_frames) cut at the same offset."""
        crops, targets = [], []
        n_patches = self.clip_frames // self.patch_frames
        for row in rows:
            spare = max(0, int(self.n_frames[row]) - self.clip_frames) // self.patch_frames
            offset = 0
            if generator is not None and spare:
                offset = int(torch.randint(spare + 1, (1,), generator=generator))
            crops.append(self.crop(int(row), offset * self.patch_frames))
            target = self.targets[row]
            if self.strong:
                target = target[:, offset : offset + n_patches]
                if target.shape[1] < n_patches:
                    target = np.pad(target, ((0, 0), (0, n_patches - target.shape[1])))
            targets.append(target)
        return torch.stack(crops), torch.from_numpy(np.stack(targets))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Frame BCE (strong) or BCE of the mean frame logit (weak); frames past a short clip's end count as
        event-free, as its zero-padded input is."""
        if self.strong:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return nn.functional.binary_cross_entropy_with_logits(logits.mean(dim=-1), targets)

    def clip_targets(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), C) clip-level targets of the first 10 s that ``evaluate`` scores (strong: any active frame)."""
        n_patches = self.clip_frames // self.patch_frames
        return np.stack([self.targets[r][:, :n_patches].max(axis=-1) if self.strong else self.targets[r] for r in rows])


@torch.inference_mode()
def evaluate(model: FrameTagger, data: TaggingData, rows: np.ndarray, batch_size: int, device: torch.device | str) -> float:
    """Clip-level macro mAP of ``rows``: clip score = maximum frame probability (strong) or the probability of
    the mean frame logit (weak), first 10 s of each clip."""
    model.eval()
    scores = []
    for i in range(0, len(rows), batch_size):
        logits = model(data.batch(rows[i : i + batch_size], None)[0].to(device)).cpu()
        scores.append(torch.sigmoid(logits.amax(dim=-1) if data.strong else logits.mean(dim=-1)))
    return mean_average_precision(torch.cat(scores).numpy(), data.clip_targets(rows))


def pretrain_backbone(
    features_dir: Path, metadata: Path, out: Path, backbone_cfg: dict, frontends_cfg: dict, clip_seconds: float,
    seed: int, val_fraction: float = 0.2, device: torch.device | str = "cpu",
) -> dict:
    """Train the backbone of a ``model.backbones`` entry with its ``pretrain`` settings; write our backbone file.
    ``frontends_cfg``: frontend sections by name, among them the one the backbone's kind reads."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cache = open_feature_cache(features_dir)
    backbone = build_backbone({"backbone": backbone_cfg}, frontends_cfg)
    frontend_cfg = frontends_cfg[backbone.frontend]
    frontend = build_frontend(backbone.frontend, frontend_cfg)
    step = backbone.frames_per_embedding
    targets, classes, strong, labelled = read_targets(metadata, cache, backbone.embedding_hop(frontend_cfg), step,
                                                      backbone.frontend)  # fmt: skip
    model = FrameTagger(backbone, len(classes)).to(device)
    clip_frames = frontend.n_frames(int(round(clip_seconds * frontend.sample_rate)))
    data = TaggingData(cache, backbone.frontend, targets, strong, frontend, clip_frames, step)
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
    steps = hp["epochs"] * -(-len(train_rows) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * step / steps)))
    epochs = []
    for epoch in range(hp["epochs"]):
        model.train()
        permutation = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        losses = []
        for first in range(0, len(permutation), batch_size):
            feats, batch_targets = data.batch(permutation[first : first + batch_size], generator)
            loss = data.loss(model(feats.to(device)), batch_targets.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        if (epoch + 1) % VAL_EVERY_EPOCHS == 0 and epoch + 1 < hp["epochs"]:
            epochs[-1]["val_map"] = evaluate(model, data, val_rows, batch_size, device)
            log.info("epoch %d: loss %.4f, held-out mAP %.3f", epoch + 1, epochs[-1]["loss"], epochs[-1]["val_map"])
        else:
            log.info("epoch %d: loss %.4f", epoch + 1, epochs[-1]["loss"])
    after = measure()
    epochs[-1]["val_map"] = after["val_map"]
    log.info("after: train mAP %.3f, held-out mAP %.3f", after["train_map"], after["val_map"])
    training_log = {"before": before, "after": after, "epochs": epochs, "classes": classes,
                    "labels": "strong" if strong else "weak", "n_train": len(train_rows), "n_val": len(val_rows), "seconds": time.perf_counter() - started}
    provenance = {"source": "pretrain", "features_dir": str(features_dir), "metadata": str(metadata), "seed": seed,
                  "pretrain": hp, "log": training_log}
    save_backbone(out, backbone.cpu(), provenance)
    return training_log


def configure_pretrain_backbone(parser: argparse.ArgumentParser):
    parser.add_argument("--features-dir", required=True, type=Path, help="feature cache of the pretrain split")
    parser.add_argument("--metadata", required=True, type=Path,
                        help="labels of the pretrain split: strong (frame tagging) or weak (clip tagging), DESED TSV")
    parser.add_argument("--out", required=True, type=Path, help="backbone file to write (results/backbone/{name}.pt)")
    parser.add_argument("--config-json", required=True,
                        help='{"backbone": a model.backbones entry, "frontends": {<name>: the section it reads}, '
                             '"clip_seconds": audio.clip_seconds, "seed": seed}')
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        torch.set_num_threads(args.threads)
        result = pretrain_backbone(args.features_dir, args.metadata, args.out, cfg["backbone"], cfg["frontends"],
                                   cfg["clip_seconds"], cfg["seed"], device=resolve_device(args.device))
        log.info("wrote %s in %.1f s (held-out mAP %.3f -> %.3f)", args.out, result["seconds"],
                 result["before"]["val_map"], result["after"]["val_map"])
        return 0

    return run
