# cSEBBs post-processing (optional extra sedlib[sebbs], README "cSEBBs"; sedlib/evaluation/csebbs.py), on when
# evaluation.csebbs.enabled resolves to true. Per iteration and evaluated model (each member network and the
# ensemble): `tune_csebbs` tunes the hyper-parameters on that model's raw scores of the validation split
# evaluation.csebbs.tune_split (scored by score_model / score_ensemble like a test split), as the DCASE 2024 winner
# tunes on validation data; per model because each network's score dynamics differ, so every entry of
# eval_psds.json compares the median filter with cSEBBs tuned for it. `apply_csebbs` post-processes the model's
# scores of each evaluation split; `evaluate` reports them beside the median filter (key `csebbs` of each entry).
# sedlib.config refuses a tune_split that is scored (role test, or in evaluation.splits).


rule tune_csebbs:
    input:
        scores=lambda w: score_dir(w.iteration, w.model, *csebbs_tune_split()),
        metadata=lambda w: metadata_file(*csebbs_tune_split()),
        durations=lambda w: durations_file(*csebbs_tune_split()),
    output:
        params=csebbs_params_file("{iteration}", "{model}"),
    params:
        cfg=lambda w: as_json({**config["evaluation"]["csebbs"], "classes": scored_classes(config, csebbs_tune_split()[0])}),
    threads: 1
    resources:
        mem_mb=4000,
    log:
        log_file("tune_csebbs", "iter{iteration}", "{model}"),
    benchmark:
        benchmark_file("tune_csebbs", "iter{iteration}", "{model}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib tune-csebbs --scores {input.scores} --metadata {input.metadata}"
        " --durations {input.durations} --config-json {params.cfg:q} --out {output.params} > {log} 2>&1"


rule apply_csebbs:
    input:
        params=csebbs_params_file("{iteration}", "{model}"),
        scores=score_dir("{iteration}", "{model}", "{dataset}", "{split}"),
        durations=lambda w: durations_file(w.dataset, w.split),
    output:
        scores=directory(csebbs_score_dir("{iteration}", "{model}", "{dataset}", "{split}")),
    threads: 1
    resources:
        mem_mb=4000,
    log:
        log_file("apply_csebbs", "iter{iteration}", "{model}", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("apply_csebbs", "iter{iteration}", "{model}", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib apply-csebbs --params {input.params} --scores {input.scores} --durations {input.durations}"
        " --out {output.scores} > {log} 2>&1"
