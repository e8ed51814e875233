"""Feature cache, embedding cache and backbone pretraining on a small hand-made split."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from sedlib.cli import main as cli_main
from conftest import published_geometry
from sedlib.config import load_config
from sedlib.features.cache import build_feature_cache, open_feature_cache
from sedlib.features.embeddings import build_embedding_cache, chunk_layout, open_embeddings
from sedlib.features.frontends import build_frontends
from sedlib.io import sha256_file
from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.checkpoint import load_backbone, save_backbone
from sedlib.models import pretrain
from sedlib.models.pretrain import mean_average_precision

SR = 16000
CLIPS = {"ten.wav": 10.0, "short.wav": 4.2, "long.wav": 14.7, "ten_b.wav": 10.0}


@pytest.fixture(scope="module")
def config(repo_root):
    return published_geometry(load_config(repo_root / "workflow_config.yaml"))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A split folder: audio_16k/ with 10 s, 4.2 s and 14.7 s clips, durations.tsv, weak metadata.tsv."""
    root = tmp_path_factory.mktemp("split")
    (root / "audio_16k").mkdir()
    rng = np.random.default_rng(0)
    durations, weak = ["filename\tduration"], ["filename\tevent_labels"]
    for i, (name, seconds) in enumerate(CLIPS.items()):
        t = np.arange(int(seconds * SR)) / SR
        wave = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 440 * (i + 1) * t) * (t % 3 < 1.5)
        sf.write(root / "audio_16k" / name, wave.astype(np.float32), SR, subtype="FLOAT")
        durations.append(f"{name}\t{seconds}")
        weak.append(f"{name}\t{'Speech,Dog' if i % 2 else 'Cat'}")
    (root / "durations.tsv").write_text("\n".join(durations) + "\n")
    (root / "metadata.tsv").write_text("\n".join(weak) + "\n")
    return root


@pytest.fixture(scope="module")
def cache(split, config):
    return build_feature_cache(split / "durations.tsv", split / "audio_16k", split / "features", config["frontends"],
                               10.0, batch_size=3)


def test_feature_cache_round_trip(cache, split, config):
    assert cache.filenames == list(CLIPS) and len(cache) == 4
    # widest clip 14.7 s: 1 + 235200 // 256 = 919 CRNN frames, 1 + 235200 // 160 = 1471 ATST frames
    assert cache.crnn.shape == (4, 128, 919) and cache.atst.shape == (4, 64, 1471)
    assert cache.crnn.dtype == np.float32 and isinstance(cache.crnn, np.memmap)
    assert cache.n_crnn.tolist() == [626, 1 + 67200 // 256, 919, 626]
    assert cache.n_atst.tolist() == [1001, 1 + 67200 // 160, 1471, 1001]
    assert cache.durations.tolist() == pytest.approx(list(CLIPS.values()))
    assert cache.row("long.wav") == 2
    with pytest.raises(ValueError, match="no row for file 'nope.wav'"):
        cache.row("nope.wav")
    fe = build_frontends(config["frontends"])
    for row, name in enumerate(cache.filenames):
        wave = sf.read(split / "audio_16k" / name, dtype="float32")[0]
        wave = np.pad(wave, (0, max(0, 10 * SR - len(wave))))  # short clips: zero-padded to 10 s
        for array, frontend in ((cache.crnn, fe.crnn), (cache.atst, fe.atst), (cache.mel("beats"), fe.beats)):
            alone = frontend.mel(torch.from_numpy(wave)[None])[0].numpy()
            width = alone.shape[-1]
            # same clip computed alone vs in a batch: float32 rounding only (max seen ~1e-6 relative)
            assert np.abs(array[row, :, :width] - alone).max() <= 1e-5 * alone.max(), (name, type(frontend).__name__)
            assert not array[row, :, width:].any()  # frames past the padded length are zero
    index = (split / "features" / "index.tsv").read_text().splitlines()
    # every configured section is cached, the embedded default's BEATs Kaldi fbank too: 1 + (235200 - 400) // 160
    assert index[0] == "filename\tduration\tn_crnn\tn_atst\tn_beats" and index[3] == "long.wav\t14.700000\t919\t1471\t1468"


def test_cache_features_command_matches_library(cache, split, config, tmp_path):
    cfg = json.dumps({"frontends": config["frontends"], "audio": config["audio"]})
    argv = ["cache-features", "--durations", str(split / "durations.tsv"), "--audio-dir", str(split / "audio_16k"),
            "--out-dir", str(tmp_path / "f"), "--config-json", cfg, "--threads", "1"]
    assert cli_main(argv) == 0
    again = open_feature_cache(tmp_path / "f")
    # the command runs 1 torch thread, the fixture the session's: only the float summation order differs
    np.testing.assert_allclose(again.crnn, cache.crnn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again.atst, cache.atst, rtol=1e-5, atol=1e-6)


def test_streams_cached_separately_equal_the_combined_cache(cache, split, config, tmp_path):
    """The workflow caches the CRNN stream (index.tsv) and each backbone frontend's stream ({stream}_index.tsv) in
    separate jobs: a new stream leaves the others untouched. The opened cache is the combined one."""
    folder = tmp_path / "features"
    assert build_feature_cache(split / "durations.tsv", split / "audio_16k", folder,
                               {"atst": config["frontends"]["atst"]}, 10.0, batch_size=3) is None  # fmt: skip
    crnn_only = build_feature_cache(split / "durations.tsv", split / "audio_16k", folder,
                                    {"crnn": config["frontends"]["crnn"]}, 10.0, batch_size=3)  # fmt: skip
    assert (folder / "index.tsv").read_text().splitlines()[0] == "filename\tduration\tn_crnn"
    assert (folder / "atst_index.tsv").read_text().splitlines()[0] == "filename\tduration\tn_atst"
    assert sorted(crnn_only.mels) == ["atst", "crnn"] and crnn_only.filenames == cache.filenames
    np.testing.assert_array_equal(crnn_only.n_atst, cache.n_atst)
    # batch size 3 here, the fixture's default batch: only the float summation order of the FFTs may differ
    np.testing.assert_allclose(crnn_only.atst, cache.atst, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(crnn_only.crnn, cache.crnn, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no 'beats' features \\(cached: \\['atst', 'crnn'\\]\\)"):
        crnn_only.mel("beats")
    rows = (folder / "atst_index.tsv").read_text().splitlines()
    (folder / "atst_index.tsv").write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    with pytest.raises(ValueError, match="atst_index.tsv: lists other clips \\(or another order\\)"):
        open_feature_cache(folder)


def test_cache_errors_name_the_file(split, config, tmp_path, capsys):
    bad = tmp_path / "durations.tsv"
    bad.write_text("filename\tduration\nten.wav\t9.0\n")
    with pytest.raises(ValueError, match=r"'ten.wav' is listed as 9.0 s but .*ten.wav has 10.000 s"):
        build_feature_cache(bad, split / "audio_16k", tmp_path / "out", config["frontends"], 10.0)
    bad.write_text("filename\tduration\nmissing.wav\t10.0\n")
    with pytest.raises(FileNotFoundError, match="audio file of 'missing.wav' not found"):
        build_feature_cache(bad, split / "audio_16k", tmp_path / "out", config["frontends"], 10.0)
    sf.write(tmp_path / "rate.wav", np.zeros(8000, np.float32), 8000)
    bad.write_text("filename\tduration\nrate.wav\t1.0\n")
    with pytest.raises(ValueError, match="expected mono 16000 Hz audio, got 8000 Hz, 1 channels"):
        build_feature_cache(bad, tmp_path, tmp_path / "out", config["frontends"], 10.0)
    assert not (tmp_path / "out" / "index.tsv").exists()
    with pytest.raises(FileNotFoundError, match="index.tsv"):
        open_feature_cache(tmp_path / "out")


def test_chunk_layout():
    assert chunk_layout(1001, 1001, 4) == [(0, 1001, 0)]
    assert chunk_layout(1471, 1001, 4) == [(0, 1001, 0), (1000, 1471, 250)]
    assert chunk_layout(2002, 1001, 4) == [(0, 1001, 0), (1000, 2001, 250)]  # 2 frames left: no whole patch
    assert chunk_layout(2004, 1001, 4) == [(0, 1001, 0), (1000, 2001, 250), (2000, 2004, 500)]


def test_embedding_cache(cache, split, config, tmp_path):
    torch.manual_seed(0)
    backbone = ATSTFrame(embed_dim=32, depth=2, num_heads=4)
    backbone_path = tmp_path / "backbone.pt"
    save_backbone(backbone_path, backbone, {"source": "test"})
    out = tmp_path / "emb" / "split.npy"
    build_embedding_cache(split / "features", backbone_path, out, config["frontends"], 10.0, batch_size=3)
    emb, meta = open_embeddings(out)
    assert emb.shape == (4, 32, 1471 // 4) == tuple(meta["shape"]) and emb.dtype == np.float16
    assert meta["backbone_sha256"] == sha256_file(backbone_path) and meta["frontend"]["window"] == "hann"
    assert meta["index_sha256"] == sha256_file(split / "features" / "index.tsv")
    fe = build_frontends(config["frontends"]).atst
    backbone = load_backbone(backbone_path)

    def embed(row, start, stop):
        with torch.no_grad():
            mel = torch.from_numpy(np.array(cache.atst[row : row + 1, :, start:stop]))
            return backbone(fe.normalize(mel))[0].numpy()

    for row in range(4):  # first chunk: the clip's 1001 frames (short clips zero-padded to 10 s)
        assert np.abs(emb[row, :, :250] - embed(row, 0, 1001)).max() < 2e-2  # float16 storage
    assert np.abs(emb[2, :, 250:] - embed(2, 1000, 1471)).max() < 2e-2  # 14.7 s: second chunk, 117 frames
    assert not emb[[0, 1, 3], :, 250:].any()  # chunks past a clip's true length stay zero
    argv = ["cache-embeddings", "--features-dir", str(split / "features"), "--backbone", str(backbone_path),
            "--out", str(tmp_path / "cli.npy"), "--config-json",
            json.dumps({"frontends": {"atst": config["frontends"]["atst"]}, "clip_seconds": 10.0}), "--device", "cpu"]
    assert cli_main(argv) == 0
    assert np.array_equal(np.load(tmp_path / "cli.npy"), emb)


def test_mean_average_precision():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.6]])
    targets = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    # class 0: positives ranked 1 and 3 -> (1/1 + 2/3) / 2; class 1: positive ranked 3 -> 1/3
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)


def test_pretrain_backbone_command(cache, split, config, tmp_path):
    backbone_cfg = dict(config["model"]["backbones"]["atst"], embed_dim=16, depth=1, num_heads=2,
                        pretrain={"epochs": 2, "batch_size": 2, "lr": 1e-3})
    cfg = json.dumps({"backbone": backbone_cfg, "frontends": {"atst": config["frontends"]["atst"]}, "clip_seconds": 10.0,
                      "seed": 3})
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for path in paths:
        argv = ["pretrain-backbone", "--features-dir", str(split / "features"), "--metadata",
                str(split / "metadata.tsv"), "--out", str(path), "--config-json", cfg, "--device", "cpu"]
        assert cli_main(argv) == 0
    saved = [torch.load(p) for p in paths]
    log = saved[0]["provenance"]["log"]
    assert log["classes"] == ["Cat", "Dog", "Speech"] and log["n_train"] + log["n_val"] == 4 and len(log["epochs"]) == 2
    assert {"train_map", "val_map"} <= set(log["before"]) and {"train_map", "val_map"} <= set(log["after"])
    assert load_backbone(paths[0]).hparams["embed_dim"] == 16
    # seeded: the same configuration gives the same weights
    assert all(torch.equal(saved[0]["state_dict"][k], saved[1]["state_dict"][k]) for k in saved[0]["state_dict"])


@pytest.mark.parametrize("cache_bytes", [pretrain.CROP_CACHE_BYTES, 0])
def test_tagging_crops_equal_normalising_every_batch(cache, config, monkeypatch, cache_bytes):
    """Cached normalised crops (or none kept, with a zero budget) are bit-identical to normalising each batch's
    stacked raw crops, the computation they replace; random offsets of the 14.7 s clip and a short clip too."""
    monkeypatch.setattr(pretrain, "CROP_CACHE_BYTES", cache_bytes)
    frontend = build_frontends(config["frontends"]).atst
    n_patches, patch = 250, 4
    targets = [np.random.default_rng(row).random((3, n // patch)).astype(np.float32) for row, n in enumerate(cache.n_atst)]
    data = pretrain.TaggingData(cache, "atst", targets, True, frontend, n_patches * patch, patch)
    generator, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for rows in ([0, 1, 2, 3], [2, 2, 3], [2, 0], [1, 2, 3]):
        feats, batch_targets = data.batch(np.array(rows), generator)
        raw, expected_targets = [], []
        for row in rows:
            spare = max(0, int(cache.n_atst[row]) - n_patches * patch) // patch
            offset = int(torch.randint(spare + 1, (1,), generator=replay)) if spare else 0
            raw.append(cache.atst[row, :, offset * patch : (offset + n_patches) * patch])
            cut = targets[row][:, offset : offset + n_patches]
            expected_targets.append(np.pad(cut, ((0, 0), (0, n_patches - cut.shape[1]))))
        assert torch.equal(feats, frontend.normalize(torch.from_numpy(np.stack(raw))))
        assert torch.equal(batch_targets, torch.from_numpy(np.stack(expected_targets)))
    assert (len(data._crops) > 0) == (cache_bytes > 0) and data._crop_bytes <= cache_bytes
