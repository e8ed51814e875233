# Features and backbone: mel caches of the splits that training reads, the backbone weights, and the frozen
# backbone embeddings that stage 1 trains on.
#
# Feature caches are built for the splits read from cached features: the four training groups, the
# validation splits and the pretrain split. Test splits are not cached: they are scored from their audio
# (sedlib.models.windowing.predict_clip windows recordings of any length), so no long-clip array is built
# for them.
#
# results/backbone/backbone.pt comes from exactly one rule, chosen by model.backbone.source:
# pretrain_backbone (embedded default: the tiny ATST-Frame trained on the pretrain split) or fetch_backbone
# (an official checkpoint, by path or url + checksum). Only that rule is defined, so the DAG has one producer.


rule cache_features:
    input:
        durations=durations_file("{dataset}", "{split}"),
    output:
        crnn=feature_files("{dataset}", "{split}")["crnn"],
        atst=feature_files("{dataset}", "{split}")["atst"],
        index=feature_files("{dataset}", "{split}")["index"],
    params:
        audio=lambda w: resampled_dir(w.dataset, w.split),
        out=lambda w: feature_dir(w.dataset, w.split),
        cfg=as_json({"frontends": config["frontends"], "audio": config["audio"]}),
    threads: 2
    resources:
        mem_mb=4000,
    log:
        log_file("cache_features", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("cache_features", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib cache-features --durations {input.durations:q} --audio-dir {params.audio:q}"
        " --out-dir {params.out:q} --config-json {params.cfg:q} --threads {threads} > {log} 2>&1"


if config["model"]["backbone"]["source"] == "pretrain":

    rule pretrain_backbone:
        input:
            atst=feature_files(*pretrain_split())["atst"],
            index=feature_files(*pretrain_split())["index"],
            metadata=metadata_file(*pretrain_split()),
        output:
            backbone_file(),
        params:
            features=lambda w, input: os.path.dirname(input.index),
            cfg=as_json(
                {
                    "backbone": config["model"]["backbone"],
                    "atst_frontend": config["frontends"]["atst"],
                    "clip_seconds": config["audio"]["clip_seconds"],
                    "seed": config["seed"],
                }
            ),
        threads: config["training"]["threads"]
        resources:
            gpu=1,
            mem_mb=4000,
        log:
            log_file("pretrain_backbone"),
        benchmark:
            benchmark_file("pretrain_backbone")
        conda:
            SEDLIB_ENV
        shell:
            "python -m sedlib pretrain-backbone --features-dir {params.features:q} --metadata {input.metadata:q}"
            " --out {output:q} --config-json {params.cfg:q} --threads {threads} > {log} 2>&1"

else:

    rule fetch_backbone:
        input:
            # a local checkpoint is tracked as a file; a url is fetched (and checksum-verified) by the command
            [p for p in [config["model"]["backbone"]["checkpoint"].get("path")] if p],
        output:
            backbone_file(),
        params:
            cfg=as_json({"backbone": config["model"]["backbone"], "atst_frontend": config["frontends"]["atst"]}),
        threads: 1
        resources:
            mem_mb=4000,
        log:
            log_file("fetch_backbone"),
        benchmark:
            benchmark_file("fetch_backbone")
        conda:
            SEDLIB_ENV
        shell:
            "python -m sedlib fetch-backbone --out {output:q} --config-json {params.cfg:q} > {log} 2>&1"


rule cache_embeddings:
    input:
        atst=feature_files("{dataset}", "{split}")["atst"],
        index=feature_files("{dataset}", "{split}")["index"],
        backbone=backbone_file(),
    output:
        npy=embedding_file("{dataset}", "{split}"),
        meta=embedding_file("{dataset}", "{split}").removesuffix(".npy") + ".json",
    params:
        features=lambda w: feature_dir(w.dataset, w.split),
        cfg=as_json({"atst": config["frontends"]["atst"], "clip_seconds": config["audio"]["clip_seconds"]}),
    threads: config["training"]["threads"]
    resources:
        gpu=1,
        mem_mb=4000,
    log:
        log_file("cache_embeddings", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("cache_embeddings", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib cache-embeddings --features-dir {params.features:q} --backbone {input.backbone:q}"
        " --out {output.npy:q} --config-json {params.cfg:q} --threads {threads} > {log} 2>&1"
