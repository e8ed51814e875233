"""Workflow configuration: loading, JSON-schema validation with defaults, and cross-field checks.

The same schema (``sedlib/schemas/config.schema.yaml``) is applied by the Snakefile at DAG build time and
by :func:`load_config` for library and CLI use, so both see identical, default-filled configurations.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
# Training batch groups in batch order: ATST-SED's [strong_real, synthetic, weak, unlabeled] with the generic
# strongly labelled group `strong` beside DESED's two (a group is every split of that role) and MAESTRO's group.
STRONG_ROLES = ("strong_real", "synthetic", "strong")
TRAIN_ROLES = ("maestro", *STRONG_ROLES, "weak", "unlabeled")  # maestro: soft strong labels, first as in the
# DCASE 2024 baseline's batch (confs/pretrained.yaml batch_size: [maestro, synth, strong, weak, unlabel])
SCORED_ROLES = ("validation", "test")  # strong labels, scored against their audio (model selection, test)
EVALUATED_LABELS = ("strong", "soft")  # label kinds of evaluation.splits: PSDS (strong) / MAESTRO mpAUC (soft)
ROLES = (*TRAIN_ROLES, *SCORED_ROLES, "pretrain")
# Backbone kind -> the `frontends` section it reads (its feature-cache stream); the class of each kind declares the
# same (sedlib.models.backbone); listed here so that the workflow builds its DAG without importing torch.
BACKBONE_KINDS = {"atst_frame": "atst", "beats": "beats"}


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
        if backbone.get("patch_embed_dim") is not None and backbone["kind"] != "beats":
            fail(f"model.backbones.{name}.patch_embed_dim", f"applies to kind 'beats' only, not '{backbone['kind']}'")
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
    for ds_name, ds in config["datasets"].items():
        for own, other in ds["aliases"].items():
            if own not in ds["classes"]:
                fail(f"datasets.{ds_name}.aliases", f"'{own}' is not one of the dataset's classes")
            if other not in output_classes(config) or other in ds["classes"]:
                fail(f"datasets.{ds_name}.aliases", f"'{own}' -> '{other}': expected a class of another dataset")
    n_classes = {len(ds["classes"]) for ds in config["datasets"].values()}
    for ds_name, ds in config["datasets"].items():
        unknown = [c for c in ds.get("scored_classes") or [] if c not in ds["classes"]]
        if unknown:
            fail(f"datasets.{ds_name}.scored_classes", f"{unknown} are not among the dataset's classes")
    evaluation = config["evaluation"]
    if evaluation["splits"] is None:
        evaluation["splits"] = [f"{d}/{s}" for d, s in splits_with_role(config, "test")]
        if not evaluation["splits"]:
            fail("evaluation.splits", "no split has role 'test': give a split that role or list the splits to score")
    if isinstance(evaluation["median_window"], int):
        evaluation["median_window"] = [evaluation["median_window"]] * len(output_classes(config))
    for ref in evaluation["splits"]:
        ds_name, split_name = split_ref(ref)
        split = config["datasets"].get(ds_name, {}).get("splits", {}).get(split_name)
        if split is None:
            fail("evaluation.splits", f"'{ref}' names no configured dataset/split")
        if split["labels"] not in EVALUATED_LABELS:
            fail("evaluation.splits", f"'{ref}' must have strong (PSDS) or soft (MAESTRO mpAUC) labels to be scored")
    _resolve_csebbs(config, fail)
    if len(evaluation["median_window"]) != len(output_classes(config)):
        fail("evaluation.median_window", f"needs one window per output class ({len(output_classes(config))}: "
                                         "every dataset's classes in configuration order, each once)")
    val_window = config["training"].get("val_median_window")
    if val_window is not None and len(val_window) != len(output_classes(config)):
        fail("training.val_median_window", f"needs one window per output class ({len(output_classes(config))})")
    _check_overrides(config, source)
    for ds_name, split_name in splits_with_role(config, *ROLES):
        split = config["datasets"][ds_name]["splits"][split_name]
        if split["role"] != "validation" and sorted(split["stages"]) != [1, 2]:
            fail(f"datasets.{ds_name}.splits.{split_name}.stages", "only a validation split can serve some stages only")
    validation = [config["datasets"][d]["splits"][s] for d, s in splits_with_role(config, "validation")]
    if validation and not any(2 in split["stages"] for split in validation):
        fail("datasets.*.splits.*.stages", "stage 2 selects checkpoints by PSDS: some validation split must list stage 2")
    names = [m["name"] for m in config["training"]["members"]]
    if len(set(names)) != len(names):
        fail("training.members", f"member names must be unique, got {names}")
    if "ensemble" in names:
        fail("training.members", "'ensemble' is reserved (results/iter{i}/pseudo_labels/ensemble/ holds the averages)")


def _check_overrides(config: dict, source: str) -> None:
    """Each ``training.overrides.iterN.stageK`` block names an existing iteration and, merged into
    ``training.stageK``, gives settings that the stage schema accepts (unknown keys, types and ranges); likewise
    each ``training.members[i].overrides.stageK``."""
    training = config["training"]
    for name, block in training["overrides"].items():
        iteration = int(name.removeprefix("iter"))
        if not 1 <= iteration <= training["iterations"]:
            raise ConfigError(f"{source}: field 'training.overrides.{name}': no such iteration "
                              f"(training.iterations is {training['iterations']})")
        for stage_key, change in block.items():
            _check_stage_change(config, stage_key, change, f"training.overrides.{name}.{stage_key}", source)
    for index, member in enumerate(training["members"]):
        for stage_key, change in member.get("overrides", {}).items():
            if stage_key.startswith("stage"):
                _check_stage_change(config, stage_key, change, f"training.members.{index}.overrides.{stage_key}", source)


def _check_stage_change(config: dict, stage_key: str, change: dict, where: str, source: str) -> None:
    """``change`` merged into ``training.{stage_key}`` passes the stage schema; else ConfigError naming ``where``."""
    training = config["training"]
    trial = {**config, "training": {**training, stage_key: deep_merge(training[stage_key], change)}}
    validator = _validator_with_defaults()(schema())
    errors = [e for e in validator.iter_errors(copy.deepcopy(trial)) if list(e.absolute_path)[:2] == ["training", stage_key]]
    # the most specific problem: a failing value inside an allOf part also makes its keys "unevaluated"
    errors.sort(key=lambda e: (e.validator != "unevaluatedProperties", len(e.absolute_path)), reverse=True)
    if errors:
        field = ".".join(map(str, [where, *list(errors[0].absolute_path)[2:]]))
        raise ConfigError(f"{source}: field '{field}': {errors[0].message}")


def deep_merge(base: dict, change: dict) -> dict:
    """A copy of ``base`` with ``change`` merged in: nested mappings merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def stage_config(config: dict, stage: int, iteration: int = 1, member: str | None = None) -> dict:
    """``training.stageN`` of iteration ``iteration`` for ``member`` (a name in training.members, or None): the
    stage section with ``training.overrides.iter{i}.stageN`` and then the member's ``overrides.stageN`` merged in."""
    training = config["training"]
    change = training["overrides"].get(f"iter{iteration}", {}).get(f"stage{stage}", {})
    merged = deep_merge(training[f"stage{stage}"], change)
    return deep_merge(merged, member_overrides(config, member).get(f"stage{stage}", {}))


def member_overrides(config: dict, member: str | None) -> dict:
    """``training.members[*].overrides`` of the member called ``member`` ({} for None or a member without)."""
    if member is None:
        return {}
    for entry in config["training"]["members"]:
        if entry["name"] == member:
            return entry.get("overrides", {})
    raise ValueError(f"training.members has no member named '{member}'")


def member_training(config: dict, member: str, key: str):
    """A training-level setting (``accumulate_grad_batches``) for ``member``: its override, else training.{key}."""
    return member_overrides(config, member).get(key, config["training"][key])


def output_classes(config: dict) -> list[str]:
    """The model's output classes: the union of the datasets' class lists in configuration order (a class that
    several datasets share is one output)."""
    out: list[str] = []
    for ds in config["datasets"].values():
        out += [c for c in ds["classes"] if c not in out]
    return out


def labelled_classes(config: dict, dataset: str) -> list[str]:
    """Output classes that items of ``dataset`` carry labels for: its own classes and its aliases' targets, in
    output order. The others are masked in every loss term of its items."""
    ds = config["datasets"][dataset]
    own = set(ds["classes"]) | set(ds["aliases"].values())
    return [c for c in output_classes(config) if c in own]


def scored_classes(config: dict, dataset: str) -> list[str]:
    """Classes a dataset's evaluation splits are scored on: ``datasets.<name>.scored_classes`` (null = all)."""
    ds = config["datasets"][dataset]
    return list(ds.get("scored_classes") or ds["classes"])


def _resolve_csebbs(config: dict, fail) -> None:
    """``evaluation.csebbs``: refuse a scored ``tune_split`` (never tune on a scored split), fill a null one with
    the first eligible validation split, resolve ``enabled: auto`` to whether ``sebbs`` is importable now (the
    DAG is built with this environment's answer; off when there is no split to tune on)."""
    csebbs, scored = config["evaluation"]["csebbs"], config["evaluation"]["splits"]
    field = "evaluation.csebbs.tune_split"
    ref = csebbs["tune_split"]
    if ref is not None:
        ds_name, split_name = split_ref(ref)
        split = config["datasets"].get(ds_name, {}).get("splits", {}).get(split_name)
        if split is None:
            fail(field, f"'{ref}' names no configured dataset/split")
        if split["role"] != "validation" or ref in scored:
            why = f"its role is '{split['role']}'" if split["role"] != "validation" else "evaluation.splits lists it"
            fail(field, f"'{ref}' is a scored split ({why}): cSEBBs is tuned only on a split with role 'validation' "
                        "that evaluation.splits does not list")
        if split["labels"] != "strong":
            fail(field, f"'{ref}' must have strong labels to tune on")
    eligible = [f"{d}/{s}" for d, s in splits_with_role(config, "validation")
                if f"{d}/{s}" not in scored and config["datasets"][d]["splits"][s]["labels"] == "strong"]
    if csebbs["enabled"] == "auto":
        csebbs["enabled"] = importlib.util.find_spec("sebbs") is not None and bool(ref or eligible)
    if csebbs["enabled"] and ref is None:
        if not eligible:
            fail(field, "no split with role 'validation' and strong labels outside evaluation.splits to tune cSEBBs "
                        "on: add one, name one, or set evaluation.csebbs.enabled: false")
        csebbs["tune_split"] = eligible[0]


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


def stage_batch_sizes(config: dict, stage: int, iteration: int = 1, member: str | None = None) -> dict[str, int]:
    """``training.stageN.batch_sizes`` (of iteration ``iteration``, for ``member``) of the groups that have a split
    (a training run's batch layout)."""
    present = {split["role"] for ds in config["datasets"].values() for split in ds["splits"].values()}
    sizes = stage_config(config, stage, iteration, member)["batch_sizes"]
    return {role: sizes[role] for role in TRAIN_ROLES if role in present}


def split_ref(ref: str) -> tuple[str, str]:
    """'dataset/split' -> (dataset, split)."""
    dataset, _, split = ref.partition("/")
    return dataset, split
