"""cSEBBs post-processing (optional extra): the adapter on small synthetic score tables, the "never tune on a
scored split" guard of the configuration and of the DAG, and evaluate's side-by-side report."""

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import dag_jobs

from sedlib.cli import main as cli_main
from sedlib.config import ConfigError, load_config, validate_config
from sedlib.evaluation import metrics as M
from sedlib.evaluation import postprocess as P
from sedlib.evaluation import score_tables as S

HOP = 0.064
CLASSES = ["alarm", "dog", "speech"]


def synthetic_split(n_clips=8, noise=0.0, seed=0):
    """Ground truth (1-2 events of every other class per clip, on the 64 ms grid), durations (10 s) and raw score tables:
    sigmoid of +-3 logits inside / outside the events plus Gaussian logit noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    n_frames = int(np.ceil(10.0 / HOP))
    gt, durations, tables = {}, {}, {}
    for k in range(n_clips):
        clip = f"clip{k}"
        target = np.zeros((n_frames, len(CLASSES)))
        events = []
        for c, label in enumerate(CLASSES):
            if (k + c) % 2:  # each class in half of the clips, as in real data
                continue
            for start in sorted(rng.choice(np.arange(0, n_frames - 40, 40), size=rng.integers(1, 3), replace=False)):
                length = int(rng.integers(8, 35))
                target[start : start + length, c] = 1.0
                events.append((round(start * HOP, 3), round((start + length) * HOP, 3), label))
        logits = 6.0 * (target - 0.5) + noise * rng.standard_normal(target.shape)
        gt[clip], durations[clip] = sorted(events), 10.0
        tables[clip] = S.score_table(S.probabilities(logits.T), CLASSES, HOP, 10.0)
    return gt, durations, tables


# ----------------------------------------------------------------------------- configuration guard
@pytest.fixture()
def raw_config(repo_root):
    return yaml.safe_load((repo_root / "workflow_config.yaml").read_text())


@pytest.mark.parametrize("split, why", [("desed/devtest", "role is 'test'"), ("desed/synth_val", "evaluation.splits")])
def test_a_scored_split_is_refused_as_tune_split(raw_config, split, why):
    config = copy.deepcopy(raw_config)
    config["evaluation"]["splits"] = ["desed/devtest", "desed/eval"] + (["desed/synth_val"] if "splits" in why else [])
    config["evaluation"]["csebbs"] = {"enabled": True, "tune_split": split}
    with pytest.raises(ConfigError, match=f"tune_split.*'{split}' is a scored split.*{why}"):
        validate_config(config)


def test_tune_split_defaults_to_the_validation_split(raw_config):
    config = copy.deepcopy(raw_config)
    config["evaluation"]["csebbs"] = {"enabled": True}
    assert validate_config(config)["evaluation"]["csebbs"]["tune_split"] == "desed/synth_val"
    assert validate_config(config) == config  # a resolved configuration validates to itself (rules re-validate)


def test_enabled_without_a_validation_split_is_an_error_and_auto_is_off(raw_config):
    config = copy.deepcopy(raw_config)
    config["datasets"]["desed"]["splits"]["synth_val"]["role"] = "test"
    config["evaluation"]["csebbs"] = {"enabled": True}
    with pytest.raises(ConfigError, match="tune_split.*no split with role 'validation'"):
        validate_config(copy.deepcopy(config))
    config["evaluation"]["csebbs"] = {"enabled": "auto"}
    assert validate_config(config)["evaluation"]["csebbs"]["enabled"] is False


def test_auto_follows_whether_sebbs_is_importable(raw_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    for present in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (real(name, *a) if name != "sebbs" else
                                                                           (object() if present else None)))
        config = validate_config(copy.deepcopy(raw_config))
        assert config["evaluation"]["csebbs"]["enabled"] is present


# ----------------------------------------------------------------------------- the tuning job's inputs in the DAG
def test_tuning_jobs_read_only_the_validation_split(copy_workflow, tmp_path, raw_config):
    root = copy_workflow(tmp_path / "wf")
    config = copy.deepcopy(raw_config)
    config["evaluation"]["csebbs"] = {"enabled": True, "tune_split": "desed/synth_val"}
    (root / "workflow_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = [(rule, inputs) for rule, inputs, _ in dag_jobs(root)]
    tuning = [inputs for rule, inputs in jobs if rule == "tune_csebbs"]
    # per iteration: each member's stage-1 and stage-2 teacher, and the ensemble
    models = config["training"]["iterations"] * (2 * len(config["training"]["members"]) + 1)
    assert len(tuning) == models
    scored = config["evaluation"]["splits"]
    for inputs in tuning:
        assert not [path for path in inputs for ref in scored if f"/{ref}/" in f"{path}/"], inputs
        assert all("/desed/synth_val/" in f"{path}/" for path in inputs), inputs
    evaluate = next(inputs for rule, inputs in jobs if rule == "evaluate")
    psds_splits = [ref for ref in scored if not ref.startswith("maestro/")]  # cSEBBs post-processes PSDS splits only
    assert sum("/scores_csebbs/" in path for path in evaluate) == models * len(psds_splits)


# ----------------------------------------------------------------------------- the adapter
def test_missing_sebbs_names_the_extra(monkeypatch):
    from sedlib.evaluation import csebbs

    monkeypatch.setitem(sys.modules, "sebbs", None)
    with pytest.raises(RuntimeError, match=r"optional extra sedlib\[sebbs\]"):
        csebbs.sebb_tables({"a": None}, {}, {"a": 10.0})


def test_grid_is_either_absolute_or_relative_merging():
    from sedlib.evaluation.csebbs import grid

    candidates = grid([0.32, 0.48], [0.2], [1.5, 2.0])
    assert candidates == [(0.32, 0.2, math.inf), (0.32, math.inf, 1.5), (0.32, math.inf, 2.0),
                          (0.48, 0.2, math.inf), (0.48, math.inf, 1.5), (0.48, math.inf, 2.0)]


def test_tuning_picks_per_class_the_best_grid_point():
    pytest.importorskip("sebbs")
    from sedlib.evaluation.csebbs import HYPER_PARAMETERS, grid, tune

    gt, durations, tables = synthetic_split(noise=2.5)
    candidates = grid([0.32, 0.64], [0.2], [2.0])
    tuned = tune(tables, gt, durations, "psds1", candidates)
    assert [entry["params"] for entry in tuned["grid"]] == [list(c) for c in candidates]
    for c in CLASSES:
        chosen = tuple(tuned[name][c] for name in HYPER_PARAMETERS)
        assert chosen in candidates
        assert tuned["validation_psds"][c] == max(entry["per_class"][c] for entry in tuned["grid"])
    with pytest.raises(ValueError, match="criterion 'f1'"):
        tune(tables, gt, durations, "f1", candidates)
    without_dog = {clip: [e for e in events if e[2] != "dog"] for clip, events in gt.items()}
    with pytest.raises(ValueError, match=r"no events of classes \['dog'\]"):
        tune(tables, without_dog, durations, "psds1", candidates)


def test_sebb_tables_are_valid_and_scored_exactly():
    pytest.importorskip("sebbs")
    from sed_scores_eval.base_modules.scores import validate_score_dataframe

    from sedlib.evaluation.csebbs import OUTSIDE_SCORE, sebb_tables

    gt, durations, tables = synthetic_split(noise=2.0, seed=1)
    boxes = sebb_tables(tables, {"step_filter_length": 0.48, "merge_threshold_abs": 0.2,
                                 "merge_threshold_rel": math.inf}, durations)
    assert set(boxes) == set(tables)
    for clip, table in boxes.items():
        timestamps, classes = validate_score_dataframe(table)
        assert classes == CLASSES and timestamps[0] == 0.0 and timestamps[-1] == durations[clip]
        scores = table[CLASSES].to_numpy()
        assert np.all((scores == OUTSIDE_SCORE) | ((scores >= 0.0) & (scores <= 1.0)))
    # the project's fast PSDS == sed_scores_eval's on sebbs' own representation (-inf outside the boxes)
    with_inf = {clip: table.replace(OUTSIDE_SCORE, -np.inf) for clip, table in boxes.items()}
    for scenario in M.SCENARIOS.values():
        fast = M.psds(boxes, gt, durations, scenario)
        reference = M.psds(with_inf, gt, durations, scenario, reference=True)
        assert 0.1 < fast.value < 1.0
        assert fast.value == pytest.approx(reference.value, abs=1e-12)
        assert fast.per_class == pytest.approx(reference.per_class, abs=1e-12)


def test_clean_scores_keep_a_high_psds_after_csebbs():
    pytest.importorskip("sebbs")
    from sedlib.evaluation.csebbs import grid, sebb_tables, tune

    gt, durations, tables = synthetic_split(noise=0.5, seed=2)
    tuned = tune(tables, gt, durations, "psds1", grid([0.32], [0.2], [2.0]))
    boxes = sebb_tables(tables, tuned, durations)
    assert M.psds(boxes, gt, durations, M.SCENARIOS["psds1"]).value >= 0.9


def test_commands_and_evaluate_report_csebbs_beside_the_median_filter(tmp_path, repo_root):
    pytest.importorskip("sebbs")
    from sedlib.evaluation.csebbs import read_params

    def write_split(name, seed):
        gt, durations, tables = synthetic_split(noise=2.0, seed=seed)
        folder = tmp_path / name
        folder.mkdir()
        rows = [f"{c}.wav\t{on}\t{off}\t{label}" for c, events in gt.items() for on, off, label in events]
        (folder / "metadata.tsv").write_text("filename\tonset\toffset\tevent_label\n" + "\n".join(rows) + "\n")
        (folder / "durations.tsv").write_text("filename\tduration\n" + "".join(f"{c}.wav\t10.0\n" for c in gt))
        S.write_score_dir(folder / "scores", tables)
        (folder / "scores" / ".snakemake_timestamp").touch()  # as in a directory() output of a rule
        return folder

    val, test = write_split("val", 3), write_split("test", 4)
    config = load_config(repo_root / "workflow_config.yaml")
    config["evaluation"]["csebbs"].update(step_filter_lengths=[0.32, 0.48], merge_thresholds_abs=[0.2],
                                          merge_thresholds_rel=[2.0])
    params, post = tmp_path / "params.json", tmp_path / "scores_csebbs"
    assert cli_main(["tune-csebbs", "--scores", str(val / "scores"), "--metadata", str(val / "metadata.tsv"),
                     "--durations", str(val / "durations.tsv"), "--config-json",
                     json.dumps({**config["evaluation"]["csebbs"], "classes": CLASSES}), "--out", str(params)]) == 0
    document = json.loads(params.read_text())
    assert document["format"] == "sedlib.csebbs/1" and document["criterion"] == "psds1"
    assert set(read_params(params)["step_filter_length"]) == set(CLASSES)
    assert cli_main(["apply-csebbs", "--params", str(params), "--scores", str(test / "scores"),
                     "--durations", str(test / "durations.tsv"), "--out", str(post)]) == 0

    config["evaluation"]["bootstrap"] = {"n": 3, "seed": 0}
    config["evaluation"]["psds_eval_thresholds"] = 5
    config["datasets"] = {"desed": {**config["datasets"]["desed"], "classes": CLASSES}}  # a DESED-only model
    config["evaluation"]["splits"] = ["desed/devtest"]
    config["evaluation"]["median_window"] = [7] * len(CLASSES)
    inputs = {
        "splits": {"desed/devtest": {"metadata": str(test / "metadata.tsv"), "durations": str(test / "durations.tsv")}},
        "scores": [{"iteration": 1, "model": "m_teacher", "split": "desed/devtest", "dir": str(test / "scores"),
                    "csebbs": {"dir": str(post), "params": str(params)}}],
    }
    out = tmp_path / "eval_psds.json"
    run = M.configure_evaluate(argparse.ArgumentParser())
    assert run(argparse.Namespace(config_json=json.dumps(config), inputs_json=json.dumps(inputs), out=str(out),
                                  roc_out=str(tmp_path / "rocs.h5"), jobs=1)) == 0
    entry = json.loads(out.read_text())["results"]["iter1"]["m_teacher"]["desed/devtest"]
    gt = M.read_ground_truth(test / "metadata.tsv")
    durations = M.read_durations(test / "durations.tsv")
    tables = P.read_score_dir(post)
    assert entry["csebbs"]["params"] == str(params)
    for name, scenario in M.SCENARIOS.items():
        assert entry["csebbs"][name]["value"] == M.psds(tables, gt, durations, scenario).value
        assert len(entry["csebbs"][name]["ci95"]) == 2 and set(entry["csebbs"][name]["per_class"]) == set(CLASSES)
        assert "value" in entry[name]  # the median-filtered result stays beside it
