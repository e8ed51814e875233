"""MAESTRO evaluation: chunk names, chunk score tables and soft chunk metadata merged back onto recordings,
mpAUC / mAUC / segment F1 against direct sed_scores_eval calls, and a joint evaluation (PSDS of a strong split
on its dataset's classes, mpAUC of a soft split) in eval_psds.json. Tiny hand-made tables."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sed_scores_eval import segment_based
from sed_scores_eval.base_modules.scores import create_score_dataframe

from sedlib.config import ConfigError, output_classes, scored_classes, validate_config
from sedlib.evaluation import chunk_merge as C
from sedlib.evaluation import maestro_metrics as MM
from sedlib.evaluation import metrics as M
from sedlib.evaluation import postprocess as P
from sedlib.evaluation import score_tables as S
from sedlib.evaluation.plots import configure_plot, metrics_table_html, roc_keys

HOP = 0.25  # s, frame hop of the hand-made tables (divides the 5 s chunk hop: chunk grids coincide)
CLASSES = ["car", "birds", "wind"]


def chunk_bounds(duration: float, length: float = 10.0, hop: float = 5.0) -> list[tuple[float, float]]:
    """The baseline's chunks (download_prep_maestro.py get_chunks_indx): full chunks, then the last partial one."""
    count = int((duration - length + hop) / hop)
    bounds = [(k * hop, k * hop + length) for k in range(count)]
    if bounds[-1][1] < duration and duration - count * hop > 0:
        bounds.append((count * hop, duration))
    return bounds


def name(recording: str, onset: float, offset: float) -> str:
    return f"{recording}-{round(onset * 100):06d}-{round(offset * 100):06d}"


def recording_table(duration: float, seed: int, classes=CLASSES) -> pd.DataFrame:
    n = int(np.ceil(duration / HOP))
    stamps = np.minimum(np.arange(n + 1) * HOP, duration)
    return create_score_dataframe(np.random.default_rng(seed).random((n, len(classes))), stamps, classes)


def cut(table: pd.DataFrame, recording: str, duration: float) -> dict[str, pd.DataFrame]:
    """The recording table's frames inside each chunk, times relative to the chunk."""
    chunks = {}
    for onset, offset in chunk_bounds(duration):
        part = table[(table["onset"] >= onset - 1e-9) & (table["offset"] <= offset + 1e-9)]
        scores = part[table.columns[2:]].to_numpy()
        stamps = np.append(part["onset"].to_numpy(), part["offset"].to_numpy()[-1]) - onset
        chunks[name(recording, onset, offset)] = create_score_dataframe(scores, stamps, list(table.columns[2:]))
    return chunks


def cut_events(events, recording: str, duration: float) -> dict[str, list[tuple]]:
    """Soft events (onset, offset, label, confidence) clipped to each chunk, relative to it (chunks without
    events included, as empty lists)."""
    chunks = {}
    for onset, offset in chunk_bounds(duration):
        chunks[name(recording, onset, offset)] = [
            (round(max(on, onset) - onset, 6), round(min(off, offset) - onset, 6), label, conf)
            for on, off, label, conf in events if on < offset and off > onset
        ]
    return chunks


# ----------------------------------------------------------------------------- chunk names and durations
def test_chunk_names_parse_with_or_without_extension():
    assert C.chunk_of("cafe_restaurant_03-000500-001500.wav") == ("cafe_restaurant_03", 5.0, 15.0)
    assert C.chunk_of("a-b-123-009000-009734") == ("a-b-123", 90.0, 97.34)
    for bad in ("cafe_restaurant_03.wav", "rec-0500-1500", "rec-001500-000500"):
        with pytest.raises(ValueError, match="chunk name"):
            C.chunk_of(bad)


def test_recording_durations_are_the_last_chunk_ends():
    durations = {name("r1", a, b): b - a for a, b in chunk_bounds(23.4)} | {name("r2", 0, 10): 10.0}
    assert C.recording_durations(durations) == {"r1": 23.4, "r2": 10.0}
    with pytest.raises(ValueError, match="r2-000000-001000: measured duration 7.0 s, its name says 10.00 s"):
        C.recording_durations({name("r2", 0, 10): 7.0})


# ----------------------------------------------------------------------------- scores
def test_agreeing_chunk_tables_merge_back_to_the_recording_table():
    tables = {"r1": recording_table(23.0, 0), "r2": recording_table(31.5, 1)}
    chunks = {**cut(tables["r1"], "r1", 23.0), **cut(tables["r2"], "r2", 31.5)}
    assert len(chunks) == 4 + 6  # r1: 0-10, 5-15, 10-20, 15-23
    merged = C.merge_chunk_tables(chunks)
    assert list(merged) == ["r1", "r2"]
    for recording, table in tables.items():
        pd.testing.assert_frame_equal(merged[recording], table, check_exact=True)


def test_overlapping_chunks_are_averaged_on_the_union_of_their_frame_grids():
    first = create_score_dataframe(np.full((2, 1), 0.2), np.array([0.0, 5.0, 10.0]), ["car"])
    second = create_score_dataframe(np.array([[0.6], [1.0]]), np.array([0.0, 3.0, 10.0]), ["car"])  # 5-8, 8-15 s
    merged = C.merge_chunk_tables({"r-000000-001000": first, "r-000500-001500": second})["r"]
    assert merged["onset"].tolist() == [0.0, 5.0, 8.0, 10.0] and merged["offset"].tolist() == [5.0, 8.0, 10.0, 15.0]
    assert merged["car"].tolist() == pytest.approx([0.2, 0.4, 0.6, 1.0])


def test_uncovered_time_and_differing_classes_are_errors():
    table = create_score_dataframe(np.zeros((1, 1)), np.array([0.0, 10.0]), ["car"])
    with pytest.raises(ValueError, match="recording r: no chunk score table covers 10.000-12.000 s"):
        C.merge_chunk_tables({"r-000000-001000": table, "r-001200-002200": table})
    other = create_score_dataframe(np.zeros((1, 1)), np.array([0.0, 10.0]), ["bus"])
    with pytest.raises(ValueError, match=r"classes \['bus'\], expected \['car'\]"):
        C.merge_chunk_tables({"r-000000-001000": table, "r-000500-001500": other})


# ----------------------------------------------------------------------------- ground truth
def test_clipped_pieces_of_an_event_merge_back_into_the_event(tmp_path):
    events = [(3.0, 17.2, "car", 0.8), (1.0, 2.0, "birds", 0.5), (12.0, 13.0, "birds", 0.6),
              (12.5, 14.0, "birds", 1.0), (20.0, 21.0, "dog", 1.0)]  # birds 1-2 s: 0.5 is not > 0.5; dog not scored
    chunks = cut_events(events, "r1", 23.0) | cut_events([], "r2", 10.0)
    tsv = tmp_path / "soft.tsv"
    rows = [f"{chunk}.wav\t{on}\t{off}\t{label}\t{conf}" for chunk, evs in chunks.items() for on, off, label, conf in evs]
    tsv.write_text("filename\tonset\toffset\tevent_label\tconfidence\n" + "\n".join(rows) + "\n")
    read = C.read_soft_events(tsv)
    assert read == {chunk: evs for chunk, evs in chunks.items() if evs}
    assert read["r1-000500-001500"] == [(0.0, 10.0, "car", 0.8), (7.0, 8.0, "birds", 0.6), (7.5, 9.0, "birds", 1.0)]
    truth = C.recording_ground_truth(read, list(chunks), CLASSES, MM.MIN_CONFIDENCE)
    assert truth == {"r1": [(12.0, 14.0, "birds"), (3.0, 17.2, "car")], "r2": []}


def test_soft_metadata_errors_name_the_row(tmp_path):
    tsv = tmp_path / "soft.tsv"
    tsv.write_text("filename\tonset\toffset\tevent_label\tconfidence\nr-000000-001000.wav\t1\t2\tcar\t1.5\n")
    with pytest.raises(ValueError, match=r"soft.tsv:2: column 'confidence'"):
        C.read_soft_events(tsv)
    tsv.write_text("filename\tonset\toffset\tevent_label\tconfidence\nr-000000-001000.wav\t1\t2\tcar\thigh\n")
    with pytest.raises(ValueError, match=r"soft.tsv:2: column 'confidence'"):
        C.read_soft_events(tsv)
    tsv.write_text("filename\tonset\toffset\tevent_label\nr-000000-001000.wav\t1\t2\tcar\n")
    with pytest.raises(ValueError, match="header"):
        C.read_soft_events(tsv)
    with pytest.raises(ValueError, match="without a duration"):
        C.recording_ground_truth({"r-000000-001000": []}, ["q-000000-001000"], CLASSES, 0.5)


# ----------------------------------------------------------------------------- metrics
RECORDINGS = {"r1": 23.0, "r2": 31.5, "r3": 17.3}
SOFT_EVENTS = {  # per recording: (onset, offset, label, confidence); confidence <= 0.5 must be ignored
    "r1": [(3.0, 17.2, "car", 0.8), (1.0, 2.5, "birds", 0.4), (12.0, 13.0, "birds", 0.6), (20.0, 22.0, "wind", 0.9)],
    "r2": [(0.5, 4.0, "car", 1.0), (8.0, 9.5, "car", 0.5), (14.0, 30.0, "wind", 0.7), (25.0, 27.0, "birds", 1.0)],
    "r3": [(2.0, 6.0, "birds", 0.9), (9.0, 11.0, "car", 0.3)],
}


@pytest.fixture(scope="module")
def maestro():
    """Recording tables (scores raised inside confident events), their chunks, chunk metadata and durations."""
    tables, chunk_tables, chunk_events, chunk_durations = {}, {}, {}, {}
    for k, (recording, duration) in enumerate(RECORDINGS.items()):
        table = recording_table(duration, k)
        centres = (table["onset"] + table["offset"]) / 2
        for on, off, label, _ in SOFT_EVENTS[recording]:
            inside = (centres > on) & (centres < off)
            table.loc[inside, label] = 0.3 + 0.7 * table.loc[inside, label]
        tables[recording] = table
        chunk_tables |= cut(table, recording, duration)
        chunk_events |= cut_events(SOFT_EVENTS[recording], recording, duration)
        chunk_durations |= {name(recording, a, b): b - a for a, b in chunk_bounds(duration)}
    truth = {r: sorted((on, off, label) for on, off, label, conf in evs if conf > 0.5) for r, evs in SOFT_EVENTS.items()}
    return tables, truth, chunk_tables, chunk_events, chunk_durations


def test_metrics_equal_direct_sed_scores_eval_calls(maestro):
    tables, truth, chunk_tables, chunk_events, chunk_durations = maestro
    entry, samples = MM.evaluate_chunks(chunk_tables, chunk_events, chunk_durations, 0.5, {"n": 4, "seed": 0},
                                        M.confidence_interval)
    assert entry["recordings"] == 3 and entry["chunks"] == len(chunk_tables) and entry["events"] == 7
    assert entry["hours"] == pytest.approx(sum(RECORDINGS.values()) / 3600)
    args = (tables, truth, RECORDINGS)
    mpauc = segment_based.auroc(*args, segment_length=1.0, max_fpr=0.1)[0]
    mauc = segment_based.auroc(*args, segment_length=1.0)[0]
    f1 = segment_based.fscore(*args, segment_length=1.0, threshold=0.5)[0]
    assert entry["mpauc"]["value"] == pytest.approx(mpauc["mean"], abs=1e-12)
    assert entry["mauc"]["value"] == pytest.approx(mauc["mean"], abs=1e-12)
    assert entry["segment_f1"]["value"] == pytest.approx(f1["macro_average"], abs=1e-12)
    assert entry["segment_f1"]["micro"] == pytest.approx(f1["micro_average"], abs=1e-12)
    for c in CLASSES:
        assert entry["mpauc"]["per_class"][c] == pytest.approx(mpauc[c], abs=1e-12)
        assert entry["segment_f1"]["per_class"][c] == pytest.approx(f1[c], abs=1e-12)
    assert 0.5 < entry["mauc"]["value"] < 1.0 and entry["classes_without_events"] == []
    assert {k: v.shape for k, v in samples.items()} == {"mpauc": (4,), "mauc": (4,), "segment_f1": (4,)}
    assert len(entry["mpauc"]["ci95"]) == 2 and entry["mpauc"]["bootstrap_std"] > 0


def test_a_bootstrap_draw_counts_a_recording_as_often_as_drawn(maestro):
    tables, truth, *_ = maestro
    deltas = MM.segment_deltas(tables, truth, RECORDINGS)
    drawn = MM.segment_metrics(deltas, 0.5, np.array([0, 0, 2]))  # r1 twice, r3
    copies = {"a": "r1", "b": "r1", "c": "r3"}
    direct = segment_based.auroc({k: tables[r] for k, r in copies.items()}, {k: truth[r] for k, r in copies.items()},
                                 {k: RECORDINGS[r] for k, r in copies.items()}, segment_length=1.0, max_fpr=0.1)[0]
    assert drawn["mpauc"] == pytest.approx({c: direct[c] for c in CLASSES}, abs=1e-12)
    alone = MM.segment_metrics(deltas, 0.5, np.array([2]))  # r3: no wind, car only at confidence 0.3
    assert np.isnan(alone["mpauc"]["wind"]) and np.isnan(alone["mpauc"]["car"]) and not np.isnan(alone["mpauc"]["birds"])
    assert MM.class_mean(alone["mpauc"]) == alone["mpauc"]["birds"]


def test_a_class_without_events_is_left_out_and_listed(maestro):
    tables, truth, *_ = maestro
    no_wind = {r: [e for e in events if e[2] != "wind"] for r, events in truth.items()}
    parts, _ = MM.evaluate_recordings(tables, no_wind, RECORDINGS, 0.5, {"n": 0, "seed": 0}, M.confidence_interval)
    assert parts["classes_without_events"] == ["wind"] and parts["mpauc"]["per_class"]["wind"] is None
    direct = segment_based.auroc({r: t[["onset", "offset", "car", "birds"]] for r, t in tables.items()}, no_wind,
                                 RECORDINGS, segment_length=1.0, max_fpr=0.1)[0]
    assert parts["mpauc"]["value"] == pytest.approx(direct["mean"], abs=1e-12) and parts["mpauc"]["ci95"] == []


# ----------------------------------------------------------------------------- configuration and eval_psds.json
def joint_config(root) -> dict:
    split = {"audio": "audio", "metadata": "meta.tsv", "role": "test"}
    return validate_config({
        "datasets": {
            "desed": {"classes": ["Dog", "car"], "source": "local", "root": str(root),
                      "splits": {"devtest": {**split, "labels": "strong"}}},
            "maestro": {"classes": ["car", "birds", "wind", "coffee"], "scored_classes": CLASSES, "source": "local",
                        "root": str(root), "splits": {"val": {**split, "labels": "soft"}}},
        },
        "training": {"members": [{"name": "a", "seed": 1}], "iterations": 1},
        "evaluation": {"median_window": 1, "bootstrap": {"n": 3, "seed": 0}, "psds_eval_thresholds": 3},
    })


def test_output_classes_are_the_union_in_configuration_order(tmp_path):
    config = joint_config(tmp_path)
    assert output_classes(config) == ["Dog", "car", "birds", "wind", "coffee"]
    assert scored_classes(config, "maestro") == CLASSES and scored_classes(config, "desed") == ["Dog", "car"]
    assert config["evaluation"]["median_window"] == [1] * 5
    config["datasets"]["maestro"]["scored_classes"] = ["car", "bus"]
    with pytest.raises(ConfigError, match=r"datasets.maestro.scored_classes.*\['bus'\]"):
        validate_config(config)


def test_joint_evaluation_scores_each_split_on_its_classes(tmp_path, maestro):
    _, _, chunk_tables, chunk_events, chunk_durations = maestro
    config = joint_config(tmp_path)
    every = output_classes(config)
    rng = np.random.default_rng(5)
    # DESED: 3 clips of 10 s; union tables whose MAESTRO-only columns are noise (no events: PSDS would fail on them)
    desed_truth = {"c1": [(1.0, 3.0, "Dog")], "c2": [(2.0, 6.0, "car"), (7.0, 8.0, "Dog")], "c3": [(0.5, 9.0, "car")]}
    desed_tables = {}
    for clip, events in desed_truth.items():
        scores = rng.random((40, len(every))) * 0.5
        centres = (np.arange(40) + 0.5) * HOP
        for on, off, label in events:
            scores[(centres > on) & (centres < off), every.index(label)] += 0.5
        desed_tables[clip] = create_score_dataframe(scores, np.arange(41) * HOP, every)
    maestro_tables = {}
    for chunk, table in chunk_tables.items():  # union columns: Dog and coffee (not scored) are noise
        scores = rng.random((len(table), len(every)))
        scores[:, [every.index(c) for c in CLASSES]] = table[CLASSES].to_numpy()
        stamps = np.append(table["onset"].to_numpy(), table["offset"].to_numpy()[-1])
        maestro_tables[chunk] = create_score_dataframe(scores, stamps, every)
    files = {}
    for ref, events, durations, header, row in (
        ("desed/devtest", {c: [(*e, None) for e in evs] for c, evs in desed_truth.items()}, dict.fromkeys(desed_truth, 10.0),
         "filename\tonset\toffset\tevent_label", "{}.wav\t{}\t{}\t{}"),
        ("maestro/val", chunk_events, chunk_durations, "filename\tonset\toffset\tevent_label\tconfidence",
         "{}.wav\t{}\t{}\t{}\t{}"),
    ):
        folder = tmp_path / ref.replace("/", "_")
        folder.mkdir()
        lines = [row.format(c, *e) if e[-1] is not None else row.format(c, *e[:3]) for c, evs in events.items() for e in evs]
        (folder / "meta.tsv").write_text(header + "\n" + "\n".join(lines) + "\n")
        (folder / "durations.tsv").write_text("filename\tduration\n" + "".join(f"{c}.wav\t{d}\n" for c, d in durations.items()))
        files[ref] = {"metadata": str(folder / "meta.tsv"), "durations": str(folder / "durations.tsv")}
    S.write_score_dir(tmp_path / "scores_desed", desed_tables)
    S.write_score_dir(tmp_path / "scores_maestro", maestro_tables)
    scores = [{"iteration": 1, "model": model, "split": ref, "dir": str(tmp_path / f"scores_{ref.split('/')[0]}")}
              for model in ("a_stage1_teacher", "a_teacher") for ref in files]
    out, rocs = tmp_path / "eval_psds.json", tmp_path / "rocs.h5"
    run = M.configure_evaluate(argparse.ArgumentParser())
    args = argparse.Namespace(config_json=json.dumps(config), inputs_json=json.dumps({"splits": files, "scores": scores}),
                              out=str(out), roc_out=str(rocs), jobs=1)
    assert run(args) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "sedlib.eval_psds/2"
    assert doc["methodology"]["splits"] == {
        "desed/devtest": {"metric": "psds", "classes": ["Dog", "car"], "median_window_frames": [1, 1]},
        "maestro/val": {"metric": "mpauc", "classes": CLASSES, "median_window_frames": [1, 1, 1]},
    }
    psds_entry = doc["results"]["iter1"]["a_teacher"]["desed/devtest"]
    assert psds_entry["metric"] == "psds" and set(psds_entry["psds1"]["per_class"]) == {"Dog", "car"}
    restricted = {c: P.select_classes(t, ["Dog", "car"]) for c, t in desed_tables.items()}
    assert psds_entry["psds1"]["value"] == M.psds(restricted, desed_truth, dict.fromkeys(desed_truth, 10.0),
                                                  M.SCENARIOS["psds1"]).value
    entry = doc["results"]["iter1"]["a_teacher"]["maestro/val"]
    assert list(entry) == ["metric", "recordings", "chunks", "events", "hours", "classes_without_events", "mpauc",
                           "mauc", "segment_f1", "seconds"]
    expected, _ = MM.evaluate_chunks({c: P.select_classes(t, CLASSES) for c, t in maestro_tables.items()}, chunk_events,
                                     chunk_durations, 0.5, {"n": 3, "seed": 0}, M.confidence_interval)
    assert entry["mpauc"] == expected["mpauc"] and set(entry["mpauc"]["per_class"]) == set(CLASSES)
    claims = doc["claims"]["maestro/val"]["iter1"]["stage2_vs_stage1"]["a"]
    assert list(claims) == ["mpauc"] and claims["mpauc"]["difference"] == 0.0  # same tables for both models
    assert claims["mpauc"]["difference_ci95"] == [0.0, 0.0]
    assert list(doc["claims"]["desed/devtest"]["iter1"]["stage2_vs_stage1"]["a"]) == ["psds1", "psds2"]
    assert set(M.read_rocs(rocs)) == set(roc_keys(doc)) == {f"iter1/{m}/desed/devtest/{s}" for m in
                                                             ("a_stage1_teacher", "a_teacher") for s in M.SCENARIOS}
    page = metrics_table_html(doc)
    assert "MAESTRO: mpAUC per class" in page and f"{entry['mpauc']['per_class']['birds']:.3f}" in page
    plot = configure_plot(argparse.ArgumentParser())
    for jobs in (1, 2):  # figures drawn in worker processes are the same files
        folder = tmp_path / f"plots{jobs}"
        assert plot(argparse.Namespace(eval_json=str(out), roc_file=str(rocs), comparison_out=str(folder / "cmp.png"),
                                       model_plot_dir=str(folder / "models"), table_out=str(folder / "table.html"),
                                       activity_out=[], config_json=json.dumps(config["evaluation"]), jobs=jobs)) == 0
    figures = sorted(p.relative_to(tmp_path / "plots1") for p in (tmp_path / "plots1").rglob("*.png"))
    assert Path("models/iter1/a_teacher.png") in figures and (tmp_path / "plots2" / "table.html").is_file()
    assert all((tmp_path / "plots1" / f).read_bytes() == (tmp_path / "plots2" / f).read_bytes() for f in figures)
