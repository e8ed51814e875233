"""training.members[*].overrides: a member's own stage settings (another architecture's published ones) and
accumulate_grad_batches, merged after training.overrides, validated like the stage sections."""

import pytest

from sedlib.config import ConfigError, load_config, member_training, stage_batch_sizes, stage_config, validate_config


@pytest.fixture
def config(repo_root) -> dict:
    config = load_config(repo_root / "workflow_config.yaml")
    config["training"]["overrides"] = {"iter2": {"stage2": {"lr_cnn": 0.5, "lr_rnn": 0.25}}}
    config["training"]["members"].append({"name": "other", "seed": 3, "overrides": {
        "accumulate_grad_batches": 4, "stage2": {"lr_cnn": 0.125, "batch_sizes": {"weak": 1}}}})
    return validate_config(config)


def test_member_settings_merge_after_the_iteration_overrides(config):
    base = config["training"]["stage2"]
    assert stage_config(config, 2, 1, "seed1") == stage_config(config, 2, 1) == base
    assert stage_config(config, 2, 2, "seed1")["lr_cnn"] == 0.5
    other1, other2 = stage_config(config, 2, 1, "other"), stage_config(config, 2, 2, "other")
    assert (other1["lr_cnn"], other1["lr_rnn"]) == (0.125, base["lr_rnn"])
    assert (other2["lr_cnn"], other2["lr_rnn"]) == (0.125, 0.25)  # the member's value wins, the iteration's stays
    assert stage_config(config, 1, 2, "other") == config["training"]["stage1"]
    sizes = stage_batch_sizes(config, 2, 1, "other")
    assert sizes["weak"] == 1 and sizes["synthetic"] == base["batch_sizes"]["synthetic"]
    assert member_training(config, "other", "accumulate_grad_batches") == 4
    assert member_training(config, "seed1", "accumulate_grad_batches") == config["training"]["accumulate_grad_batches"]
    with pytest.raises(ValueError, match="no member named 'nobody'"):
        stage_config(config, 2, 1, "nobody")


@pytest.mark.parametrize("overrides, message", [
    ({"stage2": {"lr_cnnn": 1.0}}, r"training.members.2.overrides.stage2': .*'lr_cnnn'"),
    ({"stage2": {"lr_cnn": -1.0}}, r"training.members.2.overrides.stage2.lr_cnn': -1.0 is less than or equal to"),
    ({"stage3": {}}, r"unknown key 'stage3' in 'training.members.2.overrides'"),
    ({"accumulate_grad_batches": 0}, r"training.members.2.overrides.accumulate_grad_batches': 0 is less than"),
])
def test_bad_member_overrides_name_the_field(repo_root, overrides, message):
    config = load_config(repo_root / "workflow_config.yaml")
    config["training"]["members"].append({"name": "other", "seed": 3, "overrides": overrides})
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
