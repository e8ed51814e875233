"""Progress lines of long CLI work (sedlib.progress): periodic log lines off a terminal, an in-place line on one,
silence for short work; windowed prediction reports the seconds it covers, so `infer` on a long file reports."""

import logging
import types

import numpy as np
import pytest
import soundfile as sf
import torch

import sedlib.progress as P
from sedlib.cli import main
from sedlib.features.frontends import Frontends
from sedlib.models.windowing import predict_clip


def test_log_lines_count_files_elapsed_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="sedlib.progress")
    assert list(P.Progress(range(4), "resample x", tty=False, interval_s=0.0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("resample x: 1/4 files (25 %), elapsed 0 s, ETA")
    assert lines[-1] == lines[-2] and lines[-1].startswith("resample x: 4/4 files (100 %)") and "ETA" not in lines[-1]


def test_short_work_is_quiet(caplog, capsys):
    caplog.set_level(logging.INFO, logger="sedlib.progress")
    list(P.Progress(range(100), "score", tty=False))
    list(P.Progress(range(100), "score", tty=True, interval_s=60.0))
    assert not caplog.records and capsys.readouterr().err == ""


def test_terminal_line_is_redrawn_in_place(capsys):
    with P.Progress(label="infer", total=10.0, unit="s of audio", tty=True, interval_s=0.0) as progress:
        progress.advance(2.5)
        progress.advance(7.5)
    err = capsys.readouterr().err
    assert err.count("\r") == 3 and err.endswith("\n") and "infer: 10/10 s of audio (100 %)" in err


def test_duration_text():
    assert [P.duration_text(s) for s in (42, 185, 3720)] == ["42 s", "3 min 05 s", "1 h 02 min"]


def test_predict_clip_reports_the_seconds_it_covers():
    classes, pool, hop = 3, 4, 256

    def model(crnn, atst_feats):
        return types.SimpleNamespace(strong_logits=torch.zeros(crnn.shape[0], classes, 626 // pool))

    def crnn_mel(wave):
        return torch.zeros(wave.shape[0], 1, 626)

    model.time_pooling = pool
    model.backbone = types.SimpleNamespace(frontend="atst")  # the section whose features atst_feats carries
    crnn_mel.sample_rate, crnn_mel.hop_length = 16000, hop
    frontends = Frontends(crnn=crnn_mel, atst=lambda wave: wave)
    reported = []
    predict_clip(model, frontends, torch.zeros(16000 * 47), batch_size=2, on_progress=reported.append)
    assert len(reported) == 5 and sum(reported) == pytest.approx(47.0)  # 9 windows of 10 s, 5 s hop


def test_infer_on_a_long_file_reports_progress(random_model_file, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(P, "LOG_INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="sedlib.progress")
    wav = tmp_path / "long.flac"
    sf.write(wav, 0.01 * np.random.default_rng(0).standard_normal((22050 * 60, 2)), 22050)
    assert main(["infer", str(wav), "--checkpoint", str(random_model_file), "--out", str(tmp_path / "e.tsv"),
                 "--device", "cpu"]) == 0  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 3 and lines[0].startswith("infer (1 files): ") and "s of audio" in lines[0]
    assert "60/60 s of audio (100 %)" in lines[-1]
