"""Figures and the metrics table of the report (``plot`` command); matplotlib with the Agg backend.

- PSD-ROC curves: effective TPR against effective FPR (per hour) up to max_efpr, one figure per model
  (PSDS1 and PSDS2 panels, one curve per evaluation split) and one comparison figure (one panel per scenario
  and split, one curve per iteration and model);
- per-clip activity: post-processed scores of every class against the ground truth (or alone, for inference);
- metrics table: HTML tables of eval_psds.json: PSDS entries (values, 95 % intervals, psds_eval cross-check, F1),
  MAESTRO entries (mpAUC, mAUC, segment F1 with intervals; per-class mpAUC), claims.
"""

from __future__ import annotations

import argparse
import html
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sedlib.evaluation.claims import claim_rows  # noqa: E402
from sedlib.evaluation.metrics import SCENARIOS, clips_with_events, read_durations, read_ground_truth, read_rocs  # noqa: E402
from sedlib.evaluation.postprocess import Event, class_thresholds, postprocess_tables, read_score_dir, select_classes, table_classes  # noqa: E402
from sedlib.io import atomic_path, write_text  # noqa: E402

Roc = tuple[np.ndarray, np.ndarray, float]  # (etpr, efpr per hour, psds)


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write a figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def draw_psd_roc(ax: plt.Axes, roc: Roc, label: str, max_efpr: float, **style: Any) -> None:
    """Staircase PSD-ROC (the curve whose area / max_efpr is the PSDS), labelled with its PSDS."""
    etpr, efpr, value = roc
    ax.step(efpr, etpr, where="post", label=f"{label} ({value:.3f})", **style)
    ax.set_xlim(0, max_efpr)
    ax.set_ylim(0, 1)
    ax.set_xlabel("eFPR (per hour)")
    ax.set_ylabel("eTPR")
    ax.grid(alpha=0.3)


def model_psd_roc_figure(rocs: Mapping[str, Roc], title: str, path: str | Path) -> None:
    """One model: a panel per scenario, a curve per split; ``rocs`` keyed '{dataset}/{split}/{scenario}'."""
    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(5 * len(SCENARIOS), 4), squeeze=False)
    for ax, (name, scenario) in zip(axes[0], SCENARIOS.items()):
        for key, roc in rocs.items():
            split, scen = key.rsplit("/", 1)
            if scen == name:
                draw_psd_roc(ax, roc, split, scenario.max_efpr)
        ax.set_title(name.upper())
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def comparison_figure(rocs: Mapping[str, Roc], path: str | Path) -> None:
    """Every model: a panel per (scenario, split), a curve per 'iter{i}/{model}' (keys as in read_rocs).

    Colour = model, line style = iteration; curves in the order of ``rocs``.
    """
    parsed = [(key.split("/"), roc) for key, roc in rocs.items()]  # [iteration, model, dataset, split, scenario]
    splits = list(dict.fromkeys(f"{p[2]}/{p[3]}" for p, _ in parsed))
    colours = {m: f"C{k % 10}" for k, m in enumerate(dict.fromkeys(p[1] for p, _ in parsed))}
    styles = {it: ("-", "--", ":", "-.")[k % 4] for k, it in enumerate(dict.fromkeys(p[0] for p, _ in parsed))}
    columns = len(splits) or 1  # an empty panel when no strongly labelled split is evaluated
    fig, axes = plt.subplots(len(SCENARIOS), columns, figsize=(6 * columns, 4.5 * len(SCENARIOS)), squeeze=False)
    for row, (name, scenario) in enumerate(SCENARIOS.items()):
        for col, split in enumerate(splits):
            ax = axes[row][col]
            for parts, roc in parsed:
                if parts[4] == name and f"{parts[2]}/{parts[3]}" == split:
                    draw_psd_roc(ax, roc, f"{parts[0]} {parts[1]}", scenario.max_efpr,
                                 color=colours[parts[1]], linestyle=styles[parts[0]])
            ax.set_title(f"{name.upper()} on {split}")
            ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def activity_figure(
    table: pd.DataFrame,
    path: str | Path,
    title: str,
    ground_truth: Sequence[Event] | None = None,
    threshold: float | Mapping[str, float] = 0.5,
) -> None:
    """Post-processed scores of every class over time (seconds); ground-truth events shaded; thresholds dashed."""
    classes = table_classes(table)
    thresholds = class_thresholds(threshold, classes)
    centres = ((table["onset"] + table["offset"]) / 2).to_numpy()
    end = float(table["offset"].iloc[-1])
    fig, axes = plt.subplots(len(classes), 1, figsize=(10, 0.7 * len(classes) + 1), sharex=True, squeeze=False)
    for ax, name, th in zip(axes[:, 0], classes, thresholds):
        for onset, offset, label in ground_truth or []:
            if label == name:
                ax.axvspan(onset, offset, color="tab:green", alpha=0.3, lw=0)
        ax.plot(centres, table[name].to_numpy(), color="tab:blue", lw=1)
        ax.axhline(th, color="tab:red", ls="--", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlim(0, end)
    axes[-1, 0].set_xlabel("time (s)")
    legend = "scores (blue), threshold (red)" + (", ground truth (green)" if ground_truth is not None else "")
    fig.suptitle(f"{title}\n{legend}", fontsize=9)
    save_figure(fig, path)


def activity_clips(ground_truth: Mapping[str, Sequence[Event]], n: int) -> list[str]:
    """``n`` clips to show: most distinct classes first, then most events, then by name (deterministic)."""
    ranked = sorted(ground_truth, key=lambda c: (-len({e[2] for e in ground_truth[c]}), -len(ground_truth[c]), c))
    if len(ranked) < n:
        raise ValueError(f"evaluation.activity_plots: {n} plots requested, only {len(ranked)} clips have events")
    return ranked[:n]


CLAIM_HEADER = ["split", "claim", "metric", "a", "a [95 % CI]", "b", "b [95 % CI]", "a - b [95 % CI]", "a >= b"]


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def value_ci(value: float, ci: Sequence[float]) -> str:
    """'0.1234 [0.1000, 0.1500]' ('-' for a missing interval)."""
    return f"{value:.4f} " + (f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-")


def claim_row(split: str, name: str, scenario: str, claim: Mapping[str, Any]) -> list[str]:
    """A row of the claims table (columns CLAIM_HEADER)."""
    return [split, name, scenario, claim["a"], value_ci(claim["a_value"], claim["a_ci95"]), claim["b"],
            value_ci(claim["b_value"], claim["b_ci95"]), value_ci(claim["difference"], claim["difference_ci95"]),
            "yes" if claim["holds"] else "no"]


def entries(document: Mapping[str, Any], metric: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(iteration, model, split, entry) of eval_psds.json's results whose metric kind is ``metric``, in order."""
    return [(iteration, model, split, entry)
            for iteration, models in document["results"].items()
            for model, splits in models.items()
            for split, entry in splits.items() if entry["metric"] == metric]


def psds_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the PSDS table: one row per iteration, model and strongly labelled split."""
    header = ["iteration", "model", "split", "clips"]
    for name in SCENARIOS:
        header += [name.upper(), "95 % CI", f"{name.upper()} (psds_eval)"]
    header += ["event F1 (macro)"]
    rows = []
    for iteration, model, split, entry in entries(document, "psds"):
        row = [iteration, model, split, str(entry["clips"])]
        for name in SCENARIOS:
            ci = entry[name]["ci95"]
            reference = entry[name]["psds_eval"]
            row += [f"{entry[name]['value']:.4f}", f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-",
                    "-" if reference is None else f"{reference:.4f}"]
        row.append(f"{entry['f1']['macro']:.4f}")
        rows.append(row)
    return header, rows


def mpauc_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """Header and rows of the MAESTRO table (one row per iteration, model and soft split: mpAUC, mAUC, segment
    F1 with 95 % CIs), then of its per-class mpAUC table ('-': a class without events)."""
    found = entries(document, "mpauc")
    header = ["iteration", "model", "split", "recordings", "mpAUC [95 % CI]", "mAUC [95 % CI]",
              "segment F1 [95 % CI]"]
    rows = [[iteration, model, split, str(entry["recordings"]),
             *(value_ci(entry[name]["value"], entry[name]["ci95"]) for name in ("mpauc", "mauc", "segment_f1"))]
            for iteration, model, split, entry in found]
    classes = list(dict.fromkeys(c for *_, entry in found for c in entry["mpauc"]["per_class"]))
    class_rows = [[iteration, model, split, *(f"{v:.3f}" if (v := entry["mpauc"]["per_class"].get(c)) is not None
                                              else "-" for c in classes)]
                  for iteration, model, split, entry in found]
    return header, rows, ["iteration", "model", "split", *classes], class_rows


def metrics_table_html(document: Mapping[str, Any]) -> str:
    """HTML tables of eval_psds.json: PSDS entries, MAESTRO entries and their per-class mpAUC (when a soft
    split is evaluated), one row per claim and metric."""
    header, rows = psds_rows(document)
    tables = f"{html_table(header, rows)}" if rows else ""
    maestro_header, maestro, class_header, per_class = mpauc_rows(document)
    if maestro:
        tables += (f"<h3>MAESTRO: segment-based (1 s) metrics on full recordings</h3>{html_table(maestro_header, maestro)}"
                   f"<h3>MAESTRO: mpAUC per class</h3>{html_table(class_header, per_class)}")
    code = document["code_version"]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>sedlib metrics</title>"
        "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
        "td,th{border:1px solid #aaa;padding:3px 8px;text-align:right}</style></head><body>"
        f"{tables}<h3>Claims (difference: a - b, paired bootstrap 95 % CI)</h3>"
        f"{html_table(CLAIM_HEADER, [claim_row(*row) for row in claim_rows(document['claims'])])}"
        f"<p>config sha256 {document['config_sha256'][:16]}, data manifest sha256 "
        f"{document['data_manifest_sha256'][:16]}, code {html.escape(str(code['commit']))}"
        f"{' (dirty)' if code['dirty'] else ''}</p></body></html>\n"
    )


def _draw(figure: tuple[Callable[..., None], tuple]) -> None:
    function, arguments = figure
    function(*arguments)


def draw_figures(figures: Sequence[tuple[Callable[..., None], tuple]], jobs: int = 1) -> None:
    """Call each (figure function, arguments) pair; with ``jobs`` > 1 in that many processes (matplotlib draws
    on one thread; the embedded report's 15 figures take about 5 s)."""
    if jobs <= 1 or len(figures) <= 1:
        for figure in figures:
            _draw(figure)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(figures))) as pool:
        list(pool.map(_draw, figures))


def roc_keys(document: Mapping[str, Any]) -> list[str]:
    """PSD-ROC keys 'iter{i}/{model}/{dataset}/{split}/{scenario}' of eval_psds.json's PSDS entries, in its order."""
    return [f"{iteration}/{model}/{split}/{name}" for iteration, model, split, _ in entries(document, "psds")
            for name in SCENARIOS]


def configure_plot(parser: argparse.ArgumentParser):
    parser.add_argument("--eval-json", required=True, help="results/eval_psds.json")
    parser.add_argument("--roc-file", required=True, help="PSD-ROC HDF5 written by evaluate")
    parser.add_argument("--comparison-out", required=True, help="comparison PSD-ROC PNG")
    parser.add_argument("--model-plot-dir", required=True, help="writes iter{i}/{model}.png for every model")
    parser.add_argument("--table-out", required=True, help="HTML metrics table")
    parser.add_argument("--activity-scores", help="score folder of the model shown in the activity plots")
    parser.add_argument("--activity-metadata", help="ground truth (DESED TSV) of that split")
    parser.add_argument("--activity-durations", help="durations TSV of that split")
    parser.add_argument("--activity-out", nargs="*", default=[], help="activity PNGs to write (one clip each)")
    parser.add_argument("--config-json", required=True, help="classes shown, their median windows, f1 (JSON)")
    parser.add_argument("--jobs", type=int, default=1, help="processes drawing the figures")

    def run(args: argparse.Namespace) -> int:
        settings = json.loads(args.config_json)
        document = json.loads(Path(args.eval_json).read_text())
        stored = read_rocs(args.roc_file)
        rocs = {key: stored[key] for key in roc_keys(document)}  # the document's order
        figures: list[tuple[Callable[..., None], tuple]] = [(comparison_figure, (rocs, args.comparison_out))]
        for iteration, models in document["results"].items():
            for model in models:
                prefix = f"{iteration}/{model}/"
                own = {key[len(prefix):]: roc for key, roc in rocs.items() if key.startswith(prefix)}
                path = Path(args.model_plot_dir) / iteration / f"{model}.png"
                figures.append((model_psd_roc_figure, (own, f"{iteration} {model}", path)))
        if args.activity_out:
            gt, _ = clips_with_events(read_ground_truth(args.activity_metadata), read_durations(args.activity_durations))
            clips = activity_clips(gt, len(args.activity_out))
            raw = {clip: select_classes(t, settings["classes"]) for clip, t in read_score_dir(args.activity_scores, clips).items()}
            tables = postprocess_tables(raw, settings["median_window"])
            for clip, out in zip(clips, args.activity_out):
                title = f"{clip} ({args.activity_scores})"
                figures.append((activity_figure, (tables[clip], out, title, gt[clip], settings["f1"]["threshold"])))
        draw_figures(figures, args.jobs)
        write_text(args.table_out, metrics_table_html(document))
        return 0

    return run
