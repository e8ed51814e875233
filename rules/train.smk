# Training (docs/training.md): ATST-SED stage 1 (CRNN on cached frozen-backbone embeddings) and stage 2 (all
# fine-tuned from the stage-1 model) for every ensemble member of every iteration. From iteration 2 on both
# stages also distil the previous iteration's ensemble soft pseudo-labels of the four training groups.
#
# Outputs are model.pt and metrics.csv. The run's checkpoints (checkpoints/last.ckpt every epoch) live in the
# same stage folder but are not declared: Snakemake removes the outputs of a failed job, not these, so a
# killed or failed job that runs again resumes from last.ckpt (use --rerun-incomplete after a hard kill of
# Snakemake itself; the profiles set it). A finished job (outputs present and up to date) is not re-run.


def train_params(stage, member):
    """The run configuration of sedlib.training.run (--config-json): what a training run depends on."""
    datasets = sorted({d for d, _ in training_splits()})
    return as_json(
        {
            "stage": stage,
            "member": member_cfg(member),
            "audio": config["audio"],
            "frontends": config["frontends"],
            "model": config["model"],
            "training": {
                **{k: config["training"][k] for k in ("accelerator", "devices", "strategy", "precision",
                                                      "accumulate_grad_batches", "num_workers")},
                "stage": config["training"][f"stage{stage}"],
            },
            "classes": {d: dataset_cfg(d)["classes"] for d in datasets},
            "median_window": config["training"]["val_median_window"]
            or [7] * len(dataset_cfg(datasets[0])["classes"]),
        }
    )


def train_split_inputs(iteration, stage):
    """Per split, the files a run reads (sedlib.training.data.SplitInputs), in configuration order."""
    entries = []
    for d, s in training_splits():
        split = split_cfg(d, s)
        entry = {"dataset": d, "split": s, "role": split["role"], "labels": split["labels"], "features": feature_dir(d, s)}
        if stage == 1:
            entry["embeddings"] = embedding_file(d, s)
        if split["labels"] == "strong":
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
    init = {"backbone": backbone_file()} if stage == 1 else {"init_model": model_file(iteration, 1, member)}
    return {"splits": train_split_inputs(iteration, stage), **init}


def train_input_files(iteration, stage, member):
    """Every file of train_inputs() plus the feature arrays, for Snakemake's input list."""
    inputs = train_inputs(iteration, stage, member)
    files = [f for d, s in training_splits() for f in feature_files(d, s).values()]
    files += [v for e in inputs["splits"] for k, v in e.items() if k not in ("dataset", "split", "role", "labels", "features")]
    return files + [v for k, v in inputs.items() if k != "splits"]


def train_gpus():
    devices = config["training"]["devices"]
    return devices if isinstance(devices, int) else 1


# train_stage1 and train_stage2: the same rule for each stage (the CLI reads the stage from --config-json).
for _stage in (1, 2):

    rule:
        name:
            f"train_stage{_stage}"
        input:
            lambda w, stage=_stage: train_input_files(w.iteration, stage, w.member),
        output:
            model=model_file("{iteration}", _stage, "{member}"),
            metrics=f"{stage_dir('{iteration}', _stage, '{member}')}/metrics.csv",
        params:
            cfg=lambda w, stage=_stage: train_params(stage, w.member),
            inputs=lambda w, stage=_stage: as_json(train_inputs(w.iteration, stage, w.member)),
            out=lambda w, stage=_stage: stage_dir(w.iteration, stage, w.member),
        threads: 2
        resources:
            gpu=train_gpus(),
            mem_mb=8000,
            runtime=60 * _stage,
        log:
            log_file(f"train_stage{_stage}", "iter{iteration}", "{member}"),
        benchmark:
            benchmark_file(f"train_stage{_stage}", "iter{iteration}", "{member}")
        shell:
            "{SEDLIB} train --config-json {params.cfg:q} --inputs-json {params.inputs:q} --out-dir {params.out:q}"
            " --iteration {wildcards.iteration} --threads {threads} > {log} 2>&1"
