"""Training and validation data from the feature caches: grouped batches in the ATST-SED layout.

Batch layout. One training batch holds fixed numbers of clips from each group, concatenated in the order
``[maestro, strong_real, synthetic, strong, weak, unlabeled]`` (``training.stageN.batch_sizes``; a group is every
split of that role; ATST-SED's order with the generic ``strong`` group after DESED's two strong groups, and the
DCASE 2024 baseline's MAESTRO group first (confs/pretrained.yaml ``batch_size: [maestro, synth, strong, weak,
unlabel]``); groups without a split are absent). Each group has its own random order per epoch; an epoch ends when the first group
runs out:
``epoch_batches = min(len_g // batch_g)`` over groups with ``batch_g > 0`` (optionally capped by
``max_steps_per_epoch``), as the published ``ConcatDatasetBatchSampler``. With several processes (DDP) every
rank draws the same orders and takes every ``world_size``-th batch.

Items (dicts of float32 arrays, collated to tensors):
- ``crnn_mel`` (128, 626) linear magnitude mel; ``{stream}_mel`` the backbone's frontend features, e.g.
  ``atst_mel`` (64, 1001) linear power mel (stage 2), or ``embeddings`` (D, 250) frozen backbone frames
  (stage 1); normalisation happens in the model step.
- ``strong`` (C, 156) frame targets (onset frame = floor, offset frame = ceil, 64 ms frames; zeros for clips
  without strong labels; soft labels: each frame the highest confidence of the class's events covering it);
  ``weak`` (C,) clip targets (weak labels, or the strong targets' maximum). C: the model's output classes, the
  union of the datasets' classes; an event of a class with an alias (``datasets.<name>.aliases``) is also an
  event of the alias target.
- ``mask`` (C,) 1 for the output classes the item's dataset labels (its classes and alias targets), 0 for the
  others: every loss term ignores masked classes; ``dataset`` the index of the item's dataset (mixup mixes only
  items of one dataset).
- ``pseudo`` (C, 156) soft pseudo-labels ``sigmoid(ensemble logits)`` when the run distils; frames past a
  clip's true length (zero-padded audio) get probability 0, as its labels do.
Clips longer than ``audio.clip_seconds`` are cropped at a random offset that is a multiple of the 0.32 s grid
(``sedlib.pseudo.predict.crop_grid_samples``), so mels, embeddings, labels and pseudo-labels shift together
exactly; the sampler draws each item's crop seed, so crops are reproducible and independent of workers.
Validation clips are taken from their start (offset 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sedlib.config import STRONG_ROLES, TRAIN_ROLES
from sedlib.data.labels import encode_soft, encode_weak
from sedlib.data.metadata import events_by_file, read_soft, read_strong, read_weak, soft_events_by_file
from sedlib.features.cache import FeatureCache, open_feature_cache
from sedlib.features.frontends import frames_per_clip
from sedlib.models.backbone import backbone_stream
from sedlib.pseudo.predict import crop_grid_samples
from sedlib.pseudo.store import LogitsFile, read_logits

# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Frames of one model-input window and of one crop-grid step, per stream.

    Streams: CRNN mel ``crnn`` (16 ms), the backbone's frontend stream (``atst`` for ATST-Frame: 10 ms), its
    embeddings ``emb`` (ATST-Frame: 40 ms) and the output frames ``out`` (64 ms). For 10 s at 16 kHz and
    ATST-Frame: window 626 / 1001 / 250 / 156 frames, grid 0.32 s = 20 / 32 / 8 / 5 frames.
    """

    clip_seconds: float
    grid_seconds: float
    frame_hop: float  # seconds per output frame
    stream: str  # the backbone's frontend stream
    window: dict[str, int]
    grid: dict[str, int]

    @classmethod
    def from_config(cls, config: dict) -> "Geometry":
        """Geometry of a run configuration (or a workflow configuration: its first backbone)."""
        frontends, clip_seconds = config["frontends"], config["audio"]["clip_seconds"]
        time_pooling = math.prod(pool[0] for pool in config["model"]["crnn"]["pooling"])
        stream, per_embedding = backbone_stream(config["model"], frontends)
        grid_samples = crop_grid_samples(frontends, time_pooling, stream, per_embedding)
        crnn_hop, in_hop = frontends["crnn"]["hop_length"], frontends[stream]["hop_length"]
        win_crnn, win_in = (frames_per_clip(frontends[name], clip_seconds) for name in ("crnn", stream))
        return cls(
            clip_seconds=clip_seconds,
            grid_seconds=grid_samples / frontends["crnn"]["sample_rate"],
            frame_hop=crnn_hop * time_pooling / frontends["crnn"]["sample_rate"],
            stream=stream,
            window={"crnn": win_crnn, stream: win_in, "emb": win_in // per_embedding, "out": win_crnn // time_pooling},
            grid={"crnn": grid_samples // crnn_hop, stream: grid_samples // in_hop,
                  "emb": grid_samples // (in_hop * per_embedding), "out": grid_samples // (crnn_hop * time_pooling)},
        )  # fmt: skip

    def n_crops(self, duration: float) -> int:
        """Number of grid offsets at which a window fits inside a clip of ``duration`` seconds (>= 1)."""
        return 1 + max(0, math.floor((duration - self.clip_seconds) / self.grid_seconds + 1e-6))

    def cut(self, rows: np.ndarray, stream: str, crop: int) -> np.ndarray:
        """rows[:, window of ``stream`` at crop ``crop``] as float32, zero-padded past the array's end."""
        start, width = crop * self.grid[stream], self.window[stream]
        part = np.asarray(rows[:, start : start + width], dtype=np.float32)
        if part.shape[1] < width:
            part = np.pad(part, ((0, 0), (0, width - part.shape[1])))
        return part


# ----------------------------------------------------------------------------- one split
@dataclass(frozen=True)
class SplitInputs:
    """Files of one (dataset, split) that training reads; paths as given by rules/train.smk."""

    dataset: str
    split: str
    role: str
    labels: str  # strong | soft | weak | none
    features: str  # feature cache folder
    embeddings: str | None = None  # stage 1
    metadata: str | None = None  # strong or soft labels
    weak_train: str | None = None  # weak splits: training part
    weak_val: str | None = None  # weak splits: validation part
    pseudo_labels: str | None = None  # iteration >= 2, training groups

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.split}"


class SplitClips:
    """Clips of one cached split (all rows, or those listed in a weak part) with their targets.

    ``item(j, crop)`` reads clip ``j`` lazily from the memory-mapped arrays.
    """

    def __init__(
        self,
        inputs: SplitInputs,
        cache: FeatureCache,
        rows: np.ndarray,
        labelling: "Labelling",
        geometry: Geometry,
        embeddings: np.ndarray | None,
        events: list[list[tuple[float, float, str, float]]] | None,
        weak: np.ndarray | None,
        pseudo: LogitsFile | None,
    ):
        self.inputs, self.cache, self.rows, self.geometry = inputs, cache, rows, geometry
        self.labelling, self.classes = labelling, labelling.classes
        self.embeddings, self.events, self.weak, self.pseudo = embeddings, events, weak, pseudo
        self.filenames = [cache.filenames[r] for r in rows]
        self.durations = cache.durations[rows]
        if pseudo is not None:
            missing = [f for f in self.filenames if f not in pseudo.index]
            if missing:
                raise ValueError(f"{inputs.pseudo_labels}: no pseudo-labels for {len(missing)} clips, e.g. {missing[:3]}")
            self.pseudo_rows = np.array([pseudo.index[f] for f in self.filenames])

    def __len__(self) -> int:
        return len(self.rows)

    def n_crops(self, j: int) -> int:
        return self.geometry.n_crops(float(self.durations[j]))

    def item(self, j: int, crop: int) -> dict[str, np.ndarray]:
        g, row = self.geometry, self.rows[j]
        out = {"crnn_mel": g.cut(self.cache.crnn[row], "crnn", crop)}
        if self.embeddings is not None:
            out["embeddings"] = g.cut(self.embeddings[row], "emb", crop)
        else:
            out[f"{g.stream}_mel"] = g.cut(self.cache.mel(g.stream)[row], g.stream, crop)
        n_out, n_classes = g.window["out"], len(self.classes)
        if self.events is not None:
            shift = crop * g.grid_seconds
            shifted = [(on - shift, off - shift, label, conf) for on, off, label, conf in self.events[j]]
            out["strong"] = encode_soft(shifted, self.classes, n_out, g.frame_hop)
            out["weak"] = out["strong"].max(axis=1)
        else:
            out["strong"] = np.zeros((n_classes, n_out), dtype=np.float32)
            out["weak"] = self.weak[j] if self.weak is not None else np.zeros(n_classes, dtype=np.float32)
        if self.pseudo is not None:
            p_row = self.pseudo_rows[j]
            logits = g.cut(self.pseudo.logits[p_row], "out", crop)
            valid = np.arange(n_out) < int(self.pseudo.n_frames[p_row]) - crop * g.grid["out"]
            out["pseudo"] = np.where(valid, 1.0 / (1.0 + np.exp(-logits)), 0.0).astype(np.float32)
        out["mask"], out["dataset"] = self.labelling.mask, np.int64(self.labelling.index)
        return out


@dataclass(frozen=True)
class Labelling:
    """How one dataset's labels map onto the model's output classes."""

    classes: list[str]  # the model's output classes
    index: int  # the dataset's index among the run's datasets
    mask: np.ndarray  # (C,) float32: 1 for the classes the dataset labels
    aliases: dict[str, str]  # own class -> other dataset's class it also stands for

    @classmethod
    def of(cls, config: dict, dataset: str) -> "Labelling":
        """From the run configuration (sedlib.training.run.check_run_config)."""
        names = sorted(config["datasets"])
        if dataset not in names:
            raise ValueError(f"run configuration: field 'datasets' has no entry for dataset '{dataset}'")
        ds, classes = config["datasets"][dataset], list(config["classes"])
        mask = np.array([c in ds["labelled"] for c in classes], dtype=np.float32)
        return cls(classes, names.index(dataset), mask, dict(ds["aliases"]))

    def with_aliases(self, events: list[tuple[float, float, str, float]]) -> list[tuple[float, float, str, float]]:
        """Events plus a copy of every aliased event under its alias target (DCASE 2024 baseline process_tsvs)."""
        return events + [(on, off, self.aliases[label], conf) for on, off, label, conf in events if label in self.aliases]

    def weak_targets(self, labels: list[str]) -> np.ndarray:
        return encode_weak(labels + [self.aliases[label] for label in labels if label in self.aliases], self.classes)


def load_split(
    inputs: SplitInputs, labelling: Labelling, geometry: Geometry, part: str | None, use_embeddings: bool, distil: bool
) -> SplitClips:
    """Open a split's cache and targets. ``part``: 'train' / 'val' selects a weak split's partition."""
    cache = open_feature_cache(inputs.features)
    embeddings = None
    if use_embeddings:
        if inputs.embeddings is None:
            raise ValueError(f"{inputs.name}: stage 1 needs the split's cached embeddings")
        embeddings = np.load(inputs.embeddings, mmap_mode="r")
        if embeddings.ndim != 3 or embeddings.shape[0] != len(cache):
            raise ValueError(f"{inputs.embeddings}: shape {embeddings.shape}, expected ({len(cache)}, D, frames) as {inputs.features}")
    rows, events, weak = np.arange(len(cache)), None, None
    if inputs.role == "validation" and inputs.labels != "strong":
        raise ValueError(f"{inputs.name}: a validation split needs strong labels, got '{inputs.labels}'")
    if inputs.labels in ("strong", "soft"):
        if inputs.metadata is None:
            raise ValueError(f"{inputs.name}: {inputs.labels} labels need the split's metadata file")
        if inputs.labels == "strong":
            by_file = {f: [(*e, 1.0) for e in ev] for f, ev in events_by_file(read_strong(inputs.metadata)).items()}
        else:
            by_file = soft_events_by_file(read_soft(inputs.metadata))
        rows = np.array([cache.row(f) for f in by_file], dtype=np.int64)
        events = [labelling.with_aliases(ev) for ev in by_file.values()]
    elif inputs.labels == "weak":
        path = {"train": inputs.weak_train, "val": inputs.weak_val}[part or "train"]
        if path is None:
            raise ValueError(f"{inputs.name}: weak labels need the split's weak_{part or 'train'}.tsv")
        table = read_weak(path)
        rows = np.array([cache.row(f) for f in table["filename"]], dtype=np.int64)
        weak = np.stack([labelling.weak_targets(list(labels)) for labels in table["event_labels"]]) if len(table) else None
    elif inputs.labels != "none":
        raise ValueError(f"{inputs.name}: labels '{inputs.labels}' cannot be used for training (strong, soft, weak or none)")
    pseudo = None
    if distil:
        if inputs.pseudo_labels is None:
            raise ValueError(f"{inputs.name}: distillation needs the split's pseudo-label file")
        pseudo = read_logits(inputs.pseudo_labels)
        if pseudo.classes != labelling.classes:
            raise ValueError(f"{inputs.pseudo_labels}: field 'classes': {pseudo.classes} differ from the training classes {labelling.classes}")
        if abs(pseudo.frame_hop - geometry.frame_hop) > 1e-9:
            raise ValueError(f"{inputs.pseudo_labels}: field 'frame_hop': {pseudo.frame_hop} s, expected {geometry.frame_hop} s")
    return SplitClips(inputs, cache, rows, labelling, geometry, embeddings, events, weak, pseudo)


# ----------------------------------------------------------------------------- datasets and sampler
class ClipDataset(Dataset):
    """Concatenation of split clip sets; items are addressed as ``(index, crop_seed)``."""

    def __init__(self, parts: Sequence[SplitClips]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(part, row within part) of a dataset index."""
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return part, index - int(self.offsets[part])

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, crop_seed = key if isinstance(key, tuple) else (key, 0)
        part, j = self.locate(index)
        clips = self.parts[part]
        item = clips.item(j, crop_seed % clips.n_crops(j))
        item["part"], item["clip"] = part, j
        return item


def epoch_batches(group_lengths: Sequence[int], batch_sizes: Sequence[int], max_batches: int | None = None) -> int:
    """Batches per epoch: the first group with a nonzero batch size to run out ends the epoch."""
    counts = [n // b for n, b in zip(group_lengths, batch_sizes) if b > 0]
    if not counts:
        raise ValueError("training.stageN.batch_sizes: every group has batch size 0")
    n = min(counts)
    if n == 0:
        short = [(n_g, b) for n_g, b in zip(group_lengths, batch_sizes) if b > n_g]
        raise ValueError(f"a training group has fewer clips than its batch size (clips, batch size): {short}")
    return min(n, max_batches) if max_batches else n


class GroupBatchSampler(Sampler):
    """Yields batches of ``(dataset index, crop seed)``: ``batch_sizes[g]`` items of every group ``g`` in order.

    Group ``g`` occupies dataset indices ``[offsets[g], offsets[g] + group_lengths[g])``. The orders of an
    epoch depend only on (seed, epoch): training is reproducible and a resumed run draws what an
    uninterrupted one would.
    """

    def __init__(
        self,
        group_lengths: Sequence[int],
        batch_sizes: Sequence[int],
        seed: int,
        max_batches: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if len(group_lengths) != len(batch_sizes):
            raise ValueError("one batch size per group expected")
        self.group_lengths, self.batch_sizes = list(group_lengths), list(batch_sizes)
        self.offsets = np.cumsum([0] + self.group_lengths[:-1])
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.total = epoch_batches(self.group_lengths, self.batch_sizes, max_batches)
        if self.total < num_replicas:
            raise ValueError(f"{self.total} batches per epoch cannot feed {num_replicas} processes")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> "GroupBatchSampler":
        """Lightning calls ``batch_sampler.sampler.set_epoch(epoch)`` before every epoch: route it here."""
        return self

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        orders = [rng.permutation(n) for n in self.group_lengths]
        crop_seeds = [rng.integers(0, 2**62, size=n) for n in self.group_lengths]
        for b in range(self.rank, len(self) * self.num_replicas, self.num_replicas):
            batch = []
            for offset, order, seeds, size in zip(self.offsets, orders, crop_seeds, self.batch_sizes):
                picked = order[b * size : (b + 1) * size]
                batch += [(int(offset + i), int(seeds[i])) for i in picked]
            yield batch


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the items' arrays (and part / clip indices) into batch tensors."""
    return {key: torch.as_tensor(np.stack([item[key] for item in items])) for key in items[0]}


def batch_groups(batch_sizes: dict[str, int]) -> dict[str, slice]:
    """Rows of each group in a training batch (TRAIN_ROLES order; absent groups: empty slices), plus
    ``strong_all``: the rows of every strongly labelled group (strong_real + synthetic + strong), and
    ``frame_labelled``: those and the maestro group's (every row with frame targets)."""
    bounds = np.cumsum([0] + [batch_sizes.get(role, 0) for role in TRAIN_ROLES])
    groups = {role: slice(int(bounds[i]), int(bounds[i + 1])) for i, role in enumerate(TRAIN_ROLES)}
    groups["strong_all"] = slice(groups[STRONG_ROLES[0]].start, groups[STRONG_ROLES[-1]].stop)
    groups["frame_labelled"] = slice(groups["maestro"].start, groups["strong_all"].stop)
    return groups


# ----------------------------------------------------------------------------- everything a run reads
@dataclass
class ValidationSet:
    """One validation set: a strong validation split, or a weak split's validation part."""

    name: str
    kind: str  # strong | weak
    clips: SplitClips


class TrainingData(L.LightningDataModule):
    """The training groups (TRAIN_ROLES) and the validation sets of a run, with their loaders.

    ``config``: the run configuration (see sedlib.training.run); ``splits``: every training and
    validation split's inputs; ``use_embeddings``: stage 1; ``distil``: pseudo-labels are read.
    """

    def __init__(self, config: dict, splits: Sequence[SplitInputs], use_embeddings: bool, distil: bool):
        super().__init__()
        self.stage_cfg = config["training"]["stage"]
        self.seed = int(config["member"]["seed"])
        self.num_workers = int(config["training"]["num_workers"])
        self.classes = list(config["classes"])
        labelling = {s.dataset: Labelling.of(config, s.dataset) for s in splits}
        self.geometry = Geometry.from_config(config)
        sizes = self.stage_cfg["batch_sizes"]
        self.batch_sizes, self.groups = [], []  # of the groups present (with a split), in batch order
        for role in TRAIN_ROLES:
            members = [s for s in splits if s.role == role]
            if sizes.get(role, 0) > 0 and not members:
                raise ValueError(f"training.stageN.batch_sizes.{role} = {sizes[role]} but no split has role '{role}'")
            if not members:
                continue
            if role not in sizes:
                names = [s.name for s in members]
                raise ValueError(f"training.stageN.batch_sizes: no size for group '{role}' (splits {names})")
            self.batch_sizes.append(int(sizes[role]))
            self.groups.append([load_split(s, labelling[s.dataset], self.geometry, "train", use_embeddings, distil) for s in members])
        self.train_set = ClipDataset([part for group in self.groups for part in group])
        self.validation: list[ValidationSet] = []
        for s in splits:
            if s.role == "validation":
                self.validation.append(ValidationSet(s.name, "strong", load_split(s, labelling[s.dataset], self.geometry, None, use_embeddings, False)))
            elif s.role == "weak" and s.weak_val is not None:
                clips = load_split(s, labelling[s.dataset], self.geometry, "val", use_embeddings, False)
                if len(clips):
                    self.validation.append(ValidationSet(f"{s.name}:val", "weak", clips))
        if not self.validation:
            raise ValueError("no validation data: configure a split with role 'validation' or a weak split with val_fraction > 0")
        self.val_set = ClipDataset([v.clips for v in self.validation])

    def group_lengths(self) -> list[int]:
        return [sum(len(part) for part in group) for group in self.groups]

    def epoch_batches(self) -> int:
        """Batches per epoch of one process (all processes together: times world size)."""
        return epoch_batches(self.group_lengths(), self.batch_sizes, self.stage_cfg["max_steps_per_epoch"])

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = GroupBatchSampler(
            self.group_lengths(), self.batch_sizes, self.seed, self.stage_cfg["max_steps_per_epoch"],
            num_replicas=trainer.world_size if trainer else 1, rank=trainer.global_rank if trainer else 0,
        )  # fmt: skip
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        batch_size = max(1, sum(self.batch_sizes))
        return DataLoader(self.val_set, batch_size=batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=collate)


def split_inputs(entries: Sequence[dict]) -> list[SplitInputs]:
    """SplitInputs from the JSON list written by rules/train.smk (unknown keys are an error)."""
    known = set(SplitInputs.__dataclass_fields__)
    out = []
    for i, entry in enumerate(entries):
        extra = set(entry) - known
        if extra:
            raise ValueError(f"inputs.splits[{i}]: unknown fields {sorted(extra)} (known: {sorted(known)})")
        out.append(SplitInputs(**entry))
    return out


def input_files(splits: Sequence[SplitInputs]) -> list[Path]:
    """Every file path named by the splits' inputs (for fingerprints)."""
    names = ("embeddings", "metadata", "weak_train", "weak_val", "pseudo_labels")
    files = [Path(s.features) / "index.tsv" for s in splits]
    return files + [Path(getattr(s, n)) for s in splits for n in names if getattr(s, n)]
