"""Command options out of their range are argparse errors naming the option (nothing runs)."""

import pytest

from sedlib.cli import main as cli_main

INFER = ["infer", "a.wav", "--checkpoint", "model.pt", "--out", "events.tsv"]
SPLIT = ["split-weak", "--metadata", "w.tsv", "--train-out", "t.tsv", "--val-out", "v.tsv"]


@pytest.mark.parametrize(
    "argv, option, expected",
    [
        (INFER + ["--threshold", "1.5"], "--threshold", "a number in [0, 1]"),
        (INFER + ["--threshold", "-0.1"], "--threshold", "a number in [0, 1]"),
        (INFER + ["--threshold", "nan"], "--threshold", "a number in [0, 1]"),
        (INFER + ["--median-window", "0"], "--median-window", "an integer >= 1"),
        (INFER + ["--median-window", "7", "-3"], "--median-window", "an integer >= 1"),
        (INFER + ["--window-seconds", "0"], "--window-seconds", "a number > 0"),
        (INFER + ["--window-seconds", "-5"], "--window-seconds", "a number > 0"),
        (INFER + ["--hop-seconds", "inf"], "--hop-seconds", "a number > 0"),
        (SPLIT + ["--seed", "1", "--val-fraction", "1"], "--val-fraction", "a number in [0, 1)"),
        (SPLIT + ["--seed", "1", "--val-fraction", "-0.2"], "--val-fraction", "a number in [0, 1)"),
        (SPLIT + ["--seed", "-1", "--val-fraction", "0.1"], "--seed", "an integer >= 0"),
    ],
)
def test_out_of_range_option_is_an_argparse_error_naming_it(tmp_path, monkeypatch, capsys, argv, option, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected {expected}, got" in err, err
    assert not list(tmp_path.iterdir()), "nothing may run"
