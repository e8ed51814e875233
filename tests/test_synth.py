"""Synthetic DESED-like dataset: formats, determinism, independence of splits, label/audio agreement, classes."""

import copy
import json

import numpy as np
import pytest
import soundfile as sf

from sedlib.cli import main as cli_main
from sedlib.config import load_config
from sedlib.data import synth
from sedlib.data.metadata import read_weak, validate_metadata
from sedlib.io import sha256_file

SR = 44100  # rate of the class-level checks below (their spectra reach 16 kHz)


@pytest.fixture(scope="module")
def dataset(repo_root):
    """The embedded default dataset with 2 clips per split (3 for devtest)."""
    ds = copy.deepcopy(load_config(repo_root / "workflow_config.yaml")["datasets"]["desed"])
    ds["synthetic"]["sizes"] = {name: 2 for name in ds["splits"]}
    ds["synthetic"]["sizes"]["devtest"] = 3
    return ds


@pytest.fixture(scope="module")
def generated(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "raw"
    manifest = synth.synthesize_dataset(dataset, seed=42, root=root, threads=1)
    return root, manifest


def test_layout_formats_and_manifest(dataset, generated):
    root, manifest = generated
    assert json.loads((root / "manifest.json").read_text()) == manifest
    rate = dataset["synthetic"]["sample_rate"]  # the embedded default's (22.05 kHz)
    assert manifest["seed"] == 42 and manifest["sample_rate"] == rate and len(manifest["config_sha256"]) == 64
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    for entry in manifest["files"]:
        assert (root / entry["path"]).stat().st_size == entry["bytes"]
        assert sha256_file(root / entry["path"]) == entry["sha256"]
    for split, cfg in dataset["splits"].items():
        wavs = sorted((root / cfg["audio"]).iterdir())
        assert [p.name for p in wavs] == [f"{split}_{i:05d}.wav" for i in range(dataset["synthetic"]["sizes"][split])]
        info = sf.info(wavs[0])
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (rate, 1, "PCM_16", 10 * rate)
        if cfg["labels"] == "none":
            assert cfg["metadata"] is None
            continue
        header = (root / cfg["metadata"]).read_text().splitlines()[0]
        expected = "filename\tonset\toffset\tevent_label" if cfg["labels"] == "strong" else "filename\tevent_labels"
        assert header == expected
        if cfg.get("durations"):
            assert (root / cfg["durations"]).read_text() == "filename\tduration\n" + "".join(
                f"{p.name}\t10.0\n" for p in wavs
            )


def test_metadata_is_valid_and_consistent(dataset, generated):
    root, _ = generated
    classes = dataset["classes"]
    for split, cfg in dataset["splits"].items():
        if cfg["labels"] == "none":
            continue
        measured = root / f"{split}_measured.tsv"
        wavs = sorted((root / cfg["audio"]).iterdir())
        measured.write_text("filename\tduration\n" + "".join(f"{p.name}\t{sf.info(p).duration}\n" for p in wavs))
        result = validate_metadata(root / cfg["metadata"], cfg["labels"], classes, measured_durations=measured,
                                   scored=True)
        measured.unlink()
        assert result.warnings == [] and result.n_clips == len(wavs)
        if cfg["labels"] == "strong":
            table = result.table
            lengths = table["offset"] - table["onset"]
            assert lengths.min() >= 0.3 - 1e-9 and table["offset"].max() <= 10.0
            counts = table.groupby("filename").size()
            assert counts.min() >= 1 and counts.max() <= 4  # events_per_clip [1, 4]
        else:
            assert all(1 <= len(labels) <= 4 for labels in read_weak(root / cfg["metadata"])["event_labels"])


def test_byte_identical_across_runs_and_worker_counts(dataset, generated, tmp_path):
    _, manifest = generated
    again = synth.synthesize_dataset(dataset, seed=42, root=tmp_path / "raw", threads=2)
    assert again == manifest
    other_seed = synth.synthesize_dataset(dataset, seed=43, root=tmp_path / "raw43", threads=2)
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert [f["path"] for f in other_seed["files"]] == list(digests)
    assert all(digests[f["path"]] != f["sha256"] for f in other_seed["files"] if f["path"].endswith(".wav"))


def test_clip_does_not_depend_on_other_split_sizes(dataset, generated, tmp_path):
    _, manifest = generated
    resized = copy.deepcopy(dataset)
    resized["synthetic"]["sizes"]["synth_train"] = 1
    resized["synthetic"]["sizes"]["weak"] = 3
    other = synth.synthesize_dataset(resized, seed=42, root=tmp_path / "raw", threads=1)
    before = {f["path"]: f["sha256"] for f in manifest["files"]}
    after = {f["path"]: f["sha256"] for f in other["files"]}
    for path in ("audio/validation/validation/devtest_00002.wav", "audio/train/synthetic/synth_train_00000.wav"):
        assert after[path] == before[path]
    assert "audio/train/weak/weak_00002.wav" in after
    assert other["config_sha256"] != manifest["config_sha256"]


def test_events_are_audible_where_labelled():
    """Energy inside labelled event spans exceeds the background-only parts (SNR >= 0 dB), in both domains."""
    params = (SR, 10.0, (1, 2), (0.3, 4.0), (6.0, 12.0), (-40.0, -40.0))
    classes = tuple(synth.EVENT_CLASSES)
    ratios = []
    for domain in ("synthetic", "real"):
        for index in range(6):
            wave, events = synth.render_clip(synth.ClipJob(1, "check", index, domain, classes, params, ""))
            active = np.zeros(len(wave), dtype=bool)
            for onset, offset, _ in events:
                active[int(onset * SR / 1000) : int(offset * SR / 1000)] = True
            if active.all():
                continue
            quiet = ~active
            # keep away from event edges, where reverberation tails leak into the background part
            near = np.concatenate([[0], np.cumsum(active)])
            index = np.arange(len(wave))
            quiet &= near[np.minimum(index + SR // 2, len(wave))] == near[np.maximum(index - SR // 2, 0)]
            if quiet.sum() < SR // 10:
                continue
            ratios.append(10 * np.log10(np.mean(wave[active] ** 2) / np.mean(wave[quiet] ** 2)))
    assert len(ratios) >= 6
    assert min(ratios) > 3.0, ratios


def band_features(x: np.ndarray) -> np.ndarray:
    """Mean and std over time of log energies in 24 log-spaced bands (100 Hz - 16 kHz), 2048-sample frames."""
    frames = x[: len(x) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    edges = np.geomspace(100, 16000, 25) * 2048 / SR
    bands = np.stack([power[:, int(a) : max(int(b), int(a) + 1)].sum(1) for a, b in zip(edges[:-1], edges[1:])], 1)
    log = np.log(bands + 1e-10)
    return np.concatenate([log.mean(0), log.std(0)])


def test_classes_are_distinct_and_vary_per_event():
    """Isolated events: a nearest-centroid classifier on band energies separates the classes (learnable),
    and two events of the same class differ (per-event variation)."""
    names = list(synth.EVENT_CLASSES)
    features, labels, centroids_hz = [], [], [[] for _ in names]
    for c, name in enumerate(names):
        spec = synth.EVENT_CLASSES[name]
        for i in range(12):
            rng = np.random.default_rng([5, c, i])
            seconds = min(np.exp(rng.uniform(np.log(spec.seconds[0]), np.log(spec.seconds[1]))), 3.0)
            x = spec.make(rng, int(seconds * SR), SR)
            assert x.dtype == np.float32 and np.isfinite(x).all() and np.std(x) > 0
            features.append(band_features(x))
            labels.append(c)
            power = np.abs(np.fft.rfft(x)) ** 2
            centroids_hz[c].append(np.sum(power * np.fft.rfftfreq(len(x), 1 / SR)) / np.sum(power))
    features, labels = np.array(features), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    mean, std = features[train].mean(0), features[train].std(0) + 1e-9
    z = (features - mean) / std
    centroids = np.stack([z[train & (labels == c)].mean(0) for c in range(len(names))])
    predicted = np.argmin(((z[~train, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = np.mean(predicted == labels[~train])
    assert accuracy >= 0.7, accuracy  # chance is 0.1; 0.77 measured with these crude features
    for c, name in enumerate(names):  # per-event variation: the spectral centroid varies within every class
        centroid = np.array(centroids_hz[c])
        assert np.std(centroid) / np.mean(centroid) > 0.05, (name, centroid)


def test_bad_configuration(dataset, tmp_path):
    bad = copy.deepcopy(dataset)
    bad["classes"] = dataset["classes"] + ["Doorbell"]
    with pytest.raises(ValueError, match=r"no synthetic generator for \['Doorbell'\]"):
        synth.synthesize_dataset(bad, 1, tmp_path / "raw")
    bad = copy.deepcopy(dataset)
    del bad["synthetic"]["sizes"]["eval"]
    with pytest.raises(ValueError, match=r"no size for split\(s\) \['eval'\]"):
        synth.synthesize_dataset(bad, 1, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_synthesize_command(dataset, tmp_path):
    small = copy.deepcopy(dataset)
    small["splits"] = {k: v for k, v in dataset["splits"].items() if k in ("weak", "unlabeled")}
    small["synthetic"]["sizes"] = {"weak": 1, "unlabeled": 1}
    argv = ["synthesize", "--config-json", json.dumps({"seed": 3, "dataset": small}), "--root", str(tmp_path / "raw")]
    killed = tmp_path / ".raw.tmp-k1ll3d"  # what a killed run's atomic_path leaves
    (killed / "audio").mkdir(parents=True)
    (killed / "audio" / "half.wav").write_bytes(b"RIFF")
    (tmp_path / ".raw.tmp-x.wav").write_bytes(b"")
    (tmp_path / ".other.tmp-keep").mkdir()
    assert cli_main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep", "raw"], "stale temporaries are removed"
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == [
        "audio/train/weak/weak_00000.wav", "audio/train/unlabeled/unlabeled_00000.wav", "metadata/train/weak.tsv"
    ]
    assert read_weak(tmp_path / "raw" / "metadata" / "train" / "weak.tsv")["filename"].tolist() == ["weak_00000.wav"]
