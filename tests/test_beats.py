"""BEATs encoder: shapes, token layout, one layer against the published formulas, groups, official-layout loading."""

import math
import os

import pytest
import torch

from sedlib.features.kaldi_fbank import BEATS_FRONTEND, BEATsFbank
from sedlib.models.beats import BEATsEncoder, relative_position_buckets
from sedlib.models.pretrain import FrameTagger

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "kind": "beats", "pretrain": {}}
POST_NORM = {"deep_norm": True, "layer_norm_first": False, "gru_rel_pos": True, "relative_position_embedding": True}
PRE_NORM = {"deep_norm": False, "layer_norm_first": True, "gru_rel_pos": False, "relative_position_embedding": True}
SMALL = {"conv_pos": 8, "conv_pos_groups": 4, "num_buckets": 16, "max_distance": 40, "dropout": 0.0,
         "attention_dropout": 0.0}


def tiny(**fields) -> BEATsEncoder:
    torch.manual_seed(0)
    return BEATsEncoder.from_config(TINY, BEATS_FRONTEND, **{**SMALL, **fields}).eval()


@pytest.mark.parametrize("variant", [POST_NORM, PRE_NORM], ids=["post_norm_deep_gru", "pre_norm"])
@pytest.mark.parametrize("frames", [16, 47, 998, 1001])
def test_frame_embeddings_one_per_16_frames(variant, frames):
    encoder = tiny(**variant)
    out = encoder.frame_embeddings(torch.randn(2, 128, frames))
    assert out.shape == (2, 32, frames // 16)
    assert torch.isfinite(out).all()
    assert encoder.embed_dim == 32 and encoder.frame_hop_seconds == pytest.approx(0.16)


def test_waveform_to_frame_embeddings_10s():
    encoder = tiny(**POST_NORM)
    feats = BEATsFbank()(torch.randn(2, 160000) * 0.1)
    assert feats.shape == (2, 128, 998)
    assert encoder(feats).shape == (2, 32, 62)


def test_tokens_are_time_major_patches_of_time_by_mel_kernels():
    """The encoder input for patch (t, f) is LayerNorm(sum kernel[time, mel] * fbank[mel, time]) at t * 8 + f."""
    encoder = tiny(**POST_NORM)
    fbank = torch.randn(1, 128, 40)
    seen = {}
    encoder.encoder.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    tokens = encoder.tokens(fbank)
    assert tokens.shape == (1, 2 * 8, 32)
    kernel = encoder.patch_embedding.weight[:, 0]  # (E, 16 time, 16 mel)
    for t, f in [(0, 0), (0, 7), (1, 3)]:
        patch = fbank[0, f * 16 : (f + 1) * 16, t * 16 : (t + 1) * 16]  # (mel, time)
        expected = encoder.layer_norm(torch.einsum("etm,mt->e", kernel, patch))
        torch.testing.assert_close(seen["x"][0, t * 8 + f], expected, rtol=1e-5, atol=1e-5)
    embeddings = encoder.frame_embeddings(fbank)
    torch.testing.assert_close(embeddings[0, :, 1], tokens[0, 8:16].mean(dim=0))


def t5_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    """Bidirectional bucket of one key - query offset (BEATs backbone.py:400-430), scalar arithmetic."""
    half = num_buckets // 2
    bucket = half if offset > 0 else 0
    distance = abs(offset)
    exact = half // 2
    if distance < exact:
        return bucket + distance
    large = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return bucket + min(large, half - 1)


@pytest.mark.parametrize("num_buckets,max_distance", [(320, 800), (16, 40), (32, 100)])
def test_relative_position_buckets(num_buckets, max_distance):
    length = 130
    buckets = relative_position_buckets(length, num_buckets, max_distance)
    for q in range(0, length, 7):
        for k in range(0, length, 3):
            assert buckets[q, k] == t5_bucket(k - q, num_buckets, max_distance), (q, k)


def reference_layer(layer, x, bias_table, num_buckets, max_distance, layers, deep_norm):
    """One post-norm layer as published (backbone.py:222-283, 446-711), time-first (T, B, C), alpha = 32."""
    attn = layer.self_attn
    length, batch, dim = x.shape
    heads, head_dim = attn.num_heads, dim // attn.num_heads
    scaling, alpha = head_dim**-0.5, 32
    buckets = torch.tensor([[t5_bucket(k - q, num_buckets, max_distance) for k in range(length)]
                            for q in range(length)])
    position_bias = bias_table[buckets].permute(2, 0, 1)  # (H, T, T)
    position_bias = position_bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * heads, length, length)
    q = attn.q_proj(x) * scaling / alpha
    k, v = attn.k_proj(x), attn.v_proj(x)
    q = q.contiguous().view(length, batch * heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(length, batch * heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(length, batch * heads, head_dim).transpose(0, 1)
    weights = torch.bmm(q, k.transpose(1, 2))
    weights = (weights - weights.max(dim=-1, keepdim=True)[0]) * alpha
    query = q.view(batch, heads, length, head_dim) * alpha / scaling
    gate_a, gate_b = torch.sigmoid(attn.grep_linear(query).view(batch, heads, length, 2, 4).sum(-1)).chunk(2, -1)
    gate = gate_a * (gate_b * attn.grep_a - 1.0) + 2.0
    weights = weights + gate.view(batch * heads, length, 1) * position_bias
    out = torch.bmm(torch.softmax(weights, dim=-1), v).transpose(0, 1).contiguous().view(length, batch, dim)
    out = attn.out_proj(out)
    scale = math.pow(2 * layers, 1 / 4) if deep_norm else 1.0
    x = layer.self_attn_layer_norm(x * scale + out)
    ffn = layer.fc2(torch.nn.functional.gelu(layer.fc1(x)))
    return layer.final_layer_norm(x * scale + ffn)


def test_one_layer_matches_the_published_formulas():
    encoder = tiny(**POST_NORM)
    with torch.no_grad():  # non-trivial gates, norms and bias table
        for name, param in encoder.named_parameters():
            param.copy_(torch.randn_like(param) * 0.5 + (1.0 if name.endswith(("grep_a", "norm.weight")) else 0.0))
    layer = encoder.encoder.layers[1]
    x = torch.randn(3, 45, 32)
    table = encoder.encoder.layers[0].self_attn.relative_attention_bias.weight
    with torch.no_grad():
        ours = layer(x, encoder.encoder.position_bias(45))
        expected = reference_layer(layer, x.transpose(0, 1), table, 16, 40, layers=2, deep_norm=True).transpose(0, 1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_relative_position_table_is_shared_by_all_layers():
    encoder = tiny(**POST_NORM)
    layers = encoder.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" in encoder.state_dict()


@pytest.mark.parametrize("variant,n_groups", [(POST_NORM, 3), (PRE_NORM, 4)], ids=["post_norm", "pre_norm"])
def test_layer_groups_top_first_every_parameter_once(variant, n_groups):
    encoder = tiny(**variant, embed_dim=48)  # patch dim 48 -> post_extract_proj 48 -> 32
    groups = encoder.layer_groups()
    assert len(groups) == n_groups
    flat = [id(p) for group in groups for p in group]
    assert len(flat) == len(set(flat)) == len(list(encoder.parameters()))
    layers, final_norm = encoder.encoder.layers, encoder.encoder.layer_norm
    assert any(p is layers[1].fc2.weight for p in groups[n_groups - 3])
    assert any(p is layers[0].self_attn.relative_attention_bias.weight for p in groups[-2])
    assert any(p is encoder.post_extract_proj.weight for p in groups[-1])
    assert any(p is final_norm.weight for p in (groups[0] if variant["layer_norm_first"] else groups[-1]))


def official(encoder: BEATsEncoder, **extra) -> dict:
    return {"cfg": dict(encoder.cfg), "model": {**encoder.state_dict(), **extra}}


def test_official_layout_loads_strictly(tmp_path):
    encoder = tiny(**POST_NORM, embed_dim=48)
    path = tmp_path / "BEATs_tiny.pt"
    encoder.save_official(path)
    assert set(torch.load(path, weights_only=True)["model"]) == set(official(encoder)["model"])
    loaded = BEATsEncoder.load_official(path)
    assert not loaded.training and loaded.cfg == encoder.cfg
    fbank = torch.randn(1, 128, 64)
    torch.testing.assert_close(loaded(fbank), encoder(fbank))


def test_finetuned_checkpoint_drops_the_predictor(tmp_path):
    encoder = tiny(**POST_NORM, finetuned_model=True)
    head = {"predictor.weight": torch.zeros(527, 32), "predictor.bias": torch.zeros(527)}
    torch.save(official(encoder, **head), tmp_path / "ft.pt")
    assert BEATsEncoder.load_official(tmp_path / "ft.pt").cfg["finetuned_model"] is True
    torch.save(official(tiny(**POST_NORM), **head), tmp_path / "not_ft.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \(2\):\s+predictor.bias\s+predictor.weight"):
        BEATsEncoder.load_official(tmp_path / "not_ft.pt")


def test_renamed_or_resized_keys_are_refused_with_the_list(tmp_path):
    checkpoint = official(tiny(**POST_NORM))
    checkpoint["model"]["encoder.layers.1.fc1.weight_renamed"] = checkpoint["model"].pop("encoder.layers.1.fc1.weight")
    torch.save(checkpoint, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"(?s)renamed.pt.*missing keys \(1\):\s+encoder.layers.1.fc1.weight\n"
                                         r".*unexpected keys \(1\):\s+encoder.layers.1.fc1.weight_renamed"):
        BEATsEncoder.load_official(tmp_path / "renamed.pt")
    checkpoint = official(tiny(**POST_NORM))
    checkpoint["cfg"]["encoder_ffn_embed_dim"] = 96
    torch.save(checkpoint, tmp_path / "resized.pt")
    with pytest.raises(ValueError, match=r"shape conflicts \(6\):\s+encoder.layers.0.fc1.bias: checkpoint \(64,\)"):
        BEATsEncoder.load_official(tmp_path / "resized.pt")


def test_not_a_beats_checkpoint_or_bad_cfg_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an official BEATs checkpoint \\(no 'cfg' dict"):
        BEATsEncoder.load_official(tmp_path / "other.pt")
    checkpoint = official(tiny(**POST_NORM))
    checkpoint["cfg"].update(layer_norm_first=True, encoder_attention_heads=5)
    torch.save(checkpoint, tmp_path / "bad_cfg.pt")
    with pytest.raises(ValueError, match="bad_cfg.pt: cfg: .*not divisible by encoder_attention_heads 5.*"
                                         "deep_norm and layer_norm_first exclude each other"):
        BEATsEncoder.load_official(tmp_path / "bad_cfg.pt")
    checkpoint["cfg"].update(layer_norm_first="no", encoder_layers=12.0)
    torch.save(checkpoint, tmp_path / "bad_types.pt")
    with pytest.raises(ValueError, match="bad_types.pt: cfg: encoder_layers must be an integer, got 12.0; "
                                         "layer_norm_first must be true or false, got 'no'"):
        BEATsEncoder.load_official(tmp_path / "bad_types.pt")
    with pytest.raises(ValueError, match="unknown BEATsConfig fields \\['patch'\\]"):
        BEATsEncoder.from_config(TINY, BEATS_FRONTEND, patch=16)
    with pytest.raises(ValueError, match=r"expects a normalised fbank \(B, 128, frames\), got \(2, 64, 100\)"):
        tiny()(torch.zeros(2, 64, 100))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload_ran"
    checkpoint = official(tiny(**POST_NORM))
    checkpoint["cfg"]["activation_fn"] = _Payload(marker)
    torch.save(checkpoint, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: refused: .*system"):
        BEATsEncoder.load_official(tmp_path / "evil.pt")
    assert not marker.exists()


def test_tiny_beats_trains_in_the_pretraining_frame_tagger():
    """The pretraining model (sedlib.models.pretrain.FrameTagger) takes the encoder as its backbone."""
    torch.manual_seed(0)
    tagger = FrameTagger(BEATsEncoder.from_config(TINY, BEATS_FRONTEND, **SMALL, **POST_NORM), n_classes=3)
    feats = torch.randn(4, 128, 160)
    targets = (torch.rand(4, 3, 10) > 0.7).float()
    optimizer = torch.optim.AdamW(tagger.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(tagger(feats), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert tagger(feats).shape == (4, 3, 10)
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in tagger.backbone.parameters())
