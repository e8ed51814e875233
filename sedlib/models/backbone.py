"""The backbone interface: a frame-level transformer whose embeddings the CRNN merges, and the registry of kinds.

A backbone kind is one module that defines a :class:`Backbone` subclass decorated with :func:`register` and
one entry ``{kind: frontend section}`` in ``sedlib.config.BACKBONE_KINDS`` (and its sizes in the config
schema). Everything else (feature caches, embedding caches, training crops, pseudo-label and scoring windows,
backbone files) reads what it needs from the class:

- ``frontend``: the ``config["frontends"]`` section it reads; it is also the feature-cache stream
  (``{frontend}_mel.npy``) and the training item key (``{frontend}_mel``). Its normalisation is that
  frontend's ``normalize()`` (sedlib.features.frontends), applied per clip window before ``forward``;
- ``frames_per_embedding``: frontend frames per embedding frame (ATST-Frame: 4 x 10 ms = 40 ms);
- ``embed_dim``, ``hparams`` (the sizes: ``cls(**hparams)`` rebuilds it, stored in our backbone files);
- ``forward(features (B, n_mels, T)) -> (B, embed_dim, T // frames_per_embedding)``;
- ``layer_groups()`` from the top, for layer-wise learning-rate decay and partial freezing;
- ``official_state_dict(checkpoint)``: the backbone's weights in our key names from a published checkpoint
  layout (loading itself is strict, ``sedlib.models.checkpoint.load_state_dict_strict``).

The CRNN merge (adaptive pooling of the embeddings to the CNN's output frames, concatenation, ``cat_tf``)
does not depend on the kind.
"""

from __future__ import annotations

import abc
import importlib
from typing import ClassVar

import torch
from torch import nn

# Modules that define the built-in kinds, imported on first use (tests register their own kinds directly).
BUILTIN_MODULES = {"atst_frame": "sedlib.models.atst_frame", "beats": "sedlib.models.beats"}
_REGISTRY: dict[str, type["Backbone"]] = {}


class Backbone(nn.Module, abc.ABC):
    """Frontend features of one clip window (B, n_mels, T) -> frame embeddings (B, embed_dim, T')."""

    kind: ClassVar[str]
    frontend: ClassVar[str]
    frames_per_embedding: int
    embed_dim: int
    hparams: dict

    @classmethod
    @abc.abstractmethod
    def from_config(cls, definition: dict, frontend_cfg: dict) -> "Backbone":
        """Randomly initialised backbone of the sizes in a ``model.backbones`` entry, for its frontend section."""

    @abc.abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised frontend features (B, n_mels, T) -> (B, embed_dim, T // frames_per_embedding)."""

    @abc.abstractmethod
    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups from the top (output) layer down to the input embedding; every parameter once."""

    @classmethod
    @abc.abstractmethod
    def official_state_dict(cls, checkpoint: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
        """(weights in our key names, layout name) from a published checkpoint's dict (``which``: the SED
        network of ATST-SED-style checkpoints that hold a student and a teacher)."""

    def embedding_hop(self, frontend_cfg: dict) -> float:
        """Seconds per embedding frame: frontend hop x ``frames_per_embedding`` / sample rate."""
        return self.frames_per_embedding * frontend_cfg["hop_length"] / frontend_cfg["sample_rate"]


def register(cls: type[Backbone]) -> type[Backbone]:
    """Class decorator: make ``cls`` the backbone of ``cls.kind``."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"backbone kind '{cls.kind}' is already registered ({_REGISTRY[cls.kind].__qualname__})")
    _REGISTRY[cls.kind] = cls
    return cls


def backbone_class(kind: str) -> type[Backbone]:
    """The registered class of ``kind`` (built-in kinds are imported on first use)."""
    if kind not in _REGISTRY and kind in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[kind])
    if kind not in _REGISTRY:
        raise ValueError(f"unknown backbone kind '{kind}'; known: {sorted({*BUILTIN_MODULES, *_REGISTRY})}")
    return _REGISTRY[kind]


def backbone_definition(model_cfg: dict, name: str | None = None) -> dict:
    """The backbone entry of a ``model`` section.

    A run configuration or a model file carries its one backbone as ``model.backbone``; a workflow
    configuration names several in ``model.backbones``: ``name`` picks one (default: the first).
    """
    if "backbone" in model_cfg:
        return model_cfg["backbone"]
    backbones = model_cfg["backbones"]
    name = name or next(iter(backbones))
    if name not in backbones:
        raise ValueError(f"model.backbones has no backbone named '{name}' (configured: {sorted(backbones)})")
    return backbones[name]


def build_backbone(model_cfg: dict, frontends_cfg: dict, name: str | None = None) -> Backbone:
    """Randomly initialised backbone of ``backbone_definition(model_cfg, name)`` for its frontend section."""
    definition = backbone_definition(model_cfg, name)
    cls = backbone_class(definition["kind"])
    if cls.frontend not in frontends_cfg:
        raise ValueError(f"backbone kind '{cls.kind}' reads frontends.{cls.frontend}, which is not configured")
    return cls.from_config(definition, frontends_cfg[cls.frontend])


def backbone_stream(model_cfg: dict, frontends_cfg: dict) -> tuple[str, int]:
    """(frontend stream, frontend frames per embedding frame) of ``backbone_definition(model_cfg)``; the backbone
    is built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        backbone = build_backbone(model_cfg, frontends_cfg)
    return backbone.frontend, backbone.frames_per_embedding
