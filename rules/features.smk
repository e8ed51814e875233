# Features and backbone: mel caches of the splits that training reads, the backbone weights, and the frozen
# backbone embeddings that stage 1 trains on.
#
# Feature caches are built for the splits read from cached features: the four training groups, the
# validation splits and the pretrain split. Test splits are not cached: they are scored from their audio
# (sedlib.models.windowing.predict_clip windows recordings of any length), so no long-clip array is built
# for them.
#
# Each backbone that a member uses (model.backbones, training.members[*].backbone) gets results/backbone/{name}.pt
# from exactly one rule, chosen by its `source`: pretrain_backbone (embedded default: the tiny ATST-Frame trained
# on the pretrain split) or fetch_backbone (an official checkpoint, by path or url + checksum); each rule's
# {backbone} wildcard admits only the names of its source, so every file has one producer. Feature caches hold
# the CRNN stream and the streams of the used backbones' frontends; embedding caches are per backbone.


rule cache_features:
    input:
        durations=durations_file("{dataset}", "{split}"),
    output:
        mel=feature_files("{dataset}", "{split}", ["crnn"])["crnn"],
        index=feature_files("{dataset}", "{split}", ["crnn"])["index"],
    params:
        audio=lambda w: resampled_dir(w.dataset, w.split),
        out=lambda w: feature_dir(w.dataset, w.split),
        cfg=as_json({"frontends": {"crnn": config["frontends"]["crnn"]}, "audio": config["audio"]}),
    threads: config["audio"]["threads"]
    priority: split_priority
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


# The stream of a backbone frontend, in the same folder (its own index): a backbone of a new kind adds a stream
# without re-running the others.
rule cache_stream:
    input:
        durations=durations_file("{dataset}", "{split}"),
    output:
        mel=feature_dir("{dataset}", "{split}") + "/{stream}_mel.npy",
        index=feature_dir("{dataset}", "{split}") + "/{stream}_index.tsv",
    wildcard_constraints:
        stream="|".join(s for s in feature_streams() if s != "crnn"),
    params:
        audio=lambda w: resampled_dir(w.dataset, w.split),
        out=lambda w: feature_dir(w.dataset, w.split),
        cfg=lambda w: as_json({"frontends": {w.stream: config["frontends"][w.stream]}, "audio": config["audio"]}),
    threads: config["audio"]["threads"]
    priority: split_priority
    resources:
        mem_mb=4000,
    log:
        log_file("cache_stream", "{dataset}", "{split}", "{stream}"),
    benchmark:
        benchmark_file("cache_stream", "{dataset}", "{split}", "{stream}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib cache-features --durations {input.durations:q} --audio-dir {params.audio:q}"
        " --out-dir {params.out:q} --config-json {params.cfg:q} --threads {threads} > {log} 2>&1"


if backbones_with_source("pretrain"):

    rule pretrain_backbone:
        input:
            features=lambda w: list(feature_files(*pretrain_split(), ["crnn", backbone_frontend(w.backbone)]).values()),
            metadata=metadata_file(*pretrain_split()),
        output:
            backbone_file("{backbone}"),
        wildcard_constraints:
            backbone="|".join(backbones_with_source("pretrain")),
        params:
            features=feature_dir(*pretrain_split()),
            cfg=lambda w: as_json(
                {
                    "backbone": backbone_cfg(w.backbone),
                    "frontends": backbone_frontends_cfg(w.backbone),
                    "clip_seconds": config["audio"]["clip_seconds"],
                    "seed": config["seed"],
                }
            ),
        threads: 2  # everything downstream waits for it: on the 2-core default 74 s instead of 154 s with 1
        priority: PRIORITY["backbone"]
        resources:
            gpu=1,
            mem_mb=4000,
        log:
            log_file("pretrain_backbone", "{backbone}"),
        benchmark:
            benchmark_file("pretrain_backbone", "{backbone}")
        conda:
            SEDLIB_ENV
        shell:
            "python -m sedlib pretrain-backbone --features-dir {params.features:q} --metadata {input.metadata:q}"
            " --out {output:q} --config-json {params.cfg:q} --threads {threads} > {log} 2>&1"


if backbones_with_source("checkpoint"):

    rule fetch_backbone:
        input:
            # a local checkpoint is tracked as a file; a url is fetched (and checksum-verified) by the command
            lambda w: [p for p in [backbone_cfg(w.backbone)["checkpoint"].get("path")] if p],
        output:
            backbone_file("{backbone}"),
        wildcard_constraints:
            backbone="|".join(backbones_with_source("checkpoint")),
        params:
            cfg=lambda w: as_json(
                {"backbone": backbone_cfg(w.backbone), "frontends": backbone_frontends_cfg(w.backbone)}
            ),
        threads: 1
        resources:
            mem_mb=4000,
        log:
            log_file("fetch_backbone", "{backbone}"),
        benchmark:
            benchmark_file("fetch_backbone", "{backbone}")
        conda:
            SEDLIB_ENV
        shell:
            "python -m sedlib fetch-backbone --out {output:q} --config-json {params.cfg:q} > {log} 2>&1"


rule cache_embeddings:
    input:
        features=lambda w: list(feature_files(w.dataset, w.split, ["crnn", backbone_frontend(w.backbone)]).values()),
        backbone=backbone_file("{backbone}"),
    output:
        npy=embedding_file("{backbone}", "{dataset}", "{split}"),
        meta=embedding_file("{backbone}", "{dataset}", "{split}").removesuffix(".npy") + ".json",
    wildcard_constraints:
        backbone="|".join(backbone_names()),
    params:
        features=lambda w: feature_dir(w.dataset, w.split),
        cfg=lambda w: as_json(
            {"frontends": backbone_frontends_cfg(w.backbone), "clip_seconds": config["audio"]["clip_seconds"]}
        ),
    threads: config["training"]["threads"]
    priority: PRIORITY["embeddings"]
    resources:
        gpu=1,
        mem_mb=4000,
    log:
        log_file("cache_embeddings", "{backbone}", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("cache_embeddings", "{backbone}", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib cache-embeddings --features-dir {params.features:q} --backbone {input.backbone:q}"
        " --out {output.npy:q} --config-json {params.cfg:q} --threads {threads} > {log} 2>&1"
