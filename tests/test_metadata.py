"""DESED metadata parsing and validation: real DESED files, every error class of the policy, the weak split."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sed_scores_eval.base_modules.io import read_ground_truth_events

from sedlib.cli import main as cli_main
from sedlib.data.metadata import (
    END_WARN_S,
    events_by_file,
    read_durations,
    read_soft,
    read_strong,
    read_weak,
    soft_events_by_file,
    split_weak,
    validate_metadata,
    write_soft,
    write_strong,
    write_weak,
)
from sedlib.data.labels import encode_soft

CLASSES = [
    "Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush",
    "Frying", "Running_water", "Speech", "Vacuum_cleaner",
]
STRONG_HEADER = "filename\tonset\toffset\tevent_label\n"
WEAK_HEADER = "filename\tevent_labels\n"


def write(path, text):
    path.write_text(text)
    return path


def durations_file(path, clips):
    return write(path, "filename\tduration\n" + "".join(f"{c}\t{d}\n" for c, d in clips.items()))


# ----------------------------------------------------------------------------- real DESED files
def test_real_devtest_ground_truth_validates(shared_data):
    meta = shared_data / "desed_meta"
    result = validate_metadata(
        meta / "validation.tsv", "strong", CLASSES, provided_durations=meta / "validation_durations.tsv", scored=True
    )
    table = result.table
    assert result.n_clips == 1168 and table["filename"].nunique() == 1168
    assert len(table) == 4239  # 4224 events + 15 event-less clips (empty onset/offset/label rows)
    assert result.n_events == 4224 and table["event_label"].isna().sum() == 15
    assert sorted(k for k, v in result.class_counts.items() if v) == CLASSES
    assert result.class_counts["Speech"] == 1752 and result.class_counts["Blender"] == 94
    # The published annotations run up to 0.115 s past the listed (0.1 s-rounded) durations: warned, not fatal.
    assert len(result.warnings) == 1 and "10 events end past their clip" in result.warnings[0]
    # The validated table is what sed_scores_eval expects for ground truth (event-less clips included).
    ground_truth = read_ground_truth_events(table)
    assert len(ground_truth) == 1168 and sum(map(len, ground_truth.values())) == 4224
    assert sum(1 for events in ground_truth.values() if not events) == 15


def test_real_audioset_strong_val_validates(shared_data):
    meta = shared_data / "desed_meta"
    result = validate_metadata(
        meta / "audioset_strong_val.tsv",
        "strong",
        CLASSES,
        provided_durations=meta / "audioset_strong_val_dur.tsv",
        scored=True,
    )
    assert (result.n_clips, result.n_events) == (373, 1693)
    assert result.class_counts["Speech"] == 886 and result.class_counts["Vacuum_cleaner"] == 7
    durations = read_durations(meta / "audioset_strong_val_dur.tsv")
    assert len(durations) == 373 and min(durations.values()) > 0 and max(durations.values()) == 10.0


def test_read_strong_matches_pandas(shared_data):
    path = shared_data / "desed_meta" / "audioset_strong_train.tsv"
    ours = read_strong(path)
    reference = pd.read_csv(path, sep="\t")
    assert list(ours.columns) == ["filename", "onset", "offset", "event_label"]
    assert len(ours) == len(reference) == 13342
    np.testing.assert_array_equal(ours["onset"].to_numpy(), reference["onset"].to_numpy())
    np.testing.assert_array_equal(ours["offset"].to_numpy(), reference["offset"].to_numpy())
    assert ours["event_label"].tolist() == reference["event_label"].tolist()


def test_strong_round_trip_keeps_values_and_eventless_rows(tmp_path):
    src = write(tmp_path / "a.tsv", STRONG_HEADER + "a.wav\t0.1\t2.345\tDog\nb.wav\t\t\t\nc.wav\t0.0\t10.0\tCat\n")
    table = read_strong(src)
    write_strong(tmp_path / "b.tsv", table)
    again = read_strong(tmp_path / "b.tsv")
    pd.testing.assert_frame_equal(table, again)
    assert math.isnan(again.loc[1, "onset"]) and again.loc[0, "offset"] == 2.345
    assert events_by_file(again) == {"a.wav": [(0.1, 2.345, "Dog")], "b.wav": [], "c.wav": [(0.0, 10.0, "Cat")]}


# ----------------------------------------------------------------------------- format errors name file:line
@pytest.mark.parametrize(
    "body, message",
    [
        ("a.wav\t0.0\t1.0\n", ":2: expected 4 tab-separated columns"),
        ("a.wav\t0.0\t1.0\tDog\nb.wav\t0.5\tlate\tCat\n", ":3: column 'offset' must be a finite number"),
        ("a.wav\tnan\t1.0\tDog\n", ":2: column 'onset' must be a finite number"),
        ("a.wav\t0.0\t\tDog\n", ":2: onset, offset and event_label must all be set"),
    ],
)
def test_malformed_strong_lines(tmp_path, body, message):
    path = write(tmp_path / "m.tsv", STRONG_HEADER + body)
    with pytest.raises(ValueError, match=message) as info:
        read_strong(path)
    assert str(path) in str(info.value)


def test_missing_header_and_missing_file(tmp_path):
    path = write(tmp_path / "m.tsv", "a.wav\t0.0\t1.0\tDog\n")
    with pytest.raises(ValueError, match=r"m\.tsv:1: expected the header line"):
        read_strong(path)
    with pytest.raises(FileNotFoundError, match="absent.tsv"):
        read_weak(tmp_path / "absent.tsv")


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.wav\t0.0\t1.0\tDogg", ":3: unknown label 'Dogg'"),
        ("a.wav\t2.0\t2.0\tDog", ":3: offset 2.0 s must be greater than onset 2.0 s"),
        ("a.wav\t-0.5\t1.0\tDog", ":3: negative onset"),
        ("a.wav\t9.0\t10.3\tDog", f":3: event Dog .* lies past the end of a.wav .*at most {END_WARN_S} s"),
        ("a.wav\t10.05\t10.1\tDog", ":3: event Dog .* lies past the end"),
    ],
)
def test_semantic_errors(tmp_path, row, message):
    path = write(tmp_path / "m.tsv", STRONG_HEADER + "a.wav\t0.0\t1.0\tCat\n" + row + "\n")
    durations = durations_file(tmp_path / "d.tsv", {"a.wav": 10.0})
    with pytest.raises(ValueError, match=message):
        validate_metadata(path, "strong", CLASSES, measured_durations=durations)


def test_small_overrun_warns_and_duplicates_are_dropped(tmp_path):
    body = "a.wav\t0.0\t1.0\tCat\na.wav\t9.0\t10.005\tDog\na.wav\t9.5\t10.05\tSpeech\na.wav\t0.0\t1.0\tCat\n"
    path = write(tmp_path / "m.tsv", STRONG_HEADER + body)
    durations = durations_file(tmp_path / "d.tsv", {"a.wav": 10.0})
    result = validate_metadata(path, "strong", CLASSES, measured_durations=durations)
    assert len(result.table) == 3 and result.n_events == 3  # the duplicate Cat row (line 5) is dropped
    assert any("1 exact duplicate rows dropped: line 5 (= line 2)" in w for w in result.warnings)
    # 5 ms overrun is silent, 50 ms is warned (line 4), values are kept unchanged
    assert any("1 events end past their clip (by at most 0.050 s, line 4)" in w for w in result.warnings)
    assert result.table["offset"].tolist() == [1.0, 10.005, 10.05]


def test_eventless_row_contradicting_events(tmp_path):
    path = write(tmp_path / "m.tsv", STRONG_HEADER + "a.wav\t\t\t\na.wav\t0.0\t1.0\tCat\n")
    with pytest.raises(ValueError, match=r":2: a.wav has an event-less row but also an event at line 3"):
        validate_metadata(path, "strong", CLASSES)


# ----------------------------------------------------------------------------- labels vs audio
def test_clip_set_mismatch_is_an_error_for_scored_splits(tmp_path):
    path = write(tmp_path / "m.tsv", STRONG_HEADER + "a.wav\t0.0\t1.0\tCat\nb.wav\t0.0\t1.0\tDog\n")
    durations = durations_file(tmp_path / "d.tsv", {"a.wav": 10.0, "c.wav": 10.0})
    with pytest.raises(ValueError, match=r"1 labelled clips have no audio: b.wav; 1 clips with audio have no label"):
        validate_metadata(path, "strong", CLASSES, measured_durations=durations, scored=True)


def test_clip_set_mismatch_is_dropped_with_warnings_for_training_splits(tmp_path):
    path = write(tmp_path / "m.tsv", STRONG_HEADER + "a.wav\t0.0\t1.0\tCat\nb.wav\t0.0\t1.0\tDog\n")
    durations = durations_file(tmp_path / "d.tsv", {"a.wav": 10.0, "c.wav": 10.0})
    result = validate_metadata(path, "strong", CLASSES, measured_durations=durations, max_unmatched_fraction=0.7)
    assert result.table["filename"].tolist() == ["a.wav"] and result.n_clips == 1
    assert sum("left out of the validated metadata" in w for w in result.warnings) == 2


WEAK_ROWS = "".join(f"clip{i}.wav\tDog\n" for i in range(40))
AUDIO = {f"clip{i}.wav": 10.0 for i in range(40)}


@pytest.mark.parametrize(
    "body, audio, message",
    [
        ("", AUDIO, "w.tsv: no data rows after the header"),
        (WEAK_ROWS.replace(".wav", ""), AUDIO,
         r"w.tsv: no labelled clip has audio.* 40 labelled clips have no audio: clip0, clip1, .*\(\+35 more\)"),
        (WEAK_ROWS.replace(".wav", ".flac"), {f"clip{i}.mp3.wav": 10.0 for i in range(40)},
         "no labelled clip has audio"),
        (WEAK_ROWS, {**{f"clip{i}.wav": 10.0 for i in range(37)}, "other.wav": 10.0},
         r"4 of 41 clips \(9.8%\) lack labels or audio, more than max_unmatched_fraction 5.0%.*"
         r"3 labelled clips have no audio: clip37.wav, clip38.wav, clip39.wav; 1 clips with audio .*: other.wav"),
    ],
    ids=["header only", "names without extension", "no matching stem", "more than 5 percent lost"],
)
def test_training_split_losing_its_clips_is_an_error(tmp_path, body, audio, message):
    path = write(tmp_path / "w.tsv", WEAK_HEADER + body)
    durations = durations_file(tmp_path / "d.tsv", audio)
    with pytest.raises(ValueError, match=message):
        validate_metadata(path, "weak", CLASSES, measured_durations=durations)


def test_a_few_lost_clips_warn_and_extensions_changed_by_resampling_match_by_stem(tmp_path):
    path = write(tmp_path / "w.tsv", WEAK_HEADER + WEAK_ROWS.replace("clip0.wav", "clip0.flac"))
    durations = durations_file(tmp_path / "d.tsv", {k: v for k, v in AUDIO.items() if k != "clip39.wav"})
    result = validate_metadata(path, "weak", CLASSES, measured_durations=durations)
    assert result.table["filename"].tolist() == [f"clip{i}.wav" for i in range(39)]
    assert any("1 filenames matched their resampled audio by stem: clip0.flac -> clip0.wav" in w
               for w in result.warnings)
    assert any("1 labelled clips have no audio: clip39.wav" in w for w in result.warnings)


def test_metadata_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.tsv"
    path.write_bytes((WEAK_HEADER + "a.wav\tDog\ncaf\u00e9.wav\tCat\n").encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.tsv:3: not UTF-8 text \(byte 0xe9"):
        read_weak(path)


def test_provided_durations_are_compared_with_the_audio(tmp_path):
    path = write(tmp_path / "m.tsv", STRONG_HEADER + "a.wav\t0.0\t9.9\tCat\n")
    measured = durations_file(tmp_path / "d.tsv", {"a.wav": 9.95})
    provided = durations_file(tmp_path / "p.tsv", {"a.wav": 9.7})
    result = validate_metadata(path, "strong", CLASSES, measured_durations=measured, provided_durations=provided)
    assert len(result.warnings) == 1 and "differ from the audio by more than 0.1 s" in result.warnings[0]
    # lengths come from the audio: 9.9 s ends inside the measured 9.95 s, so no overrun warning


# ----------------------------------------------------------------------------- weak labels
def test_weak_validation(tmp_path):
    body = "a.wav\tDog,Cat\nb.wav\tSpeech,Speech\na.wav\tCat,Dog\nc.wav\t\n"
    path = write(tmp_path / "w.tsv", WEAK_HEADER + body)
    result = validate_metadata(path, "weak", CLASSES)
    assert result.table["event_labels"].tolist() == [["Dog", "Cat"], ["Speech"], []]
    assert result.n_clips == 3 and result.n_events == 3
    assert any("1 duplicate rows dropped: line 4 (= line 2)" in w for w in result.warnings)
    assert any("repeated labels within a row removed at line 3" in w for w in result.warnings)


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.wav\tDog,Kat\n", r":2: unknown label\(s\) \['Kat'\]"),
        ("a.wav\tDog\na.wav\tCat\n", ":3: a.wav is listed again with other labels than at line 2"),
        ("a.wav\tDog,,Cat\n", ":2: empty label in the comma-separated list"),
        ("a.wav\tDog\tCat\n", ":2: expected 2 tab-separated columns"),
    ],
)
def test_weak_errors(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        validate_metadata(write(tmp_path / "w.tsv", WEAK_HEADER + body), "weak", CLASSES)


def test_split_weak_is_seeded_disjoint_and_complete():
    table = pd.DataFrame({"filename": [f"{i}.wav" for i in range(50)], "event_labels": [["Dog"]] * 50})
    train, val = split_weak(table, 0.1, seed=42)
    assert len(val) == 5 and len(train) == 45
    assert set(train["filename"]).isdisjoint(val["filename"])
    assert sorted(train["filename"].tolist() + val["filename"].tolist()) == sorted(table["filename"])
    again_train, again_val = split_weak(table, 0.1, seed=42)
    assert again_val["filename"].tolist() == val["filename"].tolist()
    assert split_weak(table, 0.1, seed=7)[1]["filename"].tolist() != val["filename"].tolist()
    assert len(split_weak(table, 0.0, seed=1)[1]) == 0
    with pytest.raises(ValueError, match="leaves no training clip"):
        split_weak(table.iloc[:1], 0.5, seed=1)


# ----------------------------------------------------------------------------- commands
def test_validate_and_split_commands(tmp_path, capsys):
    weak = write(tmp_path / "w.tsv", WEAK_HEADER + "".join(f"{i}.wav\tDog\n" for i in range(20)))
    durations = durations_file(tmp_path / "d.tsv", {f"{i}.wav": 10.0 for i in range(20)})
    cfg = '{"classes": ["Dog", "Cat"], "split": {"labels": "weak", "role": "weak"}}'
    out = tmp_path / "out" / "metadata.tsv"
    argv = ["validate-metadata", "--metadata", str(weak), "--durations", str(durations), "--provided-durations",
            "--config-json", cfg, "--out", str(out)]
    assert cli_main(argv) == 0
    assert out.read_text() == weak.read_text()
    argv = ["split-weak", "--metadata", str(out), "--val-fraction", "0.25", "--seed", "3",
            "--train-out", str(tmp_path / "t.tsv"), "--val-out", str(tmp_path / "v.tsv")]
    assert cli_main(argv) == 0
    assert (len(read_weak(tmp_path / "t.tsv")), len(read_weak(tmp_path / "v.tsv"))) == (15, 5)

    bad = write(tmp_path / "bad.tsv", WEAK_HEADER + "0.wav\tDug\n")
    argv = ["validate-metadata", "--metadata", str(bad), "--durations", str(durations),
            "--config-json", cfg, "--out", str(tmp_path / "bad_out.tsv")]
    assert cli_main(argv) == 2
    assert "bad.tsv:2: unknown label(s) ['Dug']" in capsys.readouterr().err
    assert not (tmp_path / "bad_out.tsv").exists()


def test_validate_command_reads_the_split_threshold(tmp_path, capsys):
    weak = write(tmp_path / "w.tsv", WEAK_HEADER + WEAK_ROWS)
    durations = durations_file(tmp_path / "d.tsv", {k: v for k, v in AUDIO.items() if k != "clip39.wav"})
    for fraction, code in ((0.05, 0), (0.0, 2)):
        split = {"labels": "weak", "role": "weak", "max_unmatched_fraction": fraction}
        argv = ["validate-metadata", "--metadata", str(weak), "--durations", str(durations), "--config-json",
                json.dumps({"classes": CLASSES, "split": split}), "--out", str(tmp_path / f"out{fraction}.tsv")]
        assert cli_main(argv) == code
    assert "1 of 40 clips (2.5%) lack labels or audio, more than max_unmatched_fraction 0.0%" in capsys.readouterr().err


def test_write_weak_round_trip(tmp_path):
    table = pd.DataFrame({"filename": ["a.wav", "b.wav"], "event_labels": [["Dog", "Cat"], []]})
    write_weak(tmp_path / "w.tsv", table)
    assert (tmp_path / "w.tsv").read_text() == WEAK_HEADER + "a.wav\tDog,Cat\nb.wav\t\n"
    pd.testing.assert_frame_equal(read_weak(tmp_path / "w.tsv"), table)


# ----------------------------------------------------------------------------- soft labels (MAESTRO)
SOFT_HEADER = "filename\tonset\toffset\tevent_label\tconfidence\n"
MAESTRO = ["people talking", "door opens/closes", "car"]


def test_soft_round_trip_keeps_confidences_and_eventless_rows(tmp_path):
    body = "a.wav\t0.5\t3.25\tpeople talking\t0.6\na.wav\t1.0\t2.0\tdoor opens/closes\t1.0\nb.wav\t\t\t\t\n"
    path = write(tmp_path / "s.tsv", SOFT_HEADER + body)
    table = read_soft(path)
    assert table.columns.tolist() == ["filename", "onset", "offset", "event_label", "confidence"]
    assert soft_events_by_file(table) == {
        "a.wav": [(0.5, 3.25, "people talking", 0.6), (1.0, 2.0, "door opens/closes", 1.0)], "b.wav": []
    }
    write_soft(tmp_path / "again.tsv", table)
    assert (tmp_path / "again.tsv").read_text() == path.read_text()


@pytest.mark.parametrize("confidence", ["1.5", "nan", "high", "-0.2", "inf"])
def test_soft_confidence_outside_0_1_names_file_line_and_field(tmp_path, confidence):
    path = write(tmp_path / "s.tsv", SOFT_HEADER + "a.wav\t0.0\t1.0\tcar\t0.4\n" + f"a.wav\t2.0\t3.0\tcar\t{confidence}\n")
    with pytest.raises(ValueError, match=rf"s\.tsv:3: column 'confidence' must be a number in \[0, 1\].*got '{confidence}'"):
        read_soft(path)


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.wav\t0.0\t1.0\tcar\n", ":2: expected 5 tab-separated columns"),
        ("a.wav\t0.0\t1.0\tcar\t\n", ":2: onset, offset, event_label and confidence must all be set"),
        ("a.wav\tsoon\t1.0\tcar\t1.0\n", ":2: column 'onset' must be a finite number"),
    ],
)
def test_malformed_soft_lines(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        read_soft(write(tmp_path / "s.tsv", SOFT_HEADER + body))
    with pytest.raises(ValueError, match="s.tsv:1: expected the header line"):
        read_soft(write(tmp_path / "s.tsv", STRONG_HEADER + "a.wav\t0.0\t1.0\tcar\n"))


def test_soft_validation_checks_labels_times_and_clip_sets(tmp_path):
    durations = durations_file(tmp_path / "d.tsv", {"a.wav": 10.0, "b.wav": 10.0})
    body = "a.wav\t0.5\t3.0\tpeople talking\t0.2\nb.wav\t\t\t\t\n"
    result = validate_metadata(write(tmp_path / "s.tsv", SOFT_HEADER + body), "soft", MAESTRO,
                               measured_durations=durations, scored=True)
    assert (result.n_clips, result.n_events, result.class_counts["people talking"]) == (2, 1, 1)
    assert result.table["confidence"].tolist()[0] == 0.2 and math.isnan(result.table["confidence"].tolist()[1])
    for row, message in [("a.wav\t0.5\t3.0\tpeople_talking\t1.0", ":4: unknown label 'people_talking'"),
                         ("a.wav\t4.0\t3.0\tcar\t1.0", ":4: offset 3.0 s must be greater than onset 4.0 s"),
                         ("a.wav\t9.0\t11.0\tcar\t1.0", ":4: event car .* lies past the end of a.wav")]:
        path = write(tmp_path / "bad.tsv", SOFT_HEADER + body + row + "\n")
        with pytest.raises(ValueError, match=message):
            validate_metadata(path, "soft", MAESTRO, measured_durations=durations, scored=True)
    only_a = write(tmp_path / "a.tsv", SOFT_HEADER + "a.wav\t0.5\t3.0\tcar\t1.0\n")
    with pytest.raises(ValueError, match="clips with audio have no label row: b.wav"):
        validate_metadata(only_a, "soft", MAESTRO, measured_durations=durations, scored=True)


def test_validate_command_writes_soft_metadata(tmp_path):
    soft = write(tmp_path / "s.tsv", SOFT_HEADER + "a.wav\t0.5\t3.0\tcar\t0.8\nb.wav\t\t\t\t\n")
    durations = durations_file(tmp_path / "d.tsv", {"a.wav": 10.0, "b.wav": 10.0})
    cfg = json.dumps({"classes": MAESTRO, "split": {"labels": "soft", "role": "test"}})
    out = tmp_path / "out.tsv"
    argv = ["validate-metadata", "--metadata", str(soft), "--durations", str(durations), "--config-json", cfg,
            "--out", str(out)]
    assert cli_main(argv) == 0
    assert out.read_text() == soft.read_text()


def test_encode_soft_takes_the_highest_confidence_per_frame():
    # frames of 0.5 s: onset frame floored, offset frame ceiled (as encode_strong)
    events = [(0.0, 1.2, "car", 0.4), (0.9, 2.0, "car", 0.8), (1.6, 1.9, "people talking", 0.2)]
    target = encode_soft(events, MAESTRO, n_frames=6, frame_hop=0.5)
    assert target.dtype == np.float32 and target.shape == (3, 6)
    np.testing.assert_allclose(target[2], [0.4, 0.8, 0.8, 0.8, 0.0, 0.0])
    np.testing.assert_allclose(target[0], [0.0, 0.0, 0.0, 0.2, 0.0, 0.0])
    assert not target[1].any()
