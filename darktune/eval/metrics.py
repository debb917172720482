"""Detection metrics: AP / mAP under named protocols, plus darknet's precision/recall/F1/IoU at a threshold.

Inputs, one array per image (a list over images, same length for detections and truths):
  detections (n, 6) ``[x1, y1, x2, y2, score, class_id]``; truths (m, 5) ``[class_id, x1, y1, x2, y2]``.
Coordinates may be pixels or normalised, as long as detections and truths of an image use the same units: IoU
is invariant to scaling x and y, so both give the same figures. IoU has no "+1" pixel term (as pycocotools).

Protocols (see ``PROTOCOLS``), each reported by name beside its figure:
  darknet  AlexeyAB ``detector map`` (default ``-points 0``). A detection's candidate is the same-class truth of
           highest IoU, if that IoU > 0.5 (strict); the first detection in score order to claim a truth is a
           TP, later ones claiming the same truth are FP even when another free truth overlaps them (darknet
           and the VOC devkit both do this). AP = area under the monotone precision envelope at every recall
           step. mAP = sum of AP / num_classes: classes without truth count as AP 0 (darknet does the same).
  voc07    the same matching and class mean, 11-point AP: mean over r = k/10 of max precision at recall >= r
           (darknet ``-points 11``; r is k/10 exactly, so a recall of 3/10 reaches the 0.3 point).
  coco101  pycocotools COCOeval, bbox, area "all", maxDets 100, at IoU 0.5 only: per image and class at most
           100 detections (best scores); greedy matching in score order to the best-IoU *unmatched* truth with
           IoU >= 0.5 (ties: the later truth); precision tp/(tp+fp+eps) made monotone from the right, sampled
           at np.linspace(0, 1, 101) with searchsorted(side="left"), missing points 0. Classes without truth
           are left out of the mean (pycocotools marks them -1).
  coco     as coco101, averaged over IoU thresholds np.linspace(0.5, 0.95, 10) (COCO mAP50-95).
Sorting is stable everywhere (equal scores keep image order, then input order); darknet uses qsort, whose order
of equal scores is unspecified.

Threshold figures (darknet's "for conf_thresh = 0.25, precision, recall, F1-score, average IoU") count the
detections with score > conf_thresh (strict, as darknet), TP/FP as decided by the protocol's matching at its
first IoU threshold (0.5). darknet decides those TP in network output order; here it is score order.
``avg_iou`` is darknet's figure: the sum of the TPs' IoU divided by TP + FP; ``avg_iou_tp`` is the mean over TPs.
Undefined ratios (0/0) are reported as 0. With no truth at all, every protocol reports mAP 0 and, for the coco
protocols, ``num_classes_in_mean`` = 0. Darknet's score threshold 0.005 and NMS 0.45 belong to decoding, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from darktune.errors import DarktuneError

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)  # as pycocotools
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)  # as pycocotools
COCO_MAX_DETS = 100
_CHUNK_ELEMENTS = 1 << 21  # padded (images x dets x truths) IoU block size; bounds memory per block


def ap_all_points(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOC2010+, darknet ``-points 0``).

    recall, precision: 1-D, one entry per ranked detection (cumulative, recall non-decreasing)."""
    r, p = _pr_arrays(recall, precision)
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum(np.diff(r, prepend=0.0) * envelope))


def ap_11_points(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over r in {0, 0.1, ..., 1} of the max precision at recall >= r (0 if none)."""
    r, p = _pr_arrays(recall, precision)
    points = np.arange(11) / 10.0  # k/10 exactly, as darknet computes point / (points - 1)
    return float(sum(p[r >= t].max(initial=0.0) for t in points) / 11.0)


def ap_coco_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point AP exactly as pycocotools ``accumulate``: envelope from the right, sampled at
    ``COCO_RECALL_THRESHOLDS`` with searchsorted(side="left"); thresholds past the last recall count 0."""
    r, p = _pr_arrays(recall, precision)
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.searchsorted(r, COCO_RECALL_THRESHOLDS, side="left")
    q = np.zeros(len(COCO_RECALL_THRESHOLDS))
    inside = idx < len(r)
    q[inside] = envelope[idx[inside]]
    return float(q.mean())


def _pr_arrays(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(recall, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    if r.ndim != 1 or r.shape != p.shape:
        raise DarktuneError(f"recall and precision must be 1-D of equal length, got {r.shape} and {p.shape}")
    if np.any(np.diff(r) < 0):
        raise DarktuneError("recall must be non-decreasing (one entry per detection in descending score order)")
    return r, p


@dataclass(frozen=True)
class _Protocol:
    rule: str  # "darknet": best truth, IoU > t, duplicates FP; "coco": greedy best unmatched truth, IoU >= t
    iou_thresholds: tuple[float, ...]
    ap: Callable[[np.ndarray, np.ndarray], float]
    max_dets: int | None  # per image and class
    mean_over_all_classes: bool  # False: classes without truth are left out of the mean
    description: str


_PROTOCOLS = {
    "darknet": _Protocol("darknet", (0.5,), ap_all_points, None, True,
                         "AlexeyAB darknet detector map: all-point AP, IoU > 0.5, mean over all classes"),
    "voc07": _Protocol("darknet", (0.5,), ap_11_points, None, True,
                       "VOC2007 11-point AP (darknet -points 11), IoU > 0.5, mean over all classes"),
    "coco101": _Protocol("coco", (float(COCO_IOU_THRESHOLDS[0]),), ap_coco_101, COCO_MAX_DETS, False,
                         "pycocotools AP50: 101-point AP, IoU >= 0.5, maxDets 100, classes with truth"),
    "coco": _Protocol("coco", tuple(float(t) for t in COCO_IOU_THRESHOLDS), ap_coco_101, COCO_MAX_DETS, False,
                      "pycocotools AP50-95: 101-point AP averaged over IoU 0.50:0.05:0.95, maxDets 100"),
}
PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOLS)


@dataclass(frozen=True)
class ClassResult:
    class_id: int
    name: str
    ap: float | None  # None: class left out of the mean (coco protocols, no truth)
    n_truth: int
    n_det: int  # detections of this class that entered the evaluation
    tp: int  # at conf_thresh
    fp: int  # at conf_thresh


@dataclass(frozen=True)
class MapResult:
    protocol: str
    description: str
    map: float  # 0..1
    num_classes_in_mean: int
    classes: list[ClassResult]
    conf_thresh: float
    precision: float
    recall: float
    f1: float
    avg_iou: float  # darknet: sum of TP IoU / (TP + FP)
    avg_iou_tp: float  # mean IoU over TPs
    tp: int
    fp: int
    fn: int
    n_images: int
    n_truth: int
    n_det: int

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (for ``--json``)."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines in the spirit of darknet's ``detector map`` printout."""
        lines = []
        for c in self.classes:
            ap = "excluded (no truth)" if c.ap is None else f"{100 * c.ap:.2f}%"
            lines.append(f"class_id = {c.class_id}, name = {c.name}, ap = {ap}   (TP = {c.tp}, FP = {c.fp})")
        t = self.conf_thresh
        lines.append(f"for conf_thresh = {t:.2f}, precision = {self.precision:.2f}, recall = {self.recall:.2f}, "
                     f"F1-score = {self.f1:.2f}")
        lines.append(f"for conf_thresh = {t:.2f}, TP = {self.tp}, FP = {self.fp}, FN = {self.fn}, "
                     f"average IoU = {100 * self.avg_iou:.2f} %")
        lines.append(f"mAP ({self.protocol}: {self.description}) = {self.map:.6f}, or {100 * self.map:.2f} %")
        return "\n".join(lines)


@dataclass
class _Flat:
    """All images concatenated; detections sorted by (image, descending score), stable."""
    det_box: np.ndarray  # (D, 4)
    det_score: np.ndarray  # (D,)
    det_cls: np.ndarray  # (D,) int64
    det_start: np.ndarray  # (I + 1,) offsets of each image's detections
    det_input_index: np.ndarray  # (D,) row in the image's input array
    gt_box: np.ndarray  # (G, 4)
    gt_cls: np.ndarray  # (G,)
    gt_start: np.ndarray  # (I + 1,)


def _check_rows(arrays: Sequence, width: int, what: str, names: Sequence[str] | None) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(arrays):
        try:
            arr = np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DarktuneError(f"{what} of {_image_name(i, names)}: not numeric ({e})") from None
        if arr.size == 0:
            arr = arr.reshape(0, width)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise DarktuneError(f"{what} of {_image_name(i, names)}: expected shape (n, {width}), got {arr.shape}")
        out.append(arr)
    return out


def _image_name(i: int, names: Sequence[str] | None) -> str:
    return f"image {i} ({names[i]})" if names is not None else f"image {i}"


def _validate(rows: np.ndarray, img: np.ndarray, box_cols: slice, cls_col: int, num_classes: int,
              what: str, names: Sequence[str] | None) -> None:
    bad = ~np.isfinite(rows).all(axis=1)
    problem = "a NaN or infinite value"
    if not bad.any():
        cls = rows[:, cls_col]
        bad = (cls != np.floor(cls)) | (cls < 0) | (cls >= num_classes)
        problem = f"a class id that is not an integer in [0, {num_classes})"
    if not bad.any():
        b = rows[:, box_cols]
        bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        problem = "a box with x2 < x1 or y2 < y1"
    if bad.any():
        k = int(np.argmax(bad))
        first = int(np.searchsorted(img, img[k], side="left"))
        raise DarktuneError(f"{what} of {_image_name(int(img[k]), names)}, row {k - first}: {problem}: "
                            f"{rows[k].tolist()}")


def _flatten(detections: Sequence, truths: Sequence, num_classes: int, max_dets: int | None,
             names: Sequence[str] | None) -> _Flat:
    dets = _check_rows(detections, 6, "detections", names)
    gts = _check_rows(truths, 5, "truths", names)
    n_img = len(dets)
    d_counts = np.array([len(a) for a in dets], dtype=np.int64)
    g_counts = np.array([len(a) for a in gts], dtype=np.int64)
    d = np.concatenate(dets) if n_img else np.zeros((0, 6))
    g = np.concatenate(gts) if n_img else np.zeros((0, 5))
    d_img = np.repeat(np.arange(n_img), d_counts)
    g_img = np.repeat(np.arange(n_img), g_counts)
    _validate(d, d_img, slice(0, 4), 5, num_classes, "detections", names)
    _validate(g, g_img, slice(1, 5), 0, num_classes, "truths", names)
    d_first = np.concatenate(([0], np.cumsum(d_counts)))
    input_index = np.arange(len(d)) - d_first[d_img]
    order = np.lexsort((-d[:, 4], d_img))  # lexsort is stable: ties keep input order
    if max_dets is not None:  # pycocotools keeps the best max_dets per image and class
        by_cls = np.lexsort((-d[:, 4], d[:, 5], d_img))
        key = d_img[by_cls] * num_classes + d[by_cls, 5].astype(np.int64)
        group_first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        rank = np.arange(len(key)) - np.repeat(group_first, np.diff(np.r_[group_first, len(key)]))
        keep = np.zeros(len(d), dtype=bool)
        keep[by_cls[rank < max_dets]] = True
        order = order[keep[order]]
    kept_counts = np.bincount(d_img[order], minlength=n_img)
    return _Flat(d[order, :4], d[order, 4], d[order, 5].astype(np.int64),
                 np.concatenate(([0], np.cumsum(kept_counts))), input_index[order],
                 g[:, 1:5], g[:, 0].astype(np.int64), np.concatenate(([0], np.cumsum(g_counts))))


def _chunks(n: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
    """Groups of images (having both detections and truths) whose padded IoU blocks stay near the budget."""
    imgs = np.flatnonzero((n > 0) & (m > 0))
    imgs = imgs[np.lexsort((m[imgs], n[imgs]))]
    groups, start = [], 0
    while start < len(imgs):
        stop = start + 1
        nmax, mmax = n[imgs[start]], m[imgs[start]]
        while stop < len(imgs):
            nn, mm = max(nmax, n[imgs[stop]]), max(mmax, m[imgs[stop]])
            if (stop - start + 1) * nn * mm > _CHUNK_ELEMENTS:
                break
            nmax, mmax, stop = nn, mm, stop + 1
        groups.append(imgs[start:stop])
        start = stop
    return groups


def _padded(boxes: np.ndarray, cls: np.ndarray, start: np.ndarray, imgs: np.ndarray, fill_cls: int):
    """(c, k, 4) boxes, (c, k) classes (fill_cls where padding) and (c, k) global row index (-1 padding)."""
    counts = start[imgs + 1] - start[imgs]
    k = int(counts.max())
    local = np.repeat(np.arange(len(imgs)), counts)
    slot = np.arange(len(local)) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = start[imgs][local] + slot
    pb = np.zeros((len(imgs), k, 4))
    pc = np.full((len(imgs), k), fill_cls, dtype=np.int64)
    pi = np.full((len(imgs), k), -1, dtype=np.int64)
    pb[local, slot], pc[local, slot], pi[local, slot] = boxes[rows], cls[rows], rows
    return pb, pc, pi


def _masked_iou(db: np.ndarray, dc: np.ndarray, gb: np.ndarray, gc: np.ndarray) -> np.ndarray:
    """(c, n, m) IoU of each image's detections with its truths; -1 where classes differ or padding."""
    lt = np.maximum(db[:, :, None, :2], gb[:, None, :, :2])
    rb = np.minimum(db[:, :, None, 2:], gb[:, None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(-1)
    area_d = (db[..., 2] - db[..., 0]) * (db[..., 3] - db[..., 1])
    area_g = (gb[..., 2] - gb[..., 0]) * (gb[..., 3] - gb[..., 1])
    union = area_d[:, :, None] + area_g[:, None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.where(dc[:, :, None] == gc[:, None, :], iou, -1.0)


def _match_darknet(iou: np.ndarray, t: float) -> np.ndarray:
    """(c, n) truth slot of highest IoU (first on ties) if IoU > t, else -1. Duplicates are resolved later."""
    best = iou.argmax(-1)
    ok = np.take_along_axis(iou, best[..., None], -1)[..., 0] > t
    return np.where(ok, best, -1)[None]


def _match_coco(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T, c, n) greedy pycocotools matching, detections in (already sorted) slot order, vectorised over images
    and thresholds: each takes the unmatched truth of highest IoU >= t (the last one on ties), or -1."""
    t_count, (c, n, m) = len(thresholds), iou.shape
    limit = np.minimum(thresholds, 1 - 1e-10)[:, None, None]
    rev = iou[:, :, ::-1]  # reversed truths: argmax's first max is the original's last max
    taken = np.zeros((t_count, c, m), dtype=bool)
    match = np.full((t_count, c, n), -1, dtype=np.int64)
    ti, ci = np.meshgrid(np.arange(t_count), np.arange(c), indexing="ij")
    for k in range(n):
        row = rev[None, :, k, :]
        cand = np.where((row >= limit) & ~taken, row, -1.0)
        j = cand.argmax(-1)
        ok = np.take_along_axis(cand, j[..., None], -1)[..., 0] >= 0
        taken[ti[ok], ci[ok], j[ok]] = True
        match[:, :, k] = np.where(ok, m - 1 - j, -1)
    return match


def _match_all(flat: _Flat, proto: _Protocol) -> tuple[np.ndarray, np.ndarray]:
    """Per detection (flat order): the global truth row it is a TP of, or -1 for FP, per IoU threshold (T, D);
    and the IoU with that truth at the first threshold (0 for FP)."""
    n_thr, n_det = len(proto.iou_thresholds), len(flat.det_score)
    gt_idx = np.full((n_thr, n_det), -1, dtype=np.int64)
    iou_first = np.zeros(n_det)
    for imgs in _chunks(np.diff(flat.det_start), np.diff(flat.gt_start)):
        db, dc, di = _padded(flat.det_box, flat.det_cls, flat.det_start, imgs, -1)
        gb, gc, gi = _padded(flat.gt_box, flat.gt_cls, flat.gt_start, imgs, -2)
        iou = _masked_iou(db, dc, gb, gc)
        if proto.rule == "darknet":
            slot = _match_darknet(iou, proto.iou_thresholds[0])
        else:
            slot = _match_coco(iou, np.asarray(proto.iou_thresholds))
        real = di >= 0
        safe = np.maximum(slot, 0)  # (T, c, n) truth slot, 0 where unmatched (masked below)
        glob = np.take_along_axis(np.broadcast_to(gi, (n_thr,) + gi.shape), safe, -1)
        glob = np.where(slot >= 0, glob, -1)  # global truth row per detection slot
        gt_idx[:, di[real]] = glob[:, real]
        iou_first[di[real]] = np.take_along_axis(iou, safe[0][..., None], -1)[..., 0][real]
    if proto.rule == "darknet":  # first claimant (score order within the image) of a truth wins, rest are FP
        claimed = np.flatnonzero(gt_idx[0] >= 0)
        _, first = np.unique(gt_idx[0, claimed], return_index=True)
        winners = np.zeros(n_det, dtype=bool)
        winners[claimed[first]] = True
        gt_idx[0, ~winners] = -1
    return gt_idx, np.where(gt_idx[0] >= 0, iou_first, 0.0)


def _class_ap(tp: np.ndarray, n_truth: int, proto: _Protocol) -> float | None:
    """AP of one class, averaged over thresholds; tp (T, k) in descending score order over the whole set."""
    if n_truth == 0:
        return 0.0 if proto.mean_over_all_classes else None
    tps = np.cumsum(tp, axis=1, dtype=np.float64)
    fps = np.cumsum(~tp, axis=1, dtype=np.float64)
    eps = np.spacing(1) if proto.rule == "coco" else 0.0  # pycocotools adds eps; darknet divides exactly
    aps = [proto.ap(t / n_truth, t / (t + f + eps)) for t, f in zip(tps, fps)]
    return float(np.mean(aps))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else 0.0


def evaluate(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
             protocol: str = "darknet", class_names: Sequence[str] | None = None, conf_thresh: float = 0.25,
             *, image_names: Sequence[str] | None = None) -> MapResult:
    """mAP of ``detections`` against ``truths`` (lists over images) under ``protocol`` (one of ``PROTOCOLS``).

    image_names, optional, name the images in error messages. Raises DarktuneError on bad input."""
    proto = _check_args(detections, truths, num_classes, protocol, class_names, conf_thresh, image_names)
    flat = _flatten(detections, truths, num_classes, proto.max_dets, image_names)
    gt_idx, iou = _match_all(flat, proto)
    tp = gt_idx >= 0
    order = np.argsort(-flat.det_score, kind="stable")  # whole-set ranking; ties keep image order
    order = order[np.argsort(flat.det_cls[order], kind="stable")]  # grouped by class, ranking kept
    cls_start = np.searchsorted(flat.det_cls[order], np.arange(num_classes + 1))
    n_truth = np.bincount(flat.gt_cls, minlength=num_classes)
    above = flat.det_score > conf_thresh
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    classes = []
    for c in range(num_classes):
        idx = order[cls_start[c]:cls_start[c + 1]]
        ap = _class_ap(tp[:, idx], int(n_truth[c]), proto)
        classes.append(ClassResult(c, names[c], ap, int(n_truth[c]), len(idx),
                                   int((tp[0, idx] & above[idx]).sum()), int((~tp[0, idx] & above[idx]).sum())))
    aps = [c.ap for c in classes if c.ap is not None]
    n_tp, n_fp = int((tp[0] & above).sum()), int((~tp[0] & above).sum())
    precision, recall = _ratio(n_tp, n_tp + n_fp), _ratio(n_tp, len(flat.gt_cls))
    return MapResult(
        protocol=protocol, description=proto.description,
        map=float(np.mean(aps)) if aps else 0.0, num_classes_in_mean=len(aps), classes=classes,
        conf_thresh=float(conf_thresh), precision=precision, recall=recall,
        f1=_ratio(2 * precision * recall, precision + recall),
        avg_iou=_ratio(float(iou[above].sum()), n_tp + n_fp), avg_iou_tp=_ratio(float(iou[above].sum()), n_tp),
        tp=n_tp, fp=n_fp, fn=len(flat.gt_cls) - n_tp,
        n_images=len(detections), n_truth=len(flat.gt_cls), n_det=len(flat.det_score))


def _check_args(detections, truths, num_classes, protocol, class_names, conf_thresh, image_names) -> _Protocol:
    if protocol not in _PROTOCOLS:
        raise DarktuneError(f"unknown mAP protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DarktuneError(f"num_classes must be a positive integer, got {num_classes!r}")
    if len(detections) != len(truths):
        raise DarktuneError(f"{len(detections)} images of detections but {len(truths)} images of truths")
    if class_names is not None and len(class_names) != num_classes:
        raise DarktuneError(f"{len(class_names)} class names for {num_classes} classes")
    if image_names is not None and len(image_names) != len(detections):
        raise DarktuneError(f"{len(image_names)} image names for {len(detections)} images")
    if not np.isfinite(conf_thresh):
        raise DarktuneError(f"conf_thresh must be a finite number, got {conf_thresh!r}")
    return _PROTOCOLS[protocol]


def match_detections(detections: np.ndarray, truths: np.ndarray, iou_threshold: float = 0.5,
                     rule: str = "darknet") -> tuple[np.ndarray, np.ndarray]:
    """Match one image's detections (n, 6) to its truths (m, 5), e.g. for training logs.

    Returns (truth_index, iou), both (n,) in the detections' input order: the row of the matched truth (-1 for
    a false positive) and the IoU with it (0 for FP). rule "darknet": best same-class truth with IoU > t,
    taken by the highest-scoring claimant; rule "coco": greedy best unmatched truth with IoU >= t (no maxDets)."""
    if rule not in ("darknet", "coco"):
        raise DarktuneError(f"unknown matching rule {rule!r}; known: darknet, coco")
    dets = _check_rows([detections], 6, "detections", None)[0]
    gts = _check_rows([truths], 5, "truths", None)[0]
    ids = np.r_[dets[:, 5], gts[:, 0]]
    num_classes = int(np.where(np.isfinite(ids), ids, 0).max(initial=0)) + 1  # bad ids are caught below
    flat = _flatten([dets], [gts], num_classes, None, None)
    gt_idx, iou = _match_all(flat, _Protocol(rule, (float(iou_threshold),), ap_all_points, None, True, ""))
    truth_index = np.full(len(dets), -1, dtype=np.int64)
    iou_out = np.zeros(len(dets))
    truth_index[flat.det_input_index] = gt_idx[0]
    iou_out[flat.det_input_index] = iou
    return truth_index, iou_out
