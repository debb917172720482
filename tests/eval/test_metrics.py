"""Tests for darktune.eval.metrics: hand-computed AP cases, agreement with pycocotools, edge cases, speed."""

from __future__ import annotations

import contextlib
import io
import time
import warnings

import numpy as np
import pytest

from darktune.errors import DarktuneError
from darktune.eval.metrics import (
    PROTOCOLS,
    ap_11_points,
    ap_all_points,
    ap_coco_101,
    evaluate,
    match_detections,
)


def det(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def gt(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


# ---------------------------------------------------------------- hand-computed cases

# Case A: one image, 2 truths, 3 detections ranked TP, FP, TP (exact boxes, so TP IoU = 1).
#   rank 1: TP  P=1    R=1/2
#   rank 2: FP  P=1/2  R=1/2
#   rank 3: TP  P=2/3  R=1
#   all-point: envelope 1 on (0, 1/2], 2/3 on (1/2, 1]  -> AP = 1/2 + 1/3 = 5/6
#   11-point : r = 0..0.5 (6 points) -> 1, r = 0.6..1 (5 points) -> 2/3 -> AP = (6 + 10/3) / 11 = 28/33
CASE_A = (
    [det([0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [20, 0, 30, 10, 0.7, 0])],
    [gt([0, 0, 0, 10, 10], [0, 20, 0, 30, 10])],
)


def test_case_a_darknet_all_points():
    r = evaluate(*CASE_A, num_classes=1)
    assert r.protocol == "darknet"
    assert r.map == pytest.approx(5 / 6, abs=1e-12)


def test_case_a_voc07_eleven_points():
    assert evaluate(*CASE_A, num_classes=1, protocol="voc07").map == pytest.approx(28 / 33, abs=1e-12)


def test_case_a_threshold_figures():
    # conf_thresh 0.75 keeps scores 0.9 (TP, IoU 1) and 0.8 (FP): P = 1/2, R = 1/2, F1 = 1/2,
    # darknet's average IoU = 1 / (TP + FP) = 1/2, mean IoU over TPs = 1.
    r = evaluate(*CASE_A, num_classes=1, conf_thresh=0.75)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert (r.precision, r.recall, r.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert r.avg_iou == pytest.approx(0.5)
    assert r.avg_iou_tp == pytest.approx(1.0)
    # darknet counts score > thresh strictly: at 0.8 only the 0.9 detection counts
    r = evaluate(*CASE_A, num_classes=1, conf_thresh=0.8)
    assert (r.tp, r.fp) == (1, 0)
    assert (r.classes[0].tp, r.classes[0].fp) == (1, 0)


# Case B: the duplicate rule. Truths T1 = [0,0,10,10], T2 = [1,0,11,10] (IoU(T1,T2) = 90/110).
# Two identical detections on T1, scores 0.9 and 0.8. Both have T1 as best truth.
#   darknet: 0.9 -> T1 (TP); 0.8 -> best truth T1 already taken -> FP (darknet does not fall back to T2).
#            ranks: TP (P=1, R=1/2), FP (P=1/2, R=1/2) -> AP = 1/2
#   coco   : 0.8 falls back to the best *unmatched* truth T2 (IoU 0.818 >= 0.5) -> TP, AP50 = 1
CASE_B = ([det([0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0])], [gt([0, 0, 0, 10, 10], [0, 1, 0, 11, 10])])


def test_case_b_duplicate_rule_darknet_vs_coco():
    assert evaluate(*CASE_B, num_classes=1).map == pytest.approx(0.5, abs=1e-12)
    assert evaluate(*CASE_B, num_classes=1, protocol="coco101").map == pytest.approx(1.0, abs=1e-12)
    idx, iou = match_detections(CASE_B[0][0], CASE_B[1][0], rule="darknet")
    assert idx.tolist() == [0, -1] and iou.tolist() == [1.0, 0.0]
    idx, iou = match_detections(CASE_B[0][0], CASE_B[1][0], rule="coco")
    assert idx.tolist() == [0, 1] and iou[1] == pytest.approx(90 / 110)


# Case C: class means. num_classes = 3; class 0: 1 truth, 1 exact detection (AP 1); class 1: no truth,
# one detection; class 2: nothing.
#   darknet: sum / num_classes = (1 + 0 + 0) / 3 = 1/3   (AlexeyAB divides by `classes`)
#   coco101: classes without truth are left out -> 1
CASE_C = ([det([0, 0, 10, 10, 0.9, 0], [30, 30, 40, 40, 0.8, 1])], [gt([0, 0, 0, 10, 10])])


def test_case_c_classes_without_truth():
    r = evaluate(*CASE_C, num_classes=3, class_names=["a", "b", "c"])
    assert r.map == pytest.approx(1 / 3, abs=1e-12)
    assert [c.ap for c in r.classes] == [1.0, 0.0, 0.0]
    assert r.num_classes_in_mean == 3
    r = evaluate(*CASE_C, num_classes=3, protocol="coco101")
    assert r.map == pytest.approx(1.0, abs=1e-12)
    assert [c.ap for c in r.classes] == [pytest.approx(1.0), None, None]
    assert r.num_classes_in_mean == 1


# Case D: IoU exactly 0.5 (truth 10x10, detection 10x20 over it: 100 / 200). darknet needs IoU > 0.5 -> FP,
# AP 0; COCO needs IoU >= 0.5 -> TP, AP50 = 1.
CASE_D = ([det([0, 0, 10, 20, 0.9, 0])], [gt([0, 0, 0, 10, 10])])


def test_case_d_iou_exactly_half():
    assert evaluate(*CASE_D, num_classes=1).map == 0.0
    assert evaluate(*CASE_D, num_classes=1, protocol="coco101").map == pytest.approx(1.0, abs=1e-12)


# Case E: ranking across images. Image 0: 1 truth, detection 0.6 TP. Image 1: 1 truth, detections 0.9 (FP,
# far away) and 0.3 (TP). Ranked: FP (P=0, R=0), TP (P=1/2, R=1/2), TP (P=2/3, R=1).
#   all-point: envelope 2/3 everywhere -> AP = 2/3;  11-point: every point 2/3 -> 2/3
CASE_E = (
    [det([0, 0, 10, 10, 0.6, 0]), det([80, 80, 90, 90, 0.9, 0], [0, 0, 10, 10, 0.3, 0])],
    [gt([0, 0, 0, 10, 10]), gt([0, 0, 0, 10, 10])],
)


def test_case_e_ranking_across_images():
    assert evaluate(*CASE_E, num_classes=1).map == pytest.approx(2 / 3, abs=1e-12)
    assert evaluate(*CASE_E, num_classes=1, protocol="voc07").map == pytest.approx(2 / 3, abs=1e-12)


def test_wrong_class_is_not_a_match():
    # the only overlapping detection has the other class: class 0 AP 0, class 1 (no truth) AP 0
    r = evaluate([det([0, 0, 10, 10, 0.9, 1])], [gt([0, 0, 0, 10, 10])], num_classes=2)
    assert r.map == 0.0 and r.fp == 1 and r.fn == 1


# ---------------------------------------------------------------- small AP functions


def test_ap_functions_on_hand_curves():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert ap_all_points(rec, prec) == pytest.approx(5 / 6)
    assert ap_11_points(rec, prec) == pytest.approx(28 / 33)
    # COCO: thresholds 0..0.5 (51) -> 1, 0.51..1 (50) -> 2/3
    assert ap_coco_101(rec, prec) == pytest.approx((51 + 50 * 2 / 3) / 101)
    # recall 3/10 reaches the 0.3 point (k/10, not 0.1 * 3 = 0.30000000000000004)
    assert ap_11_points(np.array([0.3]), np.array([1.0])) == pytest.approx(4 / 11)
    assert ap_all_points(np.array([]), np.array([])) == 0.0
    with pytest.raises(DarktuneError):
        ap_all_points(np.array([0.5, 0.2]), np.array([1.0, 1.0]))


# ---------------------------------------------------------------- pycocotools agreement


def _synthetic(seed: int, n_images: int, num_classes: int, big_image: bool):
    """Random truths; detections = jittered copies (some duplicated), random false positives, ties in scores;
    image 0 has no predictions, image 1 no truth, the last class has truths but no detections."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for i in range(n_images):
        m = 0 if i == 1 else int(rng.integers(1, 8))
        xy = rng.uniform(0, 500, (m, 2))
        wh = rng.uniform(8, 120, (m, 2))
        cls = rng.integers(0, num_classes, m)
        g = np.column_stack([cls, xy, xy + wh])
        if m >= 2 and i % 5 == 0:
            g[1] = g[0]  # identical truths: exercises tie-breaking between equal IoUs
        rows = []
        for c, x1, y1, x2, y2 in g:
            if c == num_classes - 1:
                continue
            for _ in range(int(rng.integers(1, 5))):  # overlapping duplicates around each truth
                s = rng.normal(0, 0.12 * (x2 - x1), 4)
                box = np.sort(np.array([x1, x2]) + s[:2]), np.sort(np.array([y1, y2]) + s[2:])
                rows.append([box[0][0], box[1][0], box[0][1], box[1][1], rng.random(), c])
        n_fp = int(rng.integers(0, 6))
        fxy = rng.uniform(0, 500, (n_fp, 2))
        fwh = rng.uniform(5, 100, (n_fp, 2))
        for k in range(n_fp):
            rows.append([*fxy[k], *(fxy[k] + fwh[k]), rng.random(), rng.integers(0, num_classes - 1)])
        if big_image and i == 2:  # > 100 detections of one class on one image: maxDets truncation
            for _ in range(150):
                x, y = rng.uniform(0, 400, 2)
                rows.append([x, y, x + 60, y + 60, rng.random(), 0])
        d = np.array(rows, dtype=np.float64).reshape(-1, 6)
        d[:, 4] = np.round(d[:, 4], 2)  # many equal scores: tests the stable ordering
        dets.append(d[:0] if i == 0 else d)
        gts.append(g)
    return dets, gts


def _pycocotools_stats(dets, gts, num_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, results = [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        for c, x1, y1, x2, y2 in g:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for x1, y1, x2, y2, s, c in d:
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i + 1} for i in range(len(gts))], "annotations": anns,
                           "categories": [{"id": c + 1} for c in range(num_classes)]}
        coco_gt.createIndex()
        e = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    prec = e.eval["precision"][:, :, :, 0, 2]  # (T, R, K) at area all, maxDets 100
    per_class = [prec[:, :, k].mean() if (prec[:, :, k] > -1).all() else None for k in range(num_classes)]
    return e.stats[0], e.stats[1], per_class


@pytest.mark.parametrize("seed,n_images,num_classes,big_image",
                         [(0, 40, 3, False), (1, 60, 4, True), (2, 25, 2, True), (3, 80, 5, False)])
def test_agrees_with_pycocotools(seed, n_images, num_classes, big_image):
    dets, gts = _synthetic(seed, n_images, num_classes, big_image)
    ap5095, ap50, per_class = _pycocotools_stats(dets, gts, num_classes)
    r50 = evaluate(dets, gts, num_classes, protocol="coco101")
    r = evaluate(dets, gts, num_classes, protocol="coco")
    assert 0.05 < ap50 < 0.99  # the set is neither trivial nor hopeless
    assert r50.map == pytest.approx(ap50, abs=1e-6)
    assert r.map == pytest.approx(ap5095, abs=1e-6)
    for c, ref in zip(r.classes, per_class):
        assert (c.ap is None) == (ref is None)
        if ref is not None:
            assert c.ap == pytest.approx(ref, abs=1e-6)
    assert r.classes[-1].n_truth > 0 and r.classes[-1].n_det == 0 and r.classes[-1].ap == 0.0


@pytest.mark.parametrize("case,num_classes", [(CASE_B, 1), (CASE_C, 3), (CASE_D, 1), (CASE_E, 1)])
def test_hand_cases_agree_with_pycocotools(case, num_classes):
    ap5095, ap50, _ = _pycocotools_stats(*case, num_classes)
    assert evaluate(*case, num_classes, protocol="coco101").map == pytest.approx(ap50, abs=1e-6)
    assert evaluate(*case, num_classes, protocol="coco").map == pytest.approx(ap5095, abs=1e-6)


def _darknet_reference(dets, gts, num_classes):
    """Literal, loop-by-loop transcription of AlexeyAB validate_detector_map (-points 0): per detection the
    same-class truth of highest IoU above 0.5 (first on ties); global sort by score; a truth counts once;
    per class the area under the envelope; sum / classes."""
    flat, n_truth, offset = [], np.zeros(num_classes), 0
    for d, g in zip(dets, gts):
        for c in g[:, 0]:
            n_truth[int(c)] += 1
        for row in d[np.argsort(-d[:, 4], kind="stable")]:
            best, best_iou = -1, 0.0
            for j, (c, x1, y1, x2, y2) in enumerate(g):
                iw = max(0.0, min(row[2], x2) - max(row[0], x1))
                ih = max(0.0, min(row[3], y2) - max(row[1], y1))
                union = (row[2] - row[0]) * (row[3] - row[1]) + (x2 - x1) * (y2 - y1) - iw * ih
                iou = iw * ih / union
                if iou > 0.5 and int(c) == int(row[5]) and iou > best_iou:
                    best, best_iou = offset + j, iou
            flat.append((row[4], int(row[5]), best))
        offset += len(g)
    flat.sort(key=lambda t: -t[0])  # Python's sort is stable, like ours
    taken, total = set(), 0.0
    for c in range(num_classes):
        tp = fp = 0
        rec, prec = [], []
        for _, cls, truth in flat:
            if cls != c:
                continue
            if truth >= 0 and truth not in taken:
                taken.add(truth)
                tp += 1
            else:
                fp += 1
            rec.append(tp / n_truth[c] if n_truth[c] else 0.0)
            prec.append(tp / (tp + fp))
        ap, last_r, last_p = 0.0, (rec[-1] if rec else 0.0), (prec[-1] if prec else 0.0)
        for k in range(len(rec) - 2, -1, -1):
            delta = last_r - rec[k]
            last_r = rec[k]
            last_p = max(last_p, prec[k])
            ap += delta * last_p
        total += ap + last_r * last_p
    return total / num_classes


@pytest.mark.parametrize("seed,n_images,num_classes", [(0, 40, 3), (1, 30, 4), (4, 50, 2)])
def test_darknet_agrees_with_literal_reference(seed, n_images, num_classes):
    dets, gts = _synthetic(seed, n_images, num_classes, big_image=False)
    ref = _darknet_reference(dets, gts, num_classes)
    assert 0.05 < ref < 0.99
    assert evaluate(dets, gts, num_classes).map == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------- edge cases and invariances


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_detections_gives_zero_without_warnings(protocol):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate([det(), np.zeros((0, 6))], [gt([0, 0, 0, 5, 5]), gt()], num_classes=2, protocol=protocol)
    assert r.map == 0.0 and r.precision == 0.0 and r.recall == 0.0 and r.f1 == 0.0 and r.fn == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_truth_at_all_is_documented_zero(protocol):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate([det([0, 0, 5, 5, 0.9, 0]), det()], [gt(), gt()], num_classes=2, protocol=protocol)
        empty = evaluate([], [], num_classes=1, protocol=protocol)
    assert r.map == 0.0 and r.fp == 1 and r.recall == 0.0 and empty.map == 0.0
    assert r.num_classes_in_mean == (2 if protocol in ("darknet", "voc07") else 0)


@pytest.mark.parametrize("bad_det,bad_gt,message", [
    (det([0, 0, 5, 5, np.nan, 0]), gt(), "NaN"),
    (det([0, np.nan, 5, 5, 0.5, 0]), gt(), "NaN"),
    (det(), gt([0, 0, 0, np.inf, 5]), "infinite"),
    (det([0, 0, 5, 5, 0.5, 2]), gt(), "class id"),
    (det([0, 0, 5, 5, 0.5, 0.5]), gt(), "class id"),
    (det(), gt([-1, 0, 0, 5, 5]), "class id"),
    (det([5, 0, 0, 5, 0.5, 0]), gt(), "x2 < x1"),
    (np.zeros((2, 5)), gt(), "shape"),
    (det(), np.zeros((1, 4)), "shape"),
])
def test_bad_input_is_a_darktune_error(bad_det, bad_gt, message):
    with pytest.raises(DarktuneError, match=message) as e:
        evaluate([det(), bad_det], [gt(), bad_gt], num_classes=2, image_names=["a.jpg", "b.jpg"])
    assert "b.jpg" in str(e.value)


def test_bad_arguments():
    with pytest.raises(DarktuneError, match="protocol"):
        evaluate(*CASE_A, num_classes=1, protocol="voc12")
    with pytest.raises(DarktuneError, match="images"):
        evaluate(CASE_A[0], [], num_classes=1)
    with pytest.raises(DarktuneError, match="num_classes"):
        evaluate(*CASE_A, num_classes=0)
    with pytest.raises(DarktuneError, match="class names"):
        evaluate(*CASE_A, num_classes=1, class_names=["a", "b"])
    with pytest.raises(DarktuneError, match="conf_thresh"):
        evaluate(*CASE_A, num_classes=1, conf_thresh=float("nan"))
    with pytest.raises(DarktuneError, match="NaN"):
        match_detections(det([0, 0, 5, 5, np.nan, 0]), gt())


def test_normalised_and_pixel_coordinates_agree():
    dets, gts = _synthetic(5, 20, 3, False)
    scale = np.array([640.0, 480.0, 640.0, 480.0])
    nd = [np.column_stack([d[:, :4] / scale, d[:, 4:]]) for d in dets]
    ng = [np.column_stack([g[:, :1], g[:, 1:] / scale]) for g in gts]
    for p in PROTOCOLS:
        assert evaluate(nd, ng, 3, protocol=p).map == pytest.approx(evaluate(dets, gts, 3, protocol=p).map,
                                                                      abs=1e-9)


def test_result_dict_and_summary():
    r = evaluate(*CASE_C, num_classes=3, protocol="coco", class_names=["a", "b", "c"])
    d = r.to_dict()
    assert d["protocol"] == "coco" and d["classes"][1]["ap"] is None and d["classes"][0]["name"] == "a"
    import json
    json.dumps(d)
    text = evaluate(*CASE_A, num_classes=1).summary()
    assert "precision = " in text and "average IoU = " in text and "83.33 %" in text


def test_match_detections_ties_between_identical_truths():
    # darknet keeps the first truth of highest IoU (strict >), pycocotools the last (it replaces on >=)
    d, g = det([0, 0, 10, 10, 0.9, 0]), gt([0, 0, 0, 10, 12], [0, 0, 0, 10, 12])
    assert match_detections(d, g, rule="darknet")[0].tolist() == [0]
    assert match_detections(d, g, rule="coco")[0].tolist() == [1]


def test_match_detections_input_order_and_empty():
    idx, iou = match_detections(det([50, 50, 60, 60, 0.8, 0], [0, 0, 10, 10, 0.9, 0]), gt([0, 0, 0, 10, 10]))
    assert idx.tolist() == [-1, 0] and iou.tolist() == [0.0, 1.0]
    idx, iou = match_detections(det(), gt([0, 0, 0, 10, 10]))
    assert idx.shape == (0,) and iou.shape == (0,)


@pytest.mark.slow
def test_speed_5000_images_50_detections():
    rng = np.random.default_rng(0)
    dets, gts = [], []
    for _ in range(5000):
        g = np.column_stack([rng.integers(0, 3, 8), rng.uniform(0, 300, (8, 2))])
        g = np.column_stack([g, g[:, 1:3] + rng.uniform(10, 100, (8, 2))])
        d = np.repeat(g[:, [1, 2, 3, 4]], 7, axis=0)[:50] + rng.normal(0, 5, (50, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2])
        dets.append(np.column_stack([d, rng.random(50), rng.integers(0, 3, 50)]))
        gts.append(g)
    for protocol in ("darknet", "coco"):
        t0 = time.perf_counter()
        evaluate(dets, gts, 3, protocol=protocol)
        elapsed = time.perf_counter() - t0
        assert elapsed < 4.0, f"{protocol}: {elapsed:.2f} s"  # target 2 s; headroom for a loaded machine
