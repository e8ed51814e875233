"""ATST-Frame and CRNN: shape contracts, patch order, key names, heads, BatchNorm semantics."""

import pytest
import torch

from conftest import published_geometry
from sedlib.config import load_config
from sedlib.features.frontends import build_frontends
from sedlib.models import build_sed_model
from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.crnn import CRNN


@pytest.fixture(scope="module")
def config(repo_root):
    return published_geometry(load_config(repo_root / "workflow_config.yaml"))


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return ATSTFrame(embed_dim=32, depth=2, num_heads=4).eval()


def test_patch_order_is_the_einops_pattern():
    """'b c (h p1) (w p2) -> b (w h) (p1 p2 c)' with p1 = 64 mels, p2 = 4 frames: feature = mel * 4 + frame."""
    backbone = tiny_backbone()
    mel = torch.randn(2, 64, 1001)
    patches = backbone.patch_embed.patches(mel)
    assert patches.shape == (2, 250, 256)  # the last incomplete patch (frame 1000) is dropped
    reference = torch.empty(2, 250, 256)
    for w in range(250):
        for p1 in range(64):
            for p2 in range(4):
                reference[:, w, p1 * 4 + p2] = mel[:, p1, w * 4 + p2]
    assert torch.equal(patches, reference)


def test_atst_frame_shapes_and_position_slice():
    backbone = tiny_backbone()
    with torch.no_grad():
        out = backbone(torch.randn(3, 64, 1001))
        assert out.shape == (3, 32, 250)  # 10 s: 1001 ATST frames -> 250 frames of 40 ms
        assert backbone(torch.randn(1, 64, 403)).shape == (1, 32, 100)
        # pos_embed slot 0 (CLS position) is unused: changing it changes nothing
        mel = torch.randn(1, 64, 1001)
        before = backbone(mel)
        backbone.pos_embed[:, 0] += 1.0
        assert torch.equal(before, backbone(mel))
        backbone.pos_embed[:, 250] += 1.0
        assert not torch.equal(before, backbone(mel))
    with pytest.raises(ValueError, match="1..250 patches"):
        backbone(torch.randn(1, 64, 1005))


def test_attention_equals_the_published_explicit_softmax():
    backbone = tiny_backbone()
    attn = backbone.blocks[0].attn
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        qkv = attn.qkv(x).reshape(2, 50, 3, 4, 8).permute(2, 0, 3, 1, 4)
        weights = ((qkv[0] @ qkv[1].transpose(-2, -1)) * 8**-0.5).softmax(-1)
        expected = attn.proj((weights @ qkv[2]).transpose(1, 2).reshape(2, 50, 32))
        assert torch.allclose(attn(x), expected, atol=1e-5)
    assert attn.qkv.bias is None and backbone.norm_frame.eps == 1e-6


def test_published_size_on_meta_device():
    with torch.device("meta"):
        backbone = ATSTFrame()
        out = backbone(torch.empty(2, 64, 1001))
    assert out.shape == (2, 768, 250)
    n_params = sum(p.numel() for p in backbone.parameters())
    assert 85_000_000 < n_params < 86_500_000  # ATST-Frame base: about 85 M
    keys = set(backbone.state_dict())
    assert {"patch_embed.patch_embed.weight", "pos_embed", "mask_embed", "norm_frame.weight",
            "blocks.11.attn.qkv.weight", "blocks.11.mlp.fc2.bias"} <= keys
    assert "blocks.0.attn.qkv.bias" not in keys
    assert backbone.state_dict()["pos_embed"].shape == (1, 251, 768)
    groups = backbone.layer_groups()
    assert len(groups) == 14 and sum(len(g) for g in groups) == len(list(backbone.parameters()))


def test_crnn_shapes_and_key_names(config):
    model = build_sed_model(config, n_classes=10).eval()
    fe = build_frontends(config["frontends"])
    wave = torch.randn(2, 160000)
    crnn, atst = fe.crnn(wave), fe.atst(wave)
    assert crnn.shape == (2, 128, 626) and atst.shape == (2, 64, 1001)
    with torch.no_grad():
        out = model(crnn, atst_feats=atst)
    assert out.strong.shape == out.strong_logits.shape == (2, 10, 156) and out.weak.shape == (2, 10)
    assert torch.allclose(out.strong, torch.sigmoid(out.strong_logits))
    assert model.time_pooling == 4
    keys = set(model.state_dict())
    for key in ("cnn.cnn.conv0.weight", "cnn.cnn.batchnorm6.running_var", "cnn.cnn.cg3.linear.weight",
                "rnn.rnn.weight_hh_l1_reverse", "cat_tf.weight", "dense.bias", "dense_softmax.weight",
                "atst_frame.atst.pos_embed", "atst_frame.atst.blocks.1.mlp.fc1.weight"):
        assert key in keys, key
    cnn_out, embed = config["model"]["crnn"]["filters"][-1], config["model"]["backbones"]["atst"]["embed_dim"]
    assert model.cat_tf.in_features == cnn_out + embed and model.cat_tf.out_features == cnn_out  # cnn_out + D -> cnn_out


def test_embeddings_path_equals_backbone_path_and_weak_pooling():
    torch.manual_seed(0)
    model = CRNN(5, filters=[4] * 7, rnn_hidden=8, backbone=tiny_backbone()).eval()
    crnn, atst = torch.rand(2, 128, 626), torch.randn(2, 64, 1001)
    with torch.no_grad():
        direct = model(crnn, atst_feats=atst)
        cached = model(crnn, embeddings=model.backbone(atst))
        assert torch.equal(direct.strong_logits, cached.strong_logits) and torch.equal(direct.weak, cached.weak)
        # weak = sum_t strong * att / sum_t att, att = clamp(softmax over classes)
        x = model.rnn(model.cat_tf(torch.cat(
            (model.cnn(crnn.transpose(1, 2).unsqueeze(1)).squeeze(-1),
             torch.nn.functional.adaptive_avg_pool1d(model.backbone(atst), 156)), dim=1).transpose(1, 2)))
        att = torch.softmax(model.dense_softmax(x), -1).clamp(1e-7, 1)
        strong = torch.sigmoid(model.dense(x))
        assert torch.allclose(direct.weak, (strong * att).sum(1) / att.sum(1), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        model(crnn)
    with pytest.raises(ValueError, match="exactly one"):
        model(crnn, atst_feats=atst, embeddings=torch.zeros(2, 32, 250))
    headless = CRNN(5, filters=[4] * 7, rnn_hidden=8, embed_dim=32)
    with pytest.raises(ValueError, match="no backbone"):
        headless(crnn, atst_feats=atst)
    assert headless(crnn, embeddings=torch.zeros(2, 32, 250)).strong.shape == (2, 5, 156)


def test_batchnorm_momentum_is_torch_semantics():
    """momentum 0.99 (published) in torch means running = 0.01 * running + 0.99 * batch statistic."""
    model = CRNN(3, filters=[2] * 7, rnn_hidden=4, embed_dim=8, bn_momentum=0.99)
    bn = model.cnn.cnn.batchnorm0
    assert bn.eps == 1e-3 and bn.momentum == 0.99
    crnn = torch.rand(4, 128, 626)
    model.train()
    model(crnn, embeddings=torch.zeros(4, 8, 250))
    batch_mean = model.cnn.cnn.conv0(crnn.transpose(1, 2).unsqueeze(1)).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, 0.99 * batch_mean, atol=1e-5)


def test_frequency_pooling_must_reach_one_bin():
    with pytest.raises(ValueError, match="reduce 64 mel bins to 1"):
        CRNN(3, n_mels=64, embed_dim=8)


def test_gradients_reach_head_but_not_a_frozen_backbone(config):
    model = build_sed_model(config, n_classes=10)
    model.backbone.requires_grad_(False)
    fe = build_frontends(config["frontends"])
    wave = torch.randn(1, 160000)
    out = model(fe.crnn(wave), atst_feats=fe.atst(wave))
    out.strong.mean().backward()
    assert model.dense.weight.grad is not None and model.cnn.cnn.conv0.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
