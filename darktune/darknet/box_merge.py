"""Merging the detections of overlapping tiles into one list per image: NMS, or greedy match-and-merge.

Shared by sliced detection (`darktune.deploy.sliced`) and whole-image mAP (`darktune.eval.tiled`), so what a
user runs and what they score is merged alike. Detections are (n, 6) [x1, y1, x2, y2, score, class] in
image pixels.

- `nms`: per class, keep the best-scored box and drop the others that match it.
- `greedy_nmm` (greedy non-maximum merging): per class, in order of falling score, the best box not yet
  taken takes every box not yet taken that matches it; then it grows, one taken box at a time in order of
  falling score, into the box enclosing both, as long as the box it has grown into still matches that one.
  The merged detection keeps the best score. An object cut by a tile edge is seen whole in one tile and in
  part in its neighbour; the part lies inside the whole (intersection over the smaller box near 1, IoU low),
  so merging by `ios` joins them where IoU-based NMS would keep both.

Match metrics: `iou` (intersection over union) and `ios` (intersection over the smaller box's area).
"""

from __future__ import annotations

import numpy as np

METRICS = ("iou", "ios")
MERGES = ("greedynmm", "nms")


def _pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(len(a), len(b)) match values of boxes a and b, (k, 4) xyxy each."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    if metric == "iou":
        denom = area_a[:, None] + area_b[None, :] - inter
    else:
        denom = np.minimum(area_a[:, None], area_b[None, :])
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)


def match_value(a, b, metric: str = "ios") -> float:
    """The match metric of two xyxy boxes."""
    return float(_pairwise(np.asarray([a[:4]], np.float64), np.asarray([b[:4]], np.float64), metric)[0, 0])


def _check(metric: str, thresh: float) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown match metric {metric!r}; known: {', '.join(METRICS)}")
    if not 0.0 <= thresh <= 1.0:
        raise ValueError(f"match threshold must be between 0 and 1, got {thresh}")


def _groups(dets: np.ndarray):
    """Per class: (indices into dets by falling score (ties: first first), their boxes in float64)."""
    for cls in np.unique(dets[:, 5]):
        idx = np.nonzero(dets[:, 5] == cls)[0]
        idx = idx[np.argsort(-dets[idx, 4], kind="stable")]
        yield idx, dets[idx, :4].astype(np.float64)


def nms(dets: np.ndarray, thresh: float = 0.5, metric: str = "iou") -> np.ndarray:
    """Per-class greedy NMS: the kept detections, by falling score within each class, classes in order."""
    _check(metric, thresh)
    dets = np.asarray(dets, np.float32).reshape(-1, 6)
    keep = []
    for idx, boxes in _groups(dets):
        gone = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if not gone[i]:
                keep.append(idx[i])
                gone |= _pairwise(boxes[i:i + 1], boxes, metric)[0] > thresh
    return dets[np.asarray(keep, np.int64)] if keep else np.zeros((0, 6), np.float32)


def greedy_nmm(dets: np.ndarray, thresh: float = 0.5, metric: str = "ios") -> np.ndarray:
    """Per-class greedy non-maximum merging (see the module docstring): one detection per group, its box
    the enclosing box of the members merged into it, its score the group's best."""
    _check(metric, thresh)
    dets = np.asarray(dets, np.float32).reshape(-1, 6)
    out = []
    for idx, boxes in _groups(dets):
        taken = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if taken[i]:
                continue
            members = np.nonzero((_pairwise(boxes[i:i + 1], boxes, metric)[0] > thresh) & ~taken)[0]
            taken[members] = True
            taken[i] = True
            merged = dets[idx[i]].astype(np.float64)
            for j in members:
                if j == i:
                    continue
                other = dets[idx[j]]
                if match_value(merged, other, metric) > thresh:
                    merged[0:2] = np.minimum(merged[0:2], other[0:2])
                    merged[2:4] = np.maximum(merged[2:4], other[2:4])
            out.append(merged)
    return np.asarray(out, np.float32).reshape(-1, 6)


def merge_detections(dets: np.ndarray, how: str = "greedynmm", thresh: float = 0.5, metric: str = "ios"
                     ) -> np.ndarray:
    """`greedy_nmm` or `nms` by name, then sorted by falling score."""
    if how not in MERGES:
        raise ValueError(f"unknown merge {how!r}; known: {', '.join(MERGES)}")
    merged = greedy_nmm(dets, thresh, metric) if how == "greedynmm" else nms(dets, thresh, metric)
    return merged[np.argsort(-merged[:, 4], kind="stable")]
