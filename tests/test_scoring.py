"""`score`: a model's logits and sed_scores_eval tables on a split of real recordings; the ensemble average."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.special import expit
import pandas as pd
from sed_scores_eval.base_modules.io import read_sed_scores, write_sed_scores
from sed_scores_eval.base_modules.scores import create_score_dataframe, validate_score_dataframe

from sedlib.cli import main
from sedlib.data.labels import n_output_frames
from sedlib.evaluation.postprocess import read_score_dir
from sedlib.evaluation.score_tables import (check_score_table, frame_timestamps, probabilities, score_table, score_table_text,
                                            write_score_dir)
from sedlib.evaluation.scoring import load_predictor, load_wave, score_ensemble
from sedlib.devices import resolve_device
from sedlib.models.windowing import predict_clip, predict_clips
from sedlib.pseudo.store import read_logits, write_logits

CLASSES = [f"c{k}" for k in range(3)]


@pytest.fixture(scope="module")
def split(tmp_path_factory, shared_data):
    """A 16 kHz split of two real recordings (10 s float, 4.2 s PCM16) and its durations file."""
    root = tmp_path_factory.mktemp("split")
    audio = root / "audio_16k"
    audio.mkdir()
    for name in ("speech_en.wav", "speech_zh.wav"):
        shutil.copy(shared_data / "audio" / name, audio / name)
    (root / "durations.tsv").write_text("filename\tduration\nspeech_en.wav\t10.0\nspeech_zh.wav\t4.2\n")
    return root


def test_score_model_writes_exact_logits_and_sigmoid_tables(tmp_path, split, random_model_file):
    logits_out, scores_out = tmp_path / "logits.h5", tmp_path / "scores"
    rc = main(["score", "--model-file", str(random_model_file), "--which", "student", "--audio-dir",
               str(split / "audio_16k"), "--durations", str(split / "durations.tsv"), "--config-json",
               '{"window_seconds": 10.0, "hop_seconds": 5.0}', "--iteration", "1", "--logits-out", str(logits_out),
               "--scores-out", str(scores_out), "--device", "cpu"])
    assert rc == 0
    stored = read_logits(logits_out)
    assert stored.filenames == ["speech_en.wav", "speech_zh.wav"] and stored.average == "member"
    assert stored.provenance["network"] == "student" and stored.frame_hop == pytest.approx(0.064)
    model, frontends, _ = load_predictor(random_model_file, "student", resolve_device("cpu"))
    tables = read_score_dir(scores_out)
    assert sorted(tables) == ["speech_en", "speech_zh"]
    names = ("speech_en.wav", "speech_zh.wav")
    waves = [torch.from_numpy(load_wave(split / "audio_16k" / name, 16000)) for name in names]
    batched = predict_clips(model, frontends, waves, 10.0, 5.0)  # the job's batch: both clips' windows together
    for name, duration, wave, together in zip(names, (10.0, 4.2), waves, batched):
        direct = together.numpy()
        np.testing.assert_array_equal(stored.clip(name), direct)
        # a clip predicted alone differs only by float rounding
        np.testing.assert_allclose(predict_clip(model, frontends, wave, 10.0, 5.0).numpy(), direct, rtol=0, atol=1e-5)
        table = tables[name[:-4]]
        assert len(table) == n_output_frames(duration, 256, 16000, 4) == direct.shape[1]  # 156 / 65 frames
        assert table["onset"].iloc[0] == 0.0 and table["offset"].iloc[-1] <= duration
        np.testing.assert_allclose(table[stored.classes].to_numpy(), expit(direct.astype(np.float64)).T, rtol=0, atol=1e-15)


def test_one_score_job_scores_several_splits_like_single_jobs(tmp_path, split, random_model_file, capsys):
    """One job per network: its splits' outputs equal those of one job per split; a count mismatch is refused."""
    (tmp_path / "zh.tsv").write_text("filename\tduration\nspeech_zh.wav\t4.2\n")
    cfg = ["--config-json", '{"window_seconds": 10.0, "hop_seconds": 5.0}', "--iteration", "1", "--device", "cpu"]
    model = ["--model-file", str(random_model_file), "--which", "teacher"]
    audio = str(split / "audio_16k")
    durations = [str(split / "durations.tsv"), str(tmp_path / "zh.tsv")]
    assert main(["score", *model, "--audio-dir", audio, audio, "--durations", *durations, *cfg, "--logits-out",
                 str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--scores-out", str(tmp_path / "a"),
                 str(tmp_path / "b")]) == 0  # fmt: skip
    assert main(["score", *model, "--audio-dir", audio, "--durations", durations[1], *cfg, "--logits-out",
                 str(tmp_path / "single.h5"), "--scores-out", str(tmp_path / "single")]) == 0  # fmt: skip
    assert read_logits(tmp_path / "a.h5").filenames == ["speech_en.wav", "speech_zh.wav"]
    together, single = read_logits(tmp_path / "b.h5"), read_logits(tmp_path / "single.h5")
    assert together.filenames == single.filenames == ["speech_zh.wav"]
    np.testing.assert_array_equal(together.clip("speech_zh.wav"), single.clip("speech_zh.wav"))
    assert together.provenance["durations"] == durations[1]
    assert sorted(read_score_dir(tmp_path / "b")) == ["speech_zh"]
    assert main(["score", *model, "--audio-dir", audio, audio, "--durations", *durations, *cfg, "--logits-out",
                 str(tmp_path / "c.h5"), str(tmp_path / "d.h5"), "--scores-out", str(tmp_path / "c")]) == 2  # fmt: skip
    assert "--scores-out: expected 2 values (one per --durations), got 1" in capsys.readouterr().err
    assert not (tmp_path / "c.h5").exists()
    # ensemble of two members on both splits: every member's file of the first split, then of the second
    for name in ("a", "b"):
        shutil.copy(tmp_path / f"{name}.h5", tmp_path / f"{name}2.h5")
    members = ["--member-logits", *(str(tmp_path / f"{name}.h5") for name in ("a", "a2", "b", "b2"))]
    assert main(["score", *members, "--durations", *durations, "--config-json", '{"average": "logits"}',
                 "--iteration", "1", "--logits-out", str(tmp_path / "ea.h5"), str(tmp_path / "eb.h5"),
                 "--scores-out", str(tmp_path / "ea"), str(tmp_path / "eb")]) == 0  # fmt: skip
    np.testing.assert_array_equal(read_logits(tmp_path / "eb.h5").clip("speech_zh.wav"), single.clip("speech_zh.wav"))
    assert main(["score", *members[:-1], "--durations", *durations, "--config-json", '{"average": "logits"}',
                 "--iteration", "1", "--logits-out", "x.h5", "y.h5", "--scores-out", "x", "y"]) == 2  # fmt: skip
    assert "3 files is not a whole number of members for each of the 2 splits" in capsys.readouterr().err


def _member_file(path, logits, n_frames, filenames):
    write_logits(path, filenames, logits.astype(np.float32), n_frames, CLASSES, 0.064, {"member": path.stem}, "member")
    return path


@pytest.mark.parametrize("mode", ["logits", "probabilities"])
def test_score_ensemble_averages_member_logits(tmp_path, mode):
    rng = np.random.default_rng(0)
    names, n_frames = ["a.wav", "b.wav"], np.array([156, 65])
    members = [rng.normal(0, 3, (2, 3, 156)) for _ in range(3)]
    paths = [_member_file(tmp_path / f"m{k}.h5", x, n_frames, names) for k, x in enumerate(members)]
    durations = tmp_path / "durations.tsv"
    durations.write_text("filename\tduration\na.wav\t10.0\nb.wav\t4.2\n")
    score_ensemble(paths, mode, 1, durations, tmp_path / "ens.h5", tmp_path / "scores")
    stored = [x.astype(np.float32).astype(np.float64) for x in members]
    if mode == "logits":
        expected = expit(np.mean(stored, axis=0))
    else:
        expected = np.mean([expit(x) for x in stored], axis=0)
    for row, clip in enumerate(["a", "b"]):
        table = read_sed_scores(tmp_path / "scores" / f"{clip}.tsv")
        assert len(table) == n_frames[row]
        # float32 storage of the averaged logits: probabilities within 1e-6
        np.testing.assert_allclose(table[CLASSES].to_numpy(), expected[row, :, : n_frames[row]].T, atol=1e-6)
    assert read_logits(tmp_path / "ens.h5").average == mode


def test_score_ensemble_rejects_members_of_different_splits(tmp_path):
    rng = np.random.default_rng(1)
    a = _member_file(tmp_path / "a.h5", rng.normal(size=(1, 3, 156)), np.array([156]), ["a.wav"])
    b = _member_file(tmp_path / "b.h5", rng.normal(size=(1, 3, 156)), np.array([156]), ["z.wav"])
    (tmp_path / "d.tsv").write_text("filename\tduration\na.wav\t10.0\n")
    with pytest.raises(ValueError, match="filenames"):
        score_ensemble([a, b], "logits", 1, tmp_path / "d.tsv", tmp_path / "e.h5", tmp_path / "s")
    assert not (tmp_path / "s").exists() and not (tmp_path / "e.h5").exists()


@pytest.mark.slow
def test_evaluation_rules_end_to_end(tmp_path, copy_workflow, shared_data, random_model_file):
    """score_model -> score_ensemble -> evaluate -> plot -> HTML report on a copied workflow, with stand-in
    data files and random stage-2 models in place (only the evaluation rules may run)."""
    root = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((root / "workflow_config.yaml").read_text())
    config["training"]["iterations"] = 1
    config["evaluation"].update(splits=["desed/devtest"], models="teacher", bootstrap={"n": 3, "seed": 0},
                                activity_plots=2, psds_eval_thresholds=5, csebbs={"enabled": False})
    (root / "test_config.yaml").write_text(yaml.safe_dump(config))
    classes = config["datasets"]["desed"]["classes"]
    split = root / "results/data/desed/devtest"
    (split / "audio_16k").mkdir(parents=True)
    rows, durations = [], []
    for k, (name, seconds) in enumerate([("speech_en", 10.0), ("speech_zh", 4.2), ("speech_en", 10.0)] * 4):
        clip = f"clip{k:02d}.wav"
        shutil.copy(shared_data / "audio" / f"{name}.wav", split / "audio_16k" / clip)
        durations.append(f"{clip}\t{seconds}")
        rows += [f"{clip}\t0.5\t{seconds - 1:.1f}\t{classes[k % 10]}", f"{clip}\t1.0\t2.0\t{classes[(k + 3) % 10]}"]
    (split / "durations.tsv").write_text("filename\tduration\n" + "\n".join(durations) + "\n")
    (split / "metadata.tsv").write_text("filename\tonset\toffset\tevent_label\n" + "\n".join(rows) + "\n")
    for member in ("seed1", "seed2"):
        for stage in (1, 2):
            target = root / f"results/iter1/stage{stage}/{member}/model.pt"
            target.parent.mkdir(parents=True)
            shutil.copy(random_model_file, target)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    snakemake = [sys.executable, "-m", "snakemake", "--configfile", "test_config.yaml", "--cores", "2"]
    allowed = ["--allowed-rules", "score_model", "score_ensemble", "evaluate", "plot", "all"]
    for extra in ([*allowed, "--resources", "gpu=1"], ["--report", "results/report.html"]):
        proc = subprocess.run([*snakemake, *extra], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((root / "results/eval_psds.json").read_text())
    assert list(doc["results"]["iter1"]) == ["seed1_stage1_teacher", "seed1_teacher", "seed2_stage1_teacher",
                                             "seed2_teacher", "ensemble"]
    claims = doc["claims"]["desed/devtest"]["iter1"]
    assert set(claims["stage2_vs_stage1"]) == {"seed1", "seed2"}  # stage-1 and stage-2 are the same model here
    assert claims["stage2_vs_stage1"]["seed1"]["psds1"]["difference"] == 0.0
    assert claims["ensemble_vs_best_member"]["psds2"]["difference_ci95"] == [0.0, 0.0]
    entry = doc["results"]["iter1"]["ensemble"]["desed/devtest"]
    assert entry["clips"] == 12 and 0.0 <= entry["psds1"]["value"] <= 1.0
    # both members are the same random model: the ensemble of identical logits equals each member
    assert entry["psds2"]["value"] == doc["results"]["iter1"]["seed1_teacher"]["desed/devtest"]["psds2"]["value"]
    for name in ("psd_roc_comparison.png", "psd_roc/iter1/ensemble.png", "activity/01.png", "metrics_table.html"):
        assert (root / "results/plots" / name).stat().st_size > 1000
    table = (root / "results/plots/metrics_table.html").read_text()
    assert "Claims" in table and "iter1/seed1_stage1_teacher" in table
    report = (root / "results/report.html").read_text()
    assert "metrics_table.html" in report and "psd_roc_comparison.png" in report


def test_score_table_text_is_byte_identical_to_sed_scores_eval(tmp_path):
    """The fast writer writes exactly what sed_scores_eval's write_sed_scores (pandas to_csv) writes."""
    rng = np.random.default_rng(0)
    for k in range(40):
        frames, n_classes = int(rng.integers(1, 300)), int(rng.integers(1, 30))
        logits = (rng.standard_normal((n_classes, frames)) * rng.choice([1.0, 8.0, 40.0])).astype(np.float32)
        table = score_table(probabilities(logits), [f"class {c}" for c in range(n_classes)], 0.064,
                            frames * 0.064 - 0.01 * rng.random())  # fmt: skip
        write_sed_scores(table, tmp_path / f"{k}.tsv")
        assert score_table_text(table).encode() == (tmp_path / f"{k}.tsv").read_bytes()
    table.iloc[0, 2] = np.nan
    with pytest.raises(ValueError, match="clip bad: score table: non-finite"):
        write_score_dir(tmp_path / "scores", {"good": table.fillna(0.5), "bad": table})
    assert not (tmp_path / "scores").exists()  # all or nothing


def test_score_table_equals_sed_scores_eval_and_the_check_agrees_with_its_validation():
    """score_table builds exactly create_score_dataframe's frame; check_score_table accepts and rejects the
    tables that sed_scores_eval's validate_score_dataframe accepts and rejects (and also refuses NaN)."""
    rng = np.random.default_rng(1)
    scores, classes = rng.random((40, 3)), ["Cat", "Dog", "Speech"]
    table = score_table(scores, classes, 0.064, 2.5)
    pd.testing.assert_frame_equal(table, create_score_dataframe(scores, frame_timestamps(40, 0.064, 2.5), classes),
                                  check_exact=True)  # fmt: skip
    assert validate_score_dataframe(table)[1] == classes and check_score_table(table).shape == (40, 5)
    broken = {
        "renamed": table.rename(columns={"onset": "start"}),
        "no class": table[["onset", "offset"]],
        "zero length": table.assign(offset=table["onset"]),
        "gap": table.assign(onset=table["onset"] + np.r_[0.0, np.full(39, 0.01)]),
    }
    for name, bad in broken.items():
        with pytest.raises((ValueError, AssertionError)):
            validate_score_dataframe(bad)
        with pytest.raises(ValueError, match="score table: "):
            check_score_table(bad)
    for bad in (table.to_numpy(), table.assign(Cat=np.nan)):
        with pytest.raises(ValueError, match="score table: "):
            check_score_table(bad)
    with pytest.raises(ValueError, match=r"expected \(frames, 2\) scores"):
        score_table(scores, classes[:2], 0.064, 2.5)
