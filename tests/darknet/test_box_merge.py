"""darktune/darknet/box_merge.py: NMS and greedy match-and-merge by hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from darktune.darknet import box_merge
from darktune.darknet.box_merge import greedy_nmm, match_value, merge_detections, nms


def D(*rows):
    return np.array(rows, np.float32).reshape(-1, 6)


def test_match_values_by_hand():
    a, b = [0, 0, 10, 10], [5, 0, 10, 10]  # b is the right half of a
    assert match_value(a, b, "iou") == pytest.approx(0.5)
    assert match_value(a, b, "ios") == pytest.approx(1.0)
    assert match_value(a, [20, 20, 30, 30], "ios") == 0.0


def test_object_cut_by_a_tile_edge_becomes_one_box():
    # a tree at x 90..130 seen whole by one tile (score 0.9) and cut at x = 110 by its neighbour (score 0.6):
    # IoU 20*40 / (40*40) = 0.5 (NMS at 0.5 keeps both), IoS 1.0: merged into the enclosing box, score 0.9
    whole, part = [90, 10, 130, 50, 0.9, 0], [110, 10, 130, 50, 0.6, 0]
    assert len(nms(D(whole, part), 0.5, "iou")) == 2
    np.testing.assert_allclose(greedy_nmm(D(whole, part), 0.5, "ios"), D(whole))
    # the two halves of an object cut in the middle, neither whole: IoS 0 -> both kept
    assert len(greedy_nmm(D([90, 10, 110, 50, 0.7, 0], [110, 10, 130, 50, 0.6, 0]))) == 2


def test_merge_grows_the_box_and_rechecks_the_grown_one():
    # best A (0..10), B (2..14) matches A by IoS 8/10 = 0.8 -> merged box 0..14 (x); C (9..30, score 0.5)
    # matched A by IoS (1*10)/(10*10) = 0.1: not a member, stays its own detection
    a, b, c = [0, 0, 10, 10, 0.9, 0], [2, 0, 14, 10, 0.8, 0], [9, 0, 30, 10, 0.5, 0]
    out = greedy_nmm(D(a, b, c), 0.5, "ios")
    np.testing.assert_allclose(out, D([0, 0, 14, 10, 0.9, 0], c))


def test_member_no_longer_matching_the_grown_box_is_not_merged():
    # A (0..10 x 0..10), B (0..10 x 5..25) and C (0..10 x -15..5) both match A by IoS 0.5 > 0.4 (IoS against
    # the smaller box = A's area here); after B is merged (box 0..10 x 0..25, area 250) C still intersects
    # 0..10 x 0..5 = 50 and its own area is 200: IoS 50/200 = 0.25 < 0.4: C is taken by A's group (not a
    # detection of its own) but not merged into the box
    a, b, c = [0, 0, 10, 10, 0.9, 0], [0, 5, 10, 25, 0.8, 0], [0, -15, 10, 5, 0.7, 0]
    out = greedy_nmm(D(a, b, c), 0.4, "ios")
    np.testing.assert_allclose(out, D([0, 0, 10, 25, 0.9, 0]))


def test_classes_never_merge_and_nms_is_per_class():
    a, b = [0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 1]
    assert len(greedy_nmm(D(a, b))) == 2 and len(nms(D(a, b), 0.5)) == 2
    np.testing.assert_allclose(nms(D(a, [1, 1, 10, 10, 0.5, 0]), 0.5), D(a))  # IoU 81/100 > 0.5: the lower one dropped


def test_merge_detections_sorted_and_checked():
    out = merge_detections(D([0, 0, 5, 5, 0.3, 0], [20, 20, 30, 30, 0.8, 0]), "nms", 0.5, "iou")
    assert out[:, 4].tolist() == pytest.approx([0.8, 0.3])
    assert merge_detections(D(), "greedynmm").shape == (0, 6)
    with pytest.raises(ValueError, match="unknown merge"):
        merge_detections(D(), "wbf")
    with pytest.raises(ValueError, match="match metric"):
        nms(D(), 0.5, "giou")


def _reference_nms(dets, thresh, metric):
    """The one-box-at-a-time greedy NMS (the rule, written plainly)."""
    dets = np.asarray(dets, np.float32).reshape(-1, 6)
    keep = []
    for cls in np.unique(dets[:, 5]):
        idx = np.nonzero(dets[:, 5] == cls)[0]
        idx = idx[np.argsort(-dets[idx, 4], kind="stable")]
        boxes = dets[idx, :4].astype(np.float64)
        gone = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if not gone[i]:
                keep.append(idx[i])
                gone |= box_merge._pairwise(boxes[i:i + 1], boxes, metric)[0] > thresh
    return dets[np.asarray(keep, np.int64)] if keep else np.zeros((0, 6), np.float32)


def _reference_greedy(dets, thresh, metric):
    dets = np.asarray(dets, np.float32).reshape(-1, 6)
    out = []
    for cls in np.unique(dets[:, 5]):
        idx = np.nonzero(dets[:, 5] == cls)[0]
        idx = idx[np.argsort(-dets[idx, 4], kind="stable")]
        boxes = dets[idx, :4].astype(np.float64)
        taken = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if taken[i]:
                continue
            members = np.nonzero((box_merge._pairwise(boxes[i:i + 1], boxes, metric)[0] > thresh) & ~taken)[0]
            taken[members] = True
            taken[i] = True
            merged = dets[idx[i]].astype(np.float64)
            for j in members:
                if j != i and box_merge.match_value(merged, dets[idx[j]], metric) > thresh:
                    merged[0:2] = np.minimum(merged[0:2], dets[idx[j]][0:2])
                    merged[2:4] = np.maximum(merged[2:4], dets[idx[j]][2:4])
            out.append(merged)
    return np.asarray(out, np.float32).reshape(-1, 6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["iou", "ios"])
def test_pruned_merges_equal_the_one_box_at_a_time_rule(seed, metric):
    """Comparing only boxes whose x-ranges can meet gives the plain greedy loops' output bit for bit: boxes
    dense enough that most are suppressed or merged, ties in score, two classes, a few very wide boxes, boxes
    of zero width and boxes touching edge to edge."""
    rng = np.random.default_rng(seed)
    n = 300
    xy = np.round(rng.uniform(0, 200, (n, 2)), 0 if seed % 2 else 3)  # whole pixels: edges that touch
    wh = rng.uniform(2, 40, (n, 2))
    wh[:5, 0] = rng.uniform(150, 400, 5)
    wh[5:10, 0] = 0.0
    scores = np.round(rng.uniform(0, 1, n), 2)  # rounded: ties
    dets = np.column_stack([xy, xy + wh, scores, rng.integers(0, 2, n)]).astype(np.float32)
    for thresh in (0.0, 0.3, 0.5, 0.9):
        np.testing.assert_array_equal(box_merge.nms(dets, thresh, metric), _reference_nms(dets, thresh, metric))
        np.testing.assert_array_equal(box_merge.greedy_nmm(dets, thresh, metric),
                                      _reference_greedy(dets, thresh, metric))
