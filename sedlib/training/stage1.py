"""Stage 1 of ATST-SED (``train/local/stage1_trainer.py``) as a LightningModule, and what both stages share.

Stage 1 trains the CRNN on the frozen transformer's cached frame embeddings with a mean teacher:

- mixup (``mixup_p``, Beta(``mixup_alpha``, ``mixup_alpha``), soft labels) of the CRNN mel only, separately
  within the maestro, strong (strong_real + synthetic + strong), weak and unlabeled groups and only between items
  of one dataset; embeddings are not mixed and the teacher sees the same (mixed) input as the student, as
  published; targets of classes an item's dataset does not label are zeroed after mixup;
- loss = BCE(strong, maestro + strong items) + BCE(weak, weak items)
  + w * [MSE(student strong, teacher strong) + MSE(student weak, teacher weak)] over the whole batch,
  w = ``const_max`` * exponential ramp-up over ``warmup_epochs`` (schedules.exp_rampup); every term averages over
  the classes each item's dataset labels only (``mask``; heterogeneous datasets, DCASE 2024 Task 4), and the weak
  head's attention pooling attends to those classes only;
- from iteration 2 on, + ``distillation.weight`` * distillation(student strong logits, soft pseudo-labels)
  over every item (pseudo-labels mixed with the items' mixup draw);
- Adam (betas 0.9, 0.999): CNN at ``lr_cnn``, RNN / merge / heads at ``lr_rnn``, transformer frozen;
  learning rates ramp up over ``warmup_epochs`` then stay constant (published ``cos_down=False``);
- EMA teacher after every optimizer step with ``alpha = min(1 - 1/(n + 1), ema_factor)``;
- validation objective (minimised): mean of the teacher's weak BCE on the weak validation part and its
  strong BCE on the strong validation splits. PSDS1/PSDS2 of the teacher are logged as well.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch

from sedlib.config import STRONG_ROLES
from sedlib.evaluation.metrics import SCENARIOS, clips_with_events, psds
from sedlib.evaluation.postprocess import postprocess_table
from sedlib.evaluation.score_tables import score_table
from sedlib.features.frontends import build_frontends
from sedlib.models.crnn import CRNN, SEDOutput
from sedlib.training import losses
from sedlib.training.data import Geometry, ValidationSet, batch_groups
from sedlib.training.ema import ema_alpha, ema_update
from sedlib.training.mixup import Mix, draw_group_mixes, mix_groups
from sedlib.training.schedules import exp_rampup, lr_scheduler

TARGET_KEYS = ("strong", "weak", "pseudo")


def set_trainable_layers(model: CRNN, tfm_trainable_layers: int) -> None:
    """Backbone layer groups counted from the top (``Backbone.layer_groups``; ATST-Frame: norm_frame, block depth-1,
    ..., block 0, patch/position/mask embeddings) train for i < ``tfm_trainable_layers``; the others are frozen.

    Done when the module is built, before a DDP wrapper records which parameters take gradients.
    """
    for i, params in enumerate(model.backbone.layer_groups() if model.backbone is not None else []):
        for p in params:
            p.requires_grad_(i < tfm_trainable_layers)


def optimizer_groups(
    model: CRNN, lr_cnn: float, lr_rnn: float, lr_tfm: float = 0.0, tfm_lr_scale: float = 0.5, tfm_trainable_layers: int = 0
) -> list[dict[str, Any]]:
    """Adam parameter groups of the published ``separate_opt_params``.

    [cnn (lr_cnn), rnn + cat_tf + dense + dense_softmax (lr_rnn)] + one group per trainable backbone layer
    group counted from the top (see :func:`set_trainable_layers`): group i gets ``lr_tfm * tfm_lr_scale ** i``.
    """
    backbone = model.backbone
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    own = [(name, p) for name, p in model.named_parameters() if id(p) not in backbone_ids]
    groups = [
        {"name": "cnn", "params": [p for name, p in own if name.startswith("cnn.")], "lr": lr_cnn},
        {"name": "rnn", "params": [p for name, p in own if not name.startswith("cnn.")], "lr": lr_rnn},
    ]
    layers = backbone.layer_groups()[:tfm_trainable_layers] if backbone is not None else []
    groups += [{"name": f"tfm{i}", "params": params, "lr": lr_tfm * tfm_lr_scale**i} for i, params in enumerate(layers)]
    return groups


def group_rows(mask: torch.Tensor | None, group: slice) -> torch.Tensor | None:
    """The mask rows of a batch group (None stays None)."""
    return None if mask is None else mask[group]


def validation_psds(
    strong: dict[tuple[int, int], np.ndarray],
    sets: list[ValidationSet],
    geometry: Geometry,
    classes: list[str],
    median_window: list[int],
) -> dict[str, float]:
    """PSDS1 and PSDS2 of median-filtered strong probabilities, the strong validation clips of one dataset pooled
    and scored on the classes that dataset labels; with validation splits of several datasets, the mean over them.

    ``strong[(set index, clip index)]``: (C, frames) probabilities of the clip's first window. Each clip is
    scored on its first ``clip_seconds`` (the window the model saw): frames up to the clip's true length,
    ground truth and duration cut at the window's end. Clips without events are dropped, as in the published
    validation. ``median_window``: frames per output class.
    """
    by_dataset: dict[int, tuple[dict, dict, dict]] = {}
    for (set_index, clip), probs in strong.items():
        clips = sets[set_index].clips
        labelled = np.flatnonzero(clips.labelling.mask)
        tables, ground_truth, durations = by_dataset.setdefault(clips.labelling.index, ({}, {}, {}))
        key = f"{sets[set_index].name}/{clips.filenames[clip]}"
        duration = min(float(clips.durations[clip]), geometry.clip_seconds)
        n_frames = min(probs.shape[-1], int(np.ceil(duration / geometry.frame_hop - 1e-9)))
        table = score_table(probs[labelled, :n_frames].T, [classes[i] for i in labelled], geometry.frame_hop, duration)
        tables[key] = postprocess_table(table, [median_window[i] for i in labelled])
        ground_truth[key] = [(on, min(off, duration), label) for on, off, label, _ in clips.events[clip] if on < duration]
        durations[key] = duration
    values = []
    for tables, ground_truth, durations in by_dataset.values():
        ground_truth, durations = clips_with_events(ground_truth, durations)
        tables = {key: tables[key] for key in ground_truth}
        values.append({name: psds(tables, ground_truth, durations, scenario).value for name, scenario in SCENARIOS.items()})
    return {name: float(np.mean([v[name] for v in values])) for name in SCENARIOS}


class Stage1Module(L.LightningModule):
    """Mean-teacher training of a CRNN student; ``config``: the run configuration (see sedlib.training.run)."""

    stage = 1
    warm_start_ema = True  # alpha = min(1 - 1/(n + 1), ema_factor)
    cosine_final: float | None = None  # lr after ramp-up: constant
    weak_weight = 1.0  # weight of the weak terms (supervised and consistency) relative to the strong ones

    def __init__(self, config: dict, student: CRNN, teacher: CRNN | None = None, distil: bool = False, fingerprint: str = ""):
        super().__init__()
        self.config = config
        self.hp = config["training"]["stage"]
        self.sed_student = student
        set_trainable_layers(student, self.trainable_layers())
        self.sed_teacher = teacher if teacher is not None else copy.deepcopy(student)
        for p in self.sed_teacher.parameters():
            p.requires_grad_(False)
        self.stream = student.backbone.frontend  # the backbone's frontend section and feature stream
        frontends = build_frontends(config["frontends"], ["crnn", self.stream])
        self.crnn_frontend, self.backbone_frontend = frontends.crnn, frontends[self.stream]
        self.groups = batch_groups(self.hp["batch_sizes"])
        self.mix_slices = [self.groups["maestro"], self.groups["strong_all"], self.groups["weak"], self.groups["unlabeled"]]
        self.distil_weight = float(self.hp["distillation"]["weight"]) if distil else 0.0
        self.fingerprint = fingerprint
        self.rng = np.random.default_rng([int(config["member"]["seed"]), self.stage])
        self.rampup_steps = 0
        self._ema_step = 0
        self._val: dict[str, Any] = {}

    # ------------------------------------------------------------------ optimisation
    def trainable_layers(self) -> int:
        """Backbone layer groups that train (stage 1: none, the embeddings are cached)."""
        return 0

    def param_groups(self) -> list[dict[str, Any]]:
        return optimizer_groups(self.sed_student, self.hp["lr_cnn"], self.hp["lr_rnn"])

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.param_groups(), betas=(0.9, 0.999))
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(1, self.trainer.max_epochs)
        self.rampup_steps = int(round(self.hp["warmup_epochs"] * per_epoch))
        scheduler = lr_scheduler(optimizer, self.rampup_steps, total, self.cosine_final)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def consistency_weight(self) -> float:
        """``const_max`` x ramp-up at the optimizer step being taken (1-based)."""
        return self.hp["const_max"] * exp_rampup(self.global_step + 1, self.rampup_steps)

    def on_train_start(self) -> None:
        self._ema_step = self.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.global_step  # optimizer steps taken so far (accumulation: only some batches step)
        if step > self._ema_step:
            ema_update(self.sed_teacher, self.sed_student, ema_alpha(step, self.hp["ema_factor"], self.warm_start_ema))
            self._ema_step = step

    # ------------------------------------------------------------------ shared loss pieces
    def mixup(
        self, tensors: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[Mix | None] | None]:
        """Group-wise mixup of ``tensors`` (one draw per group, shared by every tensor, pairing items of one
        dataset only), then the targets of classes an item's dataset does not label set to 0."""
        datasets = batch["dataset"].cpu().numpy()
        mixes = draw_group_mixes(self.mix_slices, self.hp["mixup_p"], self.hp["mixup_alpha"], self.rng, datasets)
        mixed = tensors if mixes is None else mix_groups(tensors, self.mix_slices, mixes)
        mask = batch["mask"]
        for key in ("strong", "weak"):
            if key in mixed:
                mixed[key] = mixed[key] * mask.reshape(*mask.shape, *([1] * (mixed[key].ndim - 2)))
        return mixed, mixes

    @staticmethod
    def class_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, C) labelled classes of the batch's items; None when every item labels every class."""
        mask = batch["mask"]
        return None if bool((mask != 0).all()) else mask

    def supervised(self, out: SEDOutput, targets: dict[str, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """BCE on the frames of the maestro and strong groups (pooled; or per group x ``loss_weights``) +
        weak_weight (or ``loss_weights.weak``) x BCE on the weak group's clip labels."""
        loss, weights = out.strong.new_zeros(()), self.hp.get("loss_weights")
        frame_groups = [(self.groups["frame_labelled"], 1.0)] if weights is None else [
            (self.groups[role], weights.get(role, 1.0)) for role in ("maestro", *STRONG_ROLES)]
        for group, weight in frame_groups:
            if group.stop > group.start:
                loss = loss + weight * losses.bce(out.strong[group], targets["strong"][group], group_rows(mask, group))
        weak = self.groups["weak"]
        weak_weight = self.weak_weight if weights is None else weights.get("weak", 1.0)
        if weak.stop > weak.start:
            loss = loss + weak_weight * losses.bce(out.weak[weak], targets["weak"][weak], group_rows(mask, weak))
        return loss

    def distillation(self, out: SEDOutput, targets: dict[str, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        if self.distil_weight <= 0:
            return out.strong.new_zeros(())
        return losses.distillation(out.strong_logits, targets["pseudo"], self.hp["distillation"]["loss"], mask)

    def on_train_epoch_start(self) -> None:
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_clips = 0

    def log_train(self, batch_idx: int, batch_size: int, **terms: torch.Tensor | float) -> None:
        """Log a step's training terms as Lightning's ``on_step=True, on_epoch=True`` would, with fewer calls.

        ``train/<name>_step`` and ``lr/<group>`` on the steps the loggers write (every ``log_every_n_steps``),
        ``train/<name>_epoch`` (the mean weighted by clips) at the epoch's last batch, so that callbacks see it at
        the epoch's end. Lightning's ``self.log`` costs far more than these sums: calling it for every term at
        every step made a stage-1 job about 2 % slower (docs/training.md).
        """
        for name, value in terms.items():
            total = torch.as_tensor(value, dtype=torch.float32).detach() * batch_size
            self._epoch_sums[name] = self._epoch_sums[name] + total if name in self._epoch_sums else total
        self._epoch_clips += batch_size
        every_n = self.trainer.log_every_n_steps  # 0: no step values
        if every_n and (self.global_step + 1) % every_n == 0:  # Lightning's test, here before the optimizer step
            for name, value in terms.items():
                self.log(f"train/{name}_step", value, on_step=True, on_epoch=False, prog_bar=name == "loss",
                         batch_size=batch_size)  # fmt: skip
            for group in self.trainer.optimizers[0].param_groups[:3]:  # cnn, rnn, top backbone group (stage 2)
                self.log(f"lr/{group['name']}", group["lr"], on_step=True, on_epoch=False, batch_size=batch_size)
        if batch_idx + 1 == self.trainer.num_training_batches:
            for name, total in self._epoch_sums.items():
                self.log(f"train/{name}_epoch", total / self._epoch_clips, on_step=False, on_epoch=True, batch_size=1)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mixed, _ = self.mixup({k: batch[k] for k in ("crnn_mel", *TARGET_KEYS) if k in batch}, batch)
        mask = self.class_mask(batch)
        crnn = self.crnn_frontend.normalize(mixed["crnn_mel"])
        student = self.sed_student(crnn, embeddings=batch["embeddings"], class_mask=mask)
        with torch.no_grad():
            teacher = self.sed_teacher(crnn, embeddings=batch["embeddings"], class_mask=mask)
        supervised = self.supervised(student, mixed, mask)
        consistency = losses.mse(student.strong, teacher.strong, mask) + losses.mse(student.weak, teacher.weak, mask)
        weight = self.consistency_weight()
        distillation = self.distillation(student, mixed, mask)
        loss = supervised + weight * consistency + self.distil_weight * distillation
        self.log_train(batch_idx, len(crnn), loss=loss, supervised=supervised, consistency=consistency,
                       consistency_weight=weight, distillation=distillation)  # fmt: skip
        return loss

    # ------------------------------------------------------------------ validation
    def predict_pair(self, batch: dict[str, torch.Tensor]) -> tuple[SEDOutput, SEDOutput]:
        """Student and teacher outputs on unaugmented inputs."""
        crnn, mask = self.crnn_frontend.normalize(batch["crnn_mel"]), self.class_mask(batch)
        return (self.sed_student(crnn, embeddings=batch["embeddings"], class_mask=mask),
                self.sed_teacher(crnn, embeddings=batch["embeddings"], class_mask=mask))  # fmt: skip

    def on_validation_epoch_start(self) -> None:
        self._val = {"sums": defaultdict(float), "counts": defaultdict(int), "strong": {}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        outputs = dict(zip(("student", "teacher"), self.predict_pair(batch)))
        sets: list[ValidationSet] = self.trainer.datamodule.validation
        parts, clips = batch["part"].tolist(), batch["clip"].tolist()
        for set_index in sorted(set(parts)):
            rows = [i for i, p in enumerate(parts) if p == set_index]
            vset = sets[set_index]
            for net, out in outputs.items():
                if vset.kind == "strong":
                    pred, target = out.strong[rows], batch["strong"][rows]
                else:
                    pred, target = out.weak[rows], batch["weak"][rows]
                mask = batch["mask"][rows]
                labelled = int((mask != 0).sum()) * (target.numel() // mask.numel())
                self._val["sums"][(net, vset.kind)] += float(losses.bce(pred, target, mask)) * labelled
                self._val["counts"][(net, vset.kind)] += labelled
            if vset.kind == "strong":
                probs = outputs["teacher"].strong[rows].float().cpu().numpy()
                for j, clip in enumerate(clips[i] for i in rows):
                    self._val["strong"][(set_index, clip)] = probs[j]

    def validation_metrics(self) -> dict[str, float]:
        """Mean BCEs per network and kind, and the teacher's PSDS1 / PSDS2 on the strong validation splits."""
        metrics = {f"val/{net}/{kind}_bce": self._val["sums"][(net, kind)] / count
                   for (net, kind), count in self._val["counts"].items() if count}  # fmt: skip
        if self._val["strong"]:
            metrics.update(self.teacher_psds())
        return metrics

    def teacher_psds(self) -> dict[str, float]:
        data = self.trainer.datamodule
        return {f"val/teacher/{name}": value for name, value in validation_psds(
            self._val["strong"], data.validation, data.geometry, self.config["classes"], self.config["median_window"]).items()}

    def objective(self, metrics: dict[str, float]) -> float:
        """Stage 1: mean of the teacher's weak and strong validation BCEs (lower is better)."""
        terms = [metrics[k] for k in ("val/teacher/weak_bce", "val/teacher/strong_bce") if k in metrics]
        return float(np.mean(terms))

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("counts"):
            return
        metrics = self.validation_metrics()
        metrics["val/obj"] = self.objective(metrics)
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/obj", sync_dist=False)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sedlib"] = {
            "fingerprint": self.fingerprint,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("sedlib", {})
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError("checkpoint was written by a run with other settings or inputs (fingerprint differs)")
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
