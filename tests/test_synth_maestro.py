"""Synthetic MAESTRO-like dataset: the baseline's chunked layout, soft labels, partition, determinism, config."""

import copy
import json
import re
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf
import yaml

from sedlib.cli import main as cli_main
from sedlib.config import ConfigError, load_config, validate_config
from sedlib.data import synth_maestro
from sedlib.data.chunks import parse_chunk_name
from sedlib.data.metadata import read_durations, read_soft, soft_events_by_file, validate_metadata
from sedlib.io import sha256_file

SR = 44100
EVALUATION = {"splits": ["desed/devtest", "desed/eval"]}  # the DESED splits (PSDS needs hard strong labels)


def documented_block(repo_root) -> dict:
    """The `datasets.maestro` YAML block of docs/data.md."""
    text = (repo_root / "docs" / "data.md").read_text()
    section = text[text.index("## MAESTRO Real"):]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1))["maestro"]


@pytest.fixture(scope="module")
def dataset(repo_root):
    """The documented block, validated (defaults filled), with short recordings: 2 scenes, 2 per split."""
    desed = yaml.safe_load((repo_root / "workflow_config.yaml").read_text())["datasets"]["desed"]
    config = validate_config({"datasets": {"desed": desed, "maestro": documented_block(repo_root)}, "evaluation": EVALUATION})
    ds = copy.deepcopy(config["datasets"]["maestro"])
    ds["synthetic"].update(sizes={"maestro_train": 2, "maestro_val": 2}, scenes=["cafe_restaurant", "city_center"],
                           recording_seconds=[20.0, 24.0], events_per_minute=[40.0, 60.0])
    return ds


@pytest.fixture(scope="module")
def generated(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("maestro") / "raw"
    return root, synth_maestro.synthesize_maestro(dataset, seed=7, root=root, threads=1)


def test_documented_block_validates_with_spaced_class_names(repo_root):
    block = documented_block(repo_root)
    desed = load_config(repo_root / "workflow_config.yaml")["datasets"]["desed"]
    config = validate_config({"datasets": {"desed": desed, "maestro": block}, "evaluation": EVALUATION})
    assert config["datasets"]["maestro"]["classes"][14] == "door opens/closes"
    assert config["datasets"]["desed"]["synthetic"]["kind"] == "desed"  # the default
    for bad in (" car", "car,bus", "car\tbus"):
        broken = copy.deepcopy(block)
        broken["classes"][0] = bad
        with pytest.raises(ConfigError, match="maestro.classes.0"):
            validate_config({"datasets": {"desed": desed, "maestro": broken}, "evaluation": EVALUATION})


def test_layout_of_the_baseline(dataset, generated):
    root, manifest = generated
    assert json.loads((root / "manifest.json").read_text()) == manifest
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    assert {"metadata/maestro_real_train.tsv", "metadata/maestro_real_validation.tsv",
            "metadata/maestro_real_durations.tsv"} <= on_disk
    for entry in manifest["files"]:
        assert sha256_file(root / entry["path"]) == entry["sha256"] and (root / entry["path"]).stat().st_size == entry["bytes"]
    recordings = read_durations(root / "metadata" / "maestro_real_durations.tsv")
    assert sorted(recordings) == sorted(f"{name}.wav" for names in manifest["recordings"].values() for name in names)
    assert all(20.0 <= seconds <= 24.0 for seconds in recordings.values())
    for split, hop in (("maestro_train", 1.0), ("maestro_val", 5.0)):
        cfg = dataset["splits"][split]
        wavs = sorted(p.name for p in (root / cfg["audio"]).iterdir())
        events = soft_events_by_file(read_soft(root / cfg["metadata"]))
        assert sorted(events) == wavs  # every chunk listed, event-less chunks by an empty row
        starts = defaultdict(list)
        for name in wavs:
            recording, onset, offset = parse_chunk_name(name)
            starts[recording].append(onset)
            info = sf.info(root / cfg["audio"] / name)
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            length = int(round(recordings[f"{recording}.wav"] * SR))
            assert info.frames == min(10 * SR, length - int(round(onset * SR)))
            assert all(0 <= on < off <= info.frames / SR + 1e-6 for on, off, _, _ in events[name])
        for recording, onsets in starts.items():
            assert onsets == [k * hop for k in range(len(onsets))]
            assert onsets[-1] + 10.0 >= recordings[f"{recording}.wav"] - 1e-6  # chunks reach the end


def test_soft_labels_look_like_maestro(dataset, generated):
    root, _ = generated
    tables = [read_soft(root / cfg["metadata"]) for cfg in dataset["splits"].values()]
    confidence = np.concatenate([t["confidence"].dropna().to_numpy() for t in tables])
    assert len(confidence) > 50 and np.all((confidence > 0) & (confidence <= 1))
    assert np.allclose(confidence * synth_maestro.ANNOTATORS, np.round(confidence * synth_maestro.ANNOTATORS))
    assert 0.1 < np.mean(confidence <= 0.5) < 0.9, "annotator disagreement: some but not all events are uncertain"
    labels = set(np.concatenate([t["event_label"].dropna().to_numpy() for t in tables]))
    scene_classes = set(synth_maestro.SCENES["cafe_restaurant"].classes) | set(synth_maestro.SCENES["city_center"].classes)
    assert labels <= scene_classes and len(labels) >= 8


def test_partition_by_recording_with_every_scene_in_both(dataset, generated, tmp_path):
    root, manifest = generated
    train, val = manifest["recordings"]["maestro_train"], manifest["recordings"]["maestro_val"]
    assert not set(train) & set(val) and len(set(train + val)) == 4
    for names in (train, val):
        assert sorted(name.rsplit("_", 1)[0] for name in names) == ["cafe_restaurant", "city_center"]
    # the validated copies: the training split as a training split, the validation split as a scored one
    for split, cfg in dataset["splits"].items():
        audio = root / cfg["audio"]
        durations = tmp_path / f"{split}_durations.tsv"
        durations.write_text("filename\tduration\n" + "".join(f"{p.name}\t{sf.info(p).duration}\n"
                                                              for p in sorted(audio.iterdir())))
        result = validate_metadata(root / cfg["metadata"], "soft", dataset["classes"], measured_durations=durations,
                                   scored=cfg["role"] == "test")
        assert result.n_clips == len(list(audio.iterdir())) and not result.warnings


def test_deterministic_for_a_seed_through_the_synthesize_command(dataset, generated, tmp_path):
    _, manifest = generated
    argv = ["synthesize", "--config-json", json.dumps({"seed": 7, "dataset": dataset}), "--root", str(tmp_path / "a"),
            "--threads", "2"]
    assert cli_main(argv) == 0
    again = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert again == manifest  # byte-identical, also with 2 worker processes
    other = synth_maestro.synthesize_maestro(dataset, seed=8, root=tmp_path / "b")
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert sum(digests.get(f["path"]) == f["sha256"] for f in other["files"]) == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: ds["synthetic"].pop("scenes"), r"missing field\(s\) \['scenes'\]"),
        (lambda ds: ds["classes"].append("tram"), r"no MAESTRO-like generator for \['tram'\]"),
        (lambda ds: ds["synthetic"].update(scenes=["beach"]), r"unknown scene\(s\) \['beach'\]"),
        (lambda ds: ds["synthetic"]["sizes"].update(maestro_val=1), r"sizes.maestro_val: 1 recordings; expected at least one per scene \(2\)"),
        (lambda ds: ds["splits"]["maestro_val"].update(labels="strong"), "kind maestro writes soft labels"),
        (lambda ds: ds["synthetic"].update(recording_seconds=[8.0, 20.0]), r"recording_seconds: expected 10.0 <= min"),
    ],
)
def test_bad_configuration(dataset, tmp_path, change, message):
    bad = copy.deepcopy(dataset)
    change(bad)
    with pytest.raises(ValueError, match=message):
        synth_maestro.synthesize_maestro(bad, 1, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("label", list(synth_maestro.EVENT_CLASSES))
def test_every_class_generator_gives_a_finite_signal(label):
    rng = np.random.default_rng(0)
    for seconds in (0.3, 2.5):
        n = int(seconds * 16000)
        x = synth_maestro.EVENT_CLASSES[label].make(rng, n, 16000)
        assert x.shape == (n,) and x.dtype == np.float32 and np.all(np.isfinite(x)) and np.std(x) > 0
