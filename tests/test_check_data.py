"""check-data on a folder laid out like DESED (real dev-test ground truth, some YouTube clips absent), and the
evaluation.missing_audio policy (error | drop) through metadata validation and eval_psds.json."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from sedlib.cli import main
from sedlib.data.check import check_datasets, listed_clips
from sedlib.data.metadata import read_durations, validate_metadata, write_durations, write_strong
from sedlib.evaluation.metrics import dropped_clips

ABSENT = 5  # dev-test clips left out of the copy
CLASSES = ["Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush", "Frying",
           "Running_water", "Speech", "Vacuum_cleaner"]  # fmt: skip


def desed_like(root: Path, shared_data: Path) -> dict:
    """DESED layout under ``root`` from the real dev-test ground truth with ABSENT clips missing, and a weak
    training split with 2 of its 6 clips missing; returns the `datasets` section of a configuration."""
    truth = shared_data / "desed_meta" / "validation.tsv"
    (root / "metadata" / "validation").mkdir(parents=True)
    shutil.copy(truth, root / "metadata" / "validation" / "validation.tsv")
    clips = listed_clips(truth, "strong")
    audio = root / "audio" / "validation" / "validation"
    audio.mkdir(parents=True)
    silence = np.zeros((800, 1), dtype=np.float32)  # 50 ms at 16 kHz: layout, not content, is checked
    for i, clip in enumerate(clips[ABSENT:]):
        rate, channels = (44100, 2) if i % 100 == 0 else (16000, 1)
        sf.write(audio / clip, np.zeros((rate // 20, channels), dtype=np.float32) if channels == 2 else silence, rate)
    weak = root / "audio" / "train" / "weak"
    weak.mkdir(parents=True)
    names = [f"Yweak{i}_0.000_10.000.wav" for i in range(6)]
    for name in names[2:]:
        sf.write(weak / name, silence, 16000)
    (root / "metadata" / "train").mkdir(parents=True)
    weak_rows = "".join(f"{n}\tDog\n" for n in names)
    (root / "metadata" / "train" / "weak.tsv").write_text("filename\tevent_labels\n" + weak_rows)
    splits = {
        "weak": {"audio": "audio/train/weak", "metadata": "metadata/train/weak.tsv", "labels": "weak", "role": "weak"},
        "devtest": {"audio": "audio/validation/validation", "metadata": "metadata/validation/validation.tsv",
                    "labels": "strong", "role": "test"},
    }  # fmt: skip
    return {"desed": {"classes": CLASSES, "source": "local", "root": str(root), "splits": splits}}, clips[:ABSENT]


def write_config(path: Path, datasets: dict, missing_audio: str) -> Path:
    path.write_text(yaml.safe_dump({"datasets": datasets, "evaluation": {"missing_audio": missing_audio}}))
    return path


def test_check_data_lists_the_missing_ground_truth_clips(shared_data, tmp_path, capsys):
    datasets, absent = desed_like(tmp_path / "DESED", shared_data)
    out = tmp_path / "results" / "data_check.json"
    config = write_config(tmp_path / "c.yaml", datasets, "error")
    assert main(["check-data", "--configfile", str(config), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    devtest, weak = (report["datasets"]["desed"]["splits"][s] for s in ("devtest", "weak"))
    assert devtest["status"] == "error" and devtest["missing"] == absent
    assert devtest["n_listed"] == 1168 and devtest["n_audio"] == 1168 - ABSENT
    assert devtest["sample_rates"] == {"16000": 1151, "44100": 12} and devtest["channels"] == {"1": 1151, "2": 12}
    assert devtest["hours"] == pytest.approx((1168 - ABSENT) * 0.05 / 3600, abs=1e-4)
    assert weak["status"] == "warning" and len(weak["missing"]) == 2 and "2 of 6 clips" in weak["warnings"][0]
    printed = capsys.readouterr().out
    assert all(clip in printed for clip in absent) and "data check: FAILED" in printed

    config = write_config(tmp_path / "d.yaml", datasets, "drop")
    assert main(["check-data", "--configfile", str(config), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["datasets"]["desed"]["splits"]["devtest"]["status"] == "drop"


def test_unreadable_and_unlisted_audio_are_errors(shared_data, tmp_path):
    datasets, _ = desed_like(tmp_path / "DESED", shared_data)
    (tmp_path / "DESED" / "audio" / "train" / "weak" / "Yweak2_0.000_10.000.wav").write_bytes(b"not audio")
    sf.write(tmp_path / "DESED" / "audio" / "validation" / "validation" / "extra.wav", np.zeros(800), 16000)
    splits = check_datasets(datasets, "drop")["datasets"]["desed"]["splits"]
    assert splits["weak"]["status"] == "error" and splits["weak"]["unreadable"][0]["file"] == "Yweak2_0.000_10.000.wav"
    assert splits["devtest"]["status"] == "error" and splits["devtest"]["not_in_metadata"] == ["extra.wav"]


def test_missing_audio_drop_scores_the_clips_present(shared_data, tmp_path):
    truth = shared_data / "desed_meta" / "validation.tsv"
    clips = listed_clips(truth, "strong")
    durations = tmp_path / "durations.tsv"
    real = read_durations(shared_data / "desed_meta" / "validation_durations.tsv")
    write_durations(durations, {clip: real[clip] for clip in clips[ABSENT:]})
    with pytest.raises(ValueError, match="evaluation.missing_audio: drop"):
        validate_metadata(truth, "strong", CLASSES, measured_durations=durations, scored=True)
    result = validate_metadata(truth, "strong", CLASSES, measured_durations=durations, scored=True,
                               missing_audio="drop")
    assert result.n_clips == 1168 - ABSENT and any("dropped" in w for w in result.warnings)
    write_strong(tmp_path / "metadata.tsv", result.table)
    assert dropped_clips({"desed/devtest": {"metadata": tmp_path / "metadata.tsv", "listed": truth}}) == {
        "desed/devtest": clips[:ABSENT]
    }
