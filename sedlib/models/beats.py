"""BEATs encoder (Chen et al. 2022), state-dict compatible with the official checkpoints, as a frame-level backbone.

Architecture as published (microsoft/unilm ``beats/``; the same code is in DESED_task
recipes/dcase2024_task4_baseline/local/beats/, cited below as BEATs.py / backbone.py):
- input: normalised Kaldi fbank (B, 128 mels, T frames of 10 ms), see sedlib.features.kaldi_fbank.BEATsFbank;
- ``patch_embedding``: Conv2d(1, embed_dim, 16, stride 16, bias ``conv_bias``) over (time, mel): tokens
  (B, T' * 8, embed_dim), time-major (token = t' * 8 + mel patch), T' = T // 16 (the incomplete last time
  patch is dropped); ``layer_norm`` on them, ``post_extract_proj`` Linear -> encoder_embed_dim when the two
  dims differ (BEATs.py:95-115, 168-178);
- ``encoder.pos_conv``: grouped Conv1d over the token sequence (kernel ``conv_pos``, groups ``conv_pos_groups``,
  padding kernel // 2, the last output dropped for an even kernel) with weight norm over dim 2
  (``weight_g`` (1, 1, kernel), ``weight_v``), then GELU, added to the tokens (backbone.py:30-43, 118-120);
- post-norm (``layer_norm_first`` false): ``encoder.layer_norm`` before the layers and per layer
  ``LN(alpha x + attn(x))``, ``LN(alpha x + ffn(x))`` with deep-norm ``alpha = (2 * layers) ** 0.25``
  (1 without ``deep_norm``); pre-norm (``layer_norm_first``): ``x + attn(LN(x))``, ``x + ffn(LN(x))`` and
  ``encoder.layer_norm`` after the last layer (backbone.py:106-112, 216-283);
- attention: softmax(q k^T / sqrt(head_dim) + bias) v with q, k, v, out projections with bias; the bias is a
  bucketed relative position embedding (``num_buckets``, ``max_distance``, T5-style, bidirectional), owned by
  layer 0 and shared by all layers (backbone.py:75-80, 400-444); with ``gru_rel_pos`` each layer gates it per
  query token: ``g_a, g_b = sigmoid(sum of 4 of grep_linear(q))``, bias * (g_a (g_b grep_a - 1) + 2), q
  unscaled (backbone.py:670-691). The published ``alpha = 32`` rescaling (backbone.py:531-644) changes rounding
  only, not the maths;
- FFN: fc1 -> activation (``activation_fn``) -> fc2.
A fine-tuned checkpoint's AudioSet head ``predictor.*`` (``finetuned_model``) is not part of the encoder.
``layer_wise_gradient_decay_ratio`` (0.6 in the iter3 cfg: the gradient into each layer's input scaled, the
forward unchanged) and ``encoder_layerdrop`` (random skipping of layers in training) are fine-tuning tricks of
the reference code that the encoder does not apply: a constant per-parameter gradient scale is normalised away
by Adam(W) up to its eps, and sedlib decays learning rates layer-wise over :meth:`BEATsEncoder.layer_groups`.

Frame embeddings: the mean over the 8 frequency patches of each 16-frame time patch, (B, D, T') every 0.16 s.
The references pool the time-major token sequence (B, D, T' * 8) instead (BEATs.py:201-207 returns it as the
"frame" embeddings): the DCASE 2024 baseline average-pools it to its CNN frames (confs/pretrained.yaml
``aggregation_type: pool1d``, desed_task/nnet/CRNN.py:279-283), the CPJKU winner resamples it with
``interpolate(mode="nearest-exact")`` (cpjku_dcase24 models/wrapper.py:273-275, README.md:138 ``embed_pool=int``),
which picks one token, i.e. one frequency patch, per frame. :meth:`BEATsEncoder.tokens` gives that sequence.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from sedlib.features.kaldi_fbank import BEATS_FRAME_SHIFT_MS, BEATS_N_MELS
from sedlib.io import atomic_path
from sedlib.models.backbone import Backbone, register

log = logging.getLogger(__name__)

# BEATsConfig fields and defaults (BEATs.py:24-76).
BEATS_CONFIG_DEFAULTS = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False,
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False, "deep_norm": False,
    "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
    "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": False,
    "num_buckets": 320, "max_distance": 1280, "gru_rel_pos": False, "finetuned_model": False,
    "predictor_dropout": 0.1, "predictor_class": 527,
}
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),  # the reference's tanh formula (modules.py:91-96)
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}
PREDICTOR_PREFIX = "predictor."
# The fields of the ``beats`` backbone kind that its sizes do not set: those of the ``cfg`` of BEATs_iter3(+)
# checkpoints as public code transcribes it (patch 16, post-norm with deep norm, gated relative position bias with
# 320 buckets up to 800; not checked against a checkpoint here), without dropout. An official checkpoint loaded
# as a backbone must agree on those that change the computation (ARCHITECTURE_FIELDS).
KIND_CFG = {"input_patch_size": 16, "deep_norm": True, "layer_norm_first": False, "relative_position_embedding": True,
            "gru_rel_pos": True, "num_buckets": 320, "max_distance": 800, "conv_pos": 128, "conv_pos_groups": 16,
            "activation_fn": "gelu", "conv_bias": False, "dropout": 0.0, "attention_dropout": 0.0}
ARCHITECTURE_FIELDS = ("input_patch_size", "deep_norm", "layer_norm_first", "relative_position_embedding",
                       "gru_rel_pos", "num_buckets", "max_distance", "conv_pos", "conv_pos_groups", "activation_fn",
                       "conv_bias")


def beats_config(cfg: dict, source: str = "BEATs cfg") -> dict:
    """A full BEATsConfig dict: ``cfg`` over the defaults, checked; unknown fields are logged and ignored."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: expected a dict of BEATsConfig fields, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(BEATS_CONFIG_DEFAULTS))
    if unknown:
        log.warning("%s: ignoring fields the encoder does not use: %s", source, ", ".join(unknown))
    full = {key: cfg.get(key, default) for key, default in BEATS_CONFIG_DEFAULTS.items()}
    problems = [f"{key} must be {_type_name(BEATS_CONFIG_DEFAULTS[key])}, got {value!r}"
                for key, value in full.items() if not _same_kind(value, BEATS_CONFIG_DEFAULTS[key])]
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    for key in ("input_patch_size", "encoder_layers", "encoder_embed_dim", "encoder_attention_heads", "embed_dim"):
        if full[key] < 1:
            problems.append(f"{key} must be >= 1, got {full[key]}")
    if full["encoder_embed_dim"] % full["encoder_attention_heads"]:
        problems.append(f"encoder_embed_dim {full['encoder_embed_dim']} is not divisible by "
                        f"encoder_attention_heads {full['encoder_attention_heads']}")
    if full["encoder_embed_dim"] % full["conv_pos_groups"]:
        problems.append(f"encoder_embed_dim {full['encoder_embed_dim']} is not divisible by "
                        f"conv_pos_groups {full['conv_pos_groups']}")
    if full["activation_fn"] not in ACTIVATIONS:
        problems.append(f"activation_fn {full['activation_fn']!r} is not one of {sorted(ACTIVATIONS)}")
    if full["deep_norm"] and full["layer_norm_first"]:
        problems.append("deep_norm and layer_norm_first exclude each other (BEATs.py:113)")
    if full["relative_position_embedding"] and full["num_buckets"] < 4:
        problems.append(f"num_buckets must be >= 4, got {full['num_buckets']}")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    return full


def _same_kind(value, default) -> bool:
    """bool for a bool field, int (not bool) for an int field, a number for a float field, str for a str field."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _type_name(default) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """(length, length) long bucket of key position - query position, bidirectional T5 bucketing.

    Half the buckets per direction (positive offsets in the upper half); within a half, offsets below a
    quarter of ``num_buckets`` get their own bucket, larger ones share logarithmically spaced buckets up to
    ``max_distance`` (backbone.py:400-430).
    """
    offset = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    log_bucket = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (half - exact)).long()
    bucket = torch.where(distance < exact, distance, log_bucket.clamp(max=half - 1))
    return bucket + (offset > 0).long() * half


class WeightNormConv1d(nn.Module):
    """Conv1d with weight ``weight_g * weight_v / ||weight_v||``, the norm over dims 0 and 1 (weight norm, dim 2)."""

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.groups = groups
        self.padding = kernel_size // 2
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        """Reference initialisation (backbone.py:37-42): normal std sqrt(4 / (kernel * channels)), g = ||v||."""
        channels, _, kernel = self.weight_v.shape
        nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel * channels)))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class TrimToLength(nn.Module):
    """Drop the extra last output of an even-kernel 'same' convolution (the reference ``SamePad``)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 - kernel_size % 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-1] - self.remove]


class ConvPositionalEmbedding(nn.Sequential):
    """(B, D, N) tokens -> (B, D, N) positional term: weight-normed grouped conv, trim, GELU (keys ``0.*``)."""

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__(WeightNormConv1d(channels, kernel_size, groups), TrimToLength(kernel_size), nn.GELU())


class RelativeAttention(nn.Module):
    """Multi-head self-attention with an additive (gated) relative position bias; (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: dict, owns_bias: bool):
        super().__init__()
        dim, heads = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"]
        self.num_heads = heads
        self.head_dim = dim // heads
        self.dropout = cfg["attention_dropout"]
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if owns_bias:
            self.relative_attention_bias = nn.Embedding(cfg["num_buckets"], heads)
        self.gru_rel_pos = cfg["gru_rel_pos"]
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        """``position_bias``: (heads, N, N) additive attention bias, or None."""
        batch, tokens, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, head_dim)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                gates = torch.sigmoid(self.grep_linear(q).view(batch, self.num_heads, tokens, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)  # (B, H, N, 1) each
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class EncoderLayer(nn.Module):
    """One transformer layer, post-norm (with deep-norm residual scaling) or pre-norm; (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: dict, owns_bias: bool):
        super().__init__()
        dim = cfg["encoder_embed_dim"]
        self.self_attn = RelativeAttention(cfg, owns_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg["encoder_ffn_embed_dim"])
        self.fc2 = nn.Linear(cfg["encoder_ffn_embed_dim"], dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = ACTIVATIONS[cfg["activation_fn"]]
        self.dropout = nn.Dropout(cfg["dropout"])
        self.activation_dropout = nn.Dropout(cfg["activation_dropout"])
        self.layer_norm_first = cfg["layer_norm_first"]
        self.residual_scale = (2 * cfg["encoder_layers"]) ** 0.25 if cfg["deep_norm"] else 1.0  # backbone.py:217-220

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self.ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.residual_scale + self.dropout(self.self_attn(x, position_bias)))
        return self.final_layer_norm(x * self.residual_scale + self.ffn(x))


class TransformerEncoder(nn.Module):
    """Convolutional position term + layers (+ the encoder ``layer_norm``); (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim = cfg["encoder_embed_dim"]
        self.pos_conv = ConvPositionalEmbedding(dim, cfg["conv_pos"], cfg["conv_pos_groups"])
        self.relative = cfg["relative_position_embedding"]
        self.num_buckets, self.max_distance = cfg["num_buckets"], cfg["max_distance"]
        self.layers = nn.ModuleList(EncoderLayer(cfg, owns_bias=self.relative and i == 0)
                                    for i in range(cfg["encoder_layers"]))
        if self.relative:  # one table for all layers, also under every layer's key, as the reference does
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm_first = cfg["layer_norm_first"]
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg["dropout"])

    def position_bias(self, tokens: int) -> torch.Tensor | None:
        """(heads, tokens, tokens) relative position bias of the shared table, or None without one."""
        if not self.relative:
            return None
        table = self.layers[0].self_attn.relative_attention_bias
        buckets = relative_position_buckets(tokens, self.num_buckets, self.max_distance).to(table.weight.device)
        return table(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        bias = self.position_bias(x.shape[1])
        for layer in self.layers:
            x = layer(x, bias)
        return self.layer_norm(x) if self.layer_norm_first else x


@register
class BEATsEncoder(Backbone):
    """Normalised BEATs fbank (B, 128, T) -> frame embeddings (B, encoder_embed_dim, T // 16), one per 0.16 s.

    The backbone kind ``beats`` (sedlib.models.backbone): frontend ``beats`` (sedlib.features.kaldi_fbank.BEATsFbank,
    10 ms frames), 16 frames per embedding. ``cfg``: BEATsConfig fields (the ``cfg`` dict of an official
    checkpoint); parameter names are those of the official ``model`` state dict (without ``predictor.*``).
    ``hparams`` = {"cfg": the full cfg, "n_mels"} rebuilds it (our backbone files).
    """

    kind, frontend = "beats", "beats"

    def __init__(self, cfg: dict, n_mels: int = BEATS_N_MELS):
        super().__init__()
        self.cfg = beats_config(cfg)
        self.hparams = {"cfg": dict(self.cfg), "n_mels": n_mels}
        self.n_mels = n_mels
        self.patch_frames = self.cfg["input_patch_size"]
        if n_mels < self.patch_frames:
            raise ValueError(f"BEATs needs at least input_patch_size ({self.patch_frames}) mel bins, got {n_mels}")
        self.frames_per_embedding = self.patch_frames
        self.freq_patches = n_mels // self.patch_frames
        self.embed_dim = self.cfg["encoder_embed_dim"]
        self.frame_hop_seconds = self.patch_frames * BEATS_FRAME_SHIFT_MS / 1000.0
        patch_dim = self.cfg["embed_dim"]
        self.patch_embedding = nn.Conv2d(1, patch_dim, self.patch_frames, stride=self.patch_frames,
                                         bias=self.cfg["conv_bias"])
        self.layer_norm = nn.LayerNorm(patch_dim)
        self.post_extract_proj = nn.Linear(patch_dim, self.embed_dim) if patch_dim != self.embed_dim else None
        self.dropout_input = nn.Dropout(self.cfg["dropout_input"])
        self.encoder = TransformerEncoder(self.cfg)
        self.reset_parameters()

    @classmethod
    def from_config(cls, definition: dict, frontend_cfg: dict, **cfg_fields) -> "BEATsEncoder":
        """Randomly initialised encoder of the sizes in a ``model.backbones`` entry (embed_dim, depth, num_heads,
        mlp_ratio, patch_embed_dim: the patch embedding's channels, null = embed_dim without post_extract_proj;
        its other keys are not sizes and are ignored) for ``frontends.beats`` (n_mels). The other fields are
        KIND_CFG, overridden by ``cfg_fields`` (BEATsConfig names). A loaded checkpoint's own ``cfg`` wins in
        :meth:`load_official`; as a backbone, :meth:`official_state_dict` requires it to agree."""
        embed_dim = definition["embed_dim"]
        cfg = {**KIND_CFG, "embed_dim": definition.get("patch_embed_dim") or embed_dim, "encoder_embed_dim": embed_dim,
               "encoder_layers": definition["depth"], "encoder_attention_heads": definition["num_heads"],
               "encoder_ffn_embed_dim": int(embed_dim * definition["mlp_ratio"])}
        unknown = sorted(set(cfg_fields) - set(BEATS_CONFIG_DEFAULTS))
        if unknown:
            raise ValueError(f"BEATsEncoder.from_config: unknown BEATsConfig fields {unknown}")
        return cls({**cfg, **cfg_fields}, n_mels=frontend_cfg["n_mels"])

    @classmethod
    def official_state_dict(cls, checkpoint: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
        """The encoder weights of an official checkpoint ``{"cfg", "model"}`` (layout ``beats-official``);
        ``which`` does not apply. Its cfg must agree with KIND_CFG on ARCHITECTURE_FIELDS (the fields that
        change the computation but no parameter shape), else ValueError lists the differences."""
        cfg, state = official_parts(checkpoint, "BEATs checkpoint")
        differ = [f"{key}: checkpoint {cfg[key]!r}, beats kind {KIND_CFG[key]!r}"
                  for key in ARCHITECTURE_FIELDS if cfg[key] != KIND_CFG[key]]
        if differ:
            raise ValueError("BEATs checkpoint cfg differs from the beats backbone kind (sedlib.models.beats.KIND_CFG):"
                             " " + "; ".join(differ))
        return state, "beats-official"

    def reset_parameters(self) -> None:
        """Reference initialisation: BERT (normal std 0.02, zero bias) for linear and embedding weights
        (backbone.py:778-808), xavier-normal deep-norm gains (backbone.py:88-100), weight-normed pos_conv."""
        for module in self.encoder.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        self.encoder.pos_conv[0].reset_parameters()
        if self.cfg["deep_norm"]:
            beta = (8 * self.cfg["encoder_layers"]) ** -0.25
            for layer in self.encoder.layers:
                attn = layer.self_attn
                for linear, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, beta),
                                     (attn.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                    nn.init.xavier_normal_(linear.weight, gain=gain)

    def tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, T' * freq_patches, D) encoder output, time-major, T' = T // patch_frames."""
        if fbank.dim() != 3 or fbank.shape[1] != self.n_mels:
            raise ValueError(f"BEATs expects a normalised fbank (B, {self.n_mels}, frames), got {tuple(fbank.shape)}")
        if fbank.shape[-1] < self.patch_frames:
            raise ValueError(f"BEATs needs at least {self.patch_frames} frames, got {fbank.shape[-1]}")
        patches = self.patch_embedding(fbank.transpose(1, 2).unsqueeze(1))  # (B, E, T', freq_patches)
        x = self.layer_norm(patches.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(self.dropout_input(x))

    def frame_embeddings(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) normalised fbank -> (B, D, T // patch_frames): tokens averaged over frequency."""
        tokens = self.tokens(fbank)
        batch, _, dim = tokens.shape
        return tokens.view(batch, -1, self.freq_patches, dim).mean(dim=2).transpose(1, 2)

    forward = frame_embeddings

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups from the top (depth + 1 or + 2 groups, every parameter once):
        [encoder.layer_norm] when it is the final norm (pre-norm cfg), [layer depth-1], ..., [layer 0 with the
        shared relative position table], [patch_embedding, layer_norm, post_extract_proj, pos_conv, and
        encoder.layer_norm in the post-norm cfg, where it normalises the embeddings]."""
        layers = list(self.encoder.layers)
        table = layers[0].self_attn.relative_attention_bias if self.encoder.relative else None
        shared = {id(p) for p in table.parameters()} if table is not None else set()
        groups = [list(self.encoder.layer_norm.parameters())] if self.cfg["layer_norm_first"] else []
        groups += [[p for p in layer.parameters() if id(p) not in shared] for layer in reversed(layers[1:])]
        groups.append(list(layers[0].parameters()))
        embedding = [self.patch_embedding, self.layer_norm, self.post_extract_proj, self.encoder.pos_conv]
        if not self.cfg["layer_norm_first"]:
            embedding.append(self.encoder.layer_norm)
        groups.append([p for module in embedding if module is not None for p in module.parameters()])
        return groups

    @classmethod
    def load_official(cls, path: str | Path) -> "BEATsEncoder":
        """Encoder of an official BEATs checkpoint ``{"cfg": BEATsConfig fields, "model": state dict}``, in
        eval mode. Tensors-only unpickling (read_checkpoint); strict keys: a missing or unexpected key or a
        shape conflict raises ValueError listing them. ``predictor.*`` (the AudioSet head of a fine-tuned
        checkpoint, ``cfg.finetuned_model``) is dropped; without ``finetuned_model`` it is unexpected."""
        from sedlib.models.checkpoint import load_state_dict_strict, read_checkpoint  # imports sedlib.models

        cfg, state = official_parts(read_checkpoint(path), str(path))
        encoder = cls(cfg)
        load_state_dict_strict(encoder, state, f"{path} (BEATs 'model')")
        return encoder.eval()

    def save_official(self, path: str | Path) -> None:
        """Write the encoder atomically in the official layout ``{"cfg", "model"}`` (readable by load_official
        and by the reference ``BEATs`` class)."""
        payload = {"cfg": dict(self.cfg), "model": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)


def official_parts(checkpoint: dict, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(full BEATsConfig, encoder state dict) of an official checkpoint dict ``{"cfg", "model"}``; ``predictor.*``
    is dropped when ``cfg.finetuned_model`` says the checkpoint has it (else it stays, an unexpected key)."""
    for field in ("cfg", "model"):
        if not isinstance(checkpoint.get(field), dict):
            raise ValueError(f"{source}: not an official BEATs checkpoint (no '{field}' dict; top-level keys "
                             f"{sorted(checkpoint)[:10]})")
    cfg = beats_config(checkpoint["cfg"], f"{source}: cfg")
    state = checkpoint["model"]
    if cfg["finetuned_model"]:
        state = {k: v for k, v in state.items() if not k.startswith(PREDICTOR_PREFIX)}
    return cfg, state
