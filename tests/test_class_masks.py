"""Heterogeneous datasets: the union of class sets, class masks in every loss term and in attention pooling,
aliases, same-dataset mixup, and per-iteration / per-stage training settings (DCASE 2024 Task 4 winner)."""

import copy

import numpy as np
import pytest
import torch

from sedlib.config import ConfigError, labelled_classes, load_config, output_classes, stage_config, validate_config
from sedlib.models import build_sed_model
from sedlib.models.crnn import CRNN
from sedlib.training import losses
from sedlib.training.data import Geometry, Labelling, batch_groups
from sedlib.training.mixup import draw_group_mixes, draw_mix
from sedlib.training.stage1 import Stage1Module
from sedlib.training.stage2 import Stage2Module

DESED = ["Dishes", "Dog", "Speech"]
MAESTRO = ["cutlery and dishes", "people talking", "car"]


def joint_config() -> dict:
    config = load_config("workflow_config.yaml")
    raw = copy.deepcopy(config)
    raw["datasets"]["desed"]["classes"] = DESED
    raw["datasets"]["maestro"] = {
        "classes": MAESTRO, "source": "local", "root": "/nowhere",
        "aliases": {"cutlery and dishes": "Dishes", "people talking": "Speech"},
        "splits": {"train": {"audio": "a", "metadata": "m.tsv", "labels": "soft", "role": "maestro"}},
    }  # fmt: skip
    raw["evaluation"].update(median_window=7, splits=["desed/devtest"])
    raw["training"]["val_median_window"] = None
    return raw


def test_output_classes_are_the_union_and_aliases_extend_the_labelled_classes():
    config = validate_config(joint_config())
    assert output_classes(config) == DESED + MAESTRO
    assert labelled_classes(config, "desed") == DESED
    assert labelled_classes(config, "maestro") == ["Dishes", "Speech", *MAESTRO]


@pytest.mark.parametrize(
    "aliases, message",
    [({"bicycle": "Dog"}, "'bicycle' is not one of the dataset's classes"),
     ({"car": "Vacuum"}, "expected a class of another dataset")],
)
def test_bad_alias_is_refused(aliases, message):
    raw = joint_config()
    raw["datasets"]["maestro"]["aliases"] = aliases
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def run_config(stage: int) -> dict:
    config = validate_config(joint_config())
    classes = output_classes(config)
    stage_cfg = {**stage_config(config, stage), "batch_sizes": {"maestro": 2, "synthetic": 2, "weak": 2}}
    return {
        "stage": stage, "member": {"name": "m", "seed": 1}, "audio": config["audio"], "frontends": config["frontends"],
        "model": config["model"], "training": {"stage": stage_cfg}, "classes": classes,
        "datasets": {d: {"labelled": labelled_classes(config, d), "aliases": config["datasets"][d]["aliases"]}
                     for d in ("desed", "maestro")},
        "median_window": [7] * len(classes),
    }  # fmt: skip


def test_aliased_events_are_targets_of_both_classes():
    labelling = Labelling.of(run_config(1), "maestro")
    events = labelling.with_aliases([(1.0, 2.0, "people talking", 0.6), (3.0, 4.0, "car", 1.0)])
    assert (1.0, 2.0, "Speech", 0.6) in events and len(events) == 3
    assert labelling.mask.tolist() == [1, 0, 1, 1, 1, 1]  # Dog is not labelled in MAESTRO
    assert labelling.weak_targets(["cutlery and dishes"]).tolist() == [1, 0, 0, 1, 0, 0]


def test_masked_losses_equal_plain_means_when_nothing_is_masked_and_ignore_masked_classes():
    torch.manual_seed(0)
    probs, targets = torch.rand(4, 6, 10), torch.rand(4, 6, 10)
    ones = torch.ones(4, 6)
    assert torch.allclose(losses.bce(probs, targets, ones), losses.bce(probs, targets))
    mask = ones.clone()
    mask[:, 2] = 0
    changed = targets.clone()
    changed[:, 2] = 1 - changed[:, 2]
    assert torch.allclose(losses.bce(probs, targets, mask), losses.bce(probs, changed, mask))
    assert torch.allclose(losses.mse(probs, targets, mask), losses.mse(probs, changed, mask))
    logits = torch.randn(4, 6, 10)
    assert torch.allclose(losses.distillation(logits, targets, "bce", mask), losses.distillation(logits, changed, "bce", mask))


def test_attention_pooling_ignores_masked_classes():
    torch.manual_seed(0)
    model = CRNN(6, n_mels=4, filters=[4, 8], pooling=[[1, 2], [1, 2]], dropout=0.0, rnn_hidden=8, rnn_layers=1,
                 bn_momentum=0.1, embed_dim=8).eval()  # fmt: skip
    crnn, emb = torch.randn(2, 4, 40), torch.randn(2, 8, 40)
    mask = torch.tensor([[1, 0, 1, 1, 1, 1]] * 2, dtype=torch.float32)
    before = model(crnn, embeddings=emb, class_mask=mask).weak
    with torch.no_grad():
        model.dense_softmax.weight[1] += 5.0  # the masked class's attention logit
        model.dense_softmax.bias[1] += 5.0
    after = model(crnn, embeddings=emb, class_mask=mask).weak
    keep = [0, 2, 3, 4, 5]
    assert torch.allclose(before[:, keep], after[:, keep], atol=1e-6)
    unmasked = model(crnn, embeddings=emb).weak
    assert not torch.allclose(unmasked[:, keep], after[:, keep], atol=1e-4)


def test_mixup_pairs_items_of_one_dataset_only():
    rng = np.random.default_rng(0)
    datasets = np.array([0, 1, 0, 1, 1, 0, 0])
    for _ in range(20):
        m = draw_mix(len(datasets), 0.2, rng, datasets)
        assert (datasets[m.perm.numpy()] == datasets).all()
    # one dataset: the same draws as without dataset indices (unchanged behaviour of single-dataset runs)
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert draw_mix(5, 0.2, a, np.zeros(5, int)).perm.tolist() == draw_mix(5, 0.2, b).perm.tolist()
    mixes = draw_group_mixes([slice(0, 3), slice(3, 7)], 1.0, 0.2, rng, datasets)
    assert all(m is not None for m in mixes)


def fake_batch(config: dict, stage: int, masked_class: int) -> dict:
    """Batch of the run's groups where every item's dataset leaves ``masked_class`` unlabelled."""
    groups = batch_groups(config["training"]["stage"]["batch_sizes"])
    n = groups["unlabeled"].stop
    geometry = Geometry.from_config(config)
    n_classes, n_out, n_crnn = len(config["classes"]), geometry.window["out"], geometry.window["crnn"]
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, n_classes)
    mask[:, masked_class] = 0
    mask[groups["maestro"], 1] = 0  # MAESTRO items do not label Dog either
    batch = {
        "crnn_mel": torch.rand(n, 32, n_crnn, generator=g) + 0.1,
        "strong": (torch.rand(n, n_classes, n_out, generator=g) > 0.5).float(),
        "weak": (torch.rand(n, n_classes, generator=g) > 0.5).float(),
        "pseudo": torch.rand(n, n_classes, n_out, generator=g),
        "mask": mask,
        "dataset": torch.tensor([1 if i < groups["maestro"].stop else 0 for i in range(n)]),
    }
    if stage == 1:
        batch["embeddings"] = torch.randn(n, 64, geometry.window["emb"], generator=g)
    else:
        batch["atst_mel"] = torch.rand(n, 64, geometry.window["atst"], generator=g) + 0.1
    return batch


@pytest.mark.parametrize("module_class", [Stage1Module, Stage2Module])
def test_a_masked_class_gets_no_gradient_from_any_term(module_class):
    stage = module_class.stage
    config = run_config(stage)
    config["training"]["stage"]["mixup_p"] = 1.0
    torch.manual_seed(0)
    model = build_sed_model(config, len(config["classes"]))
    module = module_class(config, model, distil=True)
    module.log_train = lambda *args, **kwargs: None
    module.rampup_steps = 0  # full consistency weight
    masked = config["classes"].index("car")
    loss = module.training_step(fake_batch(config, stage, masked), 0)
    loss.backward()
    for head in (model.dense, model.dense_softmax):
        assert head.weight.grad[masked].abs().max() == 0 and head.bias.grad[masked] == 0
        assert head.weight.grad[config["classes"].index("Speech")].abs().max() > 0


def test_iteration_overrides_merge_into_the_stage_settings():
    raw = load_config("workflow_config.yaml")
    raw = copy.deepcopy(raw)
    raw["training"]["overrides"] = {"iter2": {"stage1": {"lr_cnn": 0.0005, "distillation": {"weight": 1.5}}}}
    config = validate_config(raw)
    two, one = stage_config(config, 1, 2), stage_config(config, 1, 1)
    assert two["lr_cnn"] == 0.0005 and two["distillation"] == {"weight": 1.5, "loss": one["distillation"]["loss"]}
    assert one == config["training"]["stage1"] and stage_config(config, 2, 2) == config["training"]["stage2"]


@pytest.mark.parametrize(
    "overrides, message",
    [({"iter3": {"stage1": {"lr_cnn": 0.1}}}, "no such iteration"),
     ({"iter2": {"stage1": {"lr_cn": 0.1}}}, "training.overrides.iter2.stage1"),
     ({"iter2": {"stage2": {"mixup_p": 2.0}}}, "training.overrides.iter2.stage2.mixup_p"),
     ({"iter2": {"stage3": {}}}, "stage3")],
)
def test_bad_iteration_override_is_refused(overrides, message):
    raw = copy.deepcopy(load_config("workflow_config.yaml"))
    raw["training"]["overrides"] = overrides
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_a_validation_split_can_serve_one_stage_only():
    raw = copy.deepcopy(load_config("workflow_config.yaml"))
    raw["datasets"]["desed"]["splits"]["synth_val"]["stages"] = [1]
    with pytest.raises(ConfigError, match="stage 2 selects checkpoints by PSDS"):
        validate_config(copy.deepcopy(raw))
    raw["datasets"]["desed"]["splits"]["devtest"]["stages"] = [1]
    with pytest.raises(ConfigError, match="only a validation split"):
        validate_config(raw)


def test_loss_weights_weigh_each_group_bce():
    config = run_config(1)
    model = build_sed_model(config, len(config["classes"]))
    batch = fake_batch(config, 1, config["classes"].index("car"))
    out = model(torch.rand(6, 32, Geometry.from_config(config).window["crnn"]), embeddings=batch["embeddings"])
    mask = batch["mask"]
    pooled = Stage1Module(config, model).supervised(out, batch, mask)
    config["training"]["stage"]["loss_weights"] = {"maestro": 0.5, "synthetic": 2.0, "weak": 0.0}
    weighted = Stage1Module(config, model).supervised(out, batch, mask)
    m, s = slice(0, 2), slice(2, 4)
    expected = 0.5 * losses.bce(out.strong[m], batch["strong"][m], mask[m]) + 2.0 * losses.bce(out.strong[s], batch["strong"][s], mask[s])
    assert torch.allclose(weighted, expected) and not torch.allclose(pooled, weighted)
