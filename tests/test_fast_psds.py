"""The vectorised PSDS (sedlib.evaluation.fast_psds) equals sed_scores_eval 0.0.4's intersection_based.psds.

Compared: PSDS, per-class PSDS, the PSD-ROC and the per-class ROCs (to 1e-9; they are in fact bit-identical),
on the real DESED dev-test ground truth (perfect scores; the speed benchmark's noisy calibrated scores) and on
random score sets (ties, plateaus, short clips, irregular frames, clips without events), with PSDS1/PSDS2 and
with max_efpr = 1e5 (the whole curve, nothing left out below the cuts). Also: the rare paths that hand a clip to
sed_scores_eval's own per-clip code, the recomputation for a bootstrap replicate that needs lower thresholds,
and bootstrap replicates against sed_scores_eval on renamed duplicated clips.
"""

import importlib.util
from dataclasses import asdict, replace

import numpy as np
import pytest
from scipy.ndimage import median_filter
from sed_scores_eval import intersection_based
from sed_scores_eval.base_modules.scores import create_score_dataframe
from sed_scores_eval.intersection_based.intermediate_statistics import intermediate_statistics_deltas

from sedlib.evaluation import fast_psds as F
from sedlib.evaluation import metrics as M

TOL = 1e-9
WIDE = {f"{name}_wide": replace(s, max_efpr=1e5) for name, s in M.SCENARIOS.items()}  # nothing cut


def fast(tables, gt, dur, scenario, **kwargs):
    trees = F.DetectionTrees(tables, gt, dur, [scenario], **kwargs)
    return trees, F.intersection_deltas(trees, scenario)


def assert_equal_to_sed_scores_eval(tables, gt, dur, scenarios, result=None):
    for name, scenario in scenarios.items():
        ours = result[name] if result else F.psd_roc(fast(tables, gt, dur, scenario)[1])
        value, per_class, (etpr, efpr), class_rocs = intersection_based.psds(
            tables, gt, dur, unit_of_time="hour", **asdict(scenario)
        )
        assert abs(ours.value - value) <= TOL, (name, ours.value, value)
        assert set(ours.per_class) == set(per_class)
        assert all(abs(ours.per_class[c] - per_class[c]) <= TOL for c in per_class), name
        assert ours.etpr.shape == etpr.shape and ours.efpr.shape == efpr.shape, name
        np.testing.assert_allclose(ours.etpr, etpr, rtol=0, atol=TOL)
        np.testing.assert_allclose(ours.efpr, efpr, rtol=0, atol=TOL)
        for c, (tpr, fpr, _) in class_rocs.items():
            np.testing.assert_allclose(ours.class_rocs[c][0], tpr, rtol=0, atol=TOL)
            np.testing.assert_allclose(ours.class_rocs[c][1], fpr, rtol=0, atol=TOL)


def random_case(seed, n_clips=40, classes=("a", "b", "c", "d"), levels=8, irregular=False, smooth=False,
                without_events=0.2):
    """Random tables: scores on ``levels`` + 1 values (ties, plateaus; 0: continuous), low background with
    false-alarm bursts and higher scores in the events; clips of 0.2-10 s on the 64 ms grid or with random
    frame boundaries; a fraction of clips without events; events may end after the audio."""
    rng = np.random.default_rng(seed)
    classes = list(classes)
    tables, gt, dur = {}, {}, {}
    draw = (lambda n: rng.integers(0, levels + 1, size=n) / levels) if levels else rng.random
    for q in range(n_clips):
        clip = f"clip{q:03d}"
        d = float(np.round(rng.choice([rng.uniform(0.2, 2.0), rng.uniform(2.0, 10.0), 10.0]), 3))
        if irregular:
            bounds = np.unique(np.concatenate(([0.0, d], np.round(rng.uniform(0, d, rng.integers(1, 40)), 3))))
        else:
            bounds = np.minimum(np.arange(int(np.ceil(d / 0.064)) + 1) * 0.064, d)
        scores = 0.3 * draw((len(bounds) - 1) * len(classes)).reshape(len(bounds) - 1, len(classes))
        for _ in range(rng.poisson(1)):
            start = rng.integers(0, len(scores))
            scores[start : start + rng.integers(1, 10), rng.integers(0, len(classes))] += 0.4
        events = []
        if rng.random() >= without_events:
            for k, label in enumerate(classes):
                t = 0.0
                while rng.random() < 0.5 and t < d:
                    on = float(np.round(t + rng.uniform(0.0, 3.0), 3))
                    off = float(np.round(on + rng.uniform(0.05, 4.0), 3))
                    events.append((on, off, label))
                    inside = (bounds[:-1] < off) & (bounds[1:] > on)
                    scores[inside, k] = np.maximum(scores[inside, k], 0.5 + 0.5 * draw(1)[0])
                    t = off + 0.01
        if smooth:
            scores = np.concatenate(
                [median_filter(scores[:, k : k + 1], size=(int(rng.integers(1, 8)), 1)) for k in range(len(classes))],
                axis=1,
            )
        tables[clip], gt[clip], dur[clip] = create_score_dataframe(scores, bounds, classes), events, d
    for k, label in enumerate(classes):  # every class needs an event: a 0.5 s one in a clip without that class
        if not any(lab == label for events in gt.values() for _, _, lab in events):
            clip = next(c for c in sorted(gt) if all(lab != label for _, _, lab in gt[c]))
            gt[clip].append((0.1, 0.6, label))
    return tables, gt, dur


@pytest.fixture(scope="module")
def devtest(shared_data):
    meta = shared_data / "desed_meta"
    gt, dur = M.clips_with_events(M.read_ground_truth(meta / "validation.tsv"),
                                  M.read_durations(meta / "validation_durations.tsv"))
    return gt, dur, sorted({lab for events in gt.values() for _, _, lab in events})


@pytest.fixture(scope="module")
def realistic(devtest, repo_root):
    """The speed benchmark's noisy calibrated scores (median-filtered) on all 1153 dev-test clips."""
    spec = importlib.util.spec_from_file_location("psds_speed", repo_root / "benchmarks" / "psds_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gt, dur, classes = devtest
    return bench.realistic_tables(gt, dur, classes), gt, dur


def test_perfect_scores_on_the_dev_test_ground_truth(devtest):
    gt, dur, classes = devtest
    tables = {}
    for clip, events in gt.items():  # 1 inside each event, 0 elsewhere, frame boundaries at event boundaries
        bounds = np.unique([0.0, max([dur[clip]] + [off for _, off, _ in events])] +
                           [t for on, off, _ in events for t in (on, off)])
        mid = (bounds[:-1] + bounds[1:]) / 2
        scores = np.zeros((len(mid), len(classes)))
        for on, off, label in events:
            scores[(mid > on) & (mid < off), classes.index(label)] = 1.0
        tables[clip] = create_score_dataframe(scores, bounds, classes)
    assert_equal_to_sed_scores_eval(tables, gt, dur, M.SCENARIOS)
    assert F.psd_roc(fast(tables, gt, dur, M.SCENARIOS["psds1"])[1]).value == pytest.approx(1.0, abs=1e-12)


def test_realistic_scores_on_the_dev_test_ground_truth(realistic):
    tables, gt, dur = realistic
    trees = F.DetectionTrees(tables, gt, dur, list(M.SCENARIOS.values()))
    result = {name: F.psd_roc(F.intersection_deltas(trees, s)) for name, s in M.SCENARIOS.items()}
    assert_equal_to_sed_scores_eval(tables, gt, dur, M.SCENARIOS, result)
    assert 0.5 < result["psds1"].value < 0.7 and 0.6 < result["psds2"].value < 0.8
    # the thresholds beyond max_efpr (the noise floor) are left out for every class
    assert np.all(trees.cuts > 0.0) and len(trees.node_hi) < 0.2 * sum(len(t) for t in tables.values()) * 10


@pytest.mark.parametrize("seed, options", [
    (0, {}),
    (1, {"levels": 0}),
    (2, {"levels": 2}),
    (3, {"irregular": True}),
    (4, {"irregular": True, "levels": 0, "smooth": True}),
    (5, {"smooth": True, "levels": 40, "n_clips": 120}),
    (6, {"without_events": 0.6, "levels": 4}),
    (7, {"classes": ("a", "b"), "n_clips": 10}),
])
def test_random_scores(seed, options):
    tables, gt, dur = random_case(seed, **options)
    assert_equal_to_sed_scores_eval(tables, gt, dur, {**M.SCENARIOS, **WIDE})


def test_clips_handed_to_sed_scores_eval_are_exact(monkeypatch):
    tables, gt, dur = random_case(11, levels=6)
    for name, scenario in {**M.SCENARIOS, **WIDE}.items():
        trees, deltas = fast(tables, gt, dur, scenario)
        assert deltas.reference_segments == 0
        trees.tiny[:] = True  # every (clip, class) through sed_scores_eval's per-clip code
        forced = F.intersection_deltas(trees, scenario)
        assert forced.reference_segments == len(tables) * 4
        assert F.psd_roc(forced).value == F.psd_roc(deltas).value
    # sums of >= 3 intersections all declared ambiguous (rounding): those clips and classes are handed over
    monkeypatch.setattr(F, "AMBIGUITY", 1.0)
    tables, gt, dur = random_case(5, irregular=True, levels=0, n_clips=60)
    assert fast(tables, gt, dur, WIDE["psds2_wide"])[1].reference_segments > 0
    assert_equal_to_sed_scores_eval(tables, gt, dur, {**M.SCENARIOS, **WIDE})


def test_frames_too_short_for_the_criteria_and_events_too_short_for_the_gtc():
    tables, gt, dur = random_case(7, levels=0, smooth=True)
    for clip in sorted(tables)[:10]:  # a last frame of 0.3 us: 0.1 * its length rounds to 0 s
        table = tables[clip]
        bounds = np.append(table["onset"].to_numpy(), table["offset"].iloc[-1] + [0.0, 3e-7])
        scores = np.vstack((table.iloc[:, 2:].to_numpy(), np.full((1, 4), 0.9)))
        tables[clip], dur[clip] = create_score_dataframe(scores, bounds, list(table.columns[2:])), bounds[-1]
    # events of 1 us and of 0 s: gtc * length rounds to 0 s, a true positive at every threshold
    clip = sorted(gt)[12]
    gt[clip] = [e for e in gt[clip] if e[2] != "c"] + [(0.0301, 0.0301 + 1e-6, "c")]
    clip = sorted(gt)[13]
    gt[clip] = [e for e in gt[clip] if e[2] != "d"] + [(0.128, 0.128, "d")]
    trees, deltas = fast(tables, gt, dur, M.SCENARIOS["psds2"])
    assert trees.tiny.sum() == 10 and deltas.reference_segments == 40
    assert_equal_to_sed_scores_eval(tables, gt, dur, {**M.SCENARIOS, **WIDE})


def test_bootstrap_replicates_equal_sed_scores_eval_on_duplicated_clips(realistic):
    tables, gt, dur = realistic
    clips = sorted(gt)[:300]
    tables, gt, dur = ({c: x[c] for c in clips} for x in (tables, gt, dur))
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(clips), size=len(clips)) for _ in range(3)]
    for scenario in M.SCENARIOS.values():
        _, deltas = fast(tables, gt, dur, scenario)
        lowered = fast(tables, gt, dur, scenario, efpr_margin=0.3)[1]  # cuts too high: recomputed per call
        assert (lowered.trees.cuts > deltas.trees.cuts).any()
        reference = intermediate_statistics_deltas(
            tables, gt, dtc_threshold=scenario.dtc_threshold, gtc_threshold=scenario.gtc_threshold,
            cttc_threshold=scenario.cttc_threshold,
        )
        for draw in draws:
            keys = [f"{clips[i]}#{k}" for k, i in enumerate(draw)]
            value, per_class, _, _ = intersection_based.psds(
                None, {k: gt[clips[i]] for k, i in zip(keys, draw)}, {k: dur[clips[i]] for k, i in zip(keys, draw)},
                deltas={k: reference[clips[i]] for k, i in zip(keys, draw)}, unit_of_time="hour", **asdict(scenario),
            )
            for ours in (F.psd_roc(deltas, draw), F.psd_roc(lowered, draw)):
                assert abs(ours.value - value) <= TOL
                assert all(abs(ours.per_class[c] - per_class[c]) <= TOL for c in per_class)


def test_invalid_inputs_are_clear_errors():
    tables, gt, dur = random_case(3, n_clips=6)
    scenarios = list(M.SCENARIOS.values())
    clip = sorted(gt)[0]
    with pytest.raises(ValueError, match="ground truth clips differ"):
        F.DetectionTrees(tables, {c: e for c, e in gt.items() if c != clip}, dur, scenarios)
    with pytest.raises(ValueError, match="no duration"):
        F.DetectionTrees(tables, gt, {c: d for c, d in dur.items() if c != clip}, scenarios)
    with pytest.raises(ValueError, match="overlapping a events"):
        F.DetectionTrees(tables, {**gt, clip: [(0.0, 1.0, "a"), (0.5, 2.0, "a"), (0.0, 1.0, "b")]}, dur, scenarios)
    bad = tables[clip].copy()
    bad.iloc[0, 2] = np.nan
    with pytest.raises(ValueError, match="ends before it starts"):
        F.DetectionTrees(tables, {**gt, clip: [(1.0, 0.5, "a"), (0.0, 1.0, "b"), (0.0, 1.0, "c"), (0.0, 1.0, "d")]},
                         dur, scenarios)
    with pytest.raises(ValueError, match="finite"):
        F.DetectionTrees({**tables, clip: bad}, gt, dur, scenarios)
    trees = F.DetectionTrees(tables, gt, dur, [M.SCENARIOS["psds1"]])
    with pytest.raises(ValueError, match="not among the scenarios"):
        F.intersection_deltas(trees, M.SCENARIOS["psds2"])
    with pytest.raises(ValueError, match="cttc_threshold is needed"):
        replace(M.SCENARIOS["psds1"], alpha_ct=0.5)
