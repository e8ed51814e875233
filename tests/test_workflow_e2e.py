"""The whole DAG, for real, on a tiny version of the embedded default: data -> features -> backbone -> stage 1 ->
stage 2 -> pseudo-labels -> iteration 2 -> scores -> eval_psds.json -> plots -> HTML report; then a no-op re-run.

The default sizes take ~15 minutes on 2 cores (``-m slow`` runs them); this tiny variant keeps every rule and
both iterations and two members, with few clips and one short epoch per stage.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = {
    "datasets": {
        "desed": {
            "synthetic": {
                "sizes": {"synth_train": 24, "strong_real": 12, "weak": 20, "unlabeled": 24,
                          "synth_val": 16, "devtest": 40, "eval": 40, "tagging": 40},
            }
        },
        "maestro": {"synthetic": {"sizes": {"maestro_train": 3, "maestro_val": 3}, "recording_seconds": [25.0, 30.0]}},
    },
    "model": {"backbones": {"atst": {"pretrain": {"epochs": 1, "batch_size": 16, "lr": 0.003}}}},
    "training": {
        "stage1": {"epochs": 1, "batch_sizes": {"maestro": 2, "strong_real": 1, "synthetic": 1, "weak": 2, "unlabeled": 2}},
        "stage2": {"epochs": 1, "batch_sizes": {"maestro": 2, "strong_real": 1, "synthetic": 1, "weak": 2, "unlabeled": 2}},
    },
    "evaluation": {"bootstrap": {"n": 3, "seed": 0}, "activity_plots": 1},
}


def snakemake(workdir: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def run_workflow(workdir: Path, override: dict, timeout: int) -> dict:
    (workdir / "override.yaml").write_text(yaml.safe_dump(override))
    done = snakemake(workdir, "--cores", "2", "--configfile", "override.yaml", timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((workdir / "results" / "eval_psds.json").read_text())


def check_results(workdir: Path, result: dict) -> None:
    members, iterations = ["seed1", "seed2"], ["1", "2"]
    expected_models = {f"{m}_{net}" for m in members for net in ("stage1_teacher", "teacher")} | {"ensemble"}
    for iteration in iterations:
        models = result["results"][f"iter{iteration}"]
        assert set(models) == expected_models
        for per_split in models.values():
            assert set(per_split) == {"desed/devtest", "desed/eval", "maestro/maestro_val"}
            for split, metrics in per_split.items():
                for name in ("mpauc",) if split.startswith("maestro/") else ("psds1", "psds2"):
                    value = metrics[name]["value"]
                    low, high = metrics[name]["ci95"]
                    assert 0.0 <= low <= high <= 1.0 and 0.0 <= value <= 1.0
    claims = result["claims"]["desed/eval"]
    assert set(claims) == {"iter1", "iter2", "iteration_last_vs_first"}
    assert set(claims["iter2"]["stage2_vs_stage1"]) == set(members) and "ensemble_vs_best_member" in claims["iter2"]
    plots = workdir / "results" / "plots"
    assert (plots / "psd_roc_comparison.png").stat().st_size > 10_000
    assert (workdir / "results" / "iter2" / "stage2" / "seed2" / "model.pt").is_file()


def test_tiny_workflow_end_to_end_then_noop(copy_workflow, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    result = run_workflow(workdir, TINY, timeout=1500)
    check_results(workdir, result)

    noop = snakemake(workdir, "--cores", "2", "--configfile", "override.yaml", "-n", timeout=300)
    assert noop.returncode == 0 and "Nothing to be done" in noop.stdout + noop.stderr

    report = snakemake(workdir, "--cores", "1", "--configfile", "override.yaml", "--report", "results/report.html",
                       timeout=600)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "results" / "report.html").read_text(errors="replace")
    assert "psd_roc_comparison.png" in html


@pytest.mark.slow
def test_default_workflow_end_to_end(copy_workflow, tmp_path):
    """The embedded default as shipped (about 15 minutes on 2 cores)."""
    workdir = copy_workflow(tmp_path / "wf")
    result = run_workflow(workdir, {}, timeout=3600)
    check_results(workdir, result)
