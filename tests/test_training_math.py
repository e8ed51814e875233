"""Training maths: EMA, ICT targets, schedules, optimizer groups, mixup, frequency warping, distillation,
the group batch sampler and the crop geometry. Fast (no training run)."""

import math

import numpy as np
import pytest
import torch

from conftest import published_geometry
from sedlib.config import load_config
from sedlib.models import build_sed_model
from sedlib.training import losses
from sedlib.training.augment import freq_warp
from sedlib.training.data import GroupBatchSampler, Geometry, batch_groups, epoch_batches
from sedlib.training.ema import ema_alpha, ema_update
from sedlib.training.mixup import Mix, draw_group_mixes, mix_groups
from sedlib.training.schedules import exp_rampup, lr_factor, lr_scheduler
from sedlib.training.stage1 import optimizer_groups, set_trainable_layers


@pytest.fixture(scope="module")
def workflow_config(repo_root):
    return published_geometry(load_config(repo_root / "workflow_config.yaml"))


# ----------------------------------------------------------------------------- EMA
def test_ema_alpha_warm_start_and_fixed():
    assert ema_alpha(1, 0.999, warm_start=True) == pytest.approx(0.5)
    assert ema_alpha(9, 0.999, warm_start=True) == pytest.approx(0.9)
    assert ema_alpha(10_000, 0.999, warm_start=True) == pytest.approx(0.999)  # 1 - 1/10001 > 0.999
    assert ema_alpha(1, 0.999, warm_start=False) == 0.999


def test_ema_update_is_the_convex_combination_of_parameters_only():
    torch.manual_seed(0)
    student, teacher = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        teacher.weight.copy_(torch.tensor([3.0, 2.0, 1.0]))
        student.running_mean.fill_(5.0)
    before_t, student_w = teacher.weight.clone(), student.weight.clone()
    ema_update(teacher, student, alpha=0.75)
    assert torch.allclose(teacher.weight, 0.75 * before_t + 0.25 * student_w, atol=1e-7)
    assert torch.equal(teacher.running_mean, torch.zeros(3))  # buffers are the teacher's own
    with pytest.raises(ValueError, match="parameter names"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, bias=False), 0.5)


# ----------------------------------------------------------------------------- ICT, distillation
def test_ict_target_mixes_teacher_with_the_draw_and_clamps():
    teacher = torch.tensor([[0.2, 0.9], [0.6, 0.1], [1.0, 0.5]])
    m = Mix(perm=torch.tensor([2, 0, 1]), coef=0.25)
    expected = 0.25 * teacher + 0.75 * teacher[[2, 0, 1]]
    assert torch.allclose(losses.ict_target(teacher, m), expected)
    over = losses.ict_target(teacher * 3.0, m)
    assert over.max() <= 1.0 and over.min() >= 0.0


@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_distillation_zero_at_the_targets_logits_positive_elsewhere(kind):
    torch.manual_seed(0)
    targets = torch.rand(2, 3, 7) * 0.98 + 0.01
    at_target = torch.logit(targets)
    assert losses.distillation(at_target, targets, kind).abs().item() < 1e-6
    assert losses.distillation(at_target + 0.5, targets, kind).item() > 1e-3
    assert losses.distillation(at_target - 0.5, targets, kind).item() > 1e-3


def test_distillation_bce_has_the_bce_gradient():
    """KL = BCE - H(q): same gradient w.r.t. the logits as the winner's BCE, sigmoid(z) - q (per element / N)."""
    torch.manual_seed(1)
    z = torch.randn(2, 3, 5, requires_grad=True)
    q = torch.rand(2, 3, 5)
    losses.distillation(z, q, "bce").backward()
    assert torch.allclose(z.grad, (torch.sigmoid(z) - q) / z.numel(), atol=1e-7)
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(z), q)
    assert losses.distillation(z, q, "bce").item() == pytest.approx((bce - losses.binary_entropy(q).mean()).item(), abs=1e-6)


# ----------------------------------------------------------------------------- schedules
def test_exponential_rampup_values():
    assert exp_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert exp_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert exp_rampup(100, 100) == 1.0 and exp_rampup(250, 100) == 1.0
    assert exp_rampup(3, 0) == 1.0


def test_lr_factor_stage1_constant_stage2_cosine():
    rampup, total = 10, 110
    assert lr_factor(5, rampup, total, None) == pytest.approx(math.exp(-5 * 0.25))
    assert lr_factor(80, rampup, total, None) == 1.0
    assert lr_factor(5, rampup, total, 0.1) == pytest.approx(math.exp(-5 * 0.25))
    assert lr_factor(10, rampup, total, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, rampup, total, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lr_factor(110, rampup, total, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, rampup, total, 0.1) == pytest.approx(0.1)


def test_lr_scheduler_uses_step_n_for_the_nth_optimizer_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": 2e-3}], lr=2e-3)
    sched = lr_scheduler(opt, rampup_steps=4, total_steps=12, cosine_final=0.1)
    for n in range(1, 13):
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * lr_factor(n, 4, 12, 0.1)), n
        opt.step()
        sched.step()


# ----------------------------------------------------------------------------- optimizer groups
def _meta_model(config, **backbone):
    config = {**config, "model": {**config["model"], "backbone": {**config["model"]["backbones"]["atst"], **backbone}}}
    with torch.device("meta"):
        return build_sed_model(config, 10)


def test_optimizer_groups_published_sizes(workflow_config):
    model = _meta_model(workflow_config, embed_dim=768, depth=12, num_heads=12)
    groups = optimizer_groups(model, 2e-4, 2e-3, 2e-4, 0.5, 14)
    assert [g["name"] for g in groups] == ["cnn", "rnn"] + [f"tfm{i}" for i in range(14)]
    assert [g["lr"] for g in groups[2:]] == pytest.approx([2e-4 * 0.5**i for i in range(14)])
    atst = model.backbone
    assert groups[2]["params"] == list(atst.norm_frame.parameters())
    assert groups[3]["params"] == list(atst.blocks[11].parameters())
    assert groups[14]["params"] == list(atst.blocks[0].parameters())
    assert {id(p) for p in groups[15]["params"]} == {id(atst.pos_embed), id(atst.mask_embed), *map(id, atst.patch_embed.parameters())}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(n.startswith("cnn.") for n, p in model.named_parameters() if any(p is q for q in groups[0]["params"]))
    rnn_names = {n.split(".")[0] for n, p in model.named_parameters() if any(p is q for q in groups[1]["params"])}
    assert rnn_names == {"cat_tf", "rnn", "dense", "dense_softmax"}


def test_optimizer_groups_limited_trainable_layers_and_tiny_backbone(workflow_config):
    model = _meta_model(workflow_config, embed_dim=768, depth=12, num_heads=12)
    set_trainable_layers(model, 3)
    groups = optimizer_groups(model, 2e-4, 2e-3, 2e-4, 0.5, 3)
    assert len(groups) == 2 + 3
    assert all(p.requires_grad for p in model.backbone.norm_frame.parameters())
    assert all(p.requires_grad for p in model.backbone.blocks[10].parameters())
    assert not any(p.requires_grad for p in model.backbone.blocks[9].parameters())
    assert not model.backbone.pos_embed.requires_grad
    tiny = _meta_model(workflow_config)  # embedded default: depth 2 -> 4 groups
    assert len(optimizer_groups(tiny, 1e-3, 1e-3, 2e-4, 0.5, 14)) == 2 + tiny.backbone.hparams["depth"] + 2
    set_trainable_layers(tiny, 0)  # stage 1
    assert len(optimizer_groups(tiny, 1e-3, 1e-3)) == 2 and not any(p.requires_grad for p in tiny.backbone.parameters())
    assert all(p.requires_grad for p in tiny.cnn.parameters())


# ----------------------------------------------------------------------------- mixup and frequency warping
def test_mixup_applies_one_draw_per_group_to_every_tensor():
    groups = [slice(0, 4), slice(4, 7), slice(7, 7)]
    rng = np.random.default_rng(3)
    mixes = None
    while mixes is None:
        mixes = draw_group_mixes(groups, p=0.5, alpha=0.2, rng=rng)
    assert mixes[2] is None  # empty group
    n = 7
    rows = torch.arange(n, dtype=torch.float32)
    tensors = {
        "crnn_mel": rows[:, None, None].expand(n, 4, 5) * 1.0,
        "atst_mel": rows[:, None, None].expand(n, 2, 3) * 10.0,
        "strong": (rows[:, None, None].expand(n, 3, 5) / 10.0),
        "pseudo": (rows[:, None, None].expand(n, 3, 5) / 20.0),
    }
    out = mix_groups(tensors, groups, mixes)
    for group, m in zip(groups[:2], mixes[:2]):
        idx = torch.arange(group.start, group.stop)
        partner = idx[m.perm]
        expected_rows = m.coef * idx + (1 - m.coef) * partner  # row value of every mixed item
        for name, scale in (("crnn_mel", 1.0), ("atst_mel", 10.0), ("strong", 0.1), ("pseudo", 0.05)):
            got = out[name][group].reshape(len(idx), -1)
            assert torch.allclose(got, (expected_rows * scale)[:, None].expand_as(got), atol=1e-6), name
    assert torch.equal(tensors["crnn_mel"][:, 0, 0], rows)  # inputs untouched


def test_mixup_coin_and_beta():
    rng = np.random.default_rng(0)
    draws = [draw_group_mixes([slice(0, 8)], p=0.5, alpha=0.2, rng=rng) for _ in range(2000)]
    fired = [d for d in draws if d is not None]
    assert 0.45 < len(fired) / len(draws) < 0.55
    coefs = np.array([d[0].coef for d in fired])
    assert abs(coefs.mean() - 0.5) < 0.05 and np.mean((coefs < 0.1) | (coefs > 0.9)) > 0.5  # U-shaped Beta(0.2, 0.2)
    assert all(sorted(d[0].perm.tolist()) == list(range(8)) for d in fired[:20])


def test_freq_warp_stretches_a_band_over_all_bins():
    bins, frames = 64, 9
    ramp = torch.arange(bins, dtype=torch.float32)[None, :, None].expand(2, bins, frames)
    rng = np.random.default_rng(5)
    assert torch.allclose(freq_warp(ramp, 1.0, rng), ramp, atol=1e-4)  # min scale 1: identity
    for _ in range(10):
        out = freq_warp(ramp, 0.6, rng)
        assert out.shape == ramp.shape
        col = out[0, :, 0]
        height = col[-1] - col[0] + 1
        assert 0.6 * bins - 1 <= height <= bins and col[0] >= 0 and col[-1] <= bins - 1
        assert torch.allclose(col, torch.linspace(float(col[0]), float(col[-1]), bins), atol=0.1)  # band resized (bicubic, a = -0.75)
        assert bool((col[1:] > col[:-1]).all())
        assert torch.allclose(out[:, :, 0:1].expand_as(out), out)  # time axis untouched


# ----------------------------------------------------------------------------- batches and geometry
def test_group_sampler_batch_composition_and_epoch_length():
    lengths, sizes = [5, 7, 12, 20], [1, 2, 3, 4]
    assert epoch_batches(lengths, sizes) == 3  # min(5, 3, 4, 5)
    assert epoch_batches(lengths, sizes, max_batches=2) == 2
    assert epoch_batches([5, 0, 12, 20], [1, 0, 3, 4]) == 4  # groups with batch size 0 do not count
    with pytest.raises(ValueError, match="fewer clips than its batch size"):
        epoch_batches([5, 1, 12, 20], [1, 2, 3, 4])
    sampler = GroupBatchSampler(lengths, sizes, seed=7)
    offsets = np.cumsum([0] + lengths)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    seen = [[] for _ in lengths]
    for batch in batches:
        assert len(batch) == sum(sizes)
        position = 0
        for g, size in enumerate(sizes):
            for index, _ in batch[position : position + size]:
                assert offsets[g] <= index < offsets[g + 1]
                seen[g].append(index)
            position += size
    assert all(len(s) == len(set(s)) for s in seen)  # no clip twice in an epoch
    assert list(GroupBatchSampler(lengths, sizes, seed=7)) == batches  # reproducible
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert sampler.sampler is sampler  # Lightning's set_epoch hook reaches it


def test_group_sampler_shards_batches_across_processes():
    lengths, sizes = [9, 9, 18, 18], [1, 1, 2, 2]
    single = list(GroupBatchSampler(lengths, sizes, seed=3))
    ranks = [list(GroupBatchSampler(lengths, sizes, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    assert ranks[0] == single[0:8:2] and ranks[1] == single[1:8:2]


def test_batch_groups_order():
    groups = batch_groups({"strong_real": 12, "synthetic": 12, "weak": 24, "unlabeled": 48})
    assert groups["strong_real"] == slice(0, 12) and groups["synthetic"] == slice(12, 24)
    assert groups["weak"] == slice(24, 48) and groups["unlabeled"] == slice(48, 96) and groups["strong_all"] == slice(0, 24)
    assert groups["strong"] == slice(24, 24)  # the generic strong group sits between DESED's and weak: absent here


def test_geometry_of_the_published_frontends(workflow_config):
    g = Geometry.from_config(workflow_config)
    assert g.window == {"crnn": 626, "atst": 1001, "emb": 250, "out": 156}
    assert g.grid == {"crnn": 20, "atst": 32, "emb": 8, "out": 5}
    assert g.grid_seconds == pytest.approx(0.32) and g.frame_hop == pytest.approx(0.064)
    assert g.n_crops(10.0) == 1 and g.n_crops(4.2) == 1 and g.n_crops(10.31) == 1 and g.n_crops(10.32) == 2
    assert g.n_crops(12.0) == 7  # offsets 0, 0.32, ..., 1.92 s
