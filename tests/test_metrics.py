"""PSDS, bootstrap, F1 and the psds_eval cross-check on the real DESED dev-test ground truth (1168 clips).

Synthetic score tables are built from the ground truth: "exact" tables have frame boundaries at the event
boundaries (a perfect system), "grid" tables live on the 64 ms output grid like model scores.
"""

import argparse
import json

import numpy as np
import pytest
import scipy.ndimage
from sed_scores_eval import collar_based, intersection_based
from sed_scores_eval.base_modules.detection import scores_to_event_list
from sed_scores_eval.base_modules.scores import create_score_dataframe

from sedlib.config import load_config
from sedlib.data.labels import encode_strong
from sedlib.evaluation import metrics as M
from sedlib.evaluation import postprocess as P
from sedlib.evaluation import score_tables as S
from sedlib.io import sha256_json

HOP = 0.064


@pytest.fixture(scope="module")
def devtest(shared_data):
    meta = shared_data / "desed_meta"
    gt_all = M.read_ground_truth(meta / "validation.tsv")
    durations = M.read_durations(meta / "validation_durations.tsv")
    gt, dur = M.clips_with_events(gt_all, durations)
    classes = sorted({label for events in gt.values() for _, _, label in events})
    return gt_all, durations, gt, dur, classes


@pytest.fixture(scope="module")
def subset(devtest):
    """The first 300 annotated clips (all 10 classes occur): for tests that need many PSDS evaluations."""
    _, _, gt, dur, classes = devtest
    clips = sorted(gt)[:300]
    assert {lab for c in clips for _, _, lab in gt[c]} == set(classes)
    return {c: gt[c] for c in clips}, {c: dur[c] for c in clips}, classes


def exact_tables(events_by_clip, durations, classes):
    """Score 1 exactly inside each given event, 0 elsewhere; tables reach past the duration if an event does."""
    tables = {}
    for clip, events in events_by_clip.items():
        end = max([durations[clip]] + [off for _, off, _ in events])
        bounds = np.unique(np.array([0.0, end] + [t for on, off, _ in events for t in (on, off)]))
        mid = (bounds[:-1] + bounds[1:]) / 2
        scores = np.zeros((len(mid), len(classes)))
        for on, off, label in events:
            scores[(mid > on) & (mid < off), classes.index(label)] = 1.0
        tables[clip] = create_score_dataframe(scores, bounds, classes)
    return tables


def grid_tables(gt, dur, classes, noise=0.0, seed=0):
    """Ground truth on the 64 ms grid (onset floor, offset ceil), optionally with logit noise, as probabilities."""
    rng = np.random.default_rng(seed)
    tables = {}
    for clip, events in gt.items():
        target = encode_strong(events, classes, int(np.ceil(dur[clip] / HOP)), HOP).T  # (frames, C)
        logits = 6.0 * (target - 0.5) + noise * rng.standard_normal(target.shape)
        tables[clip] = S.score_table(S.probabilities(logits.T), classes, HOP, dur[clip])
    return tables


def test_reference_clip_handling(devtest):
    gt_all, durations, gt, dur, classes = devtest
    assert len(gt_all) == 1168 and len(durations) == 1168
    assert len(gt) == 1153  # 15 clips have an empty-label row: dropped, as the published test drops them
    assert sum(len(e) for e in gt.values()) == 4224  # 4239 rows = 4224 events + the 15 empty rows
    assert set(dur) == set(gt) and len(classes) == 10
    with pytest.raises(ValueError, match="no duration"):
        M.clips_with_events(gt_all, {k: v for k, v in durations.items() if k != sorted(gt)[0]})


def test_perfect_scores_give_psds_one(devtest):
    _, _, gt, dur, classes = devtest
    tables = exact_tables(gt, dur, classes)
    for name, scenario in M.SCENARIOS.items():
        result = M.psds(tables, gt, dur, scenario)
        assert result.value == pytest.approx(1.0, abs=1e-12), name
        assert all(v == pytest.approx(1.0, abs=1e-12) for v in result.per_class.values())
    # On the 64 ms grid, onsets floor and offsets ceil: short detections exceed the event by up to two frames,
    # which costs a few events the 0.7 detection tolerance. Without median filter PSDS1 stays within 0.01 of 1.
    grid = grid_tables(gt, dur, classes)
    assert M.psds(grid, gt, dur, M.SCENARIOS["psds1"]).value == pytest.approx(1.0, abs=0.01)
    assert M.psds(grid, gt, dur, M.SCENARIOS["psds2"]).value == pytest.approx(1.0, abs=1e-12)


def test_dropping_one_class_gives_known_psds(devtest):
    _, _, gt, dur, classes = devtest
    without_speech = {c: [e for e in events if e[2] != "Speech"] for c, events in gt.items()}
    tables = exact_tables(without_speech, dur, classes)
    for scenario in M.SCENARIOS.values():
        result = M.psds(tables, gt, dur, scenario)
        # 9 classes at TPR 1, one at 0: mean 0.9, std 0.3, alpha_st = 1 -> eTPR 0.6 at every eFPR
        assert result.value == pytest.approx(0.6, abs=1e-12)
        assert result.per_class["Speech"] == 0.0 and result.per_class["Dog"] == pytest.approx(1.0, abs=1e-12)
    f1 = M.collar_f1(tables, gt, 0.5, 0.2, 0.2)
    assert f1["per_class"]["Speech"] == 0.0 and f1["macro"] == pytest.approx(0.9, abs=1e-12)


@pytest.mark.parametrize("fraction, psds1", [(0.25, 1.0), (0.35, 0.0)])
def test_shift_by_event_fraction_crosses_the_detection_tolerance(devtest, fraction, psds1):
    """Every detection shifted by a fraction f of its event: intersection 1 - f of both -> PSDS1 (0.7) flips
    between f = 0.25 and f = 0.35; PSDS2 (0.1) does not."""
    _, _, gt, dur, classes = devtest
    shifted = {c: [(on + fraction * (off - on), off + fraction * (off - on), lab) for on, off, lab in ev]
               for c, ev in gt.items()}
    tables = exact_tables(shifted, dur, classes)
    assert M.psds(tables, gt, dur, M.SCENARIOS["psds1"]).value == pytest.approx(psds1, abs=1e-12)
    assert M.psds(tables, gt, dur, M.SCENARIOS["psds2"]).value == pytest.approx(1.0, abs=1e-12)


def test_collar_f1_onset_collar(devtest):
    _, _, gt, dur, classes = devtest
    for delay, expected in ((0.1, 1.0), (0.3, 0.0)):  # within / beyond the 200 ms onset collar
        shifted = {c: [(on + delay, off + delay, lab) for on, off, lab in ev] for c, ev in gt.items()}
        f1 = M.collar_f1(exact_tables(shifted, dur, classes), gt, 0.5, 0.2, 0.2)
        # beyond the collar a few shifted detections still meet a neighbouring event of the same class
        assert f1["macro"] == pytest.approx(expected, abs=0.05), delay


def test_project_psds_equals_direct_sed_scores_eval_call(subset):
    gt, dur, classes = subset
    tables = P.postprocess_tables(grid_tables(gt, dur, classes, noise=2.0), [6, 20, 7, 4, 7, 6, 6, 6, 6, 6])
    for scenario in M.SCENARIOS.values():
        ours = M.psds(tables, gt, dur, scenario)  # the vectorised computation (sedlib.evaluation.fast_psds)
        assert M.psds(tables, gt, dur, scenario, reference=True).value == ours.value
        value, per_class, (etpr, efpr), _ = intersection_based.psds(
            tables, gt, dur, dtc_threshold=scenario.dtc_threshold, gtc_threshold=scenario.gtc_threshold,
            cttc_threshold=scenario.cttc_threshold, alpha_ct=scenario.alpha_ct, alpha_st=scenario.alpha_st,
            max_efpr=scenario.max_efpr,
        )
        assert ours.value == value and ours.per_class == per_class
        np.testing.assert_array_equal(ours.etpr, etpr)
        np.testing.assert_array_equal(ours.efpr, efpr)
        assert 0.2 < value < 1.0 - 1e-6  # the noise makes it a real test of the curve, not a trivial 0 or 1
    f1 = M.collar_f1(tables, gt, 0.5, 0.2, 0.2)
    direct, *_ = collar_based.fscore(tables, gt, 0.5, onset_collar=0.2, offset_collar=0.2, offset_collar_rate=0.2)
    assert f1["macro"] == direct["macro_average"]


def check_psds_eval_close(gt, dur, classes, scenarios):
    tables = P.postprocess_tables(grid_tables(gt, dur, classes, noise=2.0, seed=1), [7] * 10)
    detections = M.detection_tables(tables, M.operating_thresholds(50))
    for name in scenarios:
        exact = M.psds(tables, gt, dur, M.SCENARIOS[name]).value
        approx = M.psds_eval_value(detections, gt, dur, M.SCENARIOS[name])
        assert abs(exact - approx) < 0.02, (name, exact, approx)
        assert 0.2 < exact < 1.0 - 1e-6


def test_psds_eval_cross_check_is_close(subset):
    """psds_eval sees 50 operating points (0.01 ... 0.99), sed_scores_eval every threshold: psds_eval's
    staircase is built from a subset of the exact curve's points (and interpolates the per-class curves on
    a common eFPR grid), so the two differ slightly; on these scores they agree within 0.02. (For a poor
    system whose useful operating points lie above 0.99 they can differ by much more: docs/evaluation.md.)"""
    check_psds_eval_close(*subset, ["psds1"])


@pytest.mark.slow
def test_psds_eval_cross_check_is_close_on_all_clips(devtest):
    _, _, gt, dur, classes = devtest
    check_psds_eval_close(gt, dur, classes, list(M.SCENARIOS))


def test_operating_thresholds_match_the_published_test():
    n = 50  # ATST-SED: np.arange(1 / (n * 2), 1, 1 / n)
    np.testing.assert_allclose(M.operating_thresholds(n), np.arange(1 / (n * 2), 1, 1 / n), atol=1e-12)
    np.testing.assert_allclose(M.operating_thresholds(n)[[0, -1]], [0.01, 0.99])


def test_bootstrap_resamples_with_replacement(subset):
    gt, dur, classes = subset
    tables = P.postprocess_tables(grid_tables(gt, dur, classes, noise=2.0, seed=2), [7] * 10)
    scenario = M.SCENARIOS["psds1"]
    deltas = M.psds_deltas(tables, gt, dur, scenario)
    value = M.psds_from_deltas(deltas).value
    # a clip counted twice counts twice everywhere: doubling every clip leaves every rate unchanged
    twice = M.psds_from_deltas(deltas, np.repeat(np.arange(len(gt)), 2)).value
    assert twice == pytest.approx(value, abs=1e-12)
    samples = M.bootstrap_psds(deltas, n=8, seed=3)
    np.testing.assert_array_equal(samples, M.bootstrap_psds(deltas, n=8, seed=3))
    assert not np.array_equal(samples, M.bootstrap_psds(deltas, n=8, seed=4))
    assert len(set(samples.tolist())) == 8 and np.all(np.abs(samples - value) < 0.1)
    low, high = M.confidence_interval(samples)
    assert low < high and low == pytest.approx(np.percentile(samples, 2.5))
    assert M.confidence_interval(np.array([])) == []


def test_missing_class_in_ground_truth_is_a_clear_error(devtest):
    _, _, gt, dur, classes = devtest
    clips = [c for c, ev in gt.items() if all(lab != "Blender" for _, _, lab in ev)][:50]
    sub = {c: gt[c] for c in clips}
    tables = exact_tables(sub, dur, classes)
    settings = {"median_window": [1] * 10, "bootstrap": {"n": 0, "seed": 0}, "psds_eval_thresholds": 2,
                "f1": {"threshold": 0.5, "onset_collar": 0.2, "offset_collar_rate": 0.2}}
    with pytest.raises(ValueError, match="Blender"):
        M.evaluate_tables(tables, sub, {c: dur[c] for c in clips}, settings)


def naive_median(column, window):
    """Independent reference: scipy's 'reflect' padding (d c b a | a b c d | d c b a) and the sorted
    element at index window // 2 of the window starting window // 2 frames before the centre."""
    pad = window // 2
    padded = np.concatenate([column[:pad][::-1], column, column[::-1][: window - 1 - pad]])
    return np.array([np.sort(padded[i : i + window])[window // 2] for i in range(len(column))])


def test_median_filter_matches_the_published_post_processing():
    rng = np.random.default_rng(0)
    scores = rng.random((156, 5))
    windows = [1, 4, 6, 7, 20]
    out = P.median_filter_scores(scores, windows)
    for c, w in enumerate(windows):
        # the published call on a (frames, 1) column, and an independent implementation
        np.testing.assert_array_equal(out[:, c], scipy.ndimage.median_filter(scores[:, c : c + 1], (w, 1))[:, 0])
        np.testing.assert_array_equal(out[:, c], naive_median(scores[:, c], w))
    # an isolated 1-frame spike disappears, a 4-frame event survives a window of 7
    x = np.zeros((20, 1))
    x[3, 0] = 1
    x[10:14, 0] = 1
    np.testing.assert_array_equal(P.median_filter_scores(x, [7])[:, 0], (np.arange(20) >= 10) & (np.arange(20) < 14))
    with pytest.raises(ValueError, match="windows"):
        P.median_filter_scores(scores, [7, 7])


def test_events_at_thresholds_equal_sed_scores_eval_decoding():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c"]
    table = S.score_table(P.median_filter_scores(rng.random((156, 3)), [5, 5, 5]), classes, HOP, 10.0)
    thresholds = M.operating_thresholds(50)
    ours = P.events_at_thresholds(table, thresholds)
    for k, th in enumerate(thresholds):
        assert ours[k] == scores_to_event_list(table, th)
    per_class = {"a": 0.3, "b": 0.5, "c": 0.7}
    assert P.detect_events(table, per_class) == scores_to_event_list(table, per_class)
    assert all(0.0 <= on < off <= 10.0 for on, off, _ in P.detect_events(table, 0.2))


def test_frame_timestamps_are_capped_at_the_duration():
    stamps = S.frame_timestamps(66, HOP, 4.2)  # 66 frames of 64 ms = 4.224 s > 4.2 s
    assert stamps[-1] == 4.2 and stamps[-2] == pytest.approx(65 * HOP)
    with pytest.raises(ValueError, match="past the audio duration"):
        S.frame_timestamps(67, HOP, 4.2)


def test_evaluate_command_writes_the_documented_json(tmp_path, devtest, repo_root):
    gt_all, durations, gt, _, classes = devtest
    clips = sorted(gt)[:40]
    for name in classes:  # make sure every class has events
        if not any(lab == name for c in clips for _, _, lab in gt[c]):
            clips.append(next(c for c in sorted(gt) if any(lab == name for _, _, lab in gt[c])))
    empty = next(c for c in sorted(gt_all) if not gt_all[c])  # a clip without events: scored, not evaluated
    meta = tmp_path / "metadata.tsv"
    rows = [f"{c}.wav\t{on}\t{off}\t{lab}" for c in clips for on, off, lab in gt[c]] + [f"{empty}.wav\t\t\t"]
    meta.write_text("filename\tonset\toffset\tevent_label\n" + "\n".join(rows) + "\n")
    dur_file = tmp_path / "durations.tsv"
    dur_file.write_text("filename\tduration\n" + "".join(f"{c}.wav\t{durations[c]}\n" for c in [*clips, empty]))
    sub_gt = {c: gt[c] for c in clips}
    tables = grid_tables({**sub_gt, empty: []}, durations, classes, noise=2.0)
    S.write_score_dir(tmp_path / "scores", tables)
    config = load_config(repo_root / "workflow_config.yaml")
    config["evaluation"]["bootstrap"] = {"n": 3, "seed": 0}
    config["evaluation"]["psds_eval_thresholds"] = 5
    config["evaluation"]["psds_eval_models"] = "all"
    inputs = {
        "splits": {"desed/devtest": {"metadata": str(meta), "durations": str(dur_file)}},
        "scores": [{"iteration": 1, "model": "m_teacher", "split": "desed/devtest", "dir": str(tmp_path / "scores")}],
    }
    out, rocs = tmp_path / "eval_psds.json", tmp_path / "rocs.h5"
    run = M.configure_evaluate(argparse.ArgumentParser())
    args = argparse.Namespace(config_json=json.dumps(config), inputs_json=json.dumps(inputs),
                              out=str(out), roc_out=str(rocs), jobs=1)
    assert run(args) == 0
    doc = json.loads(out.read_text())
    assert list(doc) == ["format", "config_sha256", "data_manifest_sha256", "data_manifest", "code_version",
                         "packages", "methodology", "missing_audio", "results", "claims", "timings"]
    assert doc["claims"] == {"desed/devtest": {"iter1": {"stage2_vs_stage1": {}}}}  # no member's models scored
    assert doc["config_sha256"] == sha256_json(config)
    assert doc["missing_audio"] == {"policy": "error", "dropped": {}}
    entry = doc["results"]["iter1"]["m_teacher"]["desed/devtest"]
    assert list(entry) == ["metric", "clips", "clips_without_events", "events", "hours", "psds1", "psds2", "f1", "seconds"]
    assert entry["clips"] == len(sub_gt) and entry["clips_without_events"] == 1
    post = P.postprocess_tables({c: tables[c] for c in sub_gt}, config["evaluation"]["median_window"][: len(classes)])
    sub_dur = {c: durations[c] for c in sub_gt}
    for name, scenario in M.SCENARIOS.items():
        assert entry[name]["value"] == M.psds(post, sub_gt, sub_dur, scenario).value
        assert len(entry[name]["ci95"]) == 2 and set(entry[name]["per_class"]) == set(classes)
        assert 0.0 <= entry[name]["psds_eval"] <= 1.0
    assert doc["packages"]["sed_scores_eval"] == "0.0.4" and doc["code_version"]["commit"]
    assert set(M.read_rocs(rocs)) == {f"iter1/m_teacher/desed/devtest/{n}" for n in M.SCENARIOS}
    # psds_eval_models: ensembles (the embedded default) cross-checks the ensembles only, with the same values
    config["evaluation"]["psds_eval_models"] = "ensembles"
    inputs["scores"].append({**inputs["scores"][0], "model": "ensemble"})
    doc, _ = M.evaluate_all(inputs, config)
    models = doc["results"]["iter1"]
    for name in M.SCENARIOS:
        assert models["m_teacher"]["desed/devtest"][name]["psds_eval"] is None
        assert models["ensemble"]["desed/devtest"][name]["psds_eval"] == entry[name]["psds_eval"]
        assert models["m_teacher"]["desed/devtest"][name]["value"] == entry[name]["value"]
    # last_ensemble (the embedded default): only the last evaluated iteration's ensemble, with the same value
    inputs["scores"].append({**inputs["scores"][0], "iteration": 2, "model": "ensemble"})
    config["evaluation"]["psds_eval_models"] = "last_ensemble"
    doc, _ = M.evaluate_all(inputs, config, jobs=2)
    for name in M.SCENARIOS:
        assert doc["results"]["iter1"]["ensemble"]["desed/devtest"][name]["psds_eval"] is None
        assert doc["results"]["iter2"]["ensemble"]["desed/devtest"][name]["psds_eval"] == entry[name]["psds_eval"]
        assert doc["results"]["iter1"]["m_teacher"]["desed/devtest"][name]["value"] == entry[name]["value"]


def test_cross_checked_entries():
    scores = [{"iteration": i, "model": m} for i in (1, 2) for m in ("a_teacher", "ensemble")]
    assert M.cross_checked(scores, "all") == [True] * 4
    assert M.cross_checked(scores, "ensembles") == [False, True, False, True]
    assert M.cross_checked(scores, "last_ensemble") == [False, False, False, True]
    assert M.cross_checked(scores, "none") == [False] * 4
