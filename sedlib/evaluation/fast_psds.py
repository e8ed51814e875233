"""Exact intersection-based PSD-ROC and PSDS over every decision threshold, vectorised over clips and classes.

Reproduces ``sed_scores_eval`` 0.0.4 (``intersection_based.psds`` with ``time_decimals=6``, eFPR per hour) with
numpy array operations instead of one Python call per clip and class. Definitions (read from sed_scores_eval):

- At a threshold ``u`` (any score value of a clip's class column) a detection is a maximal run of frames with
  score ``>= u``, from the onset of its first frame to the offset of its last (seconds). The statistics at ``u``
  hold for every decision threshold in ``[next lower score, u)``: a frame is active when its score is above it.
- Detection tolerance criterion (DTC): ``round(sum_g inter(d, g), 6) >= round(dtc * len(d), 6)`` over the
  clip's target-class events ``g``; detections failing it are false positives.
- Ground-truth intersection criterion (GTC): event ``g`` is a true positive when
  ``round(sum_d inter(d, g), 6) >= round(gtc * len(g), 6)`` over the detections meeting the DTC.
- Cross-trigger criterion (only with ``cttc``): a detection failing the DTC is a cross trigger on class ``k``
  (with events in the clip) when ``round(sum_g inter(d, g), 6) >= round(cttc * len(d), 6)`` over ``k``'s events.
- Per class: TPR = tps / n_ref and eFPR = (fps / duration + alpha_ct * mean_k(cts_k / t_ref_k)) * 3600 (per
  hour), sorted, made monotone (cummax) and cut at ``max_efpr``; the PSD-ROC is mean - alpha_st * std of the
  per-class TPRs (staircase interpolation), PSDS its area up to ``max_efpr`` divided by ``max_efpr``.

How: the detections of one clip and class at every threshold are the nodes of its max-tree. A node is a run of
frames alive for thresholds ``lo < u <= hi``, ``hi`` = its lowest score, ``lo`` = the higher of its two
neighbouring scores; nodes come from the nearest smaller score left and right of every frame (pointer jumping
over all clips and classes at once). The number of detections, the false positives and the cross triggers at
``u`` are sums of node properties over the alive nodes (+1 at ``hi``, -1 at ``lo``); true positives are
evaluated per ground-truth event at each threshold where one of its overlapping relevant nodes appears or
disappears. A sum of one or two intersections is bit-identical to sed_scores_eval's (float addition is
commutative, the other terms are exact zeros). The rare cases where that argument does not hold (a sum of three
or more intersections within 1e-9 s of a rounding boundary; frames so short that a criterion rounds to 0 s) are
computed for the affected clip and class by sed_scores_eval's own per-clip code, so every value is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sed_scores_eval.base_modules.cy_detection import onset_offset_curves
from sed_scores_eval.base_modules.statistics import _deltas_from_intermediate_statistics
from sed_scores_eval.intersection_based.intermediate_statistics import acceleration_fn, statistics_fn
from sed_scores_eval.intersection_based.psds import multi_class_psd_roc_from_single_class_psd_rocs, psds_from_psd_roc

DECIMALS = 6  # sed_scores_eval's time_decimals
SECONDS_PER_HOUR = 3600.0
TP, FP = 0, 1  # statistic ids of the delta entries; cross triggers with class k have id 2 + k
AMBIGUITY = 1e-3  # |fraction of x * 1e6 - 0.5| below this: x is too close to a rounding boundary (1e-9 s)

Event = tuple[float, float, str]


# ----------------------------------------------------------------------------- small array helpers
def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, k) for k = 0..counts[i]-1 of every i: the flattened ranges, owner = i."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


def _near_rounding_boundary(x: np.ndarray) -> np.ndarray:
    """True where ``round(x, 6)`` could change under a sub-nanosecond perturbation of x."""
    frac = np.asarray(x) * 10.0**DECIMALS
    return np.abs(frac - np.floor(frac) - 0.5) < AMBIGUITY


def _prev_less_equal(v: np.ndarray) -> np.ndarray:
    """Index of the nearest element to the left with value <= v[i]; ``v[0]`` must be -inf (a sentinel)."""
    p = np.arange(-1, len(v) - 1)
    p[0] = 0
    todo = np.flatnonzero(v[p] > v)
    while todo.size:  # pointer jumping: every element between p[i] and i stays > v[i]
        p[todo] = p[p[todo]]
        todo = todo[v[p[todo]] > v[todo]]
    return p


def _next_less(v: np.ndarray) -> np.ndarray:
    """Index of the nearest element to the right with value < v[i]; ``v[-1]`` must be -inf (a sentinel)."""
    r = np.arange(1, len(v) + 1)
    r[-1] = len(v) - 1
    todo = np.flatnonzero((v[r] >= v) & (v > -np.inf))
    while todo.size:  # every element between i and r[i] stays >= v[i]
        r[todo] = r[r[todo]]
        todo = todo[v[r[todo]] >= v[todo]]
    return r


# ----------------------------------------------------------------------------- inputs
def _stack_tables(tables: Mapping[str, pd.DataFrame]) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Clips (sorted), classes, (N, C) scores of all frames, (N + K,) frame boundaries (s), (K + 1,) frame offsets."""
    if not tables:
        raise ValueError("PSDS: no score tables")
    clips = sorted(tables)
    columns = list(tables[clips[0]].columns)
    if len(columns) < 3 or columns[:2] != ["onset", "offset"]:
        raise ValueError(f"score table of {clips[0]}: columns {columns}, expected onset, offset, <classes...>")
    arrays = []
    for clip in clips:
        table = tables[clip]
        if list(table.columns) != columns:
            raise ValueError(f"score table of {clip}: columns {list(table.columns)}, expected {columns}")
        if len(table) == 0:
            raise ValueError(f"score table of {clip} has no frames")
        arrays.append(table.to_numpy(dtype=np.float64))
    frames = np.array([len(a) for a in arrays])
    offsets = np.concatenate(([0], np.cumsum(frames)))
    stacked = np.concatenate(arrays)
    onsets, offsets_s = stacked[:, 0], stacked[:, 1]
    last = offsets[1:] - 1
    inner = np.ones(len(stacked) - 1, dtype=bool)
    inner[last[:-1]] = False  # a clip's last offset is not followed by its own next onset
    bad_zero = onsets == offsets_s
    bad_gap = inner & (offsets_s[:-1] != onsets[1:])
    for bad, what in ((bad_zero, "frames of zero length"), (bad_gap, "an offset that differs from the next onset")):
        if bad.any():
            clip = clips[int(np.searchsorted(offsets, np.flatnonzero(bad)[0], side="right")) - 1]
            raise ValueError(f"score table of {clip}: {what}")
    scores = stacked[:, 2:]
    if not np.isfinite(scores).all():
        raise ValueError("PSDS: score tables must hold finite scores")
    clip_of_frame = np.repeat(np.arange(len(clips)), frames)
    timestamps = np.empty(len(stacked) + len(clips))
    timestamps[np.arange(len(stacked)) + clip_of_frame] = onsets
    timestamps[offsets[1:] + np.arange(len(clips))] = offsets_s[last]
    return clips, columns[2:], scores, timestamps, offsets


def _ground_truth_arrays(ground_truth: Mapping[str, Sequence[Event]], clips: list[str], classes: list[str]):
    """Events sorted by (clip, class, onset): clip index, class index, onset s, offset s (validated)."""
    if set(ground_truth) != set(clips):
        missing, extra = sorted(set(clips) - set(ground_truth)), sorted(set(ground_truth) - set(clips))
        raise ValueError(f"ground truth clips differ from the score tables: missing {missing[:3]}, extra {extra[:3]}")
    index = {c: k for k, c in enumerate(classes)}
    rows = []
    for q, clip in enumerate(clips):
        for event in ground_truth[clip]:
            if len(event) != 3 or event[2] not in index:
                raise ValueError(f"ground truth of {clip}: event {event} is not (onset, offset, one of {classes})")
            onset, offset, label = float(event[0]), float(event[1]), event[2]
            if not offset > onset:
                raise ValueError(f"ground truth of {clip}: event {event} must end after it starts")
            rows.append((q, index[label], onset, offset))
    if not rows:
        raise ValueError("ground truth has no events")
    q, k, onset, offset = (np.array(col) for col in zip(*rows))
    order = np.lexsort((onset, k, q))
    q, k, onset, offset = q[order].astype(np.int64), k[order].astype(np.int64), onset[order], offset[order]
    same = (q[1:] == q[:-1]) & (k[1:] == k[:-1])
    touching = same & ~(onset[1:] > offset[:-1])
    if touching.any():
        i = int(np.flatnonzero(touching)[0])
        raise ValueError(f"ground truth of {clips[q[i]]}: connected or overlapping {classes[k[i]]} events")
    absent = sorted(set(range(len(classes))) - set(k.tolist()))
    if absent:
        raise ValueError(f"ground truth has no events of classes {[classes[c] for c in absent]}")
    return q, k, onset, offset


# ----------------------------------------------------------------------------- shared structure
class DetectionTrees:
    """Every detection of every clip and class at every threshold (max-tree nodes) and their overlaps with the
    ground truth; built once, shared by the PSDS scenarios and the bootstrap.

    ``tables``: ``{clip: score DataFrame (onset, offset, classes...)}``; ``ground_truth``: ``{clip: [(onset s,
    offset s, label)]}`` with exactly the tables' clips.
    """

    def __init__(self, tables: Mapping[str, pd.DataFrame], ground_truth: Mapping[str, Sequence[Event]]):
        self.tables = tables
        self.ground_truth = ground_truth
        self.clips, self.classes, scores, self.timestamps, self.frame_offsets = _stack_tables(tables)
        n_frames, n_classes = scores.shape
        n_clips = len(self.clips)
        self.ts_offsets = self.frame_offsets + np.arange(n_clips + 1)  # first boundary index of each clip
        clip_of_frame = np.repeat(np.arange(n_clips), np.diff(self.frame_offsets))
        frame_lengths = np.diff(self.timestamps)[np.arange(n_frames) + clip_of_frame]
        self.min_frame_length = np.minimum.reduceat(frame_lengths, self.frame_offsets[:-1])  # (K,) s

        # elements: frames whose score differs from the previous frame of the clip (plateaus merged), class-major
        by_class = np.ascontiguousarray(scores.T)
        keep = np.ones((n_classes, n_frames), dtype=bool)
        np.not_equal(by_class[:, 1:], by_class[:, :-1], out=keep[:, 1:])
        keep[:, self.frame_offsets[:-1]] = True
        flat = np.flatnonzero(keep)
        cls, frame = np.divmod(flat, n_frames)
        clip = clip_of_frame[frame]
        value = by_class.ravel()[flat]
        end = np.append(frame[1:], n_frames)
        end[:-1][cls[1:] != cls[:-1]] = n_frames
        segment = cls * n_clips + clip
        # sequence with a -inf sentinel before every (class, clip) segment and at the end
        pos = np.arange(len(flat)) + segment + 1
        v = np.full(len(flat) + n_classes * n_clips + 1, -np.inf)
        v[pos] = value
        elem_of_pos = np.full(len(v), -1)
        elem_of_pos[pos] = np.arange(len(flat))

        # extrema: +1 detection where a local maximum appears, -1 where two detections merge (sed_scores_eval's
        # onset_deltas); plateaus are single elements, sentinels count as -inf neighbours
        left, right = v[pos - 1], v[pos + 1]
        maxima, minima = (value > left) & (value > right), (value < left) & (value < right)
        ext = maxima | minima
        self.ext_class, self.ext_clip, self.ext_value = cls[ext], clip[ext], value[ext]
        self.ext_delta = np.where(maxima[ext], 1.0, -1.0)
        self.segment_max = np.maximum.reduceat(by_class, self.frame_offsets[:-1], axis=1).T  # (K, C)

        # nodes: one per distinct (nearest <= on the left, nearest < on the right) pair
        p, r = _prev_less_equal(v), _next_less(v)
        m = pos[v[p[pos]] < value]  # first element of each node at its own level
        first, last = elem_of_pos[p[m] + 1], elem_of_pos[r[m] - 1]
        self.node_class, self.node_clip = cls[elem_of_pos[m]], clip[elem_of_pos[m]]
        self.node_on = frame[first] + self.node_clip  # boundary indices
        self.node_off = end[last] + self.node_clip
        self.node_hi = v[m]
        self.node_lo = np.maximum(v[p[m]], v[r[m]])
        t0, t1 = self.timestamps[self.node_on], self.timestamps[self.node_off]
        self.node_t0, self.node_t1, self.node_length = t0, t1, t1 - t0

        # ground truth: events sorted by (clip, class, onset), per-boundary counts of events ended / started
        self.ev_clip, self.ev_class, self.ev_on, self.ev_off = _ground_truth_arrays(ground_truth, self.clips, self.classes)
        block = self.ev_clip * n_classes + self.ev_class
        self.block_start = np.searchsorted(block, np.arange(n_clips * n_classes + 1))
        self.n_ref = np.bincount(block, minlength=n_clips * n_classes).reshape(n_clips, n_classes)
        bounds = np.full((n_clips, int(np.diff(self.ts_offsets).max())), np.inf)
        local = np.arange(len(self.timestamps)) - np.repeat(self.ts_offsets[:-1], np.diff(self.ts_offsets))
        bounds[np.repeat(np.arange(n_clips), np.diff(self.ts_offsets)), local] = self.timestamps
        ended = (bounds[self.ev_clip] < self.ev_off[:, None]).sum(1)  # boundaries before the offset
        started = (bounds[self.ev_clip] <= self.ev_on[:, None]).sum(1)
        self.ends_le = self._boundary_counts(ended)  # (N + K, C) events of the boundary's clip ended by it
        self.starts_lt = self._boundary_counts(started)  # events started before it

        # target overlaps: (node, event of the node's class) pairs with the intersection in seconds
        self.target_pairs = self._overlaps(np.arange(len(self.node_hi)), self.node_class)

    def _boundary_counts(self, first_boundary: np.ndarray) -> np.ndarray:
        """(N + K, C): per boundary, how many events of its clip (per class) have ``first_boundary`` <= it."""
        n_classes = len(self.classes)
        diff = np.zeros((len(self.timestamps) + 1, n_classes), dtype=np.int32)
        np.add.at(diff, (self.ts_offsets[self.ev_clip] + first_boundary, self.ev_class), 1)
        np.add.at(diff, (self.ts_offsets[self.ev_clip + 1], self.ev_class), -1)
        return np.cumsum(diff, axis=0)[:-1]

    def _overlaps(self, nodes: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
        """(node, event) pairs of the given nodes with the events of ``classes`` (same length) they overlap.

        Returns ``couple`` (index into ``nodes``), ``event``, ``inter`` (intersection s, >= 0) per pair and
        ``sum`` / ``terms`` (sum of intersections, number of positive ones) per couple.
        """
        start = self.ends_le[self.node_on[nodes], classes]
        count = self.starts_lt[self.node_off[nodes], classes] - start
        couple, k = _ragged_arange(count)
        node = nodes[couple]
        event = self.block_start[self.node_clip[node] * len(self.classes) + classes[couple]] + start[couple] + k
        inter = np.maximum(
            np.minimum(self.node_t1[node], self.ev_off[event]) - np.maximum(self.node_t0[node], self.ev_on[event]), 0.0
        )
        return {
            "couple": couple,
            "event": event,
            "inter": inter,
            "sum": np.bincount(couple, weights=inter, minlength=len(nodes)),
            "terms": np.bincount(couple, weights=inter > 0, minlength=len(nodes)),
        }

    @cached_property
    def other_pairs(self) -> dict[str, np.ndarray]:
        """Overlaps of the nodes with the events of the other classes: couples (node, class) with any overlap."""
        n_classes = len(self.classes)
        total_start = self.ends_le[self.node_on].sum(1) - self.ends_le[self.node_on, self.node_class]
        total_count = self.starts_lt[self.node_off].sum(1) - self.starts_lt[self.node_off, self.node_class] - total_start
        nodes = np.flatnonzero(total_count > 0)
        counts = self.starts_lt[self.node_off[nodes]] - self.ends_le[self.node_on[nodes]]  # (n, C)
        counts[np.arange(len(nodes)), self.node_class[nodes]] = 0
        row, cls = np.nonzero(counts)
        pairs = self._overlaps(nodes[row], cls)
        pairs["node"], pairs["class"] = nodes[row], cls
        return pairs


# ----------------------------------------------------------------------------- one scenario
@dataclass
class IntersectionDeltas:
    """Change of the intersection statistics of each clip and class where the threshold falls below a score.

    Long format, one row per change: ``cls``, ``clip`` (indices into ``classes`` / ``clips``), ``value`` (the
    score), ``stat`` (0 true positives, 1 false positives, 2 + k cross triggers with class k) and ``delta``.
    ``cross_triggers``: whether cts were evaluated (a CTTC threshold was given).
    """

    clips: list[str]
    classes: list[str]
    ground_truth: Mapping[str, Sequence[Event]]
    cross_triggers: bool
    cls: np.ndarray
    clip: np.ndarray
    value: np.ndarray
    stat: np.ndarray
    delta: np.ndarray
    reference_segments: int  # (clip, class) pairs computed by sed_scores_eval's per-clip code

    @cached_property
    def thresholds(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per class: (rows of the class, rank of each row's score among the class's scores, sorted scores)."""
        out = []
        for c in range(len(self.classes)):
            rows = np.flatnonzero(self.cls == c)
            scores, rank = np.unique(self.value[rows], return_inverse=True)
            out.append((rows, rank, scores))
        return out


def _entries(cls, clip, value, stat, delta) -> tuple[np.ndarray, ...]:
    n = len(value)
    return (
        np.broadcast_to(cls, n), np.broadcast_to(clip, n), np.asarray(value, dtype=np.float64),
        np.broadcast_to(stat, n), np.broadcast_to(np.asarray(delta, dtype=np.float64), n),
    )


def _node_entries(trees: DetectionTrees, nodes: np.ndarray, stat, sign: float) -> list[tuple[np.ndarray, ...]]:
    """+sign at each node's hi, -sign at its lo (unless it lives down to the lowest threshold); ``stat``: one
    id or one per node."""
    stat = np.broadcast_to(stat, nodes.shape)
    dies = trees.node_lo[nodes] > -np.inf
    return [
        _entries(trees.node_class[nodes], trees.node_clip[nodes], trees.node_hi[nodes], stat, sign),
        _entries(trees.node_class[nodes[dies]], trees.node_clip[nodes[dies]], trees.node_lo[nodes[dies]], stat[dies], -sign),
    ]


def _true_positive_entries(trees: DetectionTrees, relevant: np.ndarray, gtc: float):
    """Delta entries of the true positives and the events whose GTC sum is ambiguous (rounding).

    For each event, the thresholds where an overlapping relevant node appears (hi) or disappears (lo); at
    each, the sum of the intersections of the alive ones (summed directly, in node order).
    """
    pairs = trees.target_pairs
    keep = relevant[pairs["couple"]] & (pairs["inter"] > 0)
    node, event, inter = pairs["couple"][keep], pairs["event"][keep], pairs["inter"][keep]
    hi, lo = trees.node_hi[node], trees.node_lo[node]
    dies = lo > -np.inf
    w_event = np.concatenate((event, event[dies]))
    w_value = np.concatenate((hi, lo[dies]))
    order = np.lexsort((-w_value, w_event))  # per event, thresholds from high to low
    s_event, s_value = w_event[order], w_value[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (s_event[1:] != s_event[:-1]) | (s_value[1:] != s_value[:-1])
    uid_sorted = np.cumsum(new) - 1
    uid = np.empty(len(order), dtype=np.int64)
    uid[order] = uid_sorted
    u_event, u_value = s_event[new], s_value[new]
    n_u = len(u_value)
    event_end = np.searchsorted(u_event, u_event, side="right")  # first uid of the next event
    start = uid[: len(node)]
    stop = np.empty(len(node), dtype=np.int64)
    stop[dies] = uid[len(node):]
    stop[~dies] = event_end[start[~dies]]
    couple, k = _ragged_arange(stop - start)
    at = start[couple] + k
    total = np.bincount(at, weights=inter[couple], minlength=n_u)
    terms = np.bincount(at, minlength=n_u)
    ambiguous = np.unique(u_event[(terms >= 3) & _near_rounding_boundary(total)])
    need = np.round(gtc * (trees.ev_off - trees.ev_on), DECIMALS)
    baseline = (0.0 >= need).astype(np.float64)  # true positive even without detections (need rounds to 0)
    tp = (np.round(total, DECIMALS) >= need[u_event]).astype(np.float64)
    previous = np.empty(n_u)
    previous[1:] = tp[:-1]
    first = np.ones(n_u, dtype=bool)
    first[1:] = u_event[1:] != u_event[:-1]
    previous[first] = baseline[u_event[first]]
    change = tp != previous
    ev = u_event[change]
    entries = [_entries(trees.ev_class[ev], trees.ev_clip[ev], u_value[change], TP, (tp - previous)[change])]
    always = np.flatnonzero(baseline > 0)
    if always.size:
        entries.append(
            _entries(
                trees.ev_class[always], trees.ev_clip[always],
                trees.segment_max[trees.ev_clip[always], trees.ev_class[always]], TP, 1.0,
            )
        )
    return entries, ambiguous


def _reference_segment(trees: DetectionTrees, q: int, c: int, dtc: float, gtc: float, cttc: float | None):
    """sed_scores_eval's per-clip, per-class deltas (its ``_worker`` body) as delta entries."""
    clip = trees.clips[q]
    table = trees.tables[clip]
    scores = table[trees.classes[c]].to_numpy(dtype=np.float64)
    timestamps = trees.timestamps[trees.ts_offsets[q] : trees.ts_offsets[q + 1]]
    onsets, offsets = {}, {}
    for name in trees.classes:
        events = [(on, off) for on, off, label in trees.ground_truth[clip] if label == name]
        onsets[name], offsets[name] = np.array(events).T if events else (np.empty(0), np.empty(0))
    target = trees.classes[c]
    kwargs = {
        "target_onset_times": onsets[target], "target_offset_times": offsets[target],
        "other_onset_times": {k: v for k, v in onsets.items() if k != target},
        "other_offset_times": {k: v for k, v in offsets.items() if k != target},
        "dtc_threshold": dtc, "gtc_threshold": gtc, "cttc_threshold": cttc, "time_decimals": DECIMALS,
    }
    _, change_scores, deltas = acceleration_fn(scores=scores, timestamps=timestamps, **kwargs)
    if change_scores is None:
        unique, det_on, det_off = onset_offset_curves(scores, timestamps, None)
        stats = statistics_fn(detection_onset_times=det_on, detection_offset_times=det_off, **kwargs)
        change_scores, deltas = _deltas_from_intermediate_statistics(unique, stats)
    flat = {}
    for key, values in deltas.items():
        if isinstance(values, Mapping):
            flat.update({f"cts\\{k}": v for k, v in values.items()})
        else:
            flat[key] = values
    entries = [_entries(c, q, change_scores, TP, flat["tps"]), _entries(c, q, change_scores, FP, flat["fps"])]
    if cttc is not None:
        for k, name in enumerate(trees.classes):
            if k != c:
                entries.append(_entries(c, q, change_scores, 2 + k, flat[f"cts\\{name}"]))
    return entries


def intersection_deltas(
    trees: DetectionTrees, dtc_threshold: float, gtc_threshold: float, cttc_threshold: float | None = None
) -> IntersectionDeltas:
    """Per clip and class, the changes of (tps, fps, cts) over all thresholds for one scenario."""
    dtc, gtc, cttc = dtc_threshold, gtc_threshold, cttc_threshold
    n_classes, n_clips = len(trees.classes), len(trees.clips)
    reference = np.zeros((n_clips, n_classes), dtype=bool)
    # frames so short that a run's criterion rounds to 0 s: sed_scores_eval's per-clip code decides
    run_criterion = dtc if cttc is None else min(dtc, cttc)
    reference[np.round(run_criterion * trees.min_frame_length, DECIMALS) <= 0] = True

    # detections meeting the DTC (only nodes overlapping target events can: no run rounds to 0 s)
    target = trees.target_pairs
    relevant = np.round(target["sum"], DECIMALS) >= np.round(dtc * trees.node_length, DECIMALS)
    relevant &= target["terms"] > 0
    doubtful = (target["terms"] >= 3) & _near_rounding_boundary(target["sum"])
    reference[trees.node_clip[doubtful], trees.node_class[doubtful]] = True
    relevant_nodes = np.flatnonzero(relevant)

    entries = [_entries(trees.ext_class, trees.ext_clip, trees.ext_value, FP, trees.ext_delta)]
    entries += _node_entries(trees, relevant_nodes, FP, -1.0)
    tp_entries, ambiguous_events = _true_positive_entries(trees, relevant, gtc)
    entries += tp_entries
    reference[trees.ev_clip[ambiguous_events], trees.ev_class[ambiguous_events]] = True
    if cttc is not None:
        other = trees.other_pairs
        ct = (np.round(other["sum"], DECIMALS) >= np.round(cttc * trees.node_length[other["node"]], DECIMALS))
        ct &= ~relevant[other["node"]] & (other["terms"] > 0)
        doubtful = (other["terms"] >= 3) & _near_rounding_boundary(other["sum"])
        reference[trees.node_clip[other["node"][doubtful]], trees.node_class[other["node"][doubtful]]] = True
        hits = np.flatnonzero(ct)
        entries += _node_entries(trees, other["node"][hits], 2 + other["class"][hits], 1.0)

    cls, clip, value, stat, delta = (np.concatenate(parts) for parts in zip(*entries))
    keep = ~reference[clip, cls]
    entries = [(cls[keep], clip[keep], value[keep], stat[keep], delta[keep])]
    redo = np.argwhere(reference)
    for q, c in redo:
        entries += _reference_segment(trees, int(q), int(c), dtc, gtc, cttc)
    cls, clip, value, stat, delta = (np.concatenate(parts) for parts in zip(*entries))
    nonzero = delta != 0
    return IntersectionDeltas(
        clips=trees.clips, classes=trees.classes, ground_truth=trees.ground_truth, cross_triggers=cttc is not None,
        cls=cls[nonzero].astype(np.int64), clip=clip[nonzero].astype(np.int64), value=value[nonzero],
        stat=stat[nonzero].astype(np.int64), delta=delta[nonzero], reference_segments=len(redo),
    )


# ----------------------------------------------------------------------------- PSD-ROC
def _single_class_roc(tp_ratio: np.ndarray, efpr: np.ndarray, max_efpr: float) -> tuple[np.ndarray, np.ndarray]:
    """sed_scores_eval's ``_unique_cummax_sort``: sort by (eFPR, TPR), keep TPR records, one point per eFPR,
    cut above ``max_efpr``. Points above ``max_efpr`` cannot affect the others (they sort after them)."""
    below = efpr <= max_efpr
    tp_ratio, efpr = tp_ratio[below], efpr[below]
    order = np.lexsort((tp_ratio, efpr))
    tp_ratio, efpr = tp_ratio[order], efpr[order]
    best = np.maximum.accumulate(tp_ratio)
    records = np.concatenate(([0], np.flatnonzero(best[1:] > best[:-1]) + 1))
    tp_ratio, efpr = tp_ratio[records], efpr[records]
    efpr, last = np.unique(efpr[::-1], return_index=True)
    return tp_ratio[-1 - last], efpr


def psd_roc(
    deltas: IntersectionDeltas,
    durations: Mapping[str, float],
    alpha_ct: float,
    alpha_st: float,
    max_efpr: float,
    draw: np.ndarray | None = None,
) -> tuple[float, dict[str, float], np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """PSDS, per-class PSDS, the PSD-ROC (eTPR, eFPR per hour) and per-class (TPR, eFPR) from ``deltas``.

    ``draw``: indices into ``deltas.clips`` (with repetition) of a resampled clip set; a clip drawn k times
    counts k times (events, detections, duration). Default: every clip once.
    """
    if alpha_ct != 0.0 and not deltas.cross_triggers:
        raise ValueError("alpha_ct is not 0 but the deltas were computed without a cttc_threshold")
    clips, classes = deltas.clips, deltas.classes
    if draw is None:
        draw = np.arange(len(clips))
    weight = np.bincount(draw, minlength=len(clips)).astype(np.float64)
    duration = sum(durations[clips[i]] for i in draw)
    n_ref = {c: 0 for c in classes}
    t_ref = {c: 0.0 for c in classes}
    for i in draw:
        for onset, offset, label in deltas.ground_truth[clips[i]]:
            n_ref[label] += 1
            t_ref[label] += offset - onset
    n_stats = 2 + len(classes)
    rocs = {}
    for c, name in enumerate(classes):
        rows, rank, scores = deltas.thresholds[c]
        w = deltas.delta[rows] * weight[deltas.clip[rows]]
        used = np.bincount(rank, weights=weight[deltas.clip[rows]], minlength=len(scores)) > 0
        acc = np.bincount(deltas.stat[rows] * len(scores) + rank, weights=w, minlength=n_stats * len(scores))
        acc = acc.reshape(n_stats, len(scores))[:, used]
        stats = np.concatenate((np.cumsum(acc[:, ::-1], axis=1)[:, ::-1], np.zeros((n_stats, 1))), axis=1)
        tp_ratio = stats[TP] / max(n_ref[name], 1)
        efpr = stats[FP] / duration
        if alpha_ct != 0.0:
            ct_rates = [stats[2 + k] / max(t_ref[other], 1e-12) for k, other in enumerate(classes) if k != c]
            efpr = efpr + alpha_ct * np.mean(ct_rates, axis=0)
        rocs[name] = _single_class_roc(tp_ratio, efpr * SECONDS_PER_HOUR, max_efpr)
    etpr, efpr = multi_class_psd_roc_from_single_class_psd_rocs(rocs, alpha_st=alpha_st, max_efpr=max_efpr)
    value = psds_from_psd_roc(etpr, efpr, max_efpr)
    per_class = {name: psds_from_psd_roc(tpr, fpr, max_efpr) for name, (tpr, fpr) in rocs.items()}
    return float(value), {k: float(v) for k, v in per_class.items()}, etpr, efpr, rocs
