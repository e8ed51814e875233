"""Partial re-runs: which jobs of the real embedded DAG a configuration or local-data edit schedules.

Every rule passes exactly the configuration it reads as a JSON ``params`` value, so Snakemake's params and input
rerun triggers re-run the rules whose settings changed and everything downstream, and nothing else. The module
fixture builds a "finished" workflow without running any job: it creates every output of the full DAG as an empty
file or folder and records provenance with ``snakemake --touch --forceall``. Each test edits the configuration of
a copy of that state and reads Snakemake's plan from ``snakemake --summary`` (per output: "update pending" or
"no update"), i.e. what ``snakemake --profile profiles/local`` would run next. A second fixture does the same for
the embedded configuration switched to ``source: local``, whose tests edit the data on disk instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import dag_jobs

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TIMEOUT_S = 180



def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_snakemake(root: Path, *args: str) -> str:
    proc = subprocess.run(
        [*SNAKEMAKE, *args], cwd=root, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def plan(root: Path) -> dict[str, tuple[str, bool]]:
    """output path -> (rule, will it be (re)built), for every output of the default target's DAG."""
    result = {}
    for line in run_snakemake(root, "--cores", "1", "--summary").splitlines():
        fields = line.split("\t")
        if len(fields) == 6 and fields[0] != "output_file":
            result[fields[0]] = (fields[2], fields[5] == "update pending")
    assert result, "snakemake --summary listed no outputs"
    return result


def pending(root: Path) -> tuple[set[str], dict[str, tuple[str, bool]]]:
    current = plan(root)
    return {path for path, (_, todo) in current.items() if todo}, current


def edit_config(root: Path, edit) -> None:
    path = root / "workflow_config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def under(paths, *prefixes: str) -> set[str]:
    return {p for p in paths if p.startswith(prefixes)}


def of_members(paths, *members: str) -> set[str]:
    """The paths of the given members' jobs: folders '{member}/' and model names '{member}_...'."""
    return {p for p in paths if any(f"/{m}/" in p or f"/{m}_" in p for m in members)}


# Outputs that no training change may touch: data, features, backbones, embeddings.
UPSTREAM = ("results/data/", "results/features/", "results/backbone/", "results/embeddings/")


def finish(root: Path) -> Path:
    """Make every output of ``root``'s DAG exist, with provenance recorded as if each job had run."""
    outputs = sorted({out for _, _, job_outputs in dag_jobs(root, TIMEOUT_S) for out in job_outputs})
    for path, is_directory in outputs:
        target = root / path
        if is_directory:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    run_snakemake(root, "--cores", "1", "--touch", "--forceall", "--quiet")
    todo, current = pending(root)
    assert len(current) == len(outputs) and not todo, f"unchanged config must schedule nothing, got {sorted(todo)}"
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, copy_workflow) -> Path:
    """A workflow copy whose every output exists, with provenance recorded as if each job had run."""
    return finish(copy_workflow(tmp_path_factory.mktemp("finished")))


@pytest.fixture
def state(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished state (copy2 keeps the mtimes that the touch run ordered)."""
    return Path(shutil.copytree(finished, tmp_path / "wf", symlinks=True))


LOCAL_ROOT = "local_desed"


@pytest.fixture(scope="module")
def finished_local(tmp_path_factory, copy_workflow) -> Path:
    """The finished state of the embedded config switched to `source: local` (real DESED on disk, in miniature).

    Each split gets two placeholder audio files and its metadata / durations files: a dry run only looks at
    names, sizes and times.
    """
    root = copy_workflow(tmp_path_factory.mktemp("finished_local"))

    def to_local(config):
        dataset = config["datasets"]["desed"]
        dataset.update(source="local", root=LOCAL_ROOT)
        for split in dataset["splits"].values():
            audio = root / LOCAL_ROOT / split["audio"]
            audio.mkdir(parents=True, exist_ok=True)
            for index in range(2):
                (audio / f"clip{index}.wav").write_bytes(b"RIFF" + bytes(index))
            for key in ("metadata", "durations"):
                if split.get(key):
                    path = root / LOCAL_ROOT / split[key]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("filename\n")

    edit_config(root, to_local)
    return finish(root)


@pytest.fixture
def local_state(finished_local: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_local, tmp_path / "wf", symlinks=True))


def rules_of(paths, current) -> set[str]:
    return {current[p][0] for p in paths}


def test_local_metadata_edit_revalidates_and_reevaluates_that_split_only(local_state):
    metadata = local_state / LOCAL_ROOT / "metadata" / "validation" / "validation.tsv"  # devtest (role: test)
    metadata.write_text("filename\tonset\toffset\tevent_label\nclip0.wav\t0.0\t1.0\tDog\n")
    todo, current = pending(local_state)
    assert "results/data/desed/devtest/metadata.tsv" in todo and "results/eval_psds.json" in todo
    assert rules_of(todo, current) <= {"validate_metadata", "evaluate", "plot"}, sorted(rules_of(todo, current))
    assert under(todo, "results/data/") == {"results/data/desed/devtest/metadata.tsv"}


@pytest.mark.parametrize("change", ["add", "remove", "replace"])
def test_local_audio_change_reresamples_that_split_only(local_state, change):
    audio = local_state / LOCAL_ROOT / "audio" / "train" / "weak"
    if change == "add":
        (audio / "clip9.flac").write_bytes(b"new")
    elif change == "remove":
        (audio / "clip1.wav").unlink()
    else:
        (audio / "clip1.wav").write_bytes(b"RIFF-edited")
    todo, current = pending(local_state)
    resampled = {p for p in todo if current[p][0] == "resample"}
    assert resampled == {"results/data/desed/weak/durations.tsv"}
    # Only the weak split's own chain follows: its metadata, partition, features, embeddings (then training).
    assert {p for p in under(todo, "results/data/", "results/features/", "results/embeddings/")
            if "/weak" not in p} == set()
    assert "results/backbone/atst.pt" in current and "results/backbone/atst.pt" not in todo


def test_stage2_hyperparameter_reruns_stage2_and_downstream_only(state):
    edit_config(state, lambda c: c["training"]["stage2"].update(lr_rnn=c["training"]["stage2"]["lr_rnn"] * 2))
    todo, current = pending(state)
    stage2 = {p for p, (rule, _) in current.items() if rule == "train_stage2"}
    assert stage2 and stage2 <= todo, "every stage-2 model (all members, all iterations) must be retrained"
    assert not under(todo, *UPSTREAM), f"data/features/backbone must not re-run: {sorted(under(todo, *UPSTREAM))}"
    assert not under(todo, "results/iter1/stage1/"), "stage 1 of iteration 1 does not depend on stage 2"
    # Downstream of every stage-2 model: pseudo-labels, iteration 2 (trained on them), scores, the final metrics.
    assert under(current, "results/iter1/pseudo_labels/") <= todo
    assert under(current, "results/iter2/") <= todo
    iter1_scores = under(current, "results/iter1/scores/")
    stage1_scores = {p for p in iter1_scores if "_stage1_" in p}
    assert stage1_scores and iter1_scores - stage1_scores <= todo
    assert not stage1_scores & todo, "the scores of iteration 1's stage-1 models do not depend on stage 2"
    assert "results/eval_psds.json" in todo


def test_iteration2_override_reruns_iteration2_only(state):
    edit_config(state, lambda c: c["training"].setdefault("overrides", {}).update(
        iter2={"stage1": {"lr_cnn": 0.0005, "distillation": {"weight": 1.5}}}))
    todo, current = pending(state)
    stage1_iter2 = {p for p, (rule, _) in current.items() if rule == "train_stage1" and p.startswith("results/iter2/")}
    assert stage1_iter2 and stage1_iter2 <= todo, "iteration 2's stage-1 models retrain with the override"
    assert not under(todo, *UPSTREAM, "results/iter1/"), f"iteration 1 must not re-run: {sorted(under(todo, 'results/iter1/'))}"
    assert under(current, "results/iter2/") <= todo and "results/eval_psds.json" in todo


def test_median_window_reruns_only_evaluation(state):
    def widen(config):
        config["evaluation"]["median_window"] = 9  # from 7 for every class

    edit_config(state, widen)
    todo, current = pending(state)
    assert "results/eval_psds.json" in todo
    # Median filtering is post-processing inside `evaluate` (scores are stored before it): nothing else re-runs
    # but the figures drawn from the post-processed detections.
    evaluation = {p for p, (rule, _) in current.items() if rule in ("evaluate", "plot")}
    extra = todo - evaluation
    assert not extra, f"rules re-run besides evaluate/plot: {sorted({current[p][0] for p in extra})}"


def test_added_member_runs_only_its_jobs_and_the_ensemble(state):
    edit_config(state, lambda c: c["training"]["members"].append({"name": "seed3", "seed": 3}))
    todo, current = pending(state)
    new = of_members(current, "seed3")
    assert new and new <= todo, "the new member trains, predicts and is scored"
    assert not under(todo, *UPSTREAM)
    old_iter1 = of_members(under(current, "results/iter1/"), "seed1", "seed2")
    assert old_iter1 and not (old_iter1 & todo), f"existing members re-run: {sorted(old_iter1 & todo)}"
    # The ensemble of iteration 1 changes, so its pseudo-labels and scores, and iteration 2 (trained on those
    # pseudo-labels, every member) are rebuilt.
    assert under(current, "results/iter1/pseudo_labels/ensemble/", "results/iter1/scores/ensemble/") <= todo
    assert under(current, "results/iter2/") <= todo
    assert "results/eval_psds.json" in todo


def test_member_with_another_backbone_runs_only_that_backbone_and_member(state):
    def add(config):
        config["model"]["backbones"]["wide"] = {**config["model"]["backbones"]["atst"], "embed_dim": 96}
        config["training"]["members"].append({"name": "seed3", "seed": 3, "backbone": "wide"})

    edit_config(state, add)
    todo, current = pending(state)
    new_backbone = {p for p in current if p.startswith(("results/backbone/wide", "results/embeddings/wide/"))}
    assert "results/backbone/wide.pt" in new_backbone and len(new_backbone) > 1 and new_backbone <= todo
    # features (the new backbone reads the same ATST stream), the old backbone and its embeddings stay
    assert not under(todo, "results/data/", "results/features/", "results/backbone/atst", "results/embeddings/atst/")
    assert rules_of(under(todo, "results/iter1/stage1/"), current) == {"train_stage1"}
    old_iter1 = of_members(under(current, "results/iter1/"), "seed1", "seed2")
    assert old_iter1 and not (old_iter1 & todo), f"members of the unchanged backbone re-run: {sorted(old_iter1 & todo)}"
    new = of_members(current, "seed3")
    assert new and new <= todo
    # the iteration-1 ensemble now mixes backbones: its pseudo-labels and scores, and iteration 2, are rebuilt
    assert under(current, "results/iter1/pseudo_labels/ensemble/", "results/iter1/scores/ensemble/") <= todo
    assert "results/eval_psds.json" in todo


def test_beats_member_runs_only_the_beats_stream_backbone_member_and_ensemble(state):
    def add(config):
        config["model"]["backbones"]["beats"] = {**config["model"]["backbones"]["atst"], "kind": "beats"}
        config["training"]["members"].append({"name": "beats1", "seed": 1, "backbone": "beats"})

    edit_config(state, add)
    todo, current = pending(state)
    # the Kaldi fbank stream (its own cache_stream jobs), the BEATs backbone and its embeddings are new
    new_features = under(todo, "results/features/")
    assert new_features and all(p.endswith(("/beats_mel.npy", "/beats_index.tsv")) for p in new_features)
    assert rules_of(new_features, current) == {"cache_stream"}
    assert {"results/backbone/beats.pt", *under(current, "results/embeddings/beats/")} <= todo
    assert not under(todo, "results/data/", "results/backbone/atst", "results/embeddings/atst/")
    old_iter1 = of_members(under(current, "results/iter1/"), "seed1", "seed2")
    assert old_iter1 and not (old_iter1 & todo), f"ATST members re-run: {sorted(old_iter1 & todo)}"
    new = of_members(current, "beats1")
    assert new and new <= todo
    assert under(current, "results/iter1/pseudo_labels/ensemble/", "results/iter1/scores/ensemble/") <= todo
    assert "results/eval_psds.json" in todo


def test_member_override_reruns_that_member_and_downstream_only(state):
    edit_config(state, lambda c: c["training"]["members"][1].update(overrides={"stage2": {"lr_cnn": 0.0007}}))
    todo, current = pending(state)
    assert not under(todo, *UPSTREAM) and not under(todo, "results/iter1/stage1/")
    assert under(current, "results/iter1/stage2/seed2/") <= todo, sorted(under(current, "results/iter1/stage2/seed2/") - todo)
    seed1 = of_members(under(current, "results/iter1/"), "seed1")
    assert seed1 and not (seed1 & todo), f"the other member re-runs: {sorted(seed1 & todo)}"


def test_synthetic_size_reruns_the_whole_chain(state):
    edit_config(state, lambda c: c["datasets"]["desed"]["synthetic"]["sizes"].update(
        synth_train=c["datasets"]["desed"]["synthetic"]["sizes"]["synth_train"] + 8))
    todo, current = pending(state)
    assert "results/data/desed/raw/manifest.json" in todo
    # Every artifact derives from the synthesized DESED audio (the backbone is pretrained on its tagging split), but
    # the MAESTRO dataset's own data and feature caches.
    maestro_upstream = under(current, "results/data/maestro/", "results/features/maestro/")
    assert maestro_upstream and not (maestro_upstream & todo), sorted(maestro_upstream & todo)
    assert todo == set(current) - maestro_upstream, sorted(set(current) - maestro_upstream - todo)
