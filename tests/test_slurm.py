"""The SLURM profile on a real scheduler: a part of the real workflow submitted job by job to a local cluster.

The cluster (tests/slurm_cluster.py) is started by the test and stopped afterwards; where it cannot start (no
SLURM packages, not root) the test is skipped with the reason. The workflow runs from a temporary copy with a tiny
configuration, through ``--profile profiles/slurm`` unchanged, plus test-only flags: faster status polling, kept
SLURM logs, and a partition file (SNAKEMAKE_SLURM_PARTITIONS) that routes GPU jobs to the ``gpu`` partition.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from slurm_cluster import ClusterStartError, local_cluster, unavailable_reason

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
# The embedded backbone: synthesize -> resample, validate_metadata -> cache_features, cache_stream ->
# pretrain_backbone (declares a GPU). Every level of the chain costs a few status polls (the plugin's poll interval
# grows by 10 s per poll).
TARGET = "results/backbone/atst.pt"
RUN_TIMEOUT_S = 540
TINY_CONFIG = {
    "datasets": {"desed": {"synthetic": {"sizes": {
        "synth_train": 4, "strong_real": 4, "weak": 4, "unlabeled": 4,
        "synth_val": 4, "devtest": 4, "eval": 4, "tagging": 8,
    }}}},
    "model": {"backbones": {"atst": {"pretrain": {"epochs": 1, "batch_size": 4, "lr": 0.001}}}},
}
# Site description for the plugin's partition selection (the format of docs/cluster.md): GPU jobs fit only `gpu`.
PARTITIONS = {"partitions": {
    "cpu": {"max_runtime": 1440, "max_mem_mb": 64000, "max_gpu": 0},
    "gpu": {"max_runtime": 2880, "max_mem_mb": 64000, "max_gpu": 1},
}}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
SBATCH = re.compile(r"sbatch call: (sbatch .*?--comment (\S+) .*)")


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"local SLURM cluster unavailable: {reason}")
    try:
        with local_cluster(start_timeout=60) as running:
            yield running
    except ClusterStartError as exc:
        pytest.skip(f"local SLURM cluster did not start: {exc}")


def planned_jobs(output: str) -> dict[str, dict[str, str]]:
    """rule -> {resource: value}, from the job listing of a snakemake run (the rule's last job listed)."""
    jobs: dict[str, dict[str, str]] = {}
    rule = None
    for line in output.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line)
        if head:
            rule = head.group(1)
        elif rule and line.startswith("    resources: "):
            jobs[rule] = dict(item.split("=", 1) for item in line.split(": ", 1)[1].split(", "))
    return jobs


def minutes(time_limit: str) -> int:
    """SLURM TimeLimit '[D-]HH:MM:SS' -> minutes."""
    days, _, clock = time_limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + s // 60


def test_profile_submits_workflow_jobs_to_slurm(cluster, tmp_path, copy_workflow):
    root = copy_workflow(tmp_path / "wf")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    (root / "partitions.yaml").write_text(yaml.safe_dump(PARTITIONS))
    env = {
        **cluster.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cluster.env['PATH']}",
        "SNAKEMAKE_SLURM_PARTITIONS": str(root / "partitions.yaml"),
    }
    command = [
        sys.executable, "-m", "snakemake", "--profile", str(PROFILE), "--configfile", "tiny.yaml", "--verbose",
        "--slurm-keep-successful-logs", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1", TARGET,
    ]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    wall_s = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (tmp_path / "snakemake.log").write_text(log)
    assert proc.returncode == 0, f"snakemake failed ({wall_s:.0f} s):\n{log[-6000:]}\n{cluster.log_tail()}"
    print(f"SLURM run of {TARGET}: {wall_s:.1f} s wall")

    backbone = torch.load(root / TARGET, map_location="cpu", weights_only=False)
    assert isinstance(backbone, dict) and backbone, f"{TARGET}: expected a non-empty dict, got {type(backbone)}"

    # Every job of the run went through sbatch: one SLURM job id per scheduled job, none ran locally.
    jobs = planned_jobs(log)
    submitted = SUBMITTED.findall(log)
    n_jobs = int(re.search(r"^total\s+(\d+)$", log, re.MULTILINE).group(1))
    assert len(submitted) == n_jobs >= 4, f"{len(submitted)} submissions for {n_jobs} jobs"
    slurm_ids = [slurm_id for _, slurm_id, _ in submitted]
    for _, slurm_id, slurm_log in submitted:
        assert Path(slurm_log).is_file(), f"SLURM log of job {slurm_id} missing: {slurm_log}"

    # slurmctld's records: every job completed under the run's job name.
    queue = {job["id"]: job for job in cluster.queue()}
    assert set(slurm_ids) <= set(queue), f"jobs unknown to slurmctld: {set(slurm_ids) - set(queue)}"
    assert {queue[i]["state"] for i in slurm_ids} == {"COMPLETED"}
    assert len({queue[i]["name"] for i in slurm_ids}) == 1, "one run id (job name) for all jobs of the run"

    # GPU requests: exactly the rules that declare a `gpu` resource asked for a GPU, and got the gpu partition.
    gpu_rules = {rule for rule, resources in jobs.items() if "gpu" in resources}
    assert "pretrain_backbone" in gpu_rules, f"the run has no GPU-declaring rule: {jobs}"
    calls = {comment: call for call, comment in SBATCH.findall(log)}
    assert len(calls) == n_jobs
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for slurm_id in slurm_ids:
        record = cluster.job_record(slurm_id)
        comment = queue[slurm_id]["comment"]
        rule = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment).group(1)
        call = calls[comment]
        assert "--requeue" in call and record["Requeue"] == "1", f"{rule}: requeue (profile slurm-requeue)"
        if rule in gpu_rules:
            assert "--gpus=1" in call, f"{rule}: {call}"
            assert record.get("TresPerJob") == "gres:gpu:1", f"{rule}: {record.get('TresPerJob')}"
            assert record["Partition"] == "gpu", f"{rule} ran on {record['Partition']}"
        else:
            assert "--gpus" not in call and "TresPerJob" not in record, f"{rule} must not request a GPU"
            assert record["Partition"] == "cpu", f"{rule} ran on {record['Partition']}"
        # Time limit: the profile's set-resources value where it names the rule, else what Snakemake resolved.
        runtime = profile["set-resources"].get(rule, {}).get("runtime", int(jobs[rule]["runtime"]))
        assert minutes(record["TimeLimit"]) == runtime, f"{rule}: TimeLimit {record['TimeLimit']} != {runtime} min"

    # The outputs and their provenance are complete: a second invocation has nothing to do.
    again = subprocess.run(
        [*command[:-1], "--dry-run", TARGET], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
