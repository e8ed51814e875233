"""``train`` command: one stage of one ensemble member, resumable, exported as ``model.pt``.

Output folder (``stage_dir`` in rules/common.smk):
- ``model.pt``: the best checkpoint's student and teacher (``sedlib.models.checkpoint.save_sed_model``),
  written last: its presence means the run finished;
- ``metrics.csv``: one row per epoch (training means, validation metrics, learning rate, wall time);
- ``checkpoints/last.ckpt`` (every epoch, atomically) and the ``save_top_k`` best ``epochNNNN.ckpt``;
  ``checkpoints/run.json`` holds the run's fingerprint. Not declared as Snakemake outputs, so a failed or
  killed job keeps them and its re-run resumes from ``last.ckpt`` (same epoch, step, optimizer, scheduler,
  EMA teacher, random states). A run whose settings or inputs changed starts afresh (old checkpoints removed);
  a finished run removes its checkpoints after the export, so a forced re-run (``--forcerun``) trains anew;
- ``logs/version_N/metrics.csv``: Lightning's per-step CSV log (one version per (re)start);
- ``tensorboard/``: the same scalars for TensorBoard (every loss term, learning rates, validation metrics; one
  run directory per iteration / stage / member: ``tensorboard --logdir results/``). A resumed run appends to it;
  a run that starts afresh clears it.

Run configuration (``--config-json``, built by rules/train.smk): ``stage`` (1 | 2), ``member``
({name, seed}), ``audio``, ``frontends``, ``model`` (workflow config sections), ``training`` (the common
training keys plus ``stage``: the ``training.stageN`` section of this iteration, ``training.overrides`` merged in),
``classes`` (the model's outputs: the union of the datasets' classes), ``datasets`` (per training dataset its
``labelled`` output classes and ``aliases``; see check_run_config), ``median_window`` (validation
post-processing, frames per output class).
Inputs (``--inputs-json``): ``splits`` (list of sedlib.training.data.SplitInputs fields), and ``backbone``
(stage 1: backbone weights) or ``init_model`` (stage 2: the iteration's stage-1 model.pt).
Distillation is on when the splits carry pseudo-label files and ``distillation.weight`` > 0.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sedlib.io import sha256_file, sha256_json, write_json, write_text
from sedlib.models import build_sed_model
from sedlib.models.checkpoint import load_sed_model, read_checkpoint, save_sed_model
from sedlib.training.data import TrainingData, input_files, split_inputs
from sedlib.training.stage1 import Stage1Module
from sedlib.training.stage2 import Stage2Module

log = logging.getLogger(__name__)

RUN_KEYS = ("stage", "member", "audio", "frontends", "model", "training", "classes", "datasets", "median_window")
TRAINING_KEYS = ("accelerator", "devices", "strategy", "precision", "accumulate_grad_batches", "num_workers", "stage")
MODULES = {1: Stage1Module, 2: Stage2Module}
LAST = "last.ckpt"
TENSORBOARD = "tensorboard"  # event files under the stage folder


def check_run_config(config: dict) -> list[str]:
    """Validate the run configuration's structure; return the output class list.

    ``classes``: the model's outputs (the union of the datasets' classes); ``datasets``: per training dataset
    ``labelled`` (the output classes its items carry labels for; the rest is masked) and ``aliases``
    ({own class: other dataset's class}).
    """
    missing = [k for k in RUN_KEYS if k not in config]
    missing += [f"training.{k}" for k in TRAINING_KEYS if k not in config.get("training", {})]
    if missing:
        raise ValueError(f"run configuration: missing fields {missing}")
    if config["stage"] not in MODULES:
        raise ValueError(f"run configuration: field 'stage': expected 1 or 2, got {config['stage']!r}")
    classes = list(config["classes"])
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"run configuration: field 'classes': expected unique class names, got {classes}")
    for name, ds in config["datasets"].items():
        unknown = sorted(set(ds["labelled"]) - set(classes)) + sorted(set(ds["aliases"].values()) - set(ds["labelled"]))
        if unknown:
            raise ValueError(f"run configuration: field 'datasets.{name}': classes {unknown} are not labelled outputs")
    return classes


# ----------------------------------------------------------------------------- callbacks
class LastCheckpoint(Callback):
    """Writes ``path`` at the end of every training epoch (after validation), atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full training state (optimizer, loops) for resuming
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


class EpochLog(Callback):
    """One row of metrics per epoch (kept in checkpoints, so resumed runs keep earlier rows).

    When stderr is not a terminal (Snakemake logs, batch jobs) it prints one concise line per epoch.
    """

    def __init__(self, monitor: str, mode: str, verbose: bool):
        self.monitor, self.mode, self.verbose = monitor, mode, verbose
        self.rows: list[dict[str, Any]] = []
        self._validated = False
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated, self._start = False, time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                               "seconds": round(time.monotonic() - self._start, 3)}  # fmt: skip
        row.update({k.removesuffix("_epoch"): v for k, v in metrics.items() if k.startswith("train/") and k.endswith("_epoch")})
        for group in trainer.optimizers[0].param_groups:
            row[f"lr/{group['name']}"] = group["lr"]
        if self._validated:
            row.update({k: v for k, v in metrics.items() if k.startswith("val/")})
        self.rows.append(row)
        if self.verbose and trainer.is_global_zero:
            print(self.line(row, trainer.max_epochs), file=sys.stderr, flush=True)

    def line(self, row: dict[str, Any], max_epochs: int) -> str:
        text = f"epoch {row['epoch'] + 1}/{max_epochs} step {row['step']} loss {row.get('train/loss', math.nan):.4f}"
        if self.monitor in row:
            seen = [r[self.monitor] for r in self.rows if self.monitor in r]
            best = min(seen) if self.mode == "min" else max(seen)
            text += f" {self.monitor} {row[self.monitor]:.4f} (best {best:.4f})"
        return text + f" {row['seconds']:.1f} s"

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    @staticmethod
    def csv_text(rows: list[dict[str, Any]]) -> str:
        """CSV of per-epoch rows; columns in first-seen order, empty where an epoch has no value."""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()


# ----------------------------------------------------------------------------- the run
def fingerprint(config: dict, inputs: dict, splits) -> str:
    """Hash of the run configuration, the inputs and the identity (size, mtime) of every input file."""
    files = [*input_files(splits), *(Path(inputs[k]) for k in ("backbone", "init_model") if inputs.get(k))]
    stats = {str(f): [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    return sha256_json({"config": config, "inputs": inputs, "files": stats})


def prepare_checkpoints(ckpt_dir: Path, run_fingerprint: str) -> Path | None:
    """``last.ckpt`` to resume from, or None; checkpoints of a run with another fingerprint are removed."""
    marker = ckpt_dir / "run.json"
    if ckpt_dir.exists():
        previous = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        if previous != run_fingerprint:
            log.warning("%s: checkpoints of a run with other settings or inputs; starting afresh", ckpt_dir)
            shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": run_fingerprint})
    last = ckpt_dir / LAST
    return last if last.is_file() else None


def build_networks(config: dict, inputs: dict, classes: list[str]):
    """(student, teacher | None): stage 1 a fresh CRNN with the backbone weights; stage 2 the stage-1 model."""
    if config["stage"] == 1:
        if not inputs.get("backbone"):
            raise ValueError("inputs: stage 1 needs 'backbone' (backbone weights file)")
        return build_sed_model(config, len(classes), backbone_file=inputs["backbone"]), None
    if not inputs.get("init_model"):
        raise ValueError("inputs: stage 2 needs 'init_model' (the stage-1 model.pt)")
    networks = []
    for which in ("student", "teacher"):
        model, info = load_sed_model(inputs["init_model"], which=which)
        if info["classes"] != classes:
            raise ValueError(f"{inputs['init_model']}: classes {info['classes']} differ from the training classes {classes}")
        networks.append(model.train())
    return tuple(networks)


def train(
    config: dict, inputs: dict, out_dir: str | Path, iteration: int | None = None, callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Train (or resume) one stage into ``out_dir``; write model.pt and metrics.csv; return the provenance.

    ``callbacks``: extra Lightning callbacks (run after the built-in ones).
    """
    classes = check_run_config(config)
    config = {**config, "classes": classes}
    out_dir = Path(out_dir)
    stage, seed, hp = config["stage"], int(config["member"]["seed"]), config["training"]["stage"]
    splits = split_inputs(inputs["splits"])
    distil = hp["distillation"]["weight"] > 0 and any(s.pseudo_labels for s in splits)
    run_fingerprint = fingerprint(config, inputs, splits)
    resume = prepare_checkpoints(out_dir / "checkpoints", run_fingerprint)
    if resume is None:
        shutil.rmtree(out_dir / TENSORBOARD, ignore_errors=True)

    # Resuming reuses the folder on purpose; Lightning would warn that it is not empty.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    L.seed_everything(seed, workers=True, verbose=False)
    data = TrainingData(config, splits, use_embeddings=stage == 1, distil=distil)
    student, teacher = build_networks(config, inputs, classes)
    module = MODULES[stage](config, student, teacher, distil=distil, fingerprint=run_fingerprint)
    mode = "min" if stage == 1 else "max"
    best = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="epoch{epoch:04d}", monitor="val/obj", mode=mode,
                           save_top_k=hp["save_top_k"], auto_insert_metric_name=False, save_on_train_epoch_end=False)  # fmt: skip
    interactive = sys.stderr.isatty()
    epoch_log = EpochLog("val/obj", mode, verbose=not interactive)
    trainer = L.Trainer(
        max_epochs=hp["epochs"],
        accelerator=config["training"]["accelerator"],
        devices=config["training"]["devices"],
        strategy=config["training"]["strategy"],
        precision=config["training"]["precision"],
        accumulate_grad_batches=config["training"]["accumulate_grad_batches"],
        check_val_every_n_epoch=hp["val_every_n_epochs"],
        callbacks=[epoch_log, LastCheckpoint(out_dir / "checkpoints" / LAST), best, *callbacks],
        logger=[CSVLogger(out_dir, name="logs"),
                TensorBoardLogger(out_dir, name=TENSORBOARD, version="", default_hp_metric=False)],
        log_every_n_steps=max(1, min(50, data.epoch_batches())),
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the group sampler shards batches itself
        deterministic="warn",  # adaptive pooling has no deterministic CUDA backward: warn instead of failing
        enable_progress_bar=interactive,
        enable_model_summary=False,
        # A Snakemake job is one task, also under SLURM: Lightning starts its own processes for several devices
        # instead of waiting for srun-launched ranks (its SLURM detection would hang a multi-device job).
        plugins=[LightningEnvironment()],
    )
    log.info("stage %d, member %s (seed %d): %d batches per epoch, %d epochs, distillation %s, resume from %s",
             stage, config["member"]["name"], seed, data.epoch_batches(), hp["epochs"], distil, resume)  # fmt: skip
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)  # resume: tensors-only unpickling
    if not trainer.is_global_zero:
        return {}
    provenance = export(module, best, out_dir, config, inputs, iteration, epoch_log, run_fingerprint)
    shutil.rmtree(out_dir / "checkpoints")
    return provenance


def export(module, best: ModelCheckpoint, out_dir: Path, config: dict, inputs: dict, iteration: int | None,
           epoch_log: EpochLog, run_fingerprint: str) -> dict[str, Any]:  # fmt: skip
    """Write metrics.csv, then model.pt from the best checkpoint (last.ckpt when validation never ran).

    Everything is read from the final last.ckpt (per-epoch rows, top-k bookkeeping), not from this process's
    callbacks, so the export is the same whichever process trained (e.g. Lightning's ddp_spawn).
    """
    last_path = out_dir / "checkpoints" / LAST
    last = read_checkpoint(last_path)
    selection = last["callbacks"][best.state_key]
    source = Path(selection["best_model_path"]) if selection["best_model_path"] else last_path
    checkpoint = last if source == last_path else read_checkpoint(source)
    module.load_state_dict(checkpoint["state_dict"])
    score = selection["best_model_score"]
    init = inputs.get("backbone") or inputs.get("init_model")
    provenance = {
        "stage": config["stage"],
        "iteration": iteration,
        "member": config["member"],
        "selected_checkpoint": source.name,
        "selected_epoch": checkpoint["epoch"],
        "global_step": checkpoint["global_step"],
        "objective": None if score is None else float(score),
        "objective_name": "teacher PSDS1 + PSDS2" if config["stage"] == 2 else "teacher (weak BCE + strong BCE) / 2",
        "distillation": module.distil_weight > 0,
        "init": {"path": str(init), "sha256": sha256_file(init)},
        "fingerprint": run_fingerprint,
        "torch": str(torch.__version__),
        "lightning": str(L.__version__),
    }
    write_text(out_dir / "metrics.csv", EpochLog.csv_text(last["callbacks"][epoch_log.state_key]["rows"]))
    save_sed_model(out_dir / "model.pt", module.sed_student, module.sed_teacher, config, config["classes"], provenance)
    log.info("wrote %s (epoch %d, objective %s)", out_dir / "model.pt", checkpoint["epoch"], provenance["objective"])
    return provenance


def configure_train(parser: argparse.ArgumentParser):
    parser.add_argument("--config-json", required=True, help="run configuration (see sedlib.training.run)")
    parser.add_argument("--inputs-json", required=True, help='{"splits": [...], "backbone" | "init_model": path}')
    parser.add_argument("--out-dir", required=True, type=Path, help="stage folder: model.pt, metrics.csv, checkpoints/")
    parser.add_argument("--iteration", type=int, default=None, help="iteration number (provenance)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")

    def run(args: argparse.Namespace) -> int:
        torch.set_num_threads(args.threads)
        train(json.loads(args.config_json), json.loads(args.inputs_json), args.out_dir, args.iteration)
        return 0

    return run
