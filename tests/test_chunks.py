"""MAESTRO chunking (the DCASE 2024 baseline's): bounds, names, event cutting, re-assembly, chunk-maestro."""

import numpy as np
import pytest
import soundfile as sf

from sedlib.cli import main as cli_main
from sedlib.data.check import check_datasets
from sedlib.data.chunks import (chunk_bounds, chunk_name, chunk_recording, events_in_chunk, merge_chunk_events,
                                parse_chunk_name)
from sedlib.data.metadata import read_durations, read_soft, soft_events_by_file, validate_metadata


@pytest.mark.parametrize(
    "n_samples, hop_s, expected",
    [  # 10 Hz "audio": a 10 s window is 100 samples; by hand from the baseline's get_chunks_indx
        (100, 1.0, [(0, 100)]),
        (125, 1.0, [(0, 100), (10, 110), (20, 120), (30, 125)]),  # last partial chunk kept
        (120, 1.0, [(0, 100), (10, 110), (20, 120)]),  # the last window ends at the end: no partial chunk
        (95, 1.0, [(0, 95)]),  # shorter than the window, longer than window - hop: one partial chunk
        (90, 1.0, []),  # no longer than window - hop: no chunk (as the baseline)
        (163, 5.0, [(0, 100), (50, 150), (100, 163)]),
        (150, 5.0, [(0, 100), (50, 150)]),
        (70, 5.0, [(0, 70)]),
    ],
)
def test_chunk_bounds_follow_the_baseline(n_samples, hop_s, expected):
    assert chunk_bounds(n_samples, 10, 10.0, hop_s) == expected


def test_chunk_bounds_of_a_long_recording_and_bad_arguments():
    sr = 44100
    bounds = chunk_bounds(int(65.5 * sr), sr, 10.0, 1.0)
    assert len(bounds) == 57 and bounds[55] == (55 * sr, 65 * sr) and bounds[56] == (56 * sr, int(65.5 * sr))
    assert all(stop - start == 10 * sr for start, stop in bounds[:-1])
    with pytest.raises(ValueError, match="at least one sample"):
        chunk_bounds(100, 10, 10.0, 0.0)


def test_chunk_names_round_trip():
    sr = 44100
    name = chunk_name("cafe_restaurant_00", 56 * sr, int(65.5 * sr), sr)
    assert name == "cafe_restaurant_00-005600-006550"
    assert parse_chunk_name(name) == ("cafe_restaurant_00", 56.0, 65.5)
    assert parse_chunk_name(name + ".wav") == ("cafe_restaurant_00", 56.0, 65.5)
    assert parse_chunk_name("a-b-000000-001000") == ("a-b", 0.0, 10.0)


@pytest.mark.parametrize(
    "name", ["cafe_restaurant_00", "x-0001-0002", "x-000200-000100", "x-00a100-000200", "-000000-001000",
             "x-000000-001000.txt", "x_000000_001000"],
)
def test_malformed_chunk_names(name):
    with pytest.raises(ValueError, match=rf"chunk name '{name}': expected '<recording>-<onset>-<offset>'"):
        parse_chunk_name(name)


def test_events_are_clipped_to_the_chunk_and_shifted():
    events = [(1.0, 4.0, "car", 0.6), (9.5, 12.0, "birds_singing", 1.0), (10.0, 11.0, "car", 0.2),
              (12.0, 13.0, "car", 0.4), (0.0, 10.0, "wind_blowing", 0.8), (15.0, 25.0, "footsteps", 1.0),
              (20.0, 21.0, "car", 1.0)]
    assert events_in_chunk(events, 10.0, 20.0) == [
        (0.0, 2.0, "birds_singing", 1.0), (0.0, 1.0, "car", 0.2), (2.0, 3.0, "car", 0.4), (5.0, 10.0, "footsteps", 1.0)
    ]  # events touching the chunk (ending at its start, starting at its end) are not in it
    assert events_in_chunk(events, 20.0, 25.5) == [(0.0, 5.0, "footsteps", 1.0), (0.0, 1.0, "car", 1.0)]


@pytest.mark.parametrize("hop_s", [1.0, 5.0])
def test_chunking_then_merging_gives_back_the_recording(hop_s):
    sr = 100
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(int(37.5 * sr))
    events = [(0.0, 3.5, "car", 0.6), (5.25, 18.0, "car", 0.6), (2.0, 30.0, "wind_blowing", 0.2),
              (33.0, 37.5, "birds_singing", 1.0), (12.0, 12.5, "footsteps", 0.8)]
    chunks = chunk_recording("city_center_03", audio, sr, events, 10.0, hop_s)
    assert [c.name for c in chunks][:2] == ["city_center_03-000000-001000", f"city_center_03-{int(hop_s * 100):06d}-"
                                                                            f"{int(hop_s * 100) + 1000:06d}"]
    for chunk in chunks:
        _, onset, offset = parse_chunk_name(chunk.name)
        np.testing.assert_array_equal(chunk.audio, audio[int(round(onset * sr)) : int(round(offset * sr))])
        assert all(0 <= on < off <= offset - onset for on, off, _, _ in chunk.events)
    assert chunks[-1].name.endswith("-003750")
    merged = merge_chunk_events({c.name: c.events for c in chunks})
    assert merged == {"city_center_03": sorted(events)}


def test_merging_keeps_event_less_recordings():
    assert merge_chunk_events({"a-000000-001000": [], "b-000000-001000": [(1.0, 2.0, "car", 1.0)]}) == {
        "a": [], "b": [(1.0, 2.0, "car", 1.0)]
    }


# ----------------------------------------------------------------------------- chunk-maestro
SR = 8000


def development_folder(root, recordings):
    """MAESTRO's development layout: {stem: (seconds, annotation text)} -> audio and annotation files."""
    rng = np.random.default_rng(1)
    for stem, (seconds, annotation) in recordings.items():
        scene = stem.rsplit("_", 1)[0]
        (root / "development_audio" / scene).mkdir(parents=True, exist_ok=True)
        (root / "development_annotation" / scene).mkdir(parents=True, exist_ok=True)
        audio = (rng.uniform(-0.5, 0.5, int(seconds * SR)) * 32767).astype(np.int16)
        sf.write(root / "development_audio" / scene / f"{stem}.wav", audio, SR, subtype="PCM_16")
        (root / "development_annotation" / scene / f"{stem}.txt").write_text(annotation)
    return root


def split_list(path, header, stems):
    path.write_text("\n".join([header] + [f"{stem}.txt" for stem in stems]) + "\n")
    return path


@pytest.fixture
def development(tmp_path):
    return development_folder(tmp_path / "maestro_dev", {
        "cafe_restaurant_00": (25.0, "0.0\t4.0\tpeople talking\t0.6\n12.5\t14.0\tcutlery and dishes\t1.0\n"),
        "city_center_00": (12.0, "3.0\t12.0\tcar\t0.2\n"),
        "cafe_restaurant_01": (13.0, "1.0\t2.0\tfootsteps\t0.4\n"),
    })


def test_chunk_maestro_writes_the_baseline_layout(development, tmp_path):
    out = tmp_path / "dataset"
    argv = ["chunk-maestro", "--development-dir", str(development), "--out-root", str(out),
            "--train-split", str(split_list(tmp_path / "train_split.csv", "train", ["cafe_restaurant_00", "city_center_00"])),
            "--validation-split", str(split_list(tmp_path / "validation_split.csv", "val", ["cafe_restaurant_01"]))]
    assert cli_main(argv) == 0
    train = sorted(p.name for p in (out / "audio" / "maestro_real_train").iterdir())
    assert len(train) == 16 + 3 and train[-1] == "city_center_00-000200-001200.wav"
    validation = sorted(p.name for p in (out / "audio" / "maestro_real_validation").iterdir())
    assert validation == ["cafe_restaurant_01-000000-001000.wav", "cafe_restaurant_01-000500-001300.wav"]
    source, _ = sf.read(development / "development_audio" / "cafe_restaurant" / "cafe_restaurant_01.wav", dtype="int16")
    chunk, rate = sf.read(out / "audio" / "maestro_real_validation" / validation[1], dtype="int16")
    assert rate == SR and np.array_equal(chunk, source[5 * SR :])

    table = read_soft(out / "metadata" / "maestro_real_train.tsv")
    events = soft_events_by_file(table)
    assert sorted(events) == train  # every chunk is listed, event-less ones by an empty row
    assert events["cafe_restaurant_00-000300-001300.wav"] == [(0.0, 1.0, "people talking", 0.6),
                                                              (9.5, 10.0, "cutlery and dishes", 1.0)]
    assert events["cafe_restaurant_00-001500-002500.wav"] == []
    assert events["city_center_00-000200-001200.wav"] == [(1.0, 10.0, "car", 0.2)]
    assert soft_events_by_file(read_soft(out / "metadata" / "maestro_real_validation.tsv")) == {
        validation[0]: [(1.0, 2.0, "footsteps", 0.4)], validation[1]: []
    }
    assert read_durations(out / "metadata" / "maestro_real_durations.tsv") == {
        "cafe_restaurant_00.wav": 25.0, "cafe_restaurant_01.wav": 13.0, "city_center_00.wav": 12.0
    }
    # the chunked validation split passes the project's validation of a scored soft split
    measured = tmp_path / "durations.tsv"
    measured.write_text("filename\tduration\n" + "".join(f"{n}\t{sf.info(out / 'audio' / 'maestro_real_validation' / n).duration}\n"
                                                         for n in validation))
    result = validate_metadata(out / "metadata" / "maestro_real_validation.tsv", "soft", ["footsteps", "car"],
                               measured_durations=measured, scored=True)
    assert (result.n_clips, result.n_events) == (2, 1)
    # check-data of the chunked folder as a local dataset: every chunk has audio and labels
    splits = {part: {"audio": f"audio/maestro_real_{part}", "metadata": f"metadata/maestro_real_{part}.tsv",
                     "labels": "soft", "role": role} for part, role in (("train", "maestro"), ("validation", "test"))}
    report = check_datasets({"maestro": {"source": "local", "root": str(out), "splits": splits}})
    assert report["ok"] and [s["n_listed"] for s in report["datasets"]["maestro"]["splits"].values()] == [19, 2]


def test_chunk_maestro_errors_name_the_file(development, tmp_path, capsys):
    out = tmp_path / "dataset"
    train = split_list(tmp_path / "train_split.csv", "train", ["cafe_restaurant_00", "grocery_store_09"])
    validation = split_list(tmp_path / "validation_split.csv", "val", ["cafe_restaurant_01"])
    argv = ["chunk-maestro", "--development-dir", str(development), "--out-root", str(out),
            "--train-split", str(train), "--validation-split", str(validation)]
    assert cli_main(argv) == 2
    assert "train_split.csv: recording 'grocery_store_09' is not in" in capsys.readouterr().err

    split_list(train, "train", ["cafe_restaurant_00", "cafe_restaurant_01"])
    assert cli_main(argv) == 2
    assert "'cafe_restaurant_01' is listed in both the train and the validation split lists" in capsys.readouterr().err

    split_list(train, "train", ["cafe_restaurant_00"])
    (development / "development_annotation" / "cafe_restaurant" / "cafe_restaurant_00.txt").write_text(
        "0.0\t4.0\tpeople talking\t0.6\n5.0\t6.0\tcar\thigh\n")
    assert cli_main(argv) == 2
    assert "cafe_restaurant_00.txt:2: column 'confidence' must be a number in [0, 1]" in capsys.readouterr().err
    assert not (out / "metadata").exists()

    assert cli_main([*argv[:2], str(tmp_path), *argv[3:]]) == 2
    assert "no development_audio/<scene>/<recording>.wav found" in capsys.readouterr().err
