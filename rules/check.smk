# Data check (docs/own_data.md): before a local dataset is resampled, `check-data` lists what its folder holds
# against its configuration (missing / unlisted / unreadable audio, sample rates, channels, hours) and stops the
# workflow early when a scored split misses ground-truth clips (unless evaluation.missing_audio is drop).


rule check_data:
    """Report of one local dataset; resample waits for it (raw_ready)."""
    output:
        data_check_file("{dataset}"),
    wildcard_constraints:
        dataset="|".join(local_datasets()) or "(?!)",
    params:
        cfg=lambda w: as_json(
            {"datasets": {w.dataset: dataset_cfg(w.dataset)}, "missing_audio": config["evaluation"]["missing_audio"]}
        ),
    log:
        log_file("check_data", "{dataset}"),
    benchmark:
        benchmark_file("check_data", "{dataset}")
    conda:
        SEDLIB_ENV
    shell:
        "python -m sedlib check-data --config-json {params.cfg:q} --out {output:q} > {log} 2>&1"
