"""The backbone interface: registry, backbone files of any kind, and a toy kind (registered here) through cached
embeddings, stage 1, stage 2, pseudo-label prediction, scoring and a mixed-backbone ensemble."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torch.nn import functional as F

from sedlib.cli import main as cli_main
from sedlib.config import BACKBONE_KINDS, schema
from sedlib.features.embeddings import build_embedding_cache, open_embeddings
from sedlib.features.frontends import build_frontends
from sedlib.models import build_sed_model
from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.backbone import Backbone, backbone_class, register
from sedlib.models.checkpoint import load_backbone, load_backbone_weights, load_sed_model, save_backbone, save_sed_model
from sedlib.pseudo.store import read_logits
from sedlib.training.data import Geometry, TrainingData, split_inputs
from sedlib.training.run import train
from test_training_run import CLASSES, SPLITS, _random_clips, _write_split, run_config

FRAMES_PER_EMBEDDING = 5  # 50 ms at the 10 ms ATST hop: crop grid lcm(64 ms, 50 ms) = 1.6 s, unlike ATST's 0.32 s


@register
class ToyBackbone(Backbone):
    """Mean of every 5 ATST mel frames -> Linear -> LayerNorm: (B, n_mels, T) -> (B, embed_dim, T // 5)."""

    kind, frontend = "toy", "atst"

    def __init__(self, embed_dim: int = 8, n_mels: int = 64):
        super().__init__()
        self.hparams = {"embed_dim": embed_dim, "n_mels": n_mels}
        self.embed_dim, self.frames_per_embedding = embed_dim, FRAMES_PER_EMBEDDING
        self.proj = nn.Linear(n_mels, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    @classmethod
    def from_config(cls, definition: dict, frontend_cfg: dict) -> "ToyBackbone":
        return cls(definition["embed_dim"], frontend_cfg["n_mels"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool1d(features, self.frames_per_embedding)  # (B, n_mels, T // 5)
        return self.norm(self.proj(pooled.transpose(1, 2))).transpose(1, 2)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.norm.parameters()), list(self.proj.parameters())]

    @classmethod
    def official_state_dict(cls, checkpoint: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
        prefix = "toy_encoder."
        state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        return state, "toy-official"


def toy_config(stage: int, epochs: int = 1) -> dict:
    """run_config of tests/test_training_run.py with the toy backbone and two batches per epoch."""
    config = run_config(stage, epochs, max_steps_per_epoch=2)
    config["model"]["backbone"] = {"kind": "toy", "embed_dim": 8, "source": "pretrain", "checkpoint": None}
    return config


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- registry and files
def test_registry_kinds_and_errors():
    assert backbone_class("toy") is ToyBackbone and backbone_class("atst_frame") is ATSTFrame
    with pytest.raises(ValueError, match="unknown backbone kind 'nope'; known: .*atst_frame.*toy"):
        backbone_class("nope")

    class Other(ToyBackbone):
        kind = "toy"

    with pytest.raises(ValueError, match="backbone kind 'toy' is already registered"):
        register(Other)
    # the table the workflow reads without torch agrees with the classes and with the schema
    assert all(backbone_class(kind).frontend == frontend for kind, frontend in BACKBONE_KINDS.items())
    assert schema()["definitions"]["backbone"]["properties"]["kind"]["enum"] == list(BACKBONE_KINDS)


def test_backbone_files_of_any_kind(tmp_path):
    torch.manual_seed(0)
    toy = ToyBackbone(embed_dim=6)
    save_backbone(tmp_path / "toy.pt", toy, {"source": "test"})
    loaded = load_backbone(tmp_path / "toy.pt")
    assert isinstance(loaded, ToyBackbone) and loaded.hparams == toy.hparams
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in toy.state_dict().items())
    with pytest.raises(ValueError, match="a toy backbone file, but the configured backbone is a atst_frame"):
        load_backbone_weights(ATSTFrame(embed_dim=8, depth=1, num_heads=2), tmp_path / "toy.pt")
    # an official layout of the kind, read by its class, loaded strictly
    official = {"state_dict": {f"toy_encoder.{k}": v * 2 for k, v in toy.state_dict().items()}}
    torch.save(official, tmp_path / "official.ckpt")
    target = ToyBackbone(embed_dim=6)
    assert load_backbone_weights(target, tmp_path / "official.ckpt") == "toy-official"
    assert torch.equal(target.proj.weight, 2 * toy.proj.weight)
    del official["state_dict"]["toy_encoder.norm.bias"]
    torch.save(official, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match=r"missing keys \(1\):\n    norm.bias"):
        load_backbone_weights(target, tmp_path / "partial.ckpt")


def test_geometry_follows_the_backbone():
    g = Geometry.from_config(toy_config(1))
    assert g.stream == "atst" and g.grid_seconds == pytest.approx(1.6)
    assert g.window == {"crnn": 626, "atst": 1001, "emb": 200, "out": 156}
    assert g.grid == {"crnn": 100, "atst": 160, "emb": 32, "out": 25}


# ----------------------------------------------------------------------------- the toy kind through the pipeline
@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """The fake splits of tests/test_training_run.py with toy embeddings cached by ``build_embedding_cache``."""
    root = tmp_path_factory.mktemp("toy")
    config = toy_config(1)
    geometry = Geometry.from_config(run_config(1, 1))
    torch.manual_seed(0)
    backbone = build_sed_model(config, len(CLASSES)).backbone
    save_backbone(root / "toy.pt", backbone, {"test": True})
    rng = np.random.default_rng(0)
    entries = []
    for name, role, labels, n in SPLITS:
        clips = _random_clips(name, n, rng, long_first=name == "strong_real")
        entry = {"dataset": "fake", "split": name, "role": role, "labels": labels,
                 **_write_split(root, name, clips, geometry, rng)}  # fmt: skip
        entry["embeddings"] = str(root / "emb" / f"{name}.npy")
        build_embedding_cache(entry["features"], root / "toy.pt", entry["embeddings"], config["frontends"], 10.0)
        if labels == "strong":
            entry["metadata"] = str(root / f"{name}_strong.tsv")
        if labels == "weak":
            entry.update(weak_train=str(root / f"{name}_weak_train.tsv"), weak_val=str(root / f"{name}_weak_val.tsv"))
        entries.append(entry)
    return root, {"splits": entries, "backbone": str(root / "toy.pt")}


def test_toy_embeddings_and_training_items(toy_data):
    root, inputs = toy_data
    emb, meta = open_embeddings(inputs["splits"][0]["embeddings"])  # strong_real: clip 0 lasts 12 s (1201 frames)
    assert emb.shape == (6, 8, 1201 // 5) and meta["backbone_kind"] == "toy"
    assert meta["embedding_hop_seconds"] == pytest.approx(0.05)
    data = TrainingData({**toy_config(1), "classes": CLASSES}, split_inputs(inputs["splits"]), True, False)
    clips = data.groups[0][0]
    assert clips.n_crops(0) == 2  # 12 s: crops at 0 and 1.6 s
    shifted = clips.item(0, 1)
    assert shifted["embeddings"].shape == (8, 200)
    assert np.array_equal(shifted["embeddings"], clips.embeddings[clips.rows[0]][:, 32:232].astype(np.float32))
    stage2 = TrainingData({**toy_config(2), "classes": CLASSES}, split_inputs(inputs["splits"]), False, False)
    assert stage2.groups[0][0].item(0, 1)["atst_mel"].shape == (64, 1001)


def test_toy_backbone_trains_predicts_scores_and_ensembles_with_atst(toy_data, tmp_path):
    root, inputs = toy_data
    train(toy_config(1), inputs, tmp_path / "stage1", iteration=1)
    model1, _ = load_sed_model(tmp_path / "stage1" / "model.pt")
    assert isinstance(model1.backbone, ToyBackbone)
    stage2_inputs = {"splits": [{k: v for k, v in e.items() if k != "embeddings"} for e in inputs["splits"]],
                     "init_model": str(tmp_path / "stage1" / "model.pt")}  # fmt: skip
    prov2 = train(toy_config(2), stage2_inputs, tmp_path / "stage2", iteration=1)
    assert prov2["objective"] is not None
    header = (tmp_path / "stage2" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"lr/tfm0", "lr/tfm1"} <= set(header)  # the toy's two layer groups fine-tune
    student2, _ = load_sed_model(tmp_path / "stage2" / "model.pt", "student")
    assert not torch.equal(student2.backbone.proj.weight, model1.backbone.proj.weight)

    # pseudo-label prediction on the cached features: one 10 s window per 10 s clip
    synth = next(e for e in inputs["splits"] if e["split"] == "synth")
    out = tmp_path / "toy.h5"
    argv = ["predict-logits", "--model", str(tmp_path / "stage2" / "model.pt"), "--features", synth["features"],
            "--output", str(out), "--config-json", json.dumps({"network": "teacher", "hop_seconds": 5.0}),
            "--iteration", "1", "--member", "toy", "--splits", "fake/synth", "--device", "cpu"]
    assert cli_main(argv) == 0
    stored = read_logits(out)
    assert stored.frame_hop == pytest.approx(0.064) and stored.n_frames.tolist() == [156] * 6
    teacher, _ = load_sed_model(tmp_path / "stage2" / "model.pt", "teacher")
    fe = build_frontends(toy_config(2)["frontends"])
    crnn, atst = np.load(f"{synth['features']}/crnn_mel.npy"), np.load(f"{synth['features']}/atst_mel.npy")
    with torch.no_grad():
        direct = teacher(fe.crnn.normalize(torch.from_numpy(crnn[:1, :, :626])),
                         atst_feats=fe.atst.normalize(torch.from_numpy(atst[:1, :, :1001]))).strong_logits[0]
    np.testing.assert_allclose(stored.logits[0], direct.numpy(), rtol=0, atol=1e-5)

    # scoring from audio, and the ensemble of a toy member and an ATST-Frame member on the common 64 ms grid
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(1)
    for name, seconds in (("a.wav", 10.0), ("b.wav", 13.3)):
        sf.write(audio / name, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    (tmp_path / "durations.tsv").write_text("filename\tduration\na.wav\t10.0\nb.wav\t13.3\n")
    atst_config = run_config(2, 1)
    torch.manual_seed(2)
    atst_model = build_sed_model(atst_config, len(CLASSES))
    save_sed_model(tmp_path / "atst.pt", atst_model, atst_model, atst_config, CLASSES, {"test": True})
    cfg = json.dumps({"window_seconds": 10.0, "hop_seconds": 5.0})
    for name, model_file in (("toy", tmp_path / "stage2" / "model.pt"), ("atst", tmp_path / "atst.pt")):
        assert cli_main(["score", "--model-file", str(model_file), "--audio-dir", str(audio), "--durations",
                         str(tmp_path / "durations.tsv"), "--config-json", cfg, "--iteration", "1", "--logits-out",
                         str(tmp_path / f"{name}.eval.h5"), "--scores-out", str(tmp_path / f"{name}_scores"),
                         "--device", "cpu"]) == 0  # fmt: skip
    members = [read_logits(tmp_path / f"{name}.eval.h5") for name in ("toy", "atst")]
    assert [m.n_frames.tolist() for m in members] == [[156, (1 + 212800 // 256) // 4]] * 2  # 13.3 s: 208 frames
    assert cli_main(["score", "--member-logits", str(tmp_path / "toy.eval.h5"), str(tmp_path / "atst.eval.h5"),
                     "--durations", str(tmp_path / "durations.tsv"), "--config-json", '{"average": "logits"}',
                     "--iteration", "1", "--logits-out", str(tmp_path / "ens.h5"), "--scores-out",
                     str(tmp_path / "ens_scores")]) == 0  # fmt: skip
    ensemble = read_logits(tmp_path / "ens.h5")
    np.testing.assert_allclose(ensemble.clip("b.wav"), (members[0].clip("b.wav") + members[1].clip("b.wav")) / 2,
                               rtol=0, atol=1e-6)  # fmt: skip
