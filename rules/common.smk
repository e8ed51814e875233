# Shared by every file under rules/ -- configuration validation, wildcard constraints and the path layout.
# Every artifact path of the pipeline is built here, so rules, tests and docs agree on one layout.

import json
import os
import posixpath

from sedlib.config import (BACKBONE_KINDS, ROLES, SCORED_ROLES, TRAIN_ROLES, labelled_classes, member_training,
                           output_classes, scored_classes, split_ref, splits_with_role, stage_batch_sizes, stage_config,
                           validate_config)
from sedlib.data.manifest import refresh_manifest

# Validated at DAG build time against sedlib/schemas/config.schema.yaml, defaults filled into `config`, plus the
# cross-field checks. (Not snakemake.utils.validate: its errors print the whole schema.)
validate_config(config, source="workflow configuration")

# Every job runs `python -m sedlib ...` with the workflow folder on PYTHONPATH, so the package imports the same
# way in the project venv, in the --sdm conda environment and in a copy of the workflow.
# (The prefix is formatted like a shell command: its literal braces are doubled once more.)
shell.prefix(f'set -euo pipefail; export PYTHONPATH="{workflow.basedir}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')

# The software environment of every rule (--sdm conda); pins as in pyproject.toml. Relative to rules/.
SEDLIB_ENV = "../envs/sedlib.yaml"
R = "results"


wildcard_constraints:
    dataset="[A-Za-z0-9]+",
    split="[A-Za-z0-9_]+",
    member="[A-Za-z0-9]+",
    backbone="[A-Za-z0-9]+",
    model="[A-Za-z0-9_]+",
    iteration="[0-9]+",
    stage="[12]",
    archive="[A-Za-z0-9_.-]+",


def as_json(obj):
    """Stable JSON text of obj, for params (a change in it re-runs the rule)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- data
def dataset_cfg(dataset):
    return config["datasets"][dataset]


def split_cfg(dataset, split):
    return config["datasets"][dataset]["splits"][split]


def all_splits():
    return splits_with_role(config, *ROLES)


def raw_root(dataset):
    """Folder the split paths of `dataset` are relative to."""
    ds = dataset_cfg(dataset)
    return f"{R}/data/{dataset}/raw" if ds["source"] == "synthetic" else ds["root"]


def raw_ready(dataset):
    """Files whose existence means the raw data of `dataset` is complete (synthetic / downloaded / checked)."""
    ds = dataset_cfg(dataset)
    if ds["source"] == "synthetic":
        return [f"{R}/data/{dataset}/raw/manifest.json"]
    if ds["source"] == "download":
        return [f"{R}/data/{dataset}/downloads/{a['name']}.done" for a in ds["archives"]]
    return [data_check_file(dataset)]


def local_datasets():
    return [name for name, ds in config["datasets"].items() if ds["source"] == "local"]


def data_check_file(dataset):
    """check-data report of a local dataset: missing / unlisted / unreadable audio, rates, hours."""
    return f"{R}/data/{dataset}/data_check.json"


def missing_audio_policy(dataset, split):
    """{'missing_audio': 'drop'} for a scored split when evaluation.missing_audio is drop, else {} (params stay
    unchanged for the default policy)."""
    policy = config["evaluation"]["missing_audio"]
    scored = split_cfg(dataset, split)["role"] in SCORED_ROLES
    return {"missing_audio": policy} if scored and policy != "error" else {}


def split_raw_path(dataset, split, key):
    """A split's `audio`, `metadata` or `durations` entry as a path under the dataset's raw root ('' when unset)."""
    value = split_cfg(dataset, split).get(key)
    return f"{raw_root(dataset)}/{value}" if value else ""


def local_audio_manifest(dataset, split):
    """[manifest of a local split's audio folder], refreshed now (at DAG build time); [] for other sources.

    An input of `resample`: adding, removing or replacing a local clip re-resamples that split.
    """
    if dataset_cfg(dataset)["source"] != "local":
        return []
    return [str(refresh_manifest(split_raw_path(dataset, split, "audio"), audio_manifest_file(dataset, split)))]


def local_metadata_files(dataset, split):
    """A local split's metadata and provided durations files; [] for other sources (their raw_ready() covers them).

    Inputs of `validate_metadata`: editing them re-validates the split and re-runs what depends on it.
    """
    if dataset_cfg(dataset)["source"] != "local":
        return []
    return [path for path in (split_raw_path(dataset, split, key) for key in ("metadata", "durations")) if path]


def archive_cfg(dataset, name):
    """The `archives` entry called `name` of a download dataset."""
    for archive in dataset_cfg(dataset).get("archives", []):
        if archive["name"] == name:
            return archive
    raise ValueError(f"datasets.{dataset}.archives has no archive named '{name}'")


def synthetic_datasets():
    return [name for name, ds in config["datasets"].items() if ds["source"] == "synthetic"]


def resampled_dir(dataset, split):
    return f"{R}/data/{dataset}/{split}/audio_16k"


def audio_manifest_file(dataset, split):
    """Names, sizes and mtimes of a local split's audio (sedlib.data.manifest), rewritten only when they change."""
    return f"{R}/data/{dataset}/{split}/audio_manifest.tsv"


def durations_file(dataset, split):
    """Written last by `resample`: its existence marks the split's 16 kHz audio as complete."""
    return f"{R}/data/{dataset}/{split}/durations.tsv"


def metadata_file(dataset, split):
    """Validated metadata of a labelled split (DESED TSV format)."""
    return f"{R}/data/{dataset}/{split}/metadata.tsv"


def weak_part_file(dataset, split, part):
    """Seeded partition of a weak split: part is 'train' or 'val'."""
    return f"{R}/data/{dataset}/{split}/weak_{part}.tsv"


# ----------------------------------------------------------------------------- features and backbone
def backbone_cfg(backbone):
    """The model.backbones entry called `backbone`."""
    return config["model"]["backbones"][backbone]


def backbone_names():
    """The backbones some member uses, in model.backbones order: only these get files and embedding caches."""
    used = {m["backbone"] for m in config["training"]["members"]}
    return [name for name in config["model"]["backbones"] if name in used]


def backbones_with_source(source):
    return [name for name in backbone_names() if backbone_cfg(name)["source"] == source]


def backbone_frontend(backbone):
    """The frontends section (= feature stream) that a backbone's kind reads."""
    return BACKBONE_KINDS[backbone_cfg(backbone)["kind"]]


def feature_streams():
    """Streams of every feature cache: crnn and the frontends of the used backbones, in `frontends` order."""
    needed = {"crnn", *map(backbone_frontend, backbone_names())}
    return [name for name in config["frontends"] if name in needed]


def feature_dir(dataset, split):
    """crnn_mel.npy + index.tsv (cache_features); {stream}_mel.npy + {stream}_index.tsv per backbone frontend
    stream (cache_stream)."""
    return f"{R}/features/{dataset}/{split}"


def feature_files(dataset, split, streams=None):
    """{stream: mel array, 'index': index.tsv, '{stream}_index': its own index} of a split's feature cache
    (streams: default feature_streams())."""
    d = feature_dir(dataset, split)
    files = {s: f"{d}/{s}_mel.npy" for s in streams or feature_streams()}
    own_indexes = {f"{s}_index": f"{d}/{s}_index.tsv" for s in files if s != "crnn"}
    return {**files, "index": f"{d}/index.tsv", **own_indexes}


def backbone_frontends_cfg(backbone):
    """{section: settings} of the one frontend a backbone reads (what its backbone and embedding jobs depend on)."""
    return {backbone_frontend(backbone): config["frontends"][backbone_frontend(backbone)]}


def backbone_file(backbone):
    """Weights of backbone `backbone`: pretrained here (embedded) or fetched (real data)."""
    return f"{R}/backbone/{backbone}.pt"


def embedding_file(backbone, dataset, split):
    """Frozen frame embeddings (N, D, E) float16 of a split by backbone `backbone`, for stage 1."""
    return f"{R}/embeddings/{backbone}/{dataset}/{split}.npy"


def training_splits(stage=None):
    """(dataset, split) pairs that training reads: the batch groups and the validation splits (of `stage` only:
    a validation split's `stages` lists the stages that validate on it)."""
    return [(d, s) for d, s in splits_with_role(config, *TRAIN_ROLES, "validation")
            if stage is None or split_cfg(d, s)["role"] != "validation" or stage in split_cfg(d, s)["stages"]]


def train_group_splits():
    """(dataset, split) pairs of the batch groups (those that get pseudo-labels)."""
    return splits_with_role(config, *TRAIN_ROLES)


def weak_splits():
    return splits_with_role(config, "weak")


# ----------------------------------------------------------------------------- training
def member_cfg(member):
    for m in config["training"]["members"]:
        if m["name"] == member:
            return m
    raise ValueError(f"training.members has no member named '{member}'")


def iterations():
    return list(range(1, config["training"]["iterations"] + 1))


def member_names():
    return [m["name"] for m in config["training"]["members"]]


def member_backbone(member):
    """Name of the backbone a member trains with (validate_config fills the default: the first)."""
    return member_cfg(member)["backbone"]


def member_feature_files(member, dataset, split):
    """The feature arrays a member reads (crnn and its backbone's stream) and their indexes."""
    return list(feature_files(dataset, split, ["crnn", backbone_frontend(member_backbone(member))]).values())


def stage_dir(iteration, stage, member):
    """model.pt (exported best: student + teacher), last.ckpt, metrics.csv."""
    return f"{R}/iter{iteration}/stage{stage}/{member}"


def model_file(iteration, stage, member):
    return f"{stage_dir(iteration, stage, member)}/model.pt"


# ----------------------------------------------------------------------------- pseudo-labels
def member_logits_file(iteration, member, dataset, split):
    return f"{R}/iter{iteration}/pseudo_labels/{member}/{dataset}/{split}.h5"


def pseudo_label_file(iteration, dataset, split):
    """Ensemble soft pseudo-labels of iteration `iteration` (consumed by iteration + 1)."""
    return f"{R}/iter{iteration}/pseudo_labels/ensemble/{dataset}/{split}.h5"


# ----------------------------------------------------------------------------- evaluation
def eval_splits():
    return [split_ref(ref) for ref in config["evaluation"]["splits"]]


def scored_splits():
    """(dataset, split) that every score job writes: the evaluation splits, then cSEBBs' tune split when on."""
    tune = [csebbs_tune_split()] if csebbs_enabled() else []
    return eval_splits() + tune


def eval_model_names():
    """Model names scored in every iteration, per member '{member}_stage1_teacher' (the stage-1 teacher) and
    '{member}_{teacher|student}' (stage 2, evaluation.models), then 'ensemble' (of the stage-2 teachers)."""
    which = config["evaluation"]["models"]
    roles = ["teacher", "student"] if which == "teacher_and_student" else [which]
    return [name for m in member_names() for name in [f"{m}_stage1_teacher", *(f"{m}_{r}" for r in roles)]] + [
        "ensemble"
    ]


def score_dir(iteration, model, dataset, split):
    """sed_scores_eval score tables, one TSV per clip (onset, offset, one column per class)."""
    return f"{R}/iter{iteration}/scores/{model}/{dataset}/{split}"


def eval_logits_file(iteration, model, dataset, split):
    """Exact pre-sigmoid logits behind score_dir (sedlib.pseudo.store format); the ensemble averages these."""
    return f"{R}/iter{iteration}/eval_logits/{model}/{dataset}/{split}.h5"


def missing_audio_listed(dataset, split):
    """{'listed': original metadata} when evaluation.missing_audio is drop: evaluate lists the clips dropped."""
    return {"listed": split_raw_path(dataset, split, "metadata")} if missing_audio_policy(dataset, split) else {}


def csebbs_enabled():
    """evaluation.csebbs.enabled, 'auto' resolved at DAG build time (sedlib.config)."""
    return config["evaluation"]["csebbs"]["enabled"]


def csebbs_tune_split():
    """(dataset, split) cSEBBs is tuned on: role validation, never a scored split (checked by sedlib.config)."""
    return split_ref(config["evaluation"]["csebbs"]["tune_split"])


def csebbs_params_file(iteration, model):
    """cSEBBs hyper-parameters per class, tuned on csebbs_tune_split() with this model's scores."""
    return f"{R}/iter{iteration}/csebbs/{model}/params.json"


def csebbs_score_dir(iteration, model, dataset, split):
    """score_dir() post-processed by cSEBBs: each box's confidence over its extent, -1 elsewhere."""
    return f"{R}/iter{iteration}/scores_csebbs/{model}/{dataset}/{split}"


def csebbs_inputs(iteration, model, dataset, split):
    """{'csebbs': {'dir', 'params'}} of an evaluated score folder for `evaluate` when cSEBBs is on, else {}."""
    if not csebbs_enabled() or split_cfg(dataset, split)["labels"] != "strong":  # cSEBBs: PSDS splits only
        return {}
    return {"csebbs": {"dir": csebbs_score_dir(iteration, model, dataset, split),
                       "params": csebbs_params_file(iteration, model)}}


def eval_json():
    return f"{R}/eval_psds.json"


def eval_roc_file():
    """Every PSD-ROC curve of eval_json(), for the plots."""
    return f"{R}/eval_psd_roc.h5"


def plot_file(name):
    """Figures and tables of the report: 'psd_roc_comparison.png', 'psd_roc/iter{i}/{model}.png', ..."""
    return f"{R}/plots/{name}"


def log_file(rule_name, *parts):
    return posixpath.join(R, "logs", rule_name, *(parts or ["all"])) + ".log"


def benchmark_file(rule_name, *parts):
    return posixpath.join(R, "benchmarks", rule_name, *(parts or ["all"])) + ".tsv"


# ----------------------------------------------------------------------------- features rules' inputs and params
def pretrain_split():
    """The split whose clip labels pretrain the embedded backbone: the one with role 'pretrain', else (own data)
    the first labelled training split (strong labels count as clip tags)."""
    pairs = splits_with_role(config, "pretrain")
    if len(pairs) > 1:
        raise ValueError(f"model.backbones.*.source 'pretrain': at most one split may have role 'pretrain': {pairs}")
    pairs = pairs or [(d, s) for d, s in train_group_splits() if split_cfg(d, s)["labels"] in ("strong", "weak")]
    if not pairs:
        raise ValueError("model.backbones.*.source 'pretrain' needs a 'pretrain' split or a labelled training split")
    return pairs[0]


# ----------------------------------------------------------------------------- scheduling
# Rule priorities: among ready jobs Snakemake starts the higher ones first. On a few cores the critical path is
# pretrain split -> backbone -> embeddings -> stage 1 -> stage 2 -> pseudo-labels -> the next iteration; scoring
# and evaluation jobs (priority 0) fill the cores this path leaves idle instead of delaying it. Every split's data
# jobs come before the backbone: after it, a split's features -> stream -> embeddings chain (the MAESTRO-like
# training split: 17 s) held stage 1 back while the other core had 11 s of embeddings to do.
PRIORITY = {"train": 100, "pseudo_labels": 90, "embeddings": 70, "pretrain_split": 60, "synthesize": 60,
            "data": 50, "backbone": 40}


def split_priority(wildcards):
    """Jobs of the split that pretrains a backbone first (the backbone waits for them), then every other split's."""
    on_path = bool(backbones_with_source("pretrain")) and (wildcards.dataset, wildcards.split) == tuple(pretrain_split())
    return PRIORITY["pretrain_split"] if on_path else PRIORITY["data"]


# ----------------------------------------------------------------------------- train rules' inputs and params
def train_params(iteration, stage, member):
    """The run configuration of sedlib.training.run (--config-json): what a training run depends on. The stage
    settings are those of `iteration` (training.overrides), so changing one iteration's re-runs only that one."""
    datasets = sorted({d for d, _ in training_splits(stage)})
    return as_json(
        {
            "stage": stage,
            # without its overrides: merged below into this stage's settings, so another stage's change re-runs nothing here
            "member": {k: v for k, v in member_cfg(member).items() if k != "overrides"},
            "audio": config["audio"],
            # only the member's backbone and its frontend: adding another backbone leaves this run unchanged
            "frontends": {k: config["frontends"][k] for k in ("crnn", backbone_frontend(member_backbone(member)))},
            "model": {"crnn": config["model"]["crnn"], "backbone": backbone_cfg(member_backbone(member))},
            "training": {
                **{k: config["training"][k] for k in ("accelerator", "devices", "strategy", "precision", "num_workers")},
                "accumulate_grad_batches": member_training(config, member, "accumulate_grad_batches"),
                "stage": {**stage_config(config, stage, int(iteration), member),
                          "batch_sizes": stage_batch_sizes(config, stage, int(iteration), member)},
            },
            "classes": output_classes(config),
            "datasets": {d: {"labelled": labelled_classes(config, d), "aliases": dataset_cfg(d)["aliases"]}
                         for d in datasets},
            "median_window": config["training"]["val_median_window"] or [7] * len(output_classes(config)),
        }
    )


def train_split_inputs(iteration, stage, member):
    """Per split, the files a member's run reads (sedlib.training.data.SplitInputs), in configuration order."""
    entries = []
    for d, s in training_splits(stage):
        split = split_cfg(d, s)
        entry = {"dataset": d, "split": s, "role": split["role"], "labels": split["labels"], "features": feature_dir(d, s)}
        if stage == 1:
            entry["embeddings"] = embedding_file(member_backbone(member), d, s)
        if split["labels"] in ("strong", "soft"):
            entry["metadata"] = metadata_file(d, s)
        if split["role"] == "weak":
            entry["weak_train"] = weak_part_file(d, s, "train")
            entry["weak_val"] = weak_part_file(d, s, "val")
        if int(iteration) > 1 and (d, s) in train_group_splits():
            entry["pseudo_labels"] = pseudo_label_file(int(iteration) - 1, d, s)
        entries.append(entry)
    return entries


def train_inputs(iteration, stage, member):
    """--inputs-json: the splits' files and the initial weights (stage 1: backbone, stage 2: stage-1 model)."""
    if stage == 1:
        init = {"backbone": backbone_file(member_backbone(member))}
    else:
        init = {"init_model": model_file(iteration, 1, member)}
    return {"splits": train_split_inputs(iteration, stage, member), **init}


def train_input_files(iteration, stage, member):
    """Every file of train_inputs() plus the feature arrays, for Snakemake's input list."""
    inputs = train_inputs(iteration, stage, member)
    files = [f for d, s in training_splits(stage) for f in member_feature_files(member, d, s)]
    files += [v for e in inputs["splits"] for k, v in e.items() if k not in ("dataset", "split", "role", "labels", "features")]
    return files + [v for k, v in inputs.items() if k != "splits"]


def train_gpus():
    devices = config["training"]["devices"]
    return devices if isinstance(devices, int) else 1


# ----------------------------------------------------------------------------- evaluate rules' inputs and params
def parse_model_name(model):
    """'{member}_{teacher|student}' -> (member, 2, network); '{member}_stage1_{network}' -> (member, 1, network)."""
    member, *stage, network = model.split("_")
    return member, 1 if stage == ["stage1"] else 2, network


def scored_model_file(iteration, model):
    """model.pt that score_model predicts with for a member's model name (parse_model_name)."""
    member, stage, _ = parse_model_name(model)
    return model_file(iteration, stage, member)


def evaluated_models():
    """(iteration, model, dataset, split) of every score folder that eval_psds.json reports, in report order."""
    return [(i, m, d, s) for i in iterations() for m in eval_model_names() for d, s in eval_splits()]


def activity_settings():
    """The plot command's settings: the activity split's scored classes, their median windows and the F1 threshold."""
    classes = scored_classes(config, activity_source()[1])
    windows = dict(zip(output_classes(config), config["evaluation"]["median_window"]))
    return {"classes": classes, "median_window": [windows[c] for c in classes], "f1": config["evaluation"]["f1"]}


def activity_source():
    """The activity plots show the last iteration's ensemble on the first strongly labelled evaluation split
    (else the first evaluation split)."""
    strong = [(d, s) for d, s in eval_splits() if split_cfg(d, s)["labels"] == "strong"]
    dataset, split = (strong or eval_splits())[0]
    return iterations()[-1], dataset, split
