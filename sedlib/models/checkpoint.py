"""Checkpoint I/O: official ATST / ATST-SED layouts, our backbone file and model file, ``fetch-backbone``.

Backbone layouts read by :func:`atst_state_dict` (the published ``ATST.load_atst`` rules, plus SED files):
- ATST (``atst_as2M.ckpt``): keys ``model.teacher.encoder.*``; ``norm.*`` -> ``norm_frame.*``; ``cls_token`` dropped;
- ATST-C2F: ``encoder.encoder.frame_encoder.*``;
- ATST-Frame: ``encoder.encoder.*`` (``encoder.encoder.teacher_module.*`` skipped);
- ATST-SED Lightning checkpoints / our model file: the backbone under ``[sed_teacher.]atst_frame.atst.*``;
- our backbone file ``results/backbone/{name}.pt`` (already in our key names).
Any of them may be wrapped in a dict with a ``state_dict`` key. thop's ``total_ops`` / ``total_params``
buffers (present in published SED checkpoints) are ignored. Loading is strict: a mismatch raises ValueError
listing missing keys, unexpected keys and shape conflicts.

Other backbone kinds read their published layouts with their class's ``official_state_dict``
(sedlib.models.backbone); our own files load for every kind.

Backbone file (``sedlib.backbone/1``): ``{"format", "kind", "config": Backbone.hparams, "state_dict",
"provenance"}`` (files without ``kind`` predate the backbone interface and hold an ATST-Frame).
Model file (``sedlib.sed_model/1``): see docs/architecture.md "Model file".
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sedlib.data.download import download_file, file_digest, parse_checksum
from sedlib.data.labels import frame_hop_seconds
from sedlib.io import atomic_path, sha256_file
from sedlib.models import build_sed_model
from sedlib.models.backbone import Backbone, backbone_class, build_backbone
from sedlib.models.crnn import CRNN

log = logging.getLogger(__name__)

SED_FORMAT = "sedlib.sed_model/1"
BACKBONE_FORMAT = "sedlib.backbone/1"
THOP_KEYS = ("total_ops", "total_params")
SED_BACKBONE_PREFIX = "atst_frame.atst."


class _LightningCallbackKey:
    """Inert stand-in for a Lightning callback class that old checkpoints use as a ``callbacks`` dict key."""


# The only non-tensor globals a checkpoint may name: published (PyTorch-)Lightning checkpoints carry these
# (ATST's hyper-parameters are an argparse.Namespace). Lightning's classes map to inert stand-ins (its
# AttributeDict, a dict subclass, to an OrderedDict), so no Lightning code runs and nothing else is imported.
LIGHTNING_GLOBALS = [
    argparse.Namespace,
    (collections.OrderedDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (collections.OrderedDict, "lightning.fabric.utilities.data.AttributeDict"),
    (collections.OrderedDict, "lightning_fabric.utilities.data.AttributeDict"),
    (_LightningCallbackKey, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (_LightningCallbackKey, "pytorch_lightning.callbacks.early_stopping.EarlyStopping"),
]


def read_checkpoint(path: str | Path) -> dict:
    """The dict of a ``.pt`` / ``.ckpt`` file, loaded on CPU by tensors-only unpickling (never arbitrary objects).

    Only tensors, plain containers and numbers, and the LIGHTNING_GLOBALS stand-ins are accepted (see
    docs/data.md "Security and trust"). A missing file raises FileNotFoundError; a file naming any other
    Python object, or that is not a readable checkpoint at all, raises a one-line ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file does not exist")
    try:
        with torch.serialization.safe_globals(LIGHTNING_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports damaged files as EOFError, KeyError, RuntimeError, UnpicklingError...
        raise ValueError(f"{path}: {_load_failure(exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a readable checkpoint (expected a dict, got {type(data).__name__})")
    return data


def _load_failure(exc: Exception) -> str:
    """One line saying why torch.load refused or could not read a file."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"refused: the checkpoint names the Python object {refused.group(1)}; only tensors and plain "
                "data are loaded from checkpoints (docs/data.md, 'Security and trust')")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", text)
    reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0][:120]
    return f"not a readable checkpoint ({type(exc).__name__}: {reason or 'no data'})"


def _is_thop(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in THOP_KEYS


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not _is_thop(k)}


def _strip(state: dict, prefix: str, rename: Callable[[str], str | None] = lambda k: k) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            new_key = rename(key[len(prefix) :])
            if new_key is not None:
                out[new_key] = value
    return out


def _atst_teacher_key(key: str) -> str | None:
    if key == "cls_token":
        return None
    return "norm_frame." + key[len("norm.") :] if key.startswith("norm.") else key


def own_state_dict(checkpoint: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str] | None:
    """(backbone state dict, layout name) of our backbone or model file (any kind) or an ATST-SED ``model_init``;
    None for other layouts."""
    if checkpoint.get("format") == BACKBONE_FORMAT:
        return _tensors(checkpoint["state_dict"]), "sedlib-backbone"
    if checkpoint.get("format") == SED_FORMAT:
        return _strip(_tensors(checkpoint[f"sed_{which}"]), SED_BACKBONE_PREFIX), "sedlib-sed-model"
    if isinstance(checkpoint.get(f"sed_{which}"), dict):
        return _strip(_tensors(checkpoint[f"sed_{which}"]), SED_BACKBONE_PREFIX), "atst-sed-model-init"
    return None


def atst_state_dict(checkpoint: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in our ATST-Frame key names, layout name) from any supported checkpoint dict."""
    own = own_state_dict(checkpoint, which)
    if own is not None:
        return own
    state = _tensors(checkpoint.get("state_dict", checkpoint))
    keys = list(state)
    layouts: list[tuple[str, str, Callable[[str], str | None]]] = [
        ("atst", "model.teacher.encoder.", _atst_teacher_key),
        ("atst-c2f", "encoder.encoder.frame_encoder.", lambda k: k),
        ("atst-frame", "encoder.encoder.", lambda k: None if k.startswith("teacher_module.") else k),
        ("atst-sed-lightning", f"sed_{which}.{SED_BACKBONE_PREFIX}", lambda k: k),
        ("atst-sed-module", SED_BACKBONE_PREFIX, lambda k: k),
    ]
    for name, prefix, rename in layouts:
        if any(k.startswith(prefix) for k in keys):
            return _strip(state, prefix, rename), name
    return state, "plain"


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; on any key or shape mismatch raise ValueError listing all of them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    conflicts = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or conflicts:
        parts = [f"{source}: checkpoint does not match {type(module).__name__}"]
        listed = (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", conflicts))
        for title, items in listed:
            if items:
                shown = items[:25] + ([f"... and {len(items) - 25} more"] if len(items) > 25 else [])
                parts.append(f"{title} ({len(items)}):\n    " + "\n    ".join(shown))
        raise ValueError("\n  ".join(parts))
    module.load_state_dict(state, strict=True, assign=any(t.is_meta for t in expected.values()))


# ----------------------------------------------------------------------------- backbone file
def load_backbone_weights(backbone: Backbone, path: str | Path, which: str = "teacher") -> str:
    """Load any supported checkpoint's weights of ``backbone``'s kind into it (strict); return the layout name."""
    checkpoint = read_checkpoint(path)
    if checkpoint.get("format") == BACKBONE_FORMAT:
        kind = checkpoint.get("kind", "atst_frame")
        if kind != backbone.kind:
            raise ValueError(f"{path}: a {kind} backbone file, but the configured backbone is a {backbone.kind}")
        if checkpoint["config"] != backbone.hparams:
            raise ValueError(
                f"{path}: backbone sizes {checkpoint['config']} differ from the configured backbone {backbone.hparams}"
            )
    state, layout = own_state_dict(checkpoint, which) or type(backbone).official_state_dict(checkpoint, which)
    load_state_dict_strict(backbone, state, f"{path} ({layout} layout)")
    return layout


def load_backbone(path: str | Path) -> Backbone:
    """Backbone of the kind and sizes stored in our backbone file, with its weights, in eval mode."""
    checkpoint = read_checkpoint(path)
    if checkpoint.get("format") != BACKBONE_FORMAT:
        raise ValueError(
            f"{path}: not a backbone file (format {checkpoint.get('format')!r}, expected {BACKBONE_FORMAT!r})"
        )
    backbone = backbone_class(checkpoint.get("kind", "atst_frame"))(**checkpoint["config"])
    load_state_dict_strict(backbone, _tensors(checkpoint["state_dict"]), str(path))
    return backbone.eval()


def save_backbone(path: str | Path, backbone: Backbone, provenance: dict) -> None:
    """Write our backbone file atomically."""
    payload = {
        "format": BACKBONE_FORMAT,
        "kind": backbone.kind,
        "config": dict(backbone.hparams),
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "provenance": provenance,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# ----------------------------------------------------------------------------- SED model file
def model_frame_hop(config: dict) -> float:
    """Output frame hop in seconds: CRNN mel hop x time pooling / sample rate (0.064 s published)."""
    crnn = config["frontends"]["crnn"]
    time_pooling = math.prod(time_pool for time_pool, _ in config["model"]["crnn"]["pooling"])
    return frame_hop_seconds(crnn["hop_length"], crnn["sample_rate"], time_pooling)


def save_sed_model(
    path: str | Path, student: CRNN, teacher: CRNN, config: dict, classes: list[str], provenance: dict
) -> None:
    """Write the model file (student + teacher + the config sections that rebuild them) atomically."""
    payload = {
        "format": SED_FORMAT,
        "config": {key: config[key] for key in ("model", "frontends", "audio")},
        "classes": list(classes),
        "frame_hop": model_frame_hop(config),
        "sed_student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
        "sed_teacher": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
        "provenance": provenance,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _sed_state(checkpoint: dict, which: str, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint.get(f"sed_{which}"), dict):  # our file, or a published stage-1 `model_init`
        return _tensors(checkpoint[f"sed_{which}"])
    prefix = f"sed_{which}."
    state = _strip(_tensors(checkpoint.get("state_dict", {})), prefix)
    if not state:
        raise ValueError(f"{path}: no '{prefix}*' keys in 'state_dict' and no top-level 'sed_{which}' entry")
    return state


def load_sed_model(
    path: str | Path, which: str = "teacher", config: dict | None = None, classes: list[str] | None = None
) -> tuple[CRNN, dict[str, Any]]:
    """(CRNN in eval mode, info) from our model file or an ATST-SED checkpoint.

    ``which``: "teacher" or "student". Our file carries its config and classes; a published ATST-SED
    checkpoint needs ``config`` (model/frontends/audio sections, e.g. configs/desed.yaml) and ``classes``.
    info: format, which, classes, config, frame_hop (s), provenance.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    path = Path(path)
    checkpoint = read_checkpoint(path)
    state = _sed_state(checkpoint, which, path)
    if checkpoint.get("format") == SED_FORMAT:
        config, classes, fmt = checkpoint["config"], checkpoint["classes"], SED_FORMAT
        provenance = checkpoint.get("provenance", {})
    else:
        if config is None or classes is None:
            raise ValueError(f"{path}: an ATST-SED checkpoint carries no config: pass config and classes")
        fmt, provenance = "atst-sed", {"source": str(path)}
    model = build_sed_model(config, len(classes))
    load_state_dict_strict(model, state, f"{path} (sed_{which})")
    info = {"format": fmt, "which": which, "classes": list(classes), "config": config,
            "frame_hop": model_frame_hop(config), "provenance": provenance}
    return model.eval(), info


# ----------------------------------------------------------------------------- fetch-backbone command
def fetch_backbone(backbone_cfg: dict, frontends_cfg: dict, out: Path, download_dir: Path) -> dict:
    """Resolve a ``model.backbones`` entry's ``checkpoint`` (path, or url + checksum), load it strictly into a
    backbone of its kind (``frontends_cfg``: frontend sections by name, among them the one the kind reads),
    write our backbone file."""
    spec = backbone_cfg.get("checkpoint") or {}
    if spec.get("path"):
        source = Path(spec["path"])
        if not source.is_file():
            raise FileNotFoundError(f"model.backbones.<name>.checkpoint.path: no file at {source}")
        if spec.get("checksum"):
            algorithm, expected = parse_checksum(spec["checksum"])
            actual = file_digest(source, algorithm)
            if actual != expected:
                raise ValueError(
                    f"{source}: {algorithm} is {actual}, expected {expected} "
                    "(model.backbones.<name>.checkpoint.checksum)"
                )
    elif spec.get("url"):
        if not spec.get("checksum"):
            raise ValueError(
                "model.backbones.<name>.checkpoint: a url needs a checksum ('sha256:<hex>' or 'md5:<hex>')"
            )
        source = download_dir / Path(spec["url"].split("?", 1)[0]).name
        download_file(spec["url"], source, spec["checksum"])
    else:
        raise ValueError("model.backbones.<name>.checkpoint: expected 'path', or 'url' + 'checksum'")
    backbone = build_backbone({"backbone": backbone_cfg}, frontends_cfg)
    layout = load_backbone_weights(backbone, source)
    provenance = {"source": "checkpoint", "origin": spec.get("url") or str(source), "layout": layout,
                  "sha256": sha256_file(source)}
    save_backbone(out, backbone, provenance)
    return provenance


def configure_fetch_backbone(parser: argparse.ArgumentParser):
    parser.add_argument("--config-json", required=True,
                        help='{"backbone": a model.backbones entry, "frontends": {<name>: the section its kind reads}}')
    parser.add_argument("--out", required=True, type=Path, help="backbone file to write (results/backbone/{name}.pt)")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="where a url checkpoint is downloaded (default: beside --out)")

    def run(args: argparse.Namespace) -> int:
        cfg = json.loads(args.config_json)
        download_dir = args.download_dir or args.out.parent / "download"
        provenance = fetch_backbone(cfg["backbone"], cfg["frontends"], args.out, download_dir)
        log.info("wrote %s from %s (%s layout)", args.out, provenance["origin"], provenance["layout"])
        return 0

    return run
