# Evaluation (docs/evaluation.md): every stage-2 network and every stage-1 teacher of every iteration and the
# ensemble of each iteration score every evaluation split; `evaluate` computes PSDS1/PSDS2 (+ CIs, per class,
# F1, psds_eval cross-check) and the procedure's claims into results/eval_psds.json; `plot` draws the PSD-ROC
# curves, activity plots and the metrics table that `snakemake --report results/report.html` collects
# (report() flags below).


# One job per network (and one per iteration's ensemble) scores every split: the network is loaded and torch is
# imported once. Adding a split to evaluation.splits re-scores every model (its outputs are one job's).
rule score_model:
    input:
        model=lambda w: scored_model_file(w.iteration, w.model),
        durations=[durations_file(d, s) for d, s in scored_splits()],
    output:
        logits=[eval_logits_file("{iteration}", "{model}", d, s) for d, s in scored_splits()],
        scores=[directory(score_dir("{iteration}", "{model}", d, s)) for d, s in scored_splits()],
    wildcard_constraints:
        model="|".join(f"{m}_(stage1_teacher|teacher|student)" for m in member_names()),
    params:
        cfg=as_json({k: config["evaluation"][k] for k in ("window_seconds", "hop_seconds")}),
        audio=[resampled_dir(d, s) for d, s in scored_splits()],
        which=lambda w: parse_model_name(w.model)[2],
        device=config["training"]["accelerator"],
    threads: config["training"]["threads"]
    resources:
        gpu=1,
        mem_mb=4000,
    log:
        log_file("score_model", "iter{iteration}", "{model}"),
    benchmark:
        benchmark_file("score_model", "iter{iteration}", "{model}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib score --model-file {input.model} --which {params.which} --audio-dir {params.audio}"
        " --durations {input.durations} --config-json {params.cfg:q} --iteration {wildcards.iteration}"
        " --logits-out {output.logits} --scores-out {output.scores} --device {params.device} --threads {threads}"
        " > {log} 2>&1"


rule score_ensemble:
    input:
        # every member's file of the first split, then of the second, ... (the score command's order)
        members=lambda w: [
            eval_logits_file(w.iteration, f"{m}_teacher", d, s) for d, s in scored_splits() for m in member_names()
        ],
        durations=[durations_file(d, s) for d, s in scored_splits()],
    output:
        logits=[eval_logits_file("{iteration}", "ensemble", d, s) for d, s in scored_splits()],
        scores=[directory(score_dir("{iteration}", "ensemble", d, s)) for d, s in scored_splits()],
    params:
        cfg=as_json({"average": config["pseudo_labels"]["average"]}),
    threads: 1
    resources:
        mem_mb=4000,
    log:
        log_file("score_ensemble", "iter{iteration}"),
    benchmark:
        benchmark_file("score_ensemble", "iter{iteration}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib score --member-logits {input.members} --durations {input.durations} --config-json {params.cfg:q}"
        " --iteration {wildcards.iteration} --logits-out {output.logits} --scores-out {output.scores} > {log} 2>&1"


rule evaluate:
    input:
        scores=[score_dir(*key) for key in evaluated_models()],
        truth=[f for d, s in eval_splits() for f in (metadata_file(d, s), durations_file(d, s))],
        csebbs=[inputs["csebbs"]["dir"] for inputs in (csebbs_inputs(*key) for key in evaluated_models()) if inputs],
    output:
        json=report(eval_json(), caption="../docs/report/eval_psds.rst", category="Metrics"),
        rocs=eval_roc_file(),
    params:
        cfg=as_json(config),
        inputs=as_json(
            {
                "splits": {
                    f"{d}/{s}": {"metadata": metadata_file(d, s), "durations": durations_file(d, s),
                                 **missing_audio_listed(d, s)}
                    for d, s in eval_splits()
                },
                "scores": [
                    {"iteration": i, "model": m, "split": f"{d}/{s}", "dir": score_dir(i, m, d, s),
                     **csebbs_inputs(i, m, d, s)}
                    for i, m, d, s in evaluated_models()
                ],
            }
        ),
    threads: 2
    resources:
        mem_mb=8000,
    log:
        log_file("evaluate"),
    benchmark:
        benchmark_file("evaluate")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib evaluate --config-json {params.cfg:q} --inputs-json {params.inputs:q} --out {output.json}"
        " --roc-out {output.rocs} --jobs {threads} > {log} 2>&1"


rule plot:
    input:
        json=eval_json(),
        rocs=eval_roc_file(),
        scores=score_dir(activity_source()[0], "ensemble", *activity_source()[1:]),
        metadata=metadata_file(*activity_source()[1:]),
        durations=durations_file(*activity_source()[1:]),
    output:
        comparison=report(
            plot_file("psd_roc_comparison.png"), caption="../docs/report/psd_roc_comparison.rst", category="PSD-ROC"
        ),
        models=[
            report(
                plot_file(f"psd_roc/iter{i}/{m}.png"),
                caption="../docs/report/psd_roc_model.rst",
                category="PSD-ROC",
                subcategory=f"iteration {i}",
                labels={"iteration": str(i), "model": m},
            )
            for i in iterations()
            for m in eval_model_names()
        ],
        activity=[
            report(
                plot_file(f"activity/{k:02d}.png"),
                caption="../docs/report/activity.rst",
                category="Activity",
                labels={"plot": f"{k:02d}"},
            )
            for k in range(config["evaluation"]["activity_plots"])
        ],
        table=report(plot_file("metrics_table.html"), caption="../docs/report/metrics_table.rst", category="Metrics"),
    params:
        cfg=as_json(activity_settings()),
        model_dir=lambda w, output: os.path.dirname(os.path.dirname(output.models[0])),
    threads: 2  # processes drawing figures (it is the last job: the other core is free)
    resources:
        mem_mb=4000,
    log:
        log_file("plot"),
    benchmark:
        benchmark_file("plot")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib plot --eval-json {input.json} --roc-file {input.rocs} --comparison-out {output.comparison}"
        " --model-plot-dir {params.model_dir} --table-out {output.table} --activity-scores {input.scores}"
        " --activity-metadata {input.metadata} --activity-durations {input.durations}"
        " --activity-out {output.activity} --config-json {params.cfg:q} --jobs {threads} > {log} 2>&1"
