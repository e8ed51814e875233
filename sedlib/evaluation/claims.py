"""The procedure's claims, checked on eval_psds.json results (its ``claims`` section, docs/evaluation.md).

Per evaluated split and headline metric (PSDS1 and PSDS2 of a strongly labelled split, mpAUC of a MAESTRO
split): in every iteration, stage 2 >= stage 1 of each member (stage-2 teacher, else student, vs.
the stage-1 teacher) and the ensemble >= the best single stage-2 network; and the last iteration's ensemble >=
the first's. Each comparison reports both values with their bootstrap 95 % CIs, the difference and its
paired bootstrap CI: every model scored on a split is resampled with the same clip draws (same seed, same
sorted clips), so the difference of two models' bootstrap samples is the bootstrap of their difference.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

STAGE1 = "_stage1_teacher"  # suffix of a member's stage-1 teacher model name
CLAIMED = ("psds1", "psds2", "mpauc")  # the metrics compared, those an entry has (higher is better for each)
Bootstrap = Mapping[tuple[str, str, str, str], np.ndarray]  # (iteration, model, split, metric) -> (n,) values
Interval = Callable[[np.ndarray], list[float]]  # bootstrap samples -> [low, high] ([] without samples)


def compare(
    results: Mapping[str, Any], bootstrap: Bootstrap, split: str, a: tuple[str, str], b: tuple[str, str],
    metric: str, confidence_interval: Interval,
) -> dict[str, Any]:
    """Claim 'a >= b' for one metric (psds1, psds2, mpauc); ``a``, ``b``: (iteration, model) scored on ``split``."""
    entries = [results[it][model][split][metric] for it, model in (a, b)]
    samples = [bootstrap.get((it, model, split, metric), np.empty(0)) for it, model in (a, b)]
    paired = samples[0] - samples[1] if len(samples[0]) == len(samples[1]) else np.empty(0)
    paired = paired[np.isfinite(paired)]  # a MAESTRO draw without any defined class has no value
    difference = entries[0]["value"] - entries[1]["value"]
    return {
        "a": "/".join(a), "b": "/".join(b),
        "a_value": entries[0]["value"], "a_ci95": entries[0]["ci95"],
        "b_value": entries[1]["value"], "b_ci95": entries[1]["ci95"],
        "difference": difference,
        "difference_ci95": confidence_interval(paired),
        "holds": bool(difference >= 0),
    }


def procedure_claims(
    results: Mapping[str, Any], bootstrap: Bootstrap, members: Sequence[str], confidence_interval: Interval
) -> dict[str, Any]:
    """``{"dataset/split": {"iter{i}": {"stage2_vs_stage1": {member: {metric: claim}}, "ensemble_vs_best_member":
    {metric: claim}}, "iteration_last_vs_first": {metric: claim}}}`` (``compare`` claims; metrics: those of CLAIMED
    that the split's entries have).

    ``results``: eval_psds.json's ``results``; ``bootstrap``: the bootstrap PSDS samples of its entries;
    ``confidence_interval(samples) -> [low, high]``. A comparison whose models are not in ``results`` is left out.
    """
    iterations = list(results)
    splits = list(dict.fromkeys(split for models in results.values() for entries in models.values() for split in entries))
    claims: dict[str, Any] = {}

    def scored(iteration: str, model: str, split: str) -> bool:
        return split in results.get(iteration, {}).get(model, {})

    def claim(split: str, a: tuple[str, str], b: Callable[[str], tuple[str, str]]) -> dict[str, Any]:
        """{metric: a >= b(metric)}."""
        entry = results[a[0]][a[1]][split]
        return {m: compare(results, bootstrap, split, a, b(m), m, confidence_interval) for m in CLAIMED if m in entry}

    for split in splits:
        per_split: dict[str, Any] = {}
        for it in iterations:
            stage2 = {m: next((f"{m}_{n}" for n in ("teacher", "student") if scored(it, f"{m}_{n}", split)), None)
                      for m in members}
            entry: dict[str, Any] = {"stage2_vs_stage1": {
                m: claim(split, (it, stage2[m]), lambda sc: (it, m + STAGE1))
                for m in members if stage2[m] and scored(it, m + STAGE1, split)
            }}
            singles = [model for m in members for model in (f"{m}_teacher", f"{m}_student") if scored(it, model, split)]
            if scored(it, "ensemble", split) and singles:
                entry["ensemble_vs_best_member"] = claim(
                    split, (it, "ensemble"),
                    lambda sc: (it, max(singles, key=lambda model: results[it][model][split][sc]["value"])),
                )
            per_split[it] = entry
        first, last = iterations[0], iterations[-1]
        if last != first and scored(first, "ensemble", split) and scored(last, "ensemble", split):
            per_split["iteration_last_vs_first"] = claim(split, (last, "ensemble"), lambda sc: (first, "ensemble"))
        claims[split] = per_split
    return claims


def claim_rows(claims: Mapping[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(split, claim name, metric, claim) of a ``procedure_claims`` document, in its order (for tables)."""
    rows = []
    for split, per_split in claims.items():
        for key, value in per_split.items():
            if key == "iteration_last_vs_first":
                rows += [(split, key, sc, c) for sc, c in value.items()]
                continue
            rows += [(split, f"{key} stage2_vs_stage1", sc, c) for by_scenario in value["stage2_vs_stage1"].values()
                     for sc, c in by_scenario.items()]
            rows += [(split, f"{key} ensemble_vs_best_member", sc, c)
                     for sc, c in value.get("ensemble_vs_best_member", {}).items()]
    return rows
