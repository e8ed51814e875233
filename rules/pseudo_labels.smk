# Ensemble soft pseudo-labels (DCASE 2024 winner's multi-iteration procedure, docs/pseudo_labels.md).
# Every stage-2 member of iteration i predicts strong logits for every clip of the four training groups;
# the members' logits are averaged per split; iteration i + 1 trains with them (rules/train.smk takes
# pseudo_label_file(i, ...) as input). Member predictions are separate cached artifacts: adding a member
# runs only that member's predictions and the averages.

import re


# One job per member and iteration predicts every training split (one model load and torch import instead of
# one per split: about 2 s of each 4-5 s job on the embedded default, on the path between iterations).
rule predict_member_logits:
    input:
        model=lambda w: model_file(w.iteration, 2, w.member),
        features=lambda w: [f for d, s in train_group_splits() for f in member_feature_files(w.member, d, s)],
    output:
        [member_logits_file("{iteration}", "{member}", d, s) for d, s in train_group_splits()],
    wildcard_constraints:
        # only configured members (never 'ensemble', which names the averages' folder)
        member="|".join(re.escape(name) for name in member_names()),
    params:
        cfg=as_json({k: config["pseudo_labels"][k] for k in ("network", "hop_seconds")}),
        features=[feature_dir(d, s) for d, s in train_group_splits()],
        splits=[f"{d}/{s}" for d, s in train_group_splits()],
        device=config["training"]["accelerator"],
    threads: config["training"]["threads"]
    priority: PRIORITY["pseudo_labels"]
    resources:
        gpu=1,
        mem_mb=4000,
    log:
        log_file("predict_member_logits", "iter{iteration}", "{member}"),
    benchmark:
        benchmark_file("predict_member_logits", "iter{iteration}", "{member}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib predict-logits --model {input.model} --features {params.features} --output {output}"
        " --config-json {params.cfg:q} --iteration {wildcards.iteration} --member {wildcards.member}"
        " --splits {params.splits} --device {params.device} --threads {threads} > {log} 2>&1"


rule average_pseudo_labels:
    input:
        lambda w: [member_logits_file(w.iteration, m, w.dataset, w.split) for m in member_names()],
    output:
        pseudo_label_file("{iteration}", "{dataset}", "{split}"),
    params:
        cfg=as_json({"average": config["pseudo_labels"]["average"]}),
    threads: 1
    priority: PRIORITY["pseudo_labels"]
    resources:
        mem_mb=4000,
    log:
        log_file("average_pseudo_labels", "iter{iteration}", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("average_pseudo_labels", "iter{iteration}", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib average-pseudo-labels --members {input} --output {output} --iteration {wildcards.iteration}"
        " --config-json {params.cfg:q} > {log} 2>&1"


# The pseudo-labels that training consumes: those of every iteration but the last (the last iteration's
# members produce none unless a file is requested explicitly, e.g. pseudo_label_file(n, ...)).
rule pseudo_labels:
    localrule: True
    input:
        [pseudo_label_file(i, d, s) for i in iterations()[:-1] for d, s in train_group_splits()],
