"""ATST-Frame: the frame-level audio transformer of ATST-SED, state-dict compatible with the official ``FrameAST``.

Architecture as published (``desed_task/nnet/atst/audio_transformer.py``, ``FrameASTModel``):
- patches of all ``n_mels`` (64) mel bins x ``patch_frames`` (4) frames: 40 ms per token at the 10 ms ATST
  hop; the input's last incomplete patch is dropped (1001 frames -> 250 tokens for 10 s).
  Inside a patch the values are flattened mel-major, frame-minor, as einops
  ``'b c (h p1) (w p2) -> b (w h) (p1 p2 c)'`` with p1 = 64 mel bins, p2 = 4 frames, c = 1:
  feature index = mel * 4 + frame. This order is what the official weights of
  ``patch_embed.patch_embed`` (Linear 256 -> 768) expect;
- learned absolute position embedding ``pos_embed`` (1, max_patches + 1, D), used as ``[:, 1:T + 1]``
  (slot 0 is the unused CLS position of the pretraining model; there is no CLS token);
- ``mask_embed`` (1, 1, D): the token that replaces masked patches in ATST's masked pretraining. It is
  part of the official state dict, so it is kept for exact key compatibility; SED never masks;
- ``depth`` pre-norm blocks: x + attn(norm1(x)), x + mlp(norm2(x)); qkv without bias, GELU MLP of
  ``mlp_ratio`` x D, LayerNorm eps 1e-6; attention via ``scaled_dot_product_attention`` (same maths as
  the published explicit softmax(q k^T / sqrt(d)) v, no mask: every clip is a full 10 s window);
- ``norm_frame`` LayerNorm on the last block's output: the frame-wise embeddings.

Published size: D = 768, depth 12, 12 heads, MLP ratio 4 (about 85 M parameters).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sedlib.models.backbone import Backbone, register

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """(B, n_mels, T) -> (B, T // patch_frames, n_mels * patch_frames) patches -> Linear -> (B, P, D)."""

    def __init__(self, n_mels: int, patch_frames: int, embed_dim: int):
        super().__init__()
        self.n_mels = n_mels
        self.patch_frames = patch_frames
        self.patch_embed = nn.Linear(n_mels * patch_frames, embed_dim)

    def patches(self, mel: torch.Tensor) -> torch.Tensor:
        batch, n_mels, frames = mel.shape
        if n_mels != self.n_mels:
            raise ValueError(f"ATST-Frame expects {self.n_mels} mel bins, got input of shape {tuple(mel.shape)}")
        n_patches = frames // self.patch_frames
        x = mel[:, :, : n_patches * self.patch_frames].reshape(batch, n_mels, n_patches, self.patch_frames)
        return x.permute(0, 2, 1, 3).reshape(batch, n_patches, n_mels * self.patch_frames)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(self.patches(mel))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, tokens, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register
class ATSTFrame(Backbone):
    """Normalised ATST mel (B, n_mels, T) -> frame embeddings (B, embed_dim, T // patch_frames)."""

    kind, frontend = "atst_frame", "atst"

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        n_mels: int = 64,
        patch_frames: int = 4,
        max_patches: int = 250,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.hparams = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": float(mlp_ratio),
                        "n_mels": n_mels, "patch_frames": patch_frames, "max_patches": max_patches}
        self.embed_dim = embed_dim
        self.patch_frames = patch_frames
        self.max_patches = max_patches
        self.patch_embed = PatchEmbed(n_mels, patch_frames, embed_dim)
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, max_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm_frame = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    @property
    def frames_per_embedding(self) -> int:
        return self.patch_frames

    @classmethod
    def from_config(cls, definition: dict, frontend_cfg: dict) -> "ATSTFrame":
        """Randomly initialised backbone of the sizes in a ``model.backbones`` entry, for ``frontends.atst``."""
        return cls(definition["embed_dim"], definition["depth"], definition["num_heads"], definition["mlp_ratio"],
                   n_mels=frontend_cfg["n_mels"])

    @classmethod
    def official_state_dict(cls, checkpoint: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
        """Published ATST / ATST-C2F / ATST-Frame / ATST-SED layouts (``sedlib.models.checkpoint.atst_state_dict``)."""
        from sedlib.models.checkpoint import atst_state_dict

        return atst_state_dict(checkpoint, which)

    def reset_parameters(self) -> None:
        """Published initialisation: truncated normal (std 0.02) weights and embeddings, zero biases, unit norms."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.mask_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(mel)  # (B, P, D)
        n_patches = tokens.shape[1]
        if not 0 < n_patches <= self.max_patches:
            raise ValueError(
                f"ATST-Frame takes 1..{self.max_patches} patches of {self.patch_frames} frames, got {n_patches} "
                f"(input of {mel.shape[-1]} frames); split longer input into 10 s windows"
            )
        x = tokens + self.pos_embed[:, 1 : n_patches + 1]
        for block in self.blocks:
            x = block(x)
        return self.norm_frame(x).transpose(1, 2)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups from the top (as the published stage-2 optimiser counts layers):
        [norm_frame], [block depth-1], ..., [block 0], [patch_embed, pos_embed, mask_embed] (depth + 2 groups)."""
        groups = [list(self.norm_frame.parameters())]
        groups += [list(block.parameters()) for block in reversed(self.blocks)]
        groups.append([*self.patch_embed.parameters(), self.pos_embed, self.mask_embed])
        return groups
