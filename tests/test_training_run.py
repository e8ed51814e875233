"""Training runs on a tiny fake cached dataset: data items and crops, learning, stage 1 -> stage 2 with
distillation, checkpoint selection and export, and resuming a killed run from its last.ckpt."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sedlib.features.frontends import build_frontends
from sedlib.models import build_backbone, build_sed_model
from sedlib.models.checkpoint import load_sed_model, read_checkpoint, save_backbone
from sedlib.pseudo.store import write_logits
from sedlib.training import losses
from sedlib.training.data import Geometry, TrainingData, collate, split_inputs
from sedlib.training.run import prepare_checkpoints, train
from sedlib.training.stage1 import validation_psds

CLASSES = ["alarm", "dog", "speech"]


def run_config(stage: int, epochs: int, **stage_overrides) -> dict:
    """A run configuration (structure of rules/train.smk) with a tiny CRNN and a one-block backbone."""
    stage_cfg = {"batch_sizes": {"strong_real": 2, "synthetic": 2, "weak": 2, "unlabeled": 2}, "epochs": epochs,
                 "warmup_epochs": 1, "lr_cnn": 3e-3, "lr_rnn": 3e-3, "ema_factor": 0.999, "mixup_p": 0.5,
                 "mixup_alpha": 0.2, "save_top_k": 1, "val_every_n_epochs": 1, "max_steps_per_epoch": None,
                 "distillation": {"weight": 1.0, "loss": "bce"}, "const_max": 2.0}  # fmt: skip
    if stage == 2:
        stage_cfg.update(const_max=70.0, lr_cnn=2e-4, lr_rnn=2e-3, lr_tfm=2e-4, tfm_lr_scale=0.5, tfm_trainable_layers=14,
                         freq_warp_p=0.5, freq_warp_min=0.6, cosine_final=0.1)  # fmt: skip
    stage_cfg.update(stage_overrides)
    return {
        "stage": stage,
        "member": {"name": "m1", "seed": 1},
        "audio": {"sample_rate": 16000, "clip_seconds": 10.0},
        "frontends": {
            "crnn": {"sample_rate": 16000, "n_fft": 2048, "win_length": 2048, "hop_length": 256, "f_min": 0.0,
                     "f_max": 8000.0, "n_mels": 128},
            "atst": {"sample_rate": 16000, "n_fft": 1024, "win_length": 1024, "hop_length": 160, "f_min": 60.0,
                     "f_max": 7800.0, "n_mels": 64},
        },  # fmt: skip
        "model": {
            "crnn": {"filters": [4, 4, 8, 8, 8, 8, 8], "pooling": [[2, 2], [2, 2]] + [[1, 2]] * 5, "dropout": 0.0,
                     "rnn_hidden": 8, "rnn_layers": 1, "bn_momentum": 0.1},
            "backbone": {"kind": "atst_frame", "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                         "source": "pretrain", "checkpoint": None},
        },  # fmt: skip
        "training": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32",
                     "accumulate_grad_batches": 1, "num_workers": 0, "stage": stage_cfg},  # fmt: skip
        "classes": CLASSES, "datasets": {"fake": {"labelled": CLASSES, "aliases": {}}},
        "median_window": [3, 3, 3],
    }


def _write_split(root: Path, name: str, clips: list, geometry: Geometry, rng: np.random.Generator) -> dict:
    """Feature cache, embeddings and labels of one fake split: each class lights a band of mel bins."""
    n = len(clips)
    n_crnn = [1 + int(d * 16000) // 256 for _, d, _ in clips]
    n_atst = [1 + int(d * 16000) // 160 for _, d, _ in clips]
    crnn = rng.uniform(1e-3, 1e-2, (n, 128, max(max(n_crnn), geometry.window["crnn"]))).astype(np.float32)
    atst = rng.uniform(1e-6, 1e-5, (n, 64, max(max(n_atst), geometry.window["atst"]))).astype(np.float32)
    for i, (_, _, events) in enumerate(clips):
        for on, off, label in events:
            k = CLASSES.index(label)
            crnn[i, 20 + 35 * k : 36 + 35 * k, int(on / 0.016) : int(off / 0.016)] += 1.0
            atst[i, 8 + 18 * k : 18 + 18 * k, int(on / 0.010) : int(off / 0.010)] += 1.0
        crnn[i, :, n_crnn[i] :] = 0.0
        atst[i, :, n_atst[i] :] = 0.0
    folder = root / "features" / name
    folder.mkdir(parents=True)
    np.save(folder / "crnn_mel.npy", crnn)
    np.save(folder / "atst_mel.npy", atst)
    index = ["filename\tduration\tn_crnn\tn_atst"] + [f"{f}\t{d}\t{c}\t{a}" for (f, d, _), c, a in zip(clips, n_crnn, n_atst)]
    (folder / "index.tsv").write_text("\n".join(index) + "\n")
    np.save(root / f"{name}_emb.npy", rng.normal(size=(n, 16, atst.shape[-1] // 4)).astype(np.float16))
    strong = ["filename\tonset\toffset\tevent_label"] + [f"{f}\t{on}\t{off}\t{lab}" for f, _, ev in clips for on, off, lab in ev]
    (root / f"{name}_strong.tsv").write_text("\n".join(strong) + "\n")
    weak = ["filename\tevent_labels"] + [f"{f}\t{','.join(sorted({e[2] for e in ev}))}" for f, _, ev in clips]
    (root / f"{name}_weak_train.tsv").write_text("\n".join(weak[:-2]) + "\n")
    (root / f"{name}_weak_val.tsv").write_text("\n".join([weak[0], *weak[-2:]]) + "\n")
    return {"features": str(folder), "embeddings": str(root / f"{name}_emb.npy")}


def _random_clips(name: str, n: int, rng: np.random.Generator, long_first: bool = False) -> list:
    clips = []
    for i in range(n):
        duration = 12.0 if long_first and i == 0 else 10.0
        events = []
        for k in rng.permutation(3)[: rng.integers(1, 3)]:
            on = round(float(rng.uniform(0, duration - 2.5)), 3)
            events.append((on, round(on + float(rng.uniform(0.6, 2.4)), 3), CLASSES[k]))
        clips.append((f"{name}_{i:02d}.wav", duration, events))
    return clips


SPLITS = [("strong_real", "strong_real", "strong", 6), ("synth", "synthetic", "strong", 6), ("weak", "weak", "weak", 8),
          ("unlabeled", "unlabeled", "none", 6), ("synth_val", "validation", "strong", 6)]  # fmt: skip


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """{root, inputs (stage 1), clips}: the fake dataset, its backbone file and ensemble pseudo-labels."""
    root = tmp_path_factory.mktemp("fake")
    geometry = Geometry.from_config(run_config(1, 1))
    rng = np.random.default_rng(0)
    entries, all_clips = [], {}
    for name, role, labels, n in SPLITS:
        clips = _random_clips(name, n, rng, long_first=name == "strong_real")
        all_clips[name] = clips
        entry = {"dataset": "fake", "split": name, "role": role, "labels": labels, **_write_split(root, name, clips, geometry, rng)}
        if labels == "strong":
            entry["metadata"] = str(root / f"{name}_strong.tsv")
        if labels == "weak":
            entry["weak_train"], entry["weak_val"] = str(root / f"{name}_weak_train.tsv"), str(root / f"{name}_weak_val.tsv")
        entries.append(entry)
    torch.manual_seed(0)
    save_backbone(root / "backbone.pt", build_backbone(run_config(1, 1)["model"], run_config(1, 1)["frontends"]), {"test": True})
    return {"root": root, "inputs": {"splits": entries, "backbone": str(root / "backbone.pt")}, "clips": all_clips}


def with_pseudo_labels(fake: dict, offset: float = 0.0) -> dict:
    """Stage-1 inputs plus pseudo-label files of the four groups: logits +-4 on the true events (+ offset)."""
    root, splits = fake["root"], []
    for entry in fake["inputs"]["splits"]:
        entry = dict(entry)
        if entry["role"] != "validation":
            clips = fake["clips"][entry["split"]]
            n_frames = np.array([int((1 + int(d * 16000) // 256) // 4) for _, d, _ in clips])
            logits = np.full((len(clips), 3, n_frames.max()), -4.0 + offset, dtype=np.float32)
            for i, (_, _, events) in enumerate(clips):
                for on, off, label in events:
                    logits[i, CLASSES.index(label), int(on / 0.064) : int(np.ceil(off / 0.064))] = 4.0 + offset
            path = root / f"pl_{entry['split']}_{offset}.h5"
            write_logits(path, [c[0] for c in clips], logits, n_frames, CLASSES, 0.064, {"test": True}, "logits")
            entry["pseudo_labels"] = str(path)
        splits.append(entry)
    return {**fake["inputs"], "splits": splits}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- data
def test_items_crops_labels_and_pseudo_labels_shift_together(fake):
    config = {**run_config(1, 1), "classes": CLASSES}
    data = TrainingData(config, split_inputs(with_pseudo_labels(fake)["splits"]), use_embeddings=True, distil=True)
    assert data.group_lengths() == [6, 6, 6, 6] and data.epoch_batches() == 3  # weak: 8 clips, 6 in weak_train
    assert [(v.name, v.kind, len(v.clips)) for v in data.validation] == [("fake/weak:val", "weak", 2), ("fake/synth_val", "strong", 6)]
    clips = data.groups[0][0]  # strong_real; clip 0 lasts 12 s: 7 crops at 0.32 s steps
    assert clips.n_crops(0) == 7 and clips.n_crops(1) == 1
    base, shifted = clips.item(0, 0), clips.item(0, 6)
    assert base["crnn_mel"].shape == (128, 626) and base["embeddings"].shape == (16, 250) and base["strong"].shape == (3, 156)
    row = clips.rows[0]
    assert np.array_equal(shifted["crnn_mel"], clips.cache.crnn[row][:, 120:746])
    assert np.array_equal(shifted["embeddings"], clips.embeddings[row][:, 48:298].astype(np.float32))
    on, off, label = fake["clips"]["strong_real"][0][2][0]
    k, start, stop = CLASSES.index(label), int(np.floor((on - 1.92) / 0.064 + 1e-9)), int(np.ceil((off - 1.92) / 0.064 - 1e-9))
    active = np.flatnonzero(shifted["strong"][k])
    assert active.min() == max(start, 0) and active.max() == min(stop, 156) - 1
    assert np.array_equal(shifted["pseudo"] > 0.5, shifted["strong"] > 0.5)  # pseudo-labels shift with the labels
    assert np.array_equal(shifted["weak"], shifted["strong"].max(axis=1))
    weak_item = data.train_set[(int(data.train_set.offsets[2]), 0)]
    assert weak_item["strong"].sum() == 0 and weak_item["weak"].sum() >= 1


def test_short_clip_pseudo_labels_are_zero_past_the_clip_end(fake, tmp_path):
    config = {**run_config(1, 1), "classes": CLASSES}
    inputs = with_pseudo_labels(fake, offset=8.0)  # logits >= 4 everywhere: probability ~1 inside the clip
    entry = next(e for e in inputs["splits"] if e["split"] == "unlabeled")
    write_logits(tmp_path / "short.h5", [c[0] for c in fake["clips"]["unlabeled"]], np.full((6, 3, 156), 9.0, np.float32),
                 np.full(6, 65), CLASSES, 0.064, {}, "logits")  # fmt: skip
    entry["pseudo_labels"] = str(tmp_path / "short.h5")
    data = TrainingData(config, split_inputs(inputs["splits"]), use_embeddings=True, distil=True)
    item = data.groups[3][0].item(0, 0)
    assert np.all(item["pseudo"][:, :65] > 0.99) and np.all(item["pseudo"][:, 65:] == 0.0)


def test_pseudo_labels_with_other_classes_are_rejected(fake, tmp_path):
    inputs = with_pseudo_labels(fake)
    entry = next(e for e in inputs["splits"] if e["split"] == "weak")
    write_logits(tmp_path / "bad.h5", [c[0] for c in fake["clips"]["weak"]], np.zeros((8, 3, 156), np.float32),
                 np.full(8, 156), ["x", "y", "z"], 0.064, {}, "logits")  # fmt: skip
    entry["pseudo_labels"] = str(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="classes"):
        TrainingData({**run_config(1, 1), "classes": CLASSES}, split_inputs(inputs["splits"]), use_embeddings=True, distil=True)


def test_validation_psds_of_the_labels_is_high_and_of_a_constant_is_zero(fake):
    config = {**run_config(1, 1), "classes": CLASSES}
    data = TrainingData(config, split_inputs(fake["inputs"]["splits"]), use_embeddings=True, distil=False)
    index = next(i for i, v in enumerate(data.validation) if v.kind == "strong")
    clips = data.validation[index].clips
    labels = {(index, j): clips.item(j, 0)["strong"] for j in range(len(clips))}
    perfect = validation_psds(labels, data.validation, data.geometry, CLASSES, [1, 1, 1])
    assert perfect["psds1"] > 0.9 and perfect["psds2"] > 0.9, perfect
    flat = validation_psds({k: np.full_like(v, 0.5) for k, v in labels.items()}, data.validation, data.geometry, CLASSES, [1, 1, 1])
    assert flat["psds1"] < 0.05 and flat["psds2"] < 0.05, flat


# ----------------------------------------------------------------------------- learning
def test_tiny_model_overfits_a_tiny_batch(fake):
    """40 Adam steps on one batch of 4 strongly labelled clips: strong + weak BCE drops by a factor >= 4."""
    config = {**run_config(2, 1), "classes": CLASSES}
    data = TrainingData(config, split_inputs(fake["inputs"]["splits"]), use_embeddings=False, distil=False)
    batch = collate([data.train_set[(i, 0)] for i in range(4)])
    torch.manual_seed(0)
    model = build_sed_model(config, len(CLASSES), fake["inputs"]["backbone"])
    fe = build_frontends(config["frontends"])
    crnn, atst = fe.crnn.normalize(batch["crnn_mel"]), fe.atst.normalize(batch["atst_mel"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    history = []
    for _ in range(40):
        out = model(crnn, atst_feats=atst)
        loss = losses.bce(out.strong, batch["strong"]) + losses.bce(out.weak, batch["weak"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 4, history


class CopyCheckpoints(Callback):
    """Copies the run's checkpoint folder at the end of fit (before the export removes it)."""

    def __init__(self, dest):
        self.dest = dest

    def on_fit_end(self, trainer, pl_module):
        shutil.copytree(trainer.checkpoint_callback.dirpath, self.dest)


def test_stage1_then_stage2_with_distillation_end_to_end(fake, tmp_path):
    inputs = with_pseudo_labels(fake)
    kept = tmp_path / "kept_checkpoints"
    prov1 = train(run_config(1, 3), inputs, tmp_path / "stage1", iteration=2, callbacks=[CopyCheckpoints(kept)])
    assert not (tmp_path / "stage1" / "checkpoints").exists()  # a finished run keeps none: --forcerun retrains
    assert prov1["distillation"] and prov1["stage"] == 1
    rows1 = (tmp_path / "stage1" / "metrics.csv").read_text().splitlines()
    header = rows1[0].split(",")
    assert len(rows1) == 1 + 3 and "val/obj" in header and "train/distillation" in header
    table = [dict(zip(header, r.split(","))) for r in rows1[1:]]
    assert float(table[-1]["val/student/strong_bce"]) < float(table[0]["val/student/strong_bce"])  # it learns
    assert float(table[-1]["train/distillation"]) > 0
    model1, info1 = load_sed_model(tmp_path / "stage1" / "model.pt", "teacher")
    assert info1["classes"] == CLASSES and info1["provenance"]["selected_epoch"] in (0, 1, 2)
    # the exported teacher is the selected checkpoint's
    best = read_checkpoint(kept / info1["provenance"]["selected_checkpoint"])
    key = "cat_tf.weight"
    assert torch.equal(model1.state_dict()[key], best["state_dict"][f"sed_teacher.{key}"])

    stage2_inputs = {"splits": [{k: v for k, v in e.items() if k != "embeddings"} for e in inputs["splits"]],
                     "init_model": str(tmp_path / "stage1" / "model.pt")}  # fmt: skip
    prov2 = train(run_config(2, 2), stage2_inputs, tmp_path / "stage2", iteration=2)
    assert prov2["objective_name"] == "teacher PSDS1 + PSDS2" and prov2["objective"] is not None
    header2 = (tmp_path / "stage2" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/teacher/psds1", "val/teacher/psds2", "lr/tfm0", "lr/tfm2"} <= set(header2)
    student2, _ = load_sed_model(tmp_path / "stage2" / "model.pt", "student")
    assert not torch.equal(student2.state_dict()["atst_frame.atst.norm_frame.weight"],
                           model1.state_dict()["atst_frame.atst.norm_frame.weight"])  # fmt: skip  (transformer trained)


# ----------------------------------------------------------------------------- resume
def _train_cli(config: dict, inputs: dict, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sedlib", "train", "--config-json", json.dumps(config),
            "--inputs-json", json.dumps(inputs), "--out-dir", str(out_dir), "--threads", "1"]  # fmt: skip


class Crash(Callback):
    """Raises at the end of training epoch ``epoch`` (after last.ckpt was written): a failed job."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated failure")


def _student(path: Path) -> dict:
    return torch.load(path, map_location="cpu")["sed_student"]


def test_failed_run_resumes_from_last_checkpoint(fake, tmp_path):
    """A run that fails after epoch 1 of 3 is re-run: it continues at epoch 2 (global step 2, not 0) and ends with
    the weights of an uninterrupted run (sampler, augmentation and torch random states are restored)."""
    sizes = {"strong_real": 1, "synthetic": 1, "weak": 1, "unlabeled": 1}
    config = run_config(1, 3, mixup_p=1.0, batch_sizes=sizes, max_steps_per_epoch=2)
    out = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(config, fake["inputs"], out, callbacks=[Crash(epoch=0)])
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, 2) and not (out / "model.pt").exists()

    starts, sampler_epochs = [], []

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            starts.append((trainer.current_epoch, trainer.global_step))

        def on_train_epoch_start(self, trainer, pl_module):
            sampler_epochs.append(trainer.train_dataloader.batch_sampler.epoch)

    train(config, fake["inputs"], out, callbacks=[Probe()])
    assert starts == [(1, 2)] and sampler_epochs == [1, 2]  # Lightning's set_epoch reaches the group sampler
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["0", "2"], ["1", "4"], ["2", "6"]]

    train(config, fake["inputs"], tmp_path / "straight")
    resumed, straight = _student(out / "model.pt"), _student(tmp_path / "straight" / "model.pt")
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def _train_cli(config: dict, inputs: dict, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sedlib", "train", "--config-json", json.dumps(config),
            "--inputs-json", json.dumps(inputs), "--out-dir", str(out_dir), "--threads", "1"]  # fmt: skip


@pytest.mark.slow
def test_killed_process_resumes_from_last_checkpoint(fake, tmp_path):
    """SIGKILL of the CLI once the first last.ckpt exists; the restarted command continues from it."""
    config = run_config(1, 4)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cli(config, fake["inputs"], out), stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (out / "model.pt").exists()
    done_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert done_epoch < 3

    restart = subprocess.run(_train_cli(config, fake["inputs"], out), capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-3000:]
    epoch_lines = [line for line in restart.stderr.splitlines() if line.startswith("epoch ")]
    assert epoch_lines[0].startswith(f"epoch {done_epoch + 2}/4"), epoch_lines  # not from epoch 1
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[1]) for r in rows] == [3, 6, 9, 12]  # rows of the killed run kept, steps continue
    assert load_sed_model(out / "model.pt")[1]["provenance"]["global_step"] in (3, 6, 9, 12)


def test_changed_settings_discard_old_checkpoints(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    assert prepare_checkpoints(ckpt_dir, "a") is None
    (ckpt_dir / "last.ckpt").write_bytes(b"x")
    assert prepare_checkpoints(ckpt_dir, "a") == ckpt_dir / "last.ckpt"
    assert prepare_checkpoints(ckpt_dir, "b") is None and not (ckpt_dir / "last.ckpt").exists()
    assert json.loads((ckpt_dir / "run.json").read_text()) == {"fingerprint": "b"}
