"""Decoding and NMS in NumPy for one image at a time: `darktune detect`'s path on CPU.

The same darknet semantics as `darktune.darknet.boxes` (`decode`, `postprocess`), which stays the reference
and runs training, evaluation and GPU batches. Detection needs only the few rows whose objectness passes the
threshold, and on a CPU core whose caches the network call has just filled with its own data, NumPy's
dozens of small operations cost 0.84 ms per yolov3-tiny image where torch's cost 2.7 ms (2-core Xeon,
measured between network calls). Basic arithmetic is the reference's, operation for operation, in float32;
the logistic and exp may differ from torch's by an ulp, so boxes agree to about 1e-4 pixel and scores to
1e-7 (tests/darknet/test_boxes_np.py).
"""

from __future__ import annotations

import numpy as np

from darktune.darknet.boxes import ImageGeometry
from darktune.darknet.cfg import YoloSpec

F32 = np.float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-x) overflows to inf below x = -88.7 (a trained head's objectness often is): 1 / (1 + inf) = 0 is the
    # right value and torch's, so the overflow is not a warning
    with np.errstate(over="ignore"):
        return F32(1) / (F32(1) + np.exp(-x))


def decode_above(heads: list[np.ndarray], specs: list[YoloSpec], net_hw: tuple[int, int], thresh: float,
                 index: int = 0) -> np.ndarray:
    """Rows of image `index` of the raw heads whose objectness exceeds `thresh`, decoded as
    `darktune.darknet.boxes.decode` decodes them and in its order: (n, 5+C) cx, cy, w, h (fractions of the
    network input), objectness, class probabilities."""
    rows = []
    for raw, spec in zip(heads, specs):
        _, _, h, w = raw.shape
        a = len(spec.mask)
        p = np.asarray(raw[index], dtype=F32).reshape(a, 5 + spec.classes, h, w)
        obj = p[:, 4].transpose(1, 2, 0)  # (H, W, A): decode's row order
        if not spec.new_coords:
            obj = _sigmoid(obj)
        ys, xs, ks = np.nonzero(obj > thresh)
        cand = p[ks, :, ys, xs]  # (n, 5+C)
        anchors = np.asarray(spec.masked_anchors, dtype=F32)[ks]
        s = F32(spec.scale_x_y)
        shift = F32(0.5 * (spec.scale_x_y - 1))
        if spec.new_coords:  # the conv already applied logistic
            xy = cand[:, 0:2] * s - shift
            wh = (cand[:, 2:4] * F32(2)) ** 2 * anchors
            probs = cand[:, 5:]
        else:
            xy = _sigmoid(cand[:, 0:2]) * s - shift
            with np.errstate(over="ignore"):  # tw, th past 88.7: an infinite box, as torch's decode gives
                wh = np.exp(cand[:, 2:4]) * anchors
            probs = _sigmoid(cand[:, 5:])
        box = np.stack(((xy[:, 0] + xs.astype(F32)) / F32(w), (xy[:, 1] + ys.astype(F32)) / F32(h),
                        wh[:, 0] / F32(net_hw[1]), wh[:, 1] / F32(net_hw[0])), -1)
        rows.append(np.concatenate((box, obj[ys, xs, ks, None], probs), -1))
    return np.concatenate(rows).astype(F32, copy=False)


def to_image(boxes: np.ndarray, geo: ImageGeometry, net_hw: tuple[int, int]) -> np.ndarray:
    """Network-input cxcywh fractions -> xyxy pixels of the original image (`ImageGeometry.to_image`)."""
    b = boxes.copy()
    if geo.letterbox:
        nh, nw = net_hw
        scale = min(nw / geo.width, nh / geo.height)
        new_w, new_h = geo.width * scale / nw, geo.height * scale / nh
        b[:, 0] = (b[:, 0] - F32((1 - new_w) / 2)) / F32(new_w)
        b[:, 1] = (b[:, 1] - F32((1 - new_h) / 2)) / F32(new_h)
        b[:, 2] /= F32(new_w)
        b[:, 3] /= F32(new_h)
    cx, cy, w, h = b.T
    xyxy = np.stack((cx - w / F32(2), cy - h / F32(2), cx + w / F32(2), cy + h / F32(2)), -1)
    return xyxy * np.array([geo.width, geo.height, geo.width, geo.height], dtype=F32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS (darknet's do_nms_sort for one class): indices kept, by descending score (ties: first
    index first)."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, F32(0), None)
    inter = wh[..., 0] * wh[..., 1]
    side = np.clip(b[:, 2:] - b[:, :2], F32(0), None)
    area = side[:, 0] * side[:, 1]
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, F32(1e-12)), F32(0))
    over = iou > iou_thresh
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[np.asarray(keep, dtype=np.int64)]


def detections(decoded: np.ndarray, geo: ImageGeometry, net_hw: tuple[int, int], conf_thresh: float = 0.25,
               nms_thresh: float = 0.45, max_det: int = 1000) -> np.ndarray:
    """`darktune.darknet.boxes.postprocess` for one image: (n, 6) [x1, y1, x2, y2, score, class] in pixels
    of the original image. Candidates: objectness > thresh; each class whose objectness * probability
    exceeds it gives a detection; NMS per class (boxes of different classes moved apart, as the reference)."""
    d = decoded[decoded[:, 4] > conf_thresh]
    scores = d[:, 4:5] * d[:, 5:]
    box_idx, cls = np.nonzero(scores > conf_thresh)
    sc = scores[box_idx, cls]
    if len(sc) > max_det * 4:  # keep NMS bounded on pathological inputs
        top = np.argsort(-sc, kind="stable")[:max_det * 4]
        box_idx, cls, sc = box_idx[top], cls[top], sc[top]
    xyxy = to_image(d[box_idx, :4], geo, net_hw)
    if len(xyxy) == 0:
        return np.zeros((0, 6), dtype=F32)
    offset = cls.astype(F32)[:, None] * (xyxy.max() - xyxy.min() + F32(1))
    keep = nms(xyxy + offset, sc, nms_thresh)[:max_det]
    return np.concatenate((xyxy[keep], sc[keep, None], cls[keep, None].astype(F32)), 1)
