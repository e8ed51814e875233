"""Workflow configuration: loading, JSON-schema validation with defaults, and cross-field checks.

The same schema (``sedlib/schemas/config.schema.yaml``) is applied by the Snakefile at DAG build time and
by :func:`load_config` for library and CLI use, so both see identical, default-filled configurations.
"""

from __future__ import annotations

import copy
import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
# Training batch groups in batch order: ATST-SED's [strong_real, synthetic, weak, unlabeled] with the generic
# strongly labelled group `strong` beside DESED's two (a group is every split of that role).
STRONG_ROLES = ("strong_real", "synthetic", "strong")
TRAIN_ROLES = (*STRONG_ROLES, "weak", "unlabeled")
SCORED_ROLES = ("validation", "test")  # strong labels, scored against their audio (model selection, test)
ROLES = (*TRAIN_ROLES, *SCORED_ROLES, "pretrain")
# Backbone kind -> the `frontends` section it reads (its feature-cache stream); the class of each kind declares the
# same (sedlib.models.backbone); listed here so that the workflow builds its DAG without importing torch.
BACKBONE_KINDS = {"atst_frame": "atst"}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what was expected."""


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _validator_with_defaults():
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate ``config`` in place against the schema, fill defaults, run cross-field checks; return it.

    Every object of the schema rejects unknown keys; the error names the key, where it is and the closest
    valid key.
    Also resolves three shorthands: ``evaluation.splits: null`` (every split with role test), an integer
    ``evaluation.median_window`` (that window for every class) and a member without ``backbone`` (the first of
    ``model.backbones``).
    """
    validator = _validator_with_defaults()(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [line for e in errors for line in _error_lines(e, source)]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines))
    _check_cross_fields(config, source)
    return config


def _error_lines(error: jsonschema.ValidationError, source: str) -> list[str]:
    """One short line per problem of a schema error (never the schema itself)."""
    where = ".".join(map(str, error.absolute_path))
    if error.validator not in ("additionalProperties", "unevaluatedProperties") or not isinstance(error.instance, dict):
        return [f"{source}: field '{where or '<root>'}': {error.message}"]
    valid = _property_names(error.schema)
    lines = []
    for key in (k for k in error.instance if k not in valid):
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(sorted(valid))}"
        lines.append(f"{source}: unknown key '{key}' in {f'{where!r}' if where else 'the top level'}; {hint}")
    return lines


def _property_names(subschema: dict) -> list[str]:
    """Keys a schema object declares: its ``properties`` and those of its ``allOf`` parts and local ``$ref``s."""
    names = list(subschema.get("properties", {}))
    parts = list(subschema.get("allOf", []))
    if "$ref" in subschema:
        node: Any = schema()
        for step in subschema["$ref"].lstrip("#/").split("/"):
            node = node[step]
        parts.append(node)
    for part in parts:
        names += [n for n in _property_names(part) if n not in names]
    return names


def load_config(path: str | Path) -> dict:
    """Read a YAML configuration file and validate it (defaults filled)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(config).__name__}")
    return validate_config(config, source=str(path))


def _check_cross_fields(config: dict, source: str) -> None:
    def fail(field: str, message: str) -> None:
        raise ConfigError(f"{source}: field '{field}': {message}")

    for name, fe in config["frontends"].items():
        if fe["f_max"] > fe["sample_rate"] / 2:
            fail(f"frontends.{name}.f_max", f"must be <= sample_rate/2 = {fe['sample_rate'] / 2} Hz")
        if fe["win_length"] > fe["n_fft"]:
            fail(f"frontends.{name}.win_length", "must be <= n_fft")
        if fe["sample_rate"] != config["audio"]["sample_rate"]:
            fail(f"frontends.{name}.sample_rate", f"must equal audio.sample_rate ({config['audio']['sample_rate']})")
    crnn = config["model"]["crnn"]
    if len(crnn["pooling"]) != len(crnn["filters"]):
        fail("model.crnn.pooling", f"needs one [time, freq] pair per conv block ({len(crnn['filters'])})")
    backbones = config["model"]["backbones"]
    for name, backbone in backbones.items():
        if backbone["embed_dim"] % backbone["num_heads"]:
            fail(f"model.backbones.{name}.embed_dim", "must be divisible by num_heads")
        if backbone["source"] == "checkpoint" and not backbone.get("checkpoint"):
            fail(f"model.backbones.{name}.checkpoint", "required when source is 'checkpoint' (path, or url + sha256)")
        frontend = BACKBONE_KINDS[backbone["kind"]]
        if frontend not in config["frontends"]:
            fail(f"model.backbones.{name}.kind", f"'{backbone['kind']}' reads frontends.{frontend}: not configured")
    for index, member in enumerate(config["training"]["members"]):
        member.setdefault("backbone", next(iter(backbones)))
        if member["backbone"] not in backbones:
            fail(f"training.members.{index}.backbone", f"'{member['backbone']}' names no backbone of model.backbones "
                 f"({', '.join(backbones)})")
    for ds_name, ds in config["datasets"].items():
        if ds["source"] in ("download", "local") and not ds.get("root"):
            fail(f"datasets.{ds_name}.root", f"required for source '{ds['source']}'")
        if ds["source"] == "download" and not ds.get("archives"):
            fail(f"datasets.{ds_name}.archives", "required for source 'download'")
        for split_name, split in ds["splits"].items():
            if split["labels"] != "none" and not split.get("metadata"):
                fail(f"datasets.{ds_name}.splits.{split_name}.metadata", f"required for labels '{split['labels']}'")
    n_classes = {len(ds["classes"]) for ds in config["datasets"].values()}
    evaluation = config["evaluation"]
    if evaluation["splits"] is None:
        evaluation["splits"] = [f"{d}/{s}" for d, s in splits_with_role(config, "test")]
        if not evaluation["splits"]:
            fail("evaluation.splits", "no split has role 'test': give a split that role or list the splits to score")
    if isinstance(evaluation["median_window"], int):
        first_dataset = split_ref(evaluation["splits"][0])[0]
        n_first = len(config["datasets"].get(first_dataset, {}).get("classes", []))
        evaluation["median_window"] = [evaluation["median_window"]] * n_first
    for ref in evaluation["splits"]:
        ds_name, split_name = split_ref(ref)
        split = config["datasets"].get(ds_name, {}).get("splits", {}).get(split_name)
        if split is None:
            fail("evaluation.splits", f"'{ref}' names no configured dataset/split")
        if split["labels"] != "strong":
            fail("evaluation.splits", f"'{ref}' must have strong labels to be scored")
    if len(evaluation["median_window"]) not in n_classes:
        fail("evaluation.median_window", f"needs one window per class ({sorted(n_classes)})")
    val_window = config["training"].get("val_median_window")
    if val_window is not None and len(val_window) not in n_classes:
        fail("training.val_median_window", f"needs one window per class ({sorted(n_classes)})")
    names = [m["name"] for m in config["training"]["members"]]
    if len(set(names)) != len(names):
        fail("training.members", f"member names must be unique, got {names}")
    if "ensemble" in names:
        fail("training.members", "'ensemble' is reserved (results/iter{i}/pseudo_labels/ensemble/ holds the averages)")


def section_json(config: dict, *keys: str) -> str:
    """The JSON text of ``config[k1][k2]...`` with sorted keys: a stable value for Snakemake ``params``."""
    node: Any = config
    for key in keys:
        node = node[key]
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def splits_with_role(config: dict, *roles: str) -> list[tuple[str, str]]:
    """(dataset, split) pairs whose role is one of ``roles``, in configuration order."""
    return [
        (ds_name, split_name)
        for ds_name, ds in config["datasets"].items()
        for split_name, split in ds["splits"].items()
        if split["role"] in roles
    ]


def stage_batch_sizes(config: dict, stage: int) -> dict[str, int]:
    """``training.stageN.batch_sizes`` of the groups that have a split (a training run's batch layout)."""
    present = {split["role"] for ds in config["datasets"].values() for split in ds["splits"].values()}
    sizes = config["training"][f"stage{stage}"]["batch_sizes"]
    return {role: sizes[role] for role in TRAIN_ROLES if role in present}


def split_ref(ref: str) -> tuple[str, str]:
    """'dataset/split' -> (dataset, split)."""
    dataset, _, split = ref.partition("/")
    return dataset, split
