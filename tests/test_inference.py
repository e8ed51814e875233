"""`infer` on real recordings of any length, rate and channel count, with a randomly initialised model."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy.special import logit

from sedlib.cli import main
from sedlib.data.labels import n_output_frames
from sedlib.evaluation.postprocess import read_score_dir
from sedlib.evaluation.scoring import load_predictor
from sedlib.inference import median_windows, read_thresholds
from sedlib.devices import resolve_device

RECORDINGS = {"speech_en": 10.0, "speech_zh": 4.2, "speech_long_44k_stereo": 14.7}


@pytest.fixture(scope="module")
def inferred(tmp_path_factory, shared_data, random_model_file):
    """Run `infer` once on the three recordings and a mono down-mix of the stereo one."""
    out = tmp_path_factory.mktemp("infer")
    stereo, rate = sf.read(shared_data / "audio" / "speech_long_44k_stereo.wav", dtype="float32")
    sf.write(out / "downmix.wav", stereo.mean(axis=1), rate, subtype="FLOAT")
    audio = [str(shared_data / "audio" / f"{name}.wav") for name in RECORDINGS] + [str(out / "downmix.wav")]
    rc = main(["infer", *audio, "--checkpoint", str(random_model_file), "--threshold", "0.5", "--median-window", "7",
               "--out", str(out / "events.tsv"), "--scores-dir", str(out / "scores"), "--plot", str(out / "plots"),
               "--device", "cpu"])
    assert rc == 0
    return out


def test_events_and_score_frames_follow_the_duration(inferred):
    events = pd.read_csv(inferred / "events.tsv", sep="\t")
    assert list(events.columns) == ["filename", "onset", "offset", "event_label"]
    assert len(events) > 0  # a random model's scores straddle 0.5
    tables = read_score_dir(inferred / "scores")
    for name, duration in RECORDINGS.items():
        table = tables[name]
        assert len(table) == n_output_frames(duration, 256, 16000, 4)  # 156, 65, 229 frames of 64 ms
        assert table["offset"].iloc[-1] <= duration + 1e-9
        own = events[events["filename"] == f"{name}.wav"]
        assert ((own["onset"] >= 0) & (own["offset"] <= duration + 1e-9) & (own["onset"] < own["offset"])).all()
        assert (inferred / "plots" / f"{name}.png").stat().st_size > 10_000


def test_stereo_file_scores_like_its_mono_downmix(inferred):
    tables = read_score_dir(inferred / "scores")
    stereo, mono = tables["speech_long_44k_stereo"], tables["downmix"]
    assert stereo.shape == mono.shape
    # the down-mix is stored as float32, so infer sees the same samples: scores agree to float rounding
    np.testing.assert_allclose(stereo.to_numpy(), mono.to_numpy(), atol=1e-6)


def test_inference_normalises_features_like_training(inferred, shared_data, random_model_file):
    """A 10 s clip is one window: infer's logits must equal a direct forward on normalised features.
    A pipeline that skipped the ATST normalisation (as the published inference script does) fails here."""
    model, frontends, info = load_predictor(random_model_file, "teacher", resolve_device("cpu"))
    wave = torch.from_numpy(sf.read(shared_data / "audio" / "speech_en.wav", dtype="float32")[0])[None]
    with torch.inference_mode():
        direct = model(frontends.crnn(wave), atst_feats=frontends.atst(wave)).strong_logits[0].double().numpy()
        unnormalised = model(frontends.crnn(wave), atst_feats=frontends.atst.mel(wave)).strong_logits[0].double().numpy()
    table = read_score_dir(inferred / "scores", ["speech_en"])["speech_en"]
    inferred_logits = logit(table[info["classes"]].to_numpy()).T
    np.testing.assert_allclose(inferred_logits, direct, atol=1e-6)
    assert np.abs(unnormalised - direct).max() > 1e-2  # the check has power: 0.3 for this model


def test_threshold_files_and_median_windows(tmp_path):
    classes = ["a", "b"]
    (tmp_path / "t.json").write_text(json.dumps({"a": 0.3, "b": 0.6}))
    assert read_thresholds(tmp_path / "t.json", classes) == {"a": 0.3, "b": 0.6}
    (tmp_path / "t.tsv").write_text("event_label\tthreshold\na\t0.2\nb\t0.7\n")
    assert read_thresholds(tmp_path / "t.tsv", classes) == {"a": 0.2, "b": 0.7}
    (tmp_path / "missing.json").write_text(json.dumps({"a": 0.3}))
    with pytest.raises(ValueError, match="no value for classes"):
        read_thresholds(tmp_path / "missing.json", classes)
    (tmp_path / "bad.json").write_text(json.dumps({"a": 0.3, "b": 0.5, "z": 0.1}))
    with pytest.raises(ValueError, match="unknown classes"):
        read_thresholds(tmp_path / "bad.json", classes)
    assert median_windows(None, 3) == [7, 7, 7] and median_windows([5], 3) == [5, 5, 5]
    with pytest.raises(ValueError, match="one per class"):
        median_windows([1, 2], 3)


def test_unreadable_audio_is_a_clear_error(tmp_path, random_model_file, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    rc = main(["infer", str(bad), "--checkpoint", str(random_model_file), "--out", str(tmp_path / "e.tsv")])
    assert rc == 2 and "broken.wav" in capsys.readouterr().err
    assert not (tmp_path / "e.tsv").exists()


@pytest.mark.parametrize("case", ["missing", "nan"])
def test_infer_names_missing_and_non_finite_files(tmp_path, random_model_file, capsys, case):
    path = tmp_path / f"{case}.wav"
    if case == "nan":
        sf.write(path, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    argv = ["infer", str(path), "--checkpoint", str(random_model_file), "--out", str(tmp_path / "e.tsv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = "missing.wav: audio file does not exist" if case == "missing" else "nan.wav: 16000 non-finite samples"
    assert expected in err and "System error" not in err
    assert not (tmp_path / "e.tsv").exists()
