"""The claims section of eval_psds.json (sedlib.evaluation.claims): a pure function of results and samples."""

import numpy as np
import pytest

from sedlib.evaluation.claims import claim_rows, procedure_claims
from sedlib.evaluation.metrics import confidence_interval

SPLIT = "desed/devtest"
VALUES = {  # (iteration, model) -> (psds1, psds2)
    ("iter1", "a_stage1_teacher"): (0.30, 0.50), ("iter1", "a_teacher"): (0.35, 0.55), ("iter1", "a_student"): (0.36, 0.50),
    ("iter1", "b_stage1_teacher"): (0.32, 0.52), ("iter1", "b_teacher"): (0.31, 0.56), ("iter1", "b_student"): (0.30, 0.51),
    ("iter1", "ensemble"): (0.40, 0.55),
    ("iter2", "a_stage1_teacher"): (0.33, 0.53), ("iter2", "a_teacher"): (0.38, 0.58),
    ("iter2", "b_stage1_teacher"): (0.34, 0.54), ("iter2", "b_teacher"): (0.37, 0.57), ("iter2", "ensemble"): (0.42, 0.60),
}


def samples_of(value: float) -> np.ndarray:
    """Bootstrap samples shifted by the value: paired differences are exactly the difference of the values."""
    return value + np.linspace(-0.1, 0.1, 21)


@pytest.fixture
def claims():
    results, bootstrap = {}, {}
    for (it, model), values in VALUES.items():
        entry = {}
        for scenario, value in zip(("psds1", "psds2"), values):
            entry[scenario] = {"value": value, "ci95": confidence_interval(samples_of(value))}
            bootstrap[it, model, SPLIT, scenario] = samples_of(value)
        results.setdefault(it, {})[model] = {SPLIT: entry}
    return procedure_claims(results, bootstrap, ["a", "b"], confidence_interval)[SPLIT]


def test_stage2_is_compared_with_the_stage1_teacher_of_the_same_member(claims):
    assert list(claims) == ["iter1", "iter2", "iteration_last_vs_first"]
    a = claims["iter1"]["stage2_vs_stage1"]["a"]["psds1"]
    assert a["a"] == "iter1/a_teacher" and a["b"] == "iter1/a_stage1_teacher"
    assert a["a_value"] == 0.35 and a["b_value"] == 0.30 and a["holds"]
    assert a["difference"] == pytest.approx(0.05) and a["difference_ci95"] == pytest.approx([0.05, 0.05])
    assert a["a_ci95"] == pytest.approx([0.255, 0.445])
    b = claims["iter1"]["stage2_vs_stage1"]["b"]["psds1"]
    assert b["difference"] == pytest.approx(-0.01) and not b["holds"]


def test_ensemble_is_compared_with_the_best_stage2_network_per_scenario(claims):
    versus = claims["iter1"]["ensemble_vs_best_member"]
    assert versus["psds1"]["b"] == "iter1/a_student" and versus["psds1"]["holds"]  # 0.40 vs 0.36
    assert versus["psds2"]["b"] == "iter1/b_teacher" and not versus["psds2"]["holds"]  # 0.55 vs 0.56
    assert claims["iter2"]["ensemble_vs_best_member"]["psds1"]["b"] == "iter2/a_teacher"


def test_last_iteration_ensemble_is_compared_with_the_first(claims):
    versus = claims["iteration_last_vs_first"]["psds2"]
    assert versus["a"] == "iter2/ensemble" and versus["b"] == "iter1/ensemble"
    assert versus["difference"] == pytest.approx(0.05) and versus["holds"]


def test_paired_interval_of_unpaired_or_missing_samples_is_empty():
    results = {"iter1": {"a_stage1_teacher": {SPLIT: {"psds1": {"value": 0.1, "ci95": []},
                                                      "psds2": {"value": 0.2, "ci95": []}}},
                         "a_teacher": {SPLIT: {"psds1": {"value": 0.2, "ci95": []}, "psds2": {"value": 0.1, "ci95": []}}}}}
    claims = procedure_claims(results, {}, ["a"], confidence_interval)
    assert claims[SPLIT]["iter1"]["stage2_vs_stage1"]["a"]["psds2"]["difference_ci95"] == []
    assert "ensemble_vs_best_member" not in claims[SPLIT]["iter1"] and "iteration_last_vs_first" not in claims[SPLIT]


def test_claim_rows_flatten_the_document_in_order(claims):
    rows = claim_rows({SPLIT: claims})
    assert len(rows) == 2 * (2 + 1) * 2 + 2  # iterations x (members + ensemble) x scenarios + last vs first
    assert [r[1:3] for r in rows[:3]] == [("iter1 stage2_vs_stage1", "psds1"), ("iter1 stage2_vs_stage1", "psds2"),
                                          ("iter1 stage2_vs_stage1", "psds1")]
    assert rows[4][1] == "iter1 ensemble_vs_best_member" and rows[-1][1:3] == ("iteration_last_vs_first", "psds2")
    assert rows[0][3] is claims["iter1"]["stage2_vs_stage1"]["a"]["psds1"]
