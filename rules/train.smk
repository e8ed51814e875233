# Training (docs/training.md): ATST-SED stage 1 (CRNN on cached frozen-backbone embeddings) and stage 2 (all
# fine-tuned from the stage-1 model) for every ensemble member of every iteration. From iteration 2 on both
# stages also distil the previous iteration's ensemble soft pseudo-labels of the four training groups.
#
# Outputs are model.pt and metrics.csv. The run's checkpoints (checkpoints/last.ckpt every epoch) live in the
# same stage folder but are not declared: Snakemake removes the outputs of a failed job, not these, so a
# killed or failed job that runs again resumes from last.ckpt (use --rerun-incomplete after a hard kill of
# Snakemake itself; the profiles set it). A finished job (outputs present and up to date) is not re-run.


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
            cfg=lambda w, stage=_stage: train_params(w.iteration, stage, w.member),
            inputs=lambda w, stage=_stage: as_json(train_inputs(w.iteration, stage, w.member)),
            out=lambda w, stage=_stage: stage_dir(w.iteration, stage, w.member),
        threads: config["training"]["threads"]
        priority: PRIORITY["train"]
        resources:
            gpu=train_gpus(),
            mem_mb=8000,
            runtime=60 * _stage,
        log:
            log_file(f"train_stage{_stage}", "iter{iteration}", "{member}"),
        benchmark:
            benchmark_file(f"train_stage{_stage}", "iter{iteration}", "{member}")
        conda:
            SEDLIB_ENV
        shell:
            "python -m sedlib train --config-json {params.cfg:q} --inputs-json {params.inputs:q} --out-dir {params.out:q}"
            " --iteration {wildcards.iteration} --threads {threads} > {log} 2>&1"
