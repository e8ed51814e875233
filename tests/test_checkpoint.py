"""Checkpoint loading: every official layout, strict mismatch errors, our backbone and model files, fetch-backbone."""

import argparse
import json
import os
import pickle
import sys
import types

import pytest
import torch

from sedlib.cli import main as cli_main
from conftest import published_geometry
from sedlib.config import load_config
from sedlib.io import sha256_file
from sedlib.models import build_sed_model
from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.checkpoint import (
    atst_state_dict,
    load_backbone,
    load_backbone_weights,
    load_sed_model,
    load_state_dict_strict,
    read_checkpoint,
    save_backbone,
    save_sed_model,
)

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 4}


def tiny(seed):
    torch.manual_seed(seed)
    return ATSTFrame(**TINY)


def official_atst(state):
    """atst_as2M.ckpt layout: teacher and student encoders, 'norm' for norm_frame, a cls_token, Lightning extras."""
    out = {}
    for key, value in state.items():
        name = "norm." + key[len("norm_frame.") :] if key.startswith("norm_frame.") else key
        out[f"model.teacher.encoder.{name}"] = value
        out[f"model.student.encoder.{name}"] = torch.zeros_like(value)
    out["model.teacher.encoder.cls_token"] = torch.zeros(1, 1, state["pos_embed"].shape[-1])
    out["model.teacher.projector.weight"] = torch.zeros(3, 3)
    return {"state_dict": out, "hyper_parameters": {"args": argparse.Namespace(arch="base")}}


def official_c2f(state):
    out = {f"encoder.encoder.frame_encoder.{k}": v for k, v in state.items()}
    out.update({f"encoder.encoder.teacher_module.{k}": torch.zeros_like(v) for k, v in state.items()})
    return {"state_dict": out}


def official_frame(state):
    out = {f"encoder.encoder.{k}": v for k, v in state.items()}
    out.update({f"encoder.encoder.teacher_module.{k}": torch.zeros_like(v) for k, v in state.items()})
    return {"state_dict": out, "epoch": 3}


def sed_lightning(state):
    """ATST-SED Lightning checkpoint: student and teacher CRNNs with thop counters."""
    out = {}
    for role, scale in (("sed_teacher", 1.0), ("sed_student", 0.0)):
        for key, value in state.items():
            out[f"{role}.atst_frame.atst.{key}"] = value * scale
        out[f"{role}.atst_frame.atst.total_ops"] = torch.zeros(1, dtype=torch.float64)
        out[f"{role}.dense.total_params"] = torch.zeros(1, dtype=torch.float64)
    return {"state_dict": out}


LAYOUTS = {
    "atst": official_atst, "atst-c2f": official_c2f, "atst-frame": official_frame, "atst-sed-lightning": sed_lightning
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_official_layouts_load_exactly(layout, tmp_path):
    source = tiny(0)
    path = tmp_path / "official.ckpt"
    torch.save(LAYOUTS[layout](source.state_dict()), path)
    target = tiny(1)
    assert load_backbone_weights(target, path) == layout
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_published_size_layouts_are_key_compatible():
    """The 768/12 model (meta device: shapes only) loads every official layout strictly."""
    with torch.device("meta"):
        reference = ATSTFrame()
    state = reference.state_dict()
    for name, make in LAYOUTS.items():
        normalised, layout = atst_state_dict(make(state))
        assert layout == name
        with torch.device("meta"):
            model = ATSTFrame()
        load_state_dict_strict(model, normalised, name)
        assert set(normalised) == set(state)
        assert normalised["patch_embed.patch_embed.weight"].shape == (768, 256)


def test_mismatch_lists_missing_unexpected_and_shape_conflicts(tmp_path):
    state = tiny(0).state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.2.attn.qkv.weight"] = torch.zeros(96, 32)
    state["pos_embed"] = torch.zeros(1, 101, 32)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {f"encoder.encoder.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(ValueError) as info:
        load_backbone_weights(tiny(1), path)
    message = str(info.value)
    assert "bad.ckpt (atst-frame layout)" in message
    assert "missing keys (1):\n    blocks.1.mlp.fc2.bias" in message
    assert "unexpected keys (1):\n    blocks.2.attn.qkv.weight" in message
    assert "pos_embed: checkpoint (1, 101, 32) vs model (1, 251, 32)" in message


def test_backbone_file_round_trip_and_size_check(tmp_path):
    source = tiny(0)
    path = tmp_path / "backbone.pt"
    save_backbone(path, source, {"source": "test"})
    loaded = load_backbone(path)
    assert loaded.hparams == source.hparams and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(ValueError, match="backbone sizes .* differ from the configured"):
        load_backbone_weights(ATSTFrame(embed_dim=32, depth=3, num_heads=4), path)


@pytest.fixture(scope="module")
def config(repo_root):
    return published_geometry(load_config(repo_root / "workflow_config.yaml"))


def test_sed_model_file_round_trip(config, tmp_path):
    torch.manual_seed(0)
    student = build_sed_model(config, 10)
    torch.manual_seed(1)
    teacher = build_sed_model(config, 10)
    classes = config["datasets"]["desed"]["classes"]
    path = tmp_path / "model.pt"
    save_sed_model(path, student, teacher, config, classes, {"member": "seed1"})
    crnn, atst = torch.rand(1, 128, 626), torch.randn(1, 64, 1001)
    for which, reference in (("teacher", teacher), ("student", student)):
        model, info = load_sed_model(path, which=which)
        assert not model.training and info["classes"] == classes and info["which"] == which
        assert info["frame_hop"] == pytest.approx(0.064) and info["provenance"] == {"member": "seed1"}
        with torch.no_grad():
            assert torch.equal(model(crnn, atst_feats=atst).strong_logits,
                               reference.eval()(crnn, atst_feats=atst).strong_logits)


@pytest.mark.parametrize("style", ["lightning", "model_init"])
def test_atst_sed_checkpoints(config, tmp_path, style):
    torch.manual_seed(2)
    teacher = build_sed_model(config, 10)
    student = build_sed_model(config, 10)
    if style == "lightning":  # trainer checkpoint: prefixed keys in state_dict, thop counters
        state = {f"sed_teacher.{k}": v for k, v in teacher.state_dict().items()}
        state.update({f"sed_student.{k}": v for k, v in student.state_dict().items()})
        state["sed_teacher.cnn.cnn.conv0.total_ops"] = torch.zeros(1, dtype=torch.float64)
        payload = {"state_dict": state, "hyper_parameters": {"opt": argparse.Namespace(lr=1)}}
    else:  # published stage-1 output read by `model_init`: top-level dicts
        payload = {"sed_teacher": teacher.state_dict(), "sed_student": student.state_dict()}
    path = tmp_path / "atst_sed.ckpt"
    torch.save(payload, path)
    classes = config["datasets"]["desed"]["classes"]
    model, info = load_sed_model(path, "teacher", config=config, classes=classes)
    assert info["format"] == "atst-sed"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="carries no config"):
        load_sed_model(path, "teacher")
    # its backbone can also seed a backbone directly
    backbone = build_sed_model(config, 10).backbone
    load_backbone_weights(backbone, path)
    assert torch.equal(backbone.pos_embed, teacher.backbone.pos_embed)


def test_fetch_backbone_command(config, tmp_path, capsys):
    source = ATSTFrame(embed_dim=64, depth=2, num_heads=4)
    ckpt = tmp_path / "atst_frame.ckpt"
    torch.save(official_frame(source.state_dict()), ckpt)
    backbone_cfg = dict(config["model"]["backbones"]["atst"], source="checkpoint",
                        checkpoint={"path": str(ckpt), "checksum": "sha256:" + sha256_file(ckpt)})
    cfg = json.dumps({"backbone": backbone_cfg, "frontends": {"atst": config["frontends"]["atst"]}})
    out = tmp_path / "backbone" / "backbone.pt"
    assert cli_main(["fetch-backbone", "--out", str(out), "--config-json", cfg]) == 0
    loaded = load_backbone(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    assert torch.load(out)["provenance"]["layout"] == "atst-frame"
    backbone_cfg["checkpoint"]["checksum"] = "sha256:" + "0" * 64
    cfg = json.dumps({"backbone": backbone_cfg, "frontends": {"atst": config["frontends"]["atst"]}})
    assert cli_main(["fetch-backbone", "--out", str(tmp_path / "other.pt"), "--config-json", cfg]) == 2
    assert "atst_frame.ckpt: sha256 is" in capsys.readouterr().err
    assert not (tmp_path / "other.pt").exists()


class _Payload:
    """Unpickling it would run a shell command that creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_checkpoint_with_code_is_refused_and_never_run(config, tmp_path, capsys, writer):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    payload = {"state_dict": {}, "hyper_parameters": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="evil.pt: refused: .*system"):
        read_checkpoint(evil)
    backbone_cfg = dict(config["model"]["backbones"]["atst"], source="checkpoint", checkpoint={"path": str(evil)})
    fetch = json.dumps({"backbone": backbone_cfg, "frontends": {"atst": config["frontends"]["atst"]}})
    commands = {
        "infer": ["infer", str(tmp_path / "a.wav"), "--checkpoint", str(evil), "--out", str(tmp_path / "e.tsv")],
        "fetch-backbone": ["fetch-backbone", "--out", str(tmp_path / "b.pt"), "--config-json", fetch],
    }
    for argv in commands.values():
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{evil}: refused" in err, err
    assert not marker.exists(), "the pickled command ran"


def _truncated(path):
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:600])


BAD_FILES = {
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("this is not a checkpoint\n"),
    "random": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "truncated": _truncated,
    "not a dict": lambda p: torch.save([torch.zeros(1)], p),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind.replace(' ', '_')}.pt"
    BAD_FILES[kind](path)
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable checkpoint") and "\n" not in message
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint file does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_old_lightning_objects_load_as_inert_stand_ins(tmp_path, monkeypatch):
    """PyTorch-Lightning 1.x files name AttributeDict and callback classes (as dict keys): those load, inertly."""
    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")
    callbacks = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    parsing.AttributeDict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
    callbacks.ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": callbacks.__name__})
    packages = [types.ModuleType(name) for name in
                ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.callbacks")]
    for module in (*packages, parsing, callbacks):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "pl1.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": parsing.AttributeDict(lr=0.1),
                "callbacks": {callbacks.ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}}}, path)
    for module in (*packages, parsing, callbacks):
        monkeypatch.delitem(sys.modules, module.__name__)
    loaded = read_checkpoint(path)
    assert loaded["hyper_parameters"] == {"lr": 0.1} and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert [type(k).__name__ for k in loaded["callbacks"]] == ["type"]
