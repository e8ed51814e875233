"""BEATs as the backbone kind ``beats``: official checkpoints through the interface, and a tiny BEATs member through
the pipeline (feature stream cache from audio, pretraining, cached embeddings, stage 1, stage 2, pseudo-label
prediction, scoring of long audio, an ensemble with an ATST-Frame member), following tests/test_backbones.py."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from sedlib.cli import main as cli_main
from sedlib.config import ConfigError, deep_merge, load_config, validate_config
from sedlib.features.cache import build_feature_cache
from sedlib.features.embeddings import build_embedding_cache, open_embeddings
from sedlib.features.kaldi_fbank import BEATS_FRONTEND, BEATsFbank
from sedlib.models import build_sed_model
from sedlib.models.backbone import backbone_class, build_backbone
from sedlib.models.beats import BEATsEncoder
from sedlib.models.checkpoint import fetch_backbone, load_backbone, load_backbone_weights, load_sed_model, save_sed_model
from sedlib.models.pretrain import pretrain_backbone
from sedlib.pseudo.store import read_logits
from sedlib.training.data import Geometry
from sedlib.training.run import train
from test_training_run import CLASSES, SPLITS, _random_clips, run_config

TINY = {"kind": "beats", "embed_dim": 32, "depth": 1, "num_heads": 4, "mlp_ratio": 2.0, "source": "pretrain",
        "checkpoint": None, "pretrain": {"epochs": 1, "batch_size": 4, "lr": 3e-3}}
TONES_HZ = (500.0, 1500.0, 3000.0)  # one tone per class in the fake audio


def beats_config(stage: int) -> dict:
    """run_config of tests/test_training_run.py with the tiny BEATs backbone, its frontend, two batches per epoch."""
    config = run_config(stage, 1, max_steps_per_epoch=2)
    config["frontends"]["beats"] = dict(BEATS_FRONTEND)
    config["model"]["backbone"] = dict(TINY)
    return config


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the kind and official checkpoints
def test_kind_frontend_and_geometry():
    cls = backbone_class("beats")
    assert cls is BEATsEncoder and cls.frontend == "beats"
    backbone = build_backbone(beats_config(1)["model"], beats_config(1)["frontends"])
    assert backbone.frames_per_embedding == 16 and backbone.embedding_hop(BEATS_FRONTEND) == pytest.approx(0.16)
    assert backbone.post_extract_proj is None and len(backbone.layer_groups()) == 2
    g = Geometry.from_config(beats_config(1))
    # crop grid lcm(64 ms CRNN output hop, 160 ms embedding hop) = 0.32 s; a 10 s window: 1001 fbank frames (the
    # cache of a 10 s clip holds 998, snip edges) -> 62 embeddings from the first 992 frames either way
    assert g.stream == "beats" and g.grid_seconds == pytest.approx(0.32)
    assert g.window == {"crnn": 626, "beats": 1001, "emb": 62, "out": 156}
    assert g.grid == {"crnn": 20, "beats": 32, "emb": 2, "out": 5}


def official_like(patch_embed_dim: int | None = 16, **cfg) -> tuple[dict, dict]:
    """(backbone definition, official {cfg, model} dict with random weights) of a small BEATs."""
    definition = {**TINY, "patch_embed_dim": patch_embed_dim}
    torch.manual_seed(0)
    encoder = BEATsEncoder.from_config(definition, BEATS_FRONTEND, **cfg)
    return definition, {"cfg": dict(encoder.cfg), "model": {k: v.clone() for k, v in encoder.state_dict().items()}}


def test_official_checkpoint_loads_strictly_as_a_backbone(tmp_path):
    definition, checkpoint = official_like(layer_wise_gradient_decay_ratio=0.6, dropout=0.1)
    assert "post_extract_proj.weight" in checkpoint["model"]  # patch_embed_dim 16 != embed_dim 32, as 512 != 768
    torch.save(checkpoint, tmp_path / "BEATs_tiny.pt")
    frontends = {"beats": BEATS_FRONTEND}
    provenance = fetch_backbone({**definition, "source": "checkpoint", "checkpoint": {"path": str(tmp_path / "BEATs_tiny.pt")}},
                                frontends, tmp_path / "beats.pt", tmp_path)  # fmt: skip
    assert provenance["layout"] == "beats-official"
    ours = load_backbone(tmp_path / "beats.pt")
    assert isinstance(ours, BEATsEncoder)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in checkpoint["model"].items())
    fbank = torch.randn(1, 128, 64)
    torch.testing.assert_close(ours(fbank), BEATsEncoder.load_official(tmp_path / "BEATs_tiny.pt")(fbank))
    # our backbone file loads back into a backbone of the same definition (any which)
    target = build_backbone({"backbone": definition}, frontends)
    assert load_backbone_weights(target, tmp_path / "beats.pt") == "sedlib-backbone"


def test_wrong_official_checkpoints_are_refused(tmp_path):
    definition, checkpoint = official_like()
    checkpoint["model"]["encoder.layers.0.fc1.weight_renamed"] = checkpoint["model"].pop("encoder.layers.0.fc1.weight")
    torch.save(checkpoint, tmp_path / "renamed.pt")
    target = build_backbone({"backbone": definition}, {"beats": BEATS_FRONTEND})
    with pytest.raises(ValueError, match=r"(?s)renamed.pt \(beats-official layout\).*missing keys \(1\):\s+"
                                         r"encoder.layers.0.fc1.weight\n.*unexpected keys \(1\):\s+"
                                         r"encoder.layers.0.fc1.weight_renamed"):
        load_backbone_weights(target, tmp_path / "renamed.pt")
    # a checkpoint without post_extract_proj (patch_embed_dim = embed_dim) into the configured 16 -> 32 projection
    torch.save(official_like(patch_embed_dim=None)[1], tmp_path / "no_proj.pt")
    with pytest.raises(ValueError, match=r"(?s)missing keys \(2\):\s+post_extract_proj.bias\s+post_extract_proj.weight"
                                         r".*shape conflicts"):
        load_backbone_weights(target, tmp_path / "no_proj.pt")
    # same keys and shapes, another computation: refused before loading
    torch.save(official_like(deep_norm=False, max_distance=1280)[1], tmp_path / "other_cfg.pt")
    with pytest.raises(ValueError, match="cfg differs from the beats backbone kind.*deep_norm: checkpoint False, beats "
                                         "kind True; max_distance: checkpoint 1280, beats kind 800"):
        load_backbone_weights(target, tmp_path / "other_cfg.pt")
    torch.save({"state_dict": {}}, tmp_path / "atst.ckpt")
    with pytest.raises(ValueError, match="not an official BEATs checkpoint \\(no 'cfg' dict"):
        load_backbone_weights(target, tmp_path / "atst.ckpt")


def two_architectures(repo_root) -> dict:
    """configs/embedded_two_architectures.yaml merged into the embedded default as ``snakemake --configfile`` does."""
    embedded = yaml.safe_load((repo_root / "workflow_config.yaml").read_text())
    overlay = yaml.safe_load((repo_root / "configs" / "embedded_two_architectures.yaml").read_text())
    return validate_config(deep_merge(embedded, overlay))


def test_config_accepts_beats_and_keeps_the_schema_strict(repo_root):
    config = two_architectures(repo_root)
    assert config["frontends"]["beats"] == BEATS_FRONTEND
    assert {m["backbone"] for m in config["training"]["members"]} == {"atst", "beats"}
    bad = load_config(repo_root / "workflow_config.yaml")
    bad["model"]["backbones"]["atst"]["patch_embed_dim"] = 32
    with pytest.raises(ConfigError, match="model.backbones.atst.patch_embed_dim': applies to kind 'beats' only"):
        validate_config(bad)
    bad = load_config(repo_root / "workflow_config.yaml")
    bad["frontends"]["beats"]["hop_lenght"] = 160
    with pytest.raises(ConfigError, match="unknown key 'hop_lenght' in 'frontends.beats'; did you mean 'hop_length'"):
        validate_config(bad)
    with pytest.raises(ValueError, match="frontends.beats: n_fft 1024 \\(Kaldi: 512\\)"):
        BEATsFbank({**BEATS_FRONTEND, "n_fft": 1024})


# ----------------------------------------------------------------------------- a tiny BEATs member through the pipeline
def _write_audio(folder, clips, rng) -> None:
    """Noise with one tone per class during its events; a durations.tsv beside the folder."""
    folder.mkdir(parents=True)
    t = np.arange(int(12.0 * 16000)) / 16000
    for name, duration, events in clips:
        wave = 0.01 * rng.standard_normal(int(duration * 16000))
        for on, off, label in events:
            band = slice(int(on * 16000), int(off * 16000))
            wave[band] += 0.3 * np.sin(2 * np.pi * TONES_HZ[CLASSES.index(label)] * t[band])
        sf.write(folder / name, wave.astype(np.float32), 16000)
    rows = [f"{name}\t{duration}" for name, duration, _ in clips]
    (folder.parent / f"{folder.name}_durations.tsv").write_text("filename\tduration\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def beats_data(tmp_path_factory):
    """Fake splits as audio, their crnn + beats feature caches, a BEATs pretrained on them, its embeddings."""
    root = tmp_path_factory.mktemp("beats")
    frontends = beats_config(1)["frontends"]
    rng = np.random.default_rng(0)
    entries = []
    for name, role, labels, n in SPLITS:
        n = min(n, 4)
        clips = _random_clips(name, n, rng, long_first=name == "strong_real")
        _write_audio(root / "audio" / name, clips, rng)
        features = root / "features" / name
        build_feature_cache(root / "audio" / f"{name}_durations.tsv", root / "audio" / name, features,
                            {"crnn": frontends["crnn"]}, 10.0)  # fmt: skip
        build_feature_cache(root / "audio" / f"{name}_durations.tsv", root / "audio" / name, features,
                            {"beats": frontends["beats"]}, 10.0)  # the stream of its own job (rule cache_stream)
        strong = ["filename\tonset\toffset\tevent_label"] + [f"{f}\t{a}\t{b}\t{c}" for f, _, ev in clips for a, b, c in ev]
        (root / f"{name}_strong.tsv").write_text("\n".join(strong) + "\n")
        weak = ["filename\tevent_labels"] + [f"{f}\t{','.join(sorted({e[2] for e in ev}))}" for f, _, ev in clips]
        (root / f"{name}_weak_train.tsv").write_text("\n".join(weak[:-1]) + "\n")
        (root / f"{name}_weak_val.tsv").write_text("\n".join([weak[0], weak[-1]]) + "\n")
        entry = {"dataset": "fake", "split": name, "role": role, "labels": labels, "features": str(features)}
        if labels == "strong":
            entry["metadata"] = str(root / f"{name}_strong.tsv")
        if labels == "weak":
            entry.update(weak_train=str(root / f"{name}_weak_train.tsv"), weak_val=str(root / f"{name}_weak_val.tsv"))
        entries.append(entry)
    pretrain_backbone(root / "features" / "synth", root / "synth_strong.tsv", root / "beats.pt", TINY, frontends, 10.0,
                      seed=1, val_fraction=0.25)  # fmt: skip
    for entry in entries:
        entry["embeddings"] = str(root / "emb" / f"{entry['split']}.npy")
        build_embedding_cache(entry["features"], root / "beats.pt", entry["embeddings"], frontends, 10.0)
    return root, {"splits": entries, "backbone": str(root / "beats.pt")}


def test_stream_pretraining_and_embeddings(beats_data):
    root, inputs = beats_data
    stream = np.load(root / "features" / "strong_real" / "beats_mel.npy")
    index = (root / "features" / "strong_real" / "beats_index.tsv").read_text().splitlines()
    assert index[0] == "filename\tduration\tn_beats" and index[1].endswith("\t1198")  # 12 s: 1 + (192000 - 400) // 160
    assert stream.shape == (4, 128, 1198) and index[2].endswith("\t998")
    wave = torch.from_numpy(sf.read(root / "audio" / "strong_real" / "strong_real_01.wav", dtype="float32")[0])
    np.testing.assert_allclose(stream[1, :, :998], BEATsFbank().mel(wave[None])[0].numpy(), rtol=0, atol=1e-4)
    provenance = torch.load(root / "beats.pt", weights_only=True)["provenance"]
    assert provenance["source"] == "pretrain" and "before" in json.dumps(provenance)
    emb, meta = open_embeddings(inputs["splits"][0]["embeddings"])
    assert emb.shape == (4, 32, 1198 // 16) and meta["backbone_kind"] == "beats"
    assert meta["embedding_hop_seconds"] == pytest.approx(0.16)
    # the cached embeddings of a 10 s clip are the backbone's output on its normalised fbank
    backbone = load_backbone(root / "beats.pt")
    with torch.no_grad():
        direct = backbone(BEATsFbank().normalize(torch.from_numpy(stream[1:2, :, :998])))[0].numpy()
    np.testing.assert_allclose(emb[1, :, :62].astype(np.float32), direct, rtol=0, atol=2e-2)  # float16 cache


def test_tiny_beats_member_trains_predicts_scores_and_ensembles_with_atst(beats_data, tmp_path):
    root, inputs = beats_data
    train(beats_config(1), inputs, tmp_path / "stage1", iteration=1)
    model1, _ = load_sed_model(tmp_path / "stage1" / "model.pt")
    assert isinstance(model1.backbone, BEATsEncoder)
    stage2_inputs = {"splits": [{k: v for k, v in e.items() if k != "embeddings"} for e in inputs["splits"]],
                     "init_model": str(tmp_path / "stage1" / "model.pt")}  # fmt: skip
    assert train(beats_config(2), stage2_inputs, tmp_path / "stage2", iteration=1)["objective"] is not None
    header = (tmp_path / "stage2" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"lr/tfm0", "lr/tfm1"} <= set(header)  # layer 0 and the embedding group fine-tune with decayed rates
    student2, _ = load_sed_model(tmp_path / "stage2" / "model.pt", "student")
    changed = student2.backbone.encoder.layers[0].fc1.weight
    assert not torch.equal(changed, model1.backbone.encoder.layers[0].fc1.weight)

    # pseudo-label prediction on the cached streams; scoring the same audio from wav files agrees with it
    synth = next(e for e in inputs["splits"] if e["split"] == "synth")
    argv = ["predict-logits", "--model", str(tmp_path / "stage2" / "model.pt"), "--features", synth["features"],
            "--output", str(tmp_path / "synth.h5"), "--config-json", json.dumps({"network": "teacher", "hop_seconds": 5.0}),
            "--iteration", "1", "--member", "beats", "--splits", "fake/synth", "--device", "cpu"]
    assert cli_main(argv) == 0
    cached = read_logits(tmp_path / "synth.h5")
    assert cached.frame_hop == pytest.approx(0.064) and cached.n_frames.tolist() == [156] * 4
    audio = root / "audio" / "synth"
    cfg = json.dumps({"window_seconds": 10.0, "hop_seconds": 5.0})
    assert cli_main(["score", "--model-file", str(tmp_path / "stage2" / "model.pt"), "--audio-dir", str(audio),
                     "--durations", str(root / "audio" / "synth_durations.tsv"), "--config-json", cfg, "--iteration",
                     "1", "--logits-out", str(tmp_path / "synth_scored.h5"), "--scores-out",
                     str(tmp_path / "synth_scores"), "--device", "cpu"]) == 0  # fmt: skip
    scored = read_logits(tmp_path / "synth_scored.h5")
    for name in ("synth_00.wav", "synth_03.wav"):  # the cache pads 998 fbank frames to the 1001-frame window
        np.testing.assert_allclose(scored.clip(name), cached.clip(name), rtol=0, atol=1e-4)

    # long audio (windows on the 0.32 s grid), and the ensemble of the BEATs member with an ATST-Frame member
    long_dir = tmp_path / "long"
    long_dir.mkdir()
    rng = np.random.default_rng(1)
    for name, seconds in (("a.wav", 10.0), ("b.wav", 13.3)):
        sf.write(long_dir / name, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    (tmp_path / "durations.tsv").write_text("filename\tduration\na.wav\t10.0\nb.wav\t13.3\n")
    atst_config = run_config(2, 1)
    torch.manual_seed(2)
    atst_model = build_sed_model(atst_config, len(CLASSES))
    save_sed_model(tmp_path / "atst.pt", atst_model, atst_model, atst_config, CLASSES, {"test": True})
    for name, model_file in (("beats", tmp_path / "stage2" / "model.pt"), ("atst", tmp_path / "atst.pt")):
        assert cli_main(["score", "--model-file", str(model_file), "--audio-dir", str(long_dir), "--durations",
                         str(tmp_path / "durations.tsv"), "--config-json", cfg, "--iteration", "1", "--logits-out",
                         str(tmp_path / f"{name}.eval.h5"), "--scores-out", str(tmp_path / f"{name}_scores"),
                         "--device", "cpu"]) == 0  # fmt: skip
    members = [read_logits(tmp_path / f"{name}.eval.h5") for name in ("beats", "atst")]
    assert [m.n_frames.tolist() for m in members] == [[156, (1 + 212800 // 256) // 4]] * 2
    assert cli_main(["score", "--member-logits", str(tmp_path / "beats.eval.h5"), str(tmp_path / "atst.eval.h5"),
                     "--durations", str(tmp_path / "durations.tsv"), "--config-json", '{"average": "logits"}',
                     "--iteration", "1", "--logits-out", str(tmp_path / "ens.h5"), "--scores-out",
                     str(tmp_path / "ens_scores")]) == 0  # fmt: skip
    ensemble = read_logits(tmp_path / "ens.h5")
    np.testing.assert_allclose(ensemble.clip("b.wav"), (members[0].clip("b.wav") + members[1].clip("b.wav")) / 2,
                               rtol=0, atol=1e-6)  # fmt: skip
