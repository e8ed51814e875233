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
disappears. A node's -1 at ``lo`` is its parent's +1 at ``hi``, so both are netted into one entry per node.

Only thresholds that can be on the PSD-ROC are evaluated: per class, below a score where the detections in clips
without events of the class (all false positives) alone exceed ``max_efpr``, every point has eFPR > ``max_efpr``
and is cut by sed_scores_eval too; leaving those thresholds out removes ~90 % of the detections of a realistic
system (its noise floor). Bootstrap replicates check that they need no lower threshold (else recompute).

Exactness: a sum of one or two intersections is bit-identical to sed_scores_eval's (float addition is
commutative, the other terms are exact zeros); every count is an integer. The rare cases where that argument does
not hold (a sum of three or more intersections within 1e-9 s of a rounding boundary; frames so short that a
criterion rounds to 0 s) are computed for the affected clip and class by sed_scores_eval's own per-clip code.
Tested equal (PSDS, per-class PSDS, PSD-ROC, bootstrap replicates) in ``tests/test_fast_psds.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, NamedTuple, Sequence

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
    bad_length = ~(offsets_s > onsets)
    bad_gap = inner & (offsets_s[:-1] != onsets[1:])
    for bad, what in ((bad_length, "frames that do not end after they start"),
                      (bad_gap, "an offset that differs from the next onset")):
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
            if offset < onset:
                raise ValueError(f"ground truth of {clip}: event {event} ends before it starts")
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
@dataclass(frozen=True)
class PSDSScenario:
    """Intersection-based PSDS parameters (DCASE definition); ``max_efpr`` in false positives per hour."""

    dtc_threshold: float
    gtc_threshold: float
    cttc_threshold: float | None
    alpha_ct: float
    alpha_st: float
    max_efpr: float = 100.0

    def __post_init__(self):
        if (self.alpha_ct == 0.0) != (self.cttc_threshold is None):  # sed_scores_eval's psd_roc checks
            raise ValueError(f"PSDS scenario: a cttc_threshold is needed exactly when alpha_ct != 0, got {self}")

    @property
    def run_criterion(self) -> float:
        """The smallest fraction of a detection's length a criterion asks for (DTC, CTTC)."""
        return self.dtc_threshold if self.cttc_threshold is None else min(self.dtc_threshold, self.cttc_threshold)


def _lowest_relevant_cut(values: np.ndarray, runs: np.ndarray, duration: float, limit: float) -> float:
    """Highest score ``cut`` such that at every threshold ``<= cut`` more than ``limit`` false positives per hour
    are certain. ``values``: distinct scores, descending; ``runs[j]``: false positives certain at thresholds in
    ``(values[j + 1], values[j]]`` (detections in clips without events of the class).

    Such thresholds have eFPR > ``limit`` whatever else happens (every other term of the eFPR is >= 0 and the
    float operations are monotone), so they cannot be on a PSD-ROC cut at ``limit``. -inf when none is sure.
    """
    if len(values) == 0:
        return -np.inf
    relevant = runs / duration * SECONDS_PER_HOUR <= limit
    if relevant[-1]:
        return -np.inf
    below = np.flatnonzero(relevant)
    return float(values[below[-1] + 1]) if len(below) else float(values[0])


def _extrema(by_class: np.ndarray, frame_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sed_scores_eval's ``onset_deltas`` of (C, N) scores: flat indices (class * N + frame), scores and deltas:
    +1 where a detection appears (local maximum, plateaus included), -1 where two merge (local minimum).
    Frames outside a clip count as -inf."""
    starts, ends = frame_offsets[:-1], frame_offsets[1:] - 1
    rises = np.empty(by_class.shape, dtype=bool)
    np.greater(by_class[:, 1:], by_class[:, :-1], out=rises[:, 1:])
    rises[:, starts] = True
    rises_next = np.zeros_like(rises)
    rises_next[:, :-1] = rises[:, 1:]
    rises_next[:, ends] = False
    flat = np.flatnonzero(rises != rises_next)
    return flat, by_class.ravel()[flat], np.where(rises.ravel()[flat], 1.0, -1.0)


def _elements(by_class: np.ndarray, frame_offsets: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (class * N + first frame) of the elements: frames above the class's cut and their
    neighbours (where runs end), consecutive equal scores merged into one element."""
    starts = frame_offsets[:-1]
    above = by_class > cuts[:, None]
    kept = above.copy()
    kept[:, 1:] |= above[:, :-1]
    kept[:, :-1] |= above[:, 1:]
    same = np.zeros_like(kept)
    np.equal(by_class[:, 1:], by_class[:, :-1], out=same[:, 1:])
    same[:, starts] = False
    same[:, 1:] &= kept[:, :-1]
    return np.flatnonzero(kept & ~same)


def _max_tree(v: np.ndarray, pos: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, ...]:
    """Max-tree nodes of the sequence ``v`` (-inf sentinels between segments; elements at ``pos``), for the
    elements with ``top``: the node's lowest element, the positions around it (nearest <= on the left, nearest
    < on the right) and the position of its parent's lowest element (-1: root, or parent not in ``top``)."""
    p, r = _prev_less_equal(v), _next_less(v)
    value = v[pos]
    m = pos[top & (v[p[pos]] < value)]  # first element of each node at its own level
    node_of_pos = np.full(len(v), -1)
    node_of_pos[m] = np.arange(len(m))
    later = pos[top & (v[p[pos]] == value)]  # equal score further right in the same node
    anchor = p[later]
    while later.size:
        done = node_of_pos[anchor] >= 0
        node_of_pos[later[done]] = node_of_pos[anchor[done]]
        later, anchor = later[~done], p[anchor[~done]]
    parent = node_of_pos[np.where(v[p[m]] >= v[r[m]], p[m], r[m])]
    return m, p[m], r[m], parent


class DetectionTrees:
    """Every detection of every clip and class at every relevant threshold (max-tree nodes) and their overlaps
    with the ground truth; built once, shared by the PSDS scenarios and the bootstrap.

    ``tables``: ``{clip: score DataFrame (onset, offset, classes...)}``; ``ground_truth``: ``{clip: [(onset s,
    offset s, label)]}`` with exactly the tables' clips; ``durations``: ``{clip: s}``; ``scenarios``: the
    :class:`PSDSScenario` s to be evaluated (their largest ``max_efpr`` and smallest run criterion).

    Per class, thresholds at or below ``cuts[c]`` are left out: there, the detections in clips without events of
    the class (all false positives) alone exceed ``efpr_margin * max_efpr``, so these thresholds lie beyond the
    PSD-ROC's cut for this clip set and for resampled ones (checked per replicate by :func:`psd_roc`).
    ``cuts``: given explicitly to rebuild for a replicate that needs lower thresholds.
    """

    def __init__(
        self,
        tables: Mapping[str, pd.DataFrame],
        ground_truth: Mapping[str, Sequence[Event]],
        durations: Mapping[str, float],
        scenarios: Sequence[PSDSScenario],
        efpr_margin: float = 1.5,
        cuts: np.ndarray | None = None,
    ):
        self.tables, self.ground_truth, self.scenarios = tables, ground_truth, list(scenarios)
        self.clips, self.classes, scores, self.timestamps, self.frame_offsets = _stack_tables(tables)
        missing = [clip for clip in self.clips if clip not in durations]
        if missing:
            raise ValueError(f"durations: no duration for {len(missing)} clips, e.g. {missing[:3]}")
        self.durations = {clip: durations[clip] for clip in self.clips}
        n_frames, n_classes = scores.shape
        n_clips = len(self.clips)
        self.max_efpr = max(s.max_efpr for s in self.scenarios)
        self.run_criterion = min(s.run_criterion for s in self.scenarios)
        self.ts_offsets = self.frame_offsets + np.arange(n_clips + 1)  # first boundary index of each clip
        clip_of_frame = np.repeat(np.arange(n_clips), np.diff(self.frame_offsets))
        frame_lengths = np.diff(self.timestamps)[np.arange(n_frames) + clip_of_frame]
        min_frame_length = np.minimum.reduceat(frame_lengths, self.frame_offsets[:-1])  # (K,) s
        # clips whose runs may round to 0 s: decided by sed_scores_eval's per-clip code, no bound taken from them
        self.tiny = np.round(self.run_criterion * min_frame_length, DECIMALS) <= 0
        self.ev_clip, self.ev_class, self.ev_on, self.ev_off = _ground_truth_arrays(ground_truth, self.clips, self.classes)
        block = self.ev_clip * n_classes + self.ev_class  # events sorted by (clip, class, onset)
        self.n_ref = np.bincount(block, minlength=n_clips * n_classes).reshape(n_clips, n_classes)

        # per class, the cut: the detections in clips without events of the class are false positives
        by_class = np.ascontiguousarray(scores.T)  # (C, N)
        flat, ext_value, ext_delta = _extrema(by_class, self.frame_offsets)
        ext_class, ext_clip = flat // n_frames, clip_of_frame[flat % n_frames]
        sure = ~(self.n_ref > 0)[ext_clip, ext_class] & ~self.tiny[ext_clip]
        self.sure_fp = []  # per class: (distinct scores descending, last row of each, clip and delta per row)
        for c in range(n_classes):
            rows = np.flatnonzero(sure & (ext_class == c))
            rows = rows[np.argsort(ext_value[rows])[::-1]]
            last = np.ones(len(rows), dtype=bool)
            last[:-1] = ext_value[rows[1:]] != ext_value[rows[:-1]]
            self.sure_fp.append((ext_value[rows][last], last, ext_clip[rows], ext_delta[rows]))
        if cuts is None:
            duration = sum(self.durations[clip] for clip in self.clips)
            cuts = self.required_cuts(np.ones(n_clips), duration, efpr_margin * self.max_efpr)
        self.cuts = np.asarray(cuts, dtype=np.float64)
        keep = ext_value > self.cuts[ext_class]
        self.ext_class, self.ext_clip = ext_class[keep], ext_clip[keep]
        self.ext_value, self.ext_delta = ext_value[keep], ext_delta[keep]

        # elements in a sequence with a -inf sentinel before every (class, clip) segment and at the end
        flat = _elements(by_class, self.frame_offsets, self.cuts)
        cls, frame = np.divmod(flat, n_frames)
        clip = clip_of_frame[frame]
        segment = cls * n_clips + clip
        end = self.frame_offsets[clip + 1]  # exclusive end frame: the next element's first within the segment
        follows = segment[1:] == segment[:-1]
        end[:-1][follows] = frame[1:][follows]
        pos = np.arange(len(flat)) + segment + 1
        v = np.full(len(flat) + n_classes * n_clips + 1, -np.inf)
        v[pos] = by_class.ravel()[flat]
        elem_of_pos = np.full(len(v), -1)
        elem_of_pos[pos] = np.arange(len(flat))

        # nodes above the cut: boundary indices of their first / last frame, hi, lo, parent node
        m, left, right, self.node_parent = _max_tree(v, pos, v[pos] > self.cuts[cls])
        first, last = elem_of_pos[left + 1], elem_of_pos[right - 1]
        self.node_class, self.node_clip = cls[elem_of_pos[m]], clip[elem_of_pos[m]]
        self.node_on = frame[first] + self.node_clip
        self.node_off = end[last] + self.node_clip
        self.node_hi, self.node_lo = v[m], np.maximum(v[left], v[right])
        self.node_t0, self.node_t1 = self.timestamps[self.node_on], self.timestamps[self.node_off]
        self.node_length = self.node_t1 - self.node_t0

        # each event's first boundary at or after its offset / after its onset, as sortable integer keys: per
        # block (clip, class) or per clip, the events ended by boundary b are those with end key <= b
        bounds = np.full((n_clips, int(np.diff(self.ts_offsets).max())), np.inf)
        local = np.arange(len(self.timestamps)) - np.repeat(self.ts_offsets[:-1], np.diff(self.ts_offsets))
        bounds[np.repeat(np.arange(n_clips), np.diff(self.ts_offsets)), local] = self.timestamps
        ends = self.ts_offsets[self.ev_clip] + (bounds[self.ev_clip] < self.ev_off[:, None]).sum(1)
        begins = self.ts_offsets[self.ev_clip] + (bounds[self.ev_clip] <= self.ev_on[:, None]).sum(1)
        self.n_bounds = len(self.timestamps) + 1
        self.end_keys, self.begin_keys = block * self.n_bounds + ends, block * self.n_bounds + begins
        self.clip_end_keys = np.sort(self.ev_clip * self.n_bounds + ends)
        self.clip_begin_keys = np.sort(self.ev_clip * self.n_bounds + begins)

        # target overlaps: (node, event of the node's class) pairs with the intersection in seconds
        self.target_pairs = self._overlaps(np.arange(len(self.node_hi)), self.node_class)

    def required_cuts(self, weight: np.ndarray, duration: float, limit: float) -> np.ndarray:
        """(C,) per class the highest score at and below which a PSD-ROC cut at ``limit`` per hour cannot reach,
        for clips counted ``weight`` times with total ``duration`` s (see :func:`_lowest_relevant_cut`)."""
        return np.array([
            _lowest_relevant_cut(values, np.cumsum(delta * weight[clip])[last], duration, limit)
            for values, last, clip, delta in self.sure_fp
        ])

    def _block_overlaps(self, nodes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First event (sorted index) of block (node's clip, class) overlapping each node, and how many do."""
        block = self.node_clip[nodes] * len(self.classes) + classes
        base = block * self.n_bounds
        first = np.searchsorted(self.end_keys, base + self.node_on[nodes], side="right")
        count = np.searchsorted(self.begin_keys, base + self.node_off[nodes], side="right") - first
        return first, count

    def _overlaps(self, nodes: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
        """(node, event) pairs of the given nodes with the events of ``classes`` (same length) they overlap.

        Returns ``couple`` (index into ``nodes``), ``event``, ``inter`` (intersection s, >= 0) per pair and
        ``sum`` / ``terms`` (sum of intersections, number of positive ones) per couple.
        """
        first, count = self._block_overlaps(nodes, classes)
        couple, k = _ragged_arange(count)
        node = nodes[couple]
        event = first[couple] + k
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
        """Overlaps of the nodes with the events of the other classes, per couple (node, class) with overlap."""
        n_classes = len(self.classes)
        clip_base = self.node_clip * self.n_bounds
        overlapping = np.searchsorted(self.clip_begin_keys, clip_base + self.node_off, side="right")
        overlapping -= np.searchsorted(self.clip_end_keys, clip_base + self.node_on, side="right")
        nodes = np.flatnonzero(overlapping > self._block_overlaps(np.arange(len(self.node_hi)), self.node_class)[1])
        present = self.n_ref > 0  # (K, C)
        counts = present.sum(1)
        listed = np.flatnonzero(present.ravel()) % n_classes  # classes with events, clip after clip
        first = np.cumsum(counts) - counts
        owner, k = _ragged_arange(counts[self.node_clip[nodes]])
        node = nodes[owner]
        cls = listed[first[self.node_clip[node]] + k]
        count = self._block_overlaps(node, cls)[1]
        keep = (count > 0) & (cls != self.node_class[node])
        node, cls = node[keep], cls[keep]
        pairs = self._overlaps(node, cls)
        pairs["node"], pairs["class"] = node, cls
        # slot of each couple's class among its clip's classes with events: dense (node, slot) keys for netting
        slot = np.cumsum(present, axis=1) - 1
        pairs["slots"] = int(counts.max())
        pairs["slot"] = slot[self.node_clip[node], cls]
        return pairs


# ----------------------------------------------------------------------------- one scenario
@dataclass
class IntersectionDeltas:
    """Change of the intersection statistics of each clip and class where the threshold falls below a score.

    Long format, one row per change above the class's cut: ``cls``, ``clip`` (indices into ``trees.classes`` /
    ``trees.clips``), ``value`` (the score), ``stat`` (0 true positives, 1 false positives, 2 + k cross
    triggers with class k) and ``delta``.
    """

    trees: DetectionTrees
    scenario: PSDSScenario
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
        for c in range(len(self.trees.classes)):
            rows = np.flatnonzero(self.cls == c)
            scores, rank = np.unique(self.value[rows], return_inverse=True)
            out.append((rows, rank, scores))
        return out


def _entries(cls, clip, value, stat, delta) -> tuple[np.ndarray, ...]:
    """One delta-entry block (class, clip, score, statistic id, delta); scalars are broadcast to the scores."""
    n = len(value)
    return (
        np.broadcast_to(cls, n), np.broadcast_to(clip, n), np.asarray(value, dtype=np.float64),
        np.broadcast_to(stat, n), np.broadcast_to(np.asarray(delta, dtype=np.float64), n),
    )


def _net_node_entries(trees: DetectionTrees, flag: np.ndarray, stat: int, sign: float) -> tuple[np.ndarray, ...]:
    """Entries of a node property (``flag`` per node) counted over the alive nodes, times ``sign``.

    Each node contributes +flag at its hi and -flag at its lo; the lo of a node is its parent's hi, so the
    entry at a node's hi is ``flag(node) - sum of flag(children)``, and no entry is needed at any lo.
    """
    child = flag & (trees.node_parent >= 0)
    net = flag.astype(np.float64) - np.bincount(trees.node_parent[child], minlength=len(flag))
    nodes = np.flatnonzero(net)
    return _entries(trees.node_class[nodes], trees.node_clip[nodes], trees.node_hi[nodes], stat, sign * net[nodes])


def _net_couple_entries(trees: DetectionTrees, flag: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cross-trigger entries from ``flag`` per (node, other class) couple of ``trees.other_pairs``, netted as in
    :func:`_net_node_entries` (a node's parent overlaps every class the node overlaps, so it has the couple)."""
    pairs = trees.other_pairs
    node, slot, slots = pairs["node"], pairs["slot"], pairs["slots"]
    parent = trees.node_parent[node]
    child = flag & (parent >= 0)
    children = np.bincount(parent[child] * slots + slot[child], minlength=len(trees.node_hi) * slots)
    net = flag.astype(np.float64) - children[node * slots + slot]
    hits = np.flatnonzero(net)
    node = node[hits]
    return _entries(trees.node_class[node], trees.node_clip[node], trees.node_hi[node], 2 + pairs["class"][hits], net[hits])


def _true_positive_entries(trees: DetectionTrees, relevant: np.ndarray, gtc: float):
    """Delta entries of the true positives and the events whose GTC sum is ambiguous (rounding).

    For each event, the thresholds where an overlapping relevant node appears (hi) or disappears (lo); at
    each, the sum of the intersections of the alive ones (summed directly, in node order).
    """
    pairs = trees.target_pairs
    keep = relevant[pairs["couple"]] & (pairs["inter"] > 0)
    node, event, inter = pairs["couple"][keep], pairs["event"][keep], pairs["inter"][keep]
    hi, lo = trees.node_hi[node], trees.node_lo[node]
    dies = lo > trees.cuts[trees.node_class[node]]  # else alive at every threshold evaluated below hi
    w_event = np.concatenate((event, event[dies]))
    w_value = np.concatenate((hi, lo[dies]))
    order = np.argsort(-w_value)
    key = w_event[order].astype(np.uint16 if len(trees.ev_on) <= np.iinfo(np.uint16).max else np.int64)
    order = order[np.argsort(key, kind="stable")]  # per event, thresholds from high to low (radix sort)
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
                [trees.tables[trees.clips[q]][trees.classes[c]].max() for q, c in
                 zip(trees.ev_clip[always], trees.ev_class[always])], TP, 1.0,
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


def intersection_deltas(trees: DetectionTrees, scenario: PSDSScenario) -> IntersectionDeltas:
    """Per clip and class, the changes of (tps, fps, cts) over the thresholds above the cuts for one scenario."""
    if scenario.max_efpr > trees.max_efpr or scenario.run_criterion < trees.run_criterion:
        raise ValueError(f"{scenario} was not among the scenarios the detection trees were built for")
    dtc, gtc, cttc = scenario.dtc_threshold, scenario.gtc_threshold, scenario.cttc_threshold
    reference = np.zeros((len(trees.clips), len(trees.classes)), dtype=bool)
    reference[trees.tiny] = True  # runs whose criterion may round to 0 s: sed_scores_eval's per-clip code

    # detections meeting the DTC (only nodes overlapping target events can: no run rounds to 0 s)
    target = trees.target_pairs
    relevant = np.round(target["sum"], DECIMALS) >= np.round(dtc * trees.node_length, DECIMALS)
    relevant &= target["terms"] > 0
    doubtful = (target["terms"] >= 3) & _near_rounding_boundary(target["sum"])
    reference[trees.node_clip[doubtful], trees.node_class[doubtful]] = True

    entries = [_entries(trees.ext_class, trees.ext_clip, trees.ext_value, FP, trees.ext_delta)]
    entries.append(_net_node_entries(trees, relevant, FP, -1.0))
    tp_entries, ambiguous_events = _true_positive_entries(trees, relevant, gtc)
    entries += tp_entries
    reference[trees.ev_clip[ambiguous_events], trees.ev_class[ambiguous_events]] = True
    if cttc is not None:
        other = trees.other_pairs
        ct = np.round(other["sum"], DECIMALS) >= np.round(cttc * trees.node_length[other["node"]], DECIMALS)
        ct &= ~relevant[other["node"]] & (other["terms"] > 0)
        doubtful = (other["terms"] >= 3) & _near_rounding_boundary(other["sum"])
        reference[trees.node_clip[other["node"][doubtful]], trees.node_class[other["node"][doubtful]]] = True
        entries.append(_net_couple_entries(trees, ct))

    cls, clip, value, stat, delta = (np.concatenate(parts) for parts in zip(*entries))
    keep = ~reference[clip, cls]
    entries = [(cls[keep], clip[keep], value[keep], stat[keep], delta[keep])]
    redo = np.argwhere(reference)
    for q, c in redo:
        entries += _reference_segment(trees, int(q), int(c), dtc, gtc, cttc)
    cls, clip, value, stat, delta = (np.concatenate(parts) for parts in zip(*entries))
    keep = (delta != 0) & (value > trees.cuts[cls])
    return IntersectionDeltas(
        trees=trees, scenario=scenario, cls=cls[keep].astype(np.int64), clip=clip[keep].astype(np.int64),
        value=value[keep], stat=stat[keep].astype(np.int64), delta=delta[keep], reference_segments=len(redo),
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


class PSDROC(NamedTuple):
    """PSDS of one scenario with its curves."""

    value: float
    per_class: dict[str, float]  # single-class PSDS: area under the class's TPR-vs-eFPR curve / max_efpr
    etpr: np.ndarray  # PSD-ROC: effective TPR ...
    efpr: np.ndarray  # ... against effective FPR (per hour)
    class_rocs: dict[str, tuple[np.ndarray, np.ndarray]]  # per class (TPR, eFPR per hour)


def psd_roc(deltas: IntersectionDeltas, draw: np.ndarray | None = None) -> PSDROC:
    """PSDS, per-class PSDS and the PSD-ROC of the scenario of ``deltas``.

    ``draw``: indices into ``deltas.trees.clips`` (with repetition) of a resampled clip set; a clip drawn k
    times counts k times (events, detections, duration). Default: every clip once. When a resampled set
    needs thresholds below the cuts of ``deltas`` (its false positives are rarer), the deltas are recomputed
    with lower cuts for it.
    """
    trees, scenario = deltas.trees, deltas.scenario
    clips, classes = trees.clips, trees.classes
    draw = np.arange(len(clips)) if draw is None else np.asarray(draw)
    weight = np.bincount(draw, minlength=len(clips)).astype(np.float64)
    duration = sum(trees.durations[clips[i]] for i in draw)
    needed = trees.required_cuts(weight, duration, scenario.max_efpr)
    if (needed < trees.cuts).any():
        lower = DetectionTrees(trees.tables, trees.ground_truth, trees.durations, [scenario],
                               cuts=np.minimum(needed, trees.cuts))
        deltas = intersection_deltas(lower, scenario)
    n_ref = {c: 0 for c in classes}
    t_ref = {c: 0.0 for c in classes}
    for i in draw:  # sed_scores_eval's sums, in its order
        for onset, offset, label in trees.ground_truth[clips[i]]:
            n_ref[label] += 1
            t_ref[label] += offset - onset
    n_stats = 2 + len(classes) if scenario.cttc_threshold is not None else 2
    rocs = {}
    for c, name in enumerate(classes):
        rows, rank, scores = deltas.thresholds[c]
        w = weight[deltas.clip[rows]]
        used = np.bincount(rank, weights=w, minlength=len(scores)) > 0
        acc = np.bincount(deltas.stat[rows] * len(scores) + rank, weights=deltas.delta[rows] * w,
                          minlength=n_stats * len(scores))
        acc = acc.reshape(n_stats, len(scores))[:, used]
        stats = np.concatenate((np.cumsum(acc[:, ::-1], axis=1)[:, ::-1], np.zeros((n_stats, 1))), axis=1)
        tp_ratio = stats[TP] / max(n_ref[name], 1)
        efpr = stats[FP] / duration
        if scenario.alpha_ct != 0.0:
            ct_rates = [stats[2 + k] / max(t_ref[other], 1e-12) for k, other in enumerate(classes) if k != c]
            efpr = efpr + scenario.alpha_ct * np.mean(ct_rates, axis=0)
        rocs[name] = _single_class_roc(tp_ratio, efpr * SECONDS_PER_HOUR, scenario.max_efpr)
    etpr, efpr = multi_class_psd_roc_from_single_class_psd_rocs(rocs, alpha_st=scenario.alpha_st, max_efpr=scenario.max_efpr)
    return PSDROC(
        float(psds_from_psd_roc(etpr, efpr, scenario.max_efpr)),
        {name: float(psds_from_psd_roc(tpr, fpr, scenario.max_efpr)) for name, (tpr, fpr) in rocs.items()},
        etpr, efpr, rocs,
    )
