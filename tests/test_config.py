"""Configuration validation: every schema object rejects unknown keys with a short, helpful message."""

import copy
import subprocess
import sys

import pytest
import yaml

from sedlib.config import ConfigError, load_config, schema, validate_config


@pytest.fixture(scope="module")
def raw_config(repo_root):
    """The embedded workflow configuration as written (defaults not filled)."""
    return yaml.safe_load((repo_root / "workflow_config.yaml").read_text())


def _object_schemas(node, path="schema"):
    """(path, subschema) of every object schema that declares properties."""
    if isinstance(node, dict):
        if "properties" in node and node.get("type") in ("object", ["object", "null"]):
            yield path, node
        for key, value in node.items():
            yield from _object_schemas(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_schemas(value, f"{path}[{index}]")


def test_every_schema_object_rejects_unknown_keys():
    closed_by_parent = {"schema.definitions.stage_common", "schema.properties.training.properties.stage2.allOf[2]"}
    for path, node in _object_schemas(schema()):
        if path not in closed_by_parent:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
    stages = schema()["properties"]["training"]["properties"]
    assert stages["stage1"]["unevaluatedProperties"] is False and stages["stage2"]["unevaluatedProperties"] is False


@pytest.mark.parametrize(
    "where, typo, expected",
    [
        (("training", "stage1"), "epoch", "epochs"),
        (("training", "stage2"), "lr_tfn", "lr_tfm"),
        (("training", "stage1", "distillation"), "wieght", "weight"),
        (("evaluation", "f1"), "treshold", "threshold"),
        (("evaluation", "bootstrap"), "seeds", "seed"),
        (("datasets", "desed", "splits", "weak"), "val_fracton", "val_fraction"),
        (("model", "backbones", "atst"), "dept", "depth"),
        ((), "evalution", "evaluation"),
    ],
)
def test_unknown_key_names_key_path_and_closest_valid_key(raw_config, where, typo, expected):
    config = copy.deepcopy(raw_config)
    node = config
    for key in where:
        node = node[key]
    node[typo] = 10
    with pytest.raises(ConfigError) as info:
        validate_config(config, source="cfg.yaml")
    place = f"'{'.'.join(where)}'" if where else "the top level"
    assert f"cfg.yaml: unknown key '{typo}' in {place}; did you mean '{expected}'?" in str(info.value)
    assert len(str(info.value)) < 400, "the message must not dump the schema"


@pytest.mark.parametrize("where", [("seed",), ("training", "members", 0, "seed"), ("evaluation", "bootstrap", "seed")])
def test_negative_seed_is_an_error(raw_config, where):
    config = copy.deepcopy(raw_config)
    node = config
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = -1
    with pytest.raises(ConfigError, match=f"field '{'.'.join(map(str, where))}': -1 is less than the minimum of 0"):
        validate_config(config)


def test_snakemake_reports_an_unknown_top_level_key_in_one_line(tmp_path, copy_workflow):
    root = copy_workflow(tmp_path / "wf")
    path = root / "workflow_config.yaml"
    path.write_text(path.read_text() + "\nevalution: {}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=root,
                          capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "unknown key 'evalution' in the top level; did you mean 'evaluation'?" in output
    assert "additionalProperties" not in output and "definitions" not in output, output[-2000:]


@pytest.mark.parametrize("name", ["workflow_config.yaml", "configs/desed.yaml"])
def test_shipped_configurations_validate(repo_root, name):
    assert load_config(repo_root / name)["datasets"]


def test_members_choose_a_configured_backbone(raw_config):
    config = copy.deepcopy(raw_config)
    config["model"]["backbones"]["wide"] = {"embed_dim": 96}
    config["training"]["members"].append({"name": "seed3", "seed": 3, "backbone": "wide"})
    validated = validate_config(config)
    assert [m["backbone"] for m in validated["training"]["members"]] == ["atst", "atst", "wide"]  # default: the first
    assert validated["model"]["backbones"]["wide"]["depth"] == 2  # schema defaults fill every entry
    config = copy.deepcopy(raw_config)
    config["training"]["members"][1]["backbone"] = "beats"
    with pytest.raises(ConfigError, match=r"field 'training.members.1.backbone': 'beats' names no backbone of "
                                          r"model.backbones \(atst\)"):
        validate_config(config, source="cfg.yaml")


def test_backbone_entries_are_checked(raw_config):
    config = copy.deepcopy(raw_config)
    config["model"]["backbones"]["bad"] = {"embed_dim": 30, "num_heads": 4}
    with pytest.raises(ConfigError, match="field 'model.backbones.bad.embed_dim': must be divisible by num_heads"):
        validate_config(config)
    config = copy.deepcopy(raw_config)
    config["model"]["backbones"]["x-y"] = {}
    with pytest.raises(ConfigError, match="model.backbones"):
        validate_config(config)
