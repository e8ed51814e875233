"""Stage 2 of ATST-SED (``train/local/stage2_trainer.py``, ``SEDICT``): everything fine-tuned, ICT consistency.

Differences from stage 1 (sedlib.training.stage1):

- the transformer runs on its frontend's features (ATST mel) and trains: optimizer groups CNN ``lr_cnn``,
  RNN/merge/heads ``lr_rnn``, transformer layer group i from the top ``lr_tfm * tfm_lr_scale ** i`` for
  i < ``tfm_trainable_layers`` (14 groups for ATST-Frame-12: norm_frame, blocks 11..0, embeddings);
- mixup (one coin per batch, one draw per group) mixes the CRNN mel and the backbone's mel (linear, before dB) with
  the same coefficient and permutation, labels and pseudo-labels too; the teacher sees the unmixed inputs;
- frequency warping (``freq_warp_p``, one coin per batch) of the normalised backbone mel, drawn separately for
  every group and for the student's and the teacher's inputs (published order: after normalisation);
- loss = BCE(strong) + BCE(weak) / 2 + self-supervised term, w = ``const_max`` x ramp-up:
  with mixup, ICT: per group MSE(student strong, clamp(c t + (1 - c) t[perm])) + the weak one / 2 on the
  teacher's predictions t of the unmixed group, summed over the groups, / (2 x groups) (published: / 6 for
  3 groups), x w / 4; without mixup, mean teacher (MSE strong + MSE weak / 2) x w;
- EMA with the fixed ``ema_factor``; learning rates ramp up over ``warmup_epochs`` then decay by a cosine
  to ``cosine_final`` x the maximum at the last step;
- validation objective (maximised): the teacher's PSDS1 + PSDS2 on the strong validation splits.
"""

from __future__ import annotations

from typing import Any

import torch

from sedlib.models.crnn import SEDOutput
from sedlib.training import losses
from sedlib.training.augment import freq_warp
from sedlib.training.mixup import Mix
from sedlib.training.stage1 import TARGET_KEYS, Stage1Module, group_rows, optimizer_groups


class Stage2Module(Stage1Module):
    stage = 2
    warm_start_ema = False
    weak_weight = 0.5

    @property
    def cosine_final(self) -> float:  # type: ignore[override]
        return float(self.hp["cosine_final"])

    def trainable_layers(self) -> int:
        return int(self.hp["tfm_trainable_layers"])

    def param_groups(self) -> list[dict[str, Any]]:
        hp = self.hp
        return optimizer_groups(self.sed_student, hp["lr_cnn"], hp["lr_rnn"], hp["lr_tfm"], hp["tfm_lr_scale"],
                                self.trainable_layers())  # fmt: skip

    def warp(self, feats: torch.Tensor) -> torch.Tensor:
        """Frequency warping of each group's rows of the backbone's features with its own draw."""
        out = feats.clone()
        for group in self.mix_slices:
            if group.stop > group.start:
                out[group] = freq_warp(feats[group], self.hp["freq_warp_min"], self.rng)
        return out

    def ict(
        self, student: SEDOutput, teacher: SEDOutput, mixes: list[Mix | None], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Interpolation-consistency term, summed over the non-empty groups and divided by 2 x their number."""
        total, n_groups = student.strong.new_zeros(()), 0
        for group, m in zip(self.mix_slices, mixes):
            if group.stop == group.start:
                continue
            strong_t, weak_t = teacher.strong[group], teacher.weak[group]
            if m is not None:
                strong_t, weak_t = losses.ict_target(strong_t, m), losses.ict_target(weak_t, m)
            mask_g = group_rows(mask, group)
            total = total + losses.mse(student.strong[group], strong_t, mask_g) + losses.mse(student.weak[group], weak_t, mask_g) / 2
            n_groups += 1
        return total / (2 * n_groups)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        key = f"{self.stream}_mel"  # the backbone's linear features (ATST-Frame: atst_mel)
        mixed, mixes = self.mixup({k: batch[k] for k in ("crnn_mel", key, *TARGET_KEYS) if k in batch}, batch)
        mask = self.class_mask(batch)
        crnn_s, feats_s = self.crnn_frontend.normalize(mixed["crnn_mel"]), self.backbone_frontend.normalize(mixed[key])
        crnn_t, feats_t = self.crnn_frontend.normalize(batch["crnn_mel"]), self.backbone_frontend.normalize(batch[key])
        if self.rng.random() < self.hp["freq_warp_p"]:
            feats_s, feats_t = self.warp(feats_s), self.warp(feats_t)
        student = self.sed_student(crnn_s, atst_feats=feats_s, class_mask=mask)
        with torch.no_grad():
            teacher = self.sed_teacher(crnn_t, atst_feats=feats_t, class_mask=mask)
        supervised = self.supervised(student, mixed, mask)
        weight = self.consistency_weight()
        if mixes is not None:
            consistency = self.ict(student, teacher, mixes, mask)
            self_loss = consistency * weight / 4
        else:
            consistency = losses.mse(student.strong, teacher.strong, mask) + losses.mse(student.weak, teacher.weak, mask) / 2
            self_loss = consistency * weight
        distillation = self.distillation(student, mixed, mask)
        loss = supervised + self_loss + self.distil_weight * distillation
        self.log_train(batch_idx, len(crnn_s), loss=loss, supervised=supervised, consistency=consistency,
                       consistency_weight=weight, distillation=distillation)  # fmt: skip
        return loss

    def predict_pair(self, batch: dict[str, torch.Tensor]) -> tuple[SEDOutput, SEDOutput]:
        crnn, mask = self.crnn_frontend.normalize(batch["crnn_mel"]), self.class_mask(batch)
        feats = self.backbone_frontend.normalize(batch[f"{self.stream}_mel"])
        return self.sed_student(crnn, atst_feats=feats, class_mask=mask), self.sed_teacher(crnn, atst_feats=feats, class_mask=mask)

    def objective(self, metrics: dict[str, float]) -> float:
        """Stage 2: the teacher's PSDS1 + PSDS2 on the strong validation splits (higher is better)."""
        if "val/teacher/psds1" not in metrics:
            raise ValueError("stage 2 selects checkpoints by PSDS: configure a split with role 'validation'")
        return metrics["val/teacher/psds1"] + metrics["val/teacher/psds2"]
