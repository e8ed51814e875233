# Data: raw audio and metadata (synthesized, downloaded or local) -> 16 kHz mono audio + measured durations ->
# validated metadata -> seeded train/val partition of weak splits. Library: sedlib/data/ (docs/data.md).


rule synthesize:
    """An embedded synthetic dataset, DESED-like or MAESTRO-like (synthetic.kind); manifest.json is written last (the
    whole raw tree is replaced)."""
    output:
        f"{R}/data/{{dataset}}/raw/manifest.json",
    wildcard_constraints:
        dataset="|".join(synthetic_datasets()) or "(?!)",
    params:
        cfg=lambda w: as_json({"seed": config["seed"], "dataset": dataset_cfg(w.dataset)}),
        root=lambda w: raw_root(w.dataset),
    threads: 8
    # every dataset's synthesis before the backbone: run later, the MAESTRO-like one (10 s) and its data jobs
    # (25 s) waited for the 2-thread pretraining and delayed stage 1 by 34 s
    priority: PRIORITY["synthesize"]
    resources:
        mem_mb=lambda w, threads: 1000 + 300 * threads,
    log:
        log_file("synthesize", "{dataset}"),
    benchmark:
        benchmark_file("synthesize", "{dataset}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib synthesize --config-json {params.cfg:q} --root {params.root:q} --threads {threads} > {log} 2>&1"


rule download:
    """One checksum-verified archive, extracted under the dataset root; the .done marker is written last."""
    output:
        f"{R}/data/{{dataset}}/downloads/{{archive}}.done",
    params:
        archive=lambda w: as_json(archive_cfg(w.dataset, w.archive)),
        root=lambda w: raw_root(w.dataset),
    # A checksum mismatch is final: no Snakemake retries, even under a profile that sets them. Transfer errors
    # are retried (resuming the .part file) inside the command.
    retries: 0
    log:
        log_file("download", "{dataset}", "{archive}"),
    benchmark:
        benchmark_file("download", "{dataset}", "{archive}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib download --archive-json {params.archive:q} --root {params.root:q} --marker {output:q} > {log} 2>&1"


rule resample:
    """Mono audio at audio.sample_rate in resampled_dir(); durations.tsv (measured) is written last."""
    input:
        lambda w: raw_ready(w.dataset) + local_audio_manifest(w.dataset, w.split),
    output:
        durations_file("{dataset}", "{split}"),
    params:
        audio=lambda w: split_raw_path(w.dataset, w.split, "audio"),
        out_dir=lambda w: resampled_dir(w.dataset, w.split),
        sample_rate=config["audio"]["sample_rate"],
    threads: config["audio"]["threads"]  # worker processes
    priority: split_priority
    resources:
        mem_mb=lambda w, threads: 500 + 300 * threads,
    log:
        log_file("resample", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("resample", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib resample --audio {params.audio:q} --out-dir {params.out_dir:q} --durations {output:q}"
        " --sample-rate {params.sample_rate} --threads {threads} > {log} 2>&1"


rule validate_metadata:
    """Validated copy of a labelled split's metadata (policy: docs/data.md)."""
    input:
        durations=durations_file("{dataset}", "{split}"),
        raw=lambda w: raw_ready(w.dataset),
        local=lambda w: local_metadata_files(w.dataset, w.split),
    output:
        metadata_file("{dataset}", "{split}"),
    params:
        cfg=lambda w: as_json({"classes": dataset_cfg(w.dataset)["classes"], "split": split_cfg(w.dataset, w.split),
                               **missing_audio_policy(w.dataset, w.split)}),
        metadata=lambda w: split_raw_path(w.dataset, w.split, "metadata"),
        provided=lambda w: split_raw_path(w.dataset, w.split, "durations"),
    priority: split_priority
    resources:
        mem_mb=1000,
    log:
        log_file("validate_metadata", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("validate_metadata", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib validate-metadata --metadata {params.metadata:q} --durations {input.durations:q}"
        " --provided-durations {params.provided:q} --config-json {params.cfg:q} --out {output:q} > {log} 2>&1"


rule split_weak:
    """Seeded train/val partition of a weak split (val_fraction of its clips, root seed)."""
    input:
        metadata_file("{dataset}", "{split}"),
    output:
        train=weak_part_file("{dataset}", "{split}", "train"),
        val=weak_part_file("{dataset}", "{split}", "val"),
    params:
        val_fraction=lambda w: split_cfg(w.dataset, w.split)["val_fraction"],
        seed=config["seed"],
    priority: split_priority
    resources:
        mem_mb=500,
    log:
        log_file("split_weak", "{dataset}", "{split}"),
    benchmark:
        benchmark_file("split_weak", "{dataset}", "{split}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib split-weak --metadata {input:q} --val-fraction {params.val_fraction} --seed {params.seed}"
        " --train-out {output.train:q} --val-out {output.val:q} > {log} 2>&1"
