"""Own data in one short config: schema defaults, the generic `strong` role, and a tiny 3-class dataset with
strong labels only run end to end through the workflow (configs/own_data_example.yaml, docs/own_data.md)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from sedlib.config import ConfigError, load_config, stage_batch_sizes, validate_config
from sedlib.models.pretrain import read_targets
from sedlib.training.data import batch_groups

from test_workflow_e2e import snakemake

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "own_data_example.yaml"
CLASSES = ["knock", "whistle", "ring"]
TONES = {"knock": 300.0, "whistle": 2500.0, "ring": 1200.0}  # Hz of each class's tone burst


def test_defaults_are_the_embedded_default(repo_root):
    """The dataset block alone gives the embedded default's every other value (schema defaults)."""
    embedded = load_config(repo_root / "workflow_config.yaml")
    datasets = yaml.safe_load((repo_root / "workflow_config.yaml").read_text())["datasets"]
    minimal = validate_config({"datasets": datasets})
    assert minimal == embedded


def test_example_config_is_short_and_valid():
    assert len(EXAMPLE.read_text().splitlines()) <= 30
    config = load_config(EXAMPLE)
    assert config["evaluation"]["splits"] == ["mydata/test"]
    assert len(config["evaluation"]["median_window"]) == 3
    assert stage_batch_sizes(config, 1) == {"strong": 8}  # the DESED groups are absent: no split has their role


def test_strong_group_follows_desed_groups_in_batch_order():
    groups = batch_groups({"strong_real": 1, "synthetic": 2, "weak": 3, "unlabeled": 4})
    assert groups["strong_all"] == slice(0, 3) and groups["strong"] == slice(3, 3) and groups["weak"] == slice(3, 6)
    own = batch_groups({"strong": 4})
    assert own["strong_all"] == own["strong"] == slice(0, 4) and own["unlabeled"] == slice(4, 4)


def test_evaluation_defaults_need_a_test_split():
    config = yaml.safe_load(EXAMPLE.read_text())
    del config["datasets"]["mydata"]["splits"]["test"]
    with pytest.raises(ConfigError, match="evaluation.splits.*no split has role 'test'"):
        validate_config(config)


def test_backbone_targets_from_strong_and_weak_labels(tmp_path):
    """Strong labels give frame targets on the 40 ms embedding grid, weak labels clip targets; cached clips
    without labels (audio that metadata validation left out) are skipped."""
    strong = tmp_path / "strong.tsv"
    strong.write_text("filename\tonset\toffset\tevent_label\na.wav\t0.1\t0.5\tknock\na.wav\t1.0\t2.0\tring\n"
                      "b.wav\t\t\t\n")  # fmt: skip
    weak = tmp_path / "weak.tsv"
    weak.write_text("filename\tevent_labels\na.wav\tknock,ring\nb.wav\t\n")
    cache = FakeCache(["a.wav", "extra.wav", "b.wav"])
    frames, classes, is_strong, rows = read_targets(strong, cache, frame_hop=0.04, patch_frames=4, stream="atst")
    assert is_strong and classes == ["knock", "ring"] and rows.tolist() == [0, 2] and frames[1] is None
    assert frames[0].shape == (2, 250) and frames[0][0].nonzero()[0].tolist() == list(range(2, 13))  # 0.08-0.52 s
    assert frames[0][1].sum() == 25 and not frames[2].any()
    clips, classes, is_strong, rows = read_targets(weak, cache, frame_hop=0.04, patch_frames=4, stream="atst")
    assert not is_strong and rows.tolist() == [0, 2]
    assert clips[0].tolist() == [1.0, 1.0] and clips[2].tolist() == [0.0, 0.0]


class FakeCache(list):
    """What read_targets reads of a feature cache: its clip names, length and ATST frame counts (10 s clips)."""

    @property
    def filenames(self):
        return list(self)

    def n_frames(self, stream):
        assert stream == "atst"
        return np.full(len(self), 1001)


def write_clip(path: Path, events: list[tuple[float, float, str]], seconds: float, rate: int, rng) -> None:
    """Stereo clip of noise with one tone burst per event (recorded at an odd rate: the pipeline resamples)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.01 * rng.standard_normal(len(t))
    for onset, offset, label in events:
        inside = (t >= onset) & (t < offset)
        wave[inside] += 0.3 * np.sin(2 * np.pi * TONES[label] * t[inside])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([wave, 0.8 * wave], axis=1).astype(np.float32), rate)


def make_own_dataset(root: Path, sizes: dict[str, int], seconds: float = 2.5, seed: int = 0) -> None:
    """audio/{split}/*.wav + metadata/{split}.tsv (DESED strong format) for a 3-class dataset."""
    rng = np.random.default_rng(seed)
    for split, n in sizes.items():
        lines = ["filename\tonset\toffset\tevent_label"]
        for i in range(n):
            label = CLASSES[i % len(CLASSES)]
            onset = round(float(rng.uniform(0.0, seconds - 1.0)), 3)
            events = [(onset, round(onset + 0.8, 3), label)]
            write_clip(root / "audio" / split / f"{split}_{i:03d}.wav", events, seconds, 22050, rng)
            lines += [f"{split}_{i:03d}.wav\t{on}\t{off}\t{lab}" for on, off, lab in events]
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        (root / "metadata" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_own_data_end_to_end(copy_workflow, tmp_path):
    """3 classes, strong labels only (no weak / unlabeled split): the whole workflow on CPU -> eval_psds.json."""
    workdir = copy_workflow(tmp_path / "wf")
    make_own_dataset(tmp_path / "mydata", {"train": 9, "val": 3, "test": 3})
    config = yaml.safe_load(EXAMPLE.read_text())
    config["datasets"]["mydata"]["root"] = str(tmp_path / "mydata")
    config["datasets"]["mydata"]["classes"] = CLASSES
    tiny_stage = {"batch_sizes": {"strong": 3}, "epochs": 1}
    config["training"] = {"iterations": 1, "members": [{"name": "m1", "seed": 1}],
                          "stage1": tiny_stage, "stage2": tiny_stage}
    config["model"] = {"backbones": {"atst": {"pretrain": {"epochs": 1, "batch_size": 8}}}}
    config["evaluation"].update(bootstrap={"n": 2, "seed": 0}, psds_eval_thresholds=2)
    (workdir / "own.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = snakemake(workdir, "--cores", "1", "--configfile", "own.yaml", "--replace-workflow-config",
                     "results/eval_psds.json", timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"own-data workflow: {time.monotonic() - started:.1f} s")
    result = json.loads((workdir / "results" / "eval_psds.json").read_text())
    assert set(result["results"]["iter1"]) == {"m1_stage1_teacher", "m1_teacher", "ensemble"}  # evaluation.models: teacher
    for metrics in result["results"]["iter1"].values():
        assert set(metrics) == {"mydata/test"}
        assert 0.0 <= metrics["mydata/test"]["psds1"]["value"] <= 1.0
    assert result["missing_audio"] == {"policy": "error", "dropped": {}}
    check = json.loads((workdir / "results" / "data" / "mydata" / "data_check.json").read_text())
    assert check["ok"] and check["datasets"]["mydata"]["splits"]["train"]["sample_rates"] == {"22050": 9}
    for stage in (1, 2):
        tags = tensorboard_scalars(workdir / "results" / "iter1" / f"stage{stage}" / "m1" / "tensorboard")
        assert {"train/loss_step", "train/supervised_epoch", "train/consistency_epoch", "lr/cnn", "lr/rnn", "val/obj",
                "val/teacher/psds1", "val/teacher/strong_bce"} <= tags, sorted(tags)  # fmt: skip


def tensorboard_scalars(log_dir: Path) -> set[str]:
    """Scalar tags of the TensorBoard event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(log_dir.glob("events.out.tfevents.*")), f"no event file in {log_dir}"
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])
