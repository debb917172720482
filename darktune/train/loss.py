"""YOLOv3 loss with darknet's semantics (`yolo_layer.c`), vectorised over the batch, free of host syncs.

Targets are built with fixed-shape tensor ops only: no Python loop over truths, and nothing whose output shape
depends on the data (no ``.item()``, ``int(tensor)``, ``nonzero``, ``unique`` or boolean-mask indexing), so a
CUDA step never waits for the device inside the loss. Invalid truth rows (w or h <= 0, non-finite values, a class
or image index out of range) are masked, never filtered. Host->device copies: the targets (``non_blocking``;
pinned memory makes that truly asynchronous) and, once per head, device and network size, the anchor tables. The
cost of fixed shapes on CPU: 68 vs 52 ms for loss+backward of 16 images at 256 px with 80 truths (1 thread,
loaded 2-core machine), under 1% of a training iteration there. For each `[yolo]` head:

Reference: AlexeyAB darknet's `yolo_layer.c` (forward_yolo_layer / process_batch), checked number for number
against darknet itself built for the CPU (tests/train/test_darknet_reference.py, docs/darknet_training.md).

* Assignment: for every truth the best anchor over *all* ``num`` anchors of the head's anchor list (IoU of
  width/height only, both centred; ties: the first) decides; when that anchor is in the head's ``mask`` the
  truth is assigned to anchor ``mask.index(best)`` at cell ``(int(cy*H), int(cx*W))``. A truth whose best anchor
  is in no mask (e.g. anchor 0 with the official COCO cfg trained with mask 1,2,3) is no positive anywhere.
  Truths that share a cell and anchor are all positives there: their box terms add up (darknet accumulates
  the box deltas, ``delta_yolo_box`` with ``accumulate=1``) and the class target of the slot is the union of
  their classes (``delta_yolo_class`` leaves an earlier truth's class at 1 - p). pjreddie's darknet overwrote
  instead (the later truth won).
* ``iou_thresh < 1``: besides the best anchor, every anchor of this head's mask whose width/height IoU with
  the truth exceeds ``iou_thresh`` is a positive for it too, at the truth's cell, with the same terms (darknet
  checks this whether or not the best anchor is in this head); a positive's summed box term is then divided by
  the number of classes of its slot (darknet's ``averages_yolo_deltas``).
* Objectness: BCE towards 1 at positives; BCE towards 0 elsewhere, except predictions whose decoded box has
  IoU > ``ignore_thresh`` with some truth of the image (any class) *and* that score some class above 0.25
  (AlexeyAB's ``compare_yolo_class``; pjreddie ignored on the IoU alone). × ``obj_normalizer``.
* ``truth_thresh < 1``: a prediction (any anchor, any cell of this head) whose decoded box has IoU >
  ``truth_thresh`` with its best truth of the image (any class) is a positive for that truth: objectness
  towards 1, that truth's class added to the slot's class target, a box term towards that truth from the
  prediction's own cell and anchor, added to any assignment's box terms there (darknet adds both deltas).
* Classes: BCE per class at positives towards the slot's class target. ``cls_normalizer`` is not applied:
  AlexeyAB darknet multiplies by it only together with ``counters_per_class`` (not implemented here), so a
  cfg's ``cls_normalizer`` changes nothing in darknet either.
* Box, ``iou_loss=mse`` (default): darknet's deltas ``scale * (t - x) * iou_normalizer`` with
  ``scale = 2 - w*h``. Darknet applies the x/y delta to the logit without the sigmoid's derivative, so the
  loss whose gradient is exactly darknet's is a cross-entropy on the sigmoid for x/y (shifted so its minimum
  is 0 when the target lies in the cell) and ``0.5 * (t - x)^2`` on tw/th.
  ``iou_loss=iou|giou|diou|ciou``: value ``iou_normalizer * (1 - IoU-variant)`` of the decoded box (no 2-wh
  scale), gradient darknet's delta written straight onto the raw outputs (`box_delta.DarknetIouBox`: no sigmoid
  or 1/grid factor on x/y, only exp(tw) on w/h, clipped to ``max_delta`` when set).
* Not implemented: ``focal_loss`` (darknet applies it to the class deltas only; with one class that term is
  ~0 after a few iterations, 0.01-0.05 per image against 3-5 for objectness in the transfer benchmark's
  runs, so it could not change time to target there), ``label_smooth_eps``,
  ``objectness_smooth``, ``max_delta`` with mse, ``iou_thresh_kind`` other than IoU; ``new_coords`` with
  ``iou_loss=mse`` uses the decoded IoU form.

Truths per image for the IoU of ``ignore_thresh``/``truth_thresh`` are padded to a capacity T: ``max_truths``
if given; else, for targets that arrive on the CPU (the loader's), the most truths in one image rounded up to a
power of two (counted on the host: no device sync); else (targets already on the device) ``min(next power of
two >= rows, max)`` with ``max`` the cfg's ``[yolo] max`` (darknet's max boxes per image, 200 by default).
Truths past T in one image still get assigned but take no part in ignore/truth_thresh, as darknet never reads
truths past its max boxes.

`YoloLoss(specs, max_truths=None)(heads, targets, net_hw)` returns ``(total, parts)``: ``total`` is the *sum*
over the images of the batch (darknet's cost); the trainer divides by the iteration's batch size, which with
SGD(momentum, weight_decay=decay) reproduces darknet's update. ``parts`` are detached tensors: ``box``, ``obj``,
``cls`` and ``n_pos`` (assigned positives, one per truth and anchor, iou_thresh extras included, truth_thresh
ones not: darknet's printed ``count``).

Default: darknet's loss as the cfg says (yolov3-tiny: mse box term, ignore_thresh .7, truth_thresh 1, no
iou_thresh). Measured with benchmarks/bench_transfer.py (benchmarks/TRANSFER.md): ``iou_thresh=0.213`` in the
cfg's [yolo] sections reached mAP50 0.9 on the synthetic target set at iteration 217 on average against 250
(3 seeds; sooner on one, the same on two), a hint rather than proof, so the cfg decides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from darktune.darknet.cfg import YoloSpec
from darktune.train.box_delta import DarknetIouBox, decode_rows
from darktune.train.box_delta import iou_variant as bbox_iou_variant


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of centred boxes from widths/heights: (N, 2) x (K, 2) -> (N, K)."""
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / union.clamp(min=1e-12)


def _xy_term(logit: torch.Tensor, target: torch.Tensor, s: float) -> torch.Tensor:
    """Loss whose gradient w.r.t. the logit is darknet's x/y delta ``s*sigmoid(x) - 0.5*(s-1) - t``, minus its
    minimum so a perfect fit costs 0."""
    shift = target + 0.5 * (s - 1)

    def f(x: torch.Tensor) -> torch.Tensor:
        return s * F.softplus(x) - shift * x

    q = shift / s  # where the minimum is; outside (0, 1) (a truth_thresh target in another cell) there is none,
    # and the constant is taken at the clamped edge (1 - q clamped on its own: no float32 cancellation near 1)
    edge = torch.log(q.clamp(1e-6, 1 - 1e-6)) - torch.log((1 - q).clamp(1e-6, 1 - 1e-6))
    return f(logit) - f(edge)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class YoloLoss:
    """The loss of all `[yolo]` heads of a network; `specs` are the heads' YoloSpec in layer order.

    max_truths: per-image truth capacity for ignore_thresh/truth_thresh (see the module docstring)."""

    def __init__(self, specs: list[YoloSpec], max_truths: int | None = None):
        self.specs = list(specs)
        if max_truths is not None and max_truths < 1:
            raise ValueError(f"max_truths must be >= 1, got {max_truths}")
        self.max_truths = max_truths
        self._cache: dict = {}

    def _head_consts(self, k: int, spec: YoloSpec, device: torch.device,
                     net_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        key = (k, str(device), tuple(net_hw))
        if key not in self._cache:  # built on the host, copied once per (head, device, size)
            all_anchors = torch.tensor(spec.anchors, dtype=torch.float32).view(-1, 2)
            mask = torch.tensor(spec.mask)
            lookup = torch.full((spec.num,), -1, dtype=torch.long)
            lookup[mask] = torch.arange(len(spec.mask))
            anchors_n = all_anchors[mask] / torch.tensor([net_hw[1], net_hw[0]], dtype=torch.float32)
            self._cache[key] = tuple(x.to(device, non_blocking=True) for x in (all_anchors, lookup, anchors_n, mask))
        return self._cache[key]

    def capacity(self, targets: torch.Tensor, batch: int) -> int:
        """Truths per image kept for ignore/truth_thresh; computed without touching device memory."""
        if self.max_truths is not None:
            return self.max_truths
        if targets.device.type == "cpu":
            if targets.shape[0] == 0:
                return 1
            img = targets[:, 0].nan_to_num(-1).long().clamp(-1, batch) + 1  # out-of-range rows: their own bins
            return _next_pow2(max(1, int(torch.bincount(img, minlength=batch + 2)[1:batch + 1].max())))
        return min(_next_pow2(max(1, targets.shape[0])), max(spec.max for spec in self.specs))

    def __call__(self, heads: list[torch.Tensor], targets: torch.Tensor, net_hw: tuple[int, int]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """heads: raw (B, A*(5+C), H, W) per head; targets (N, 6) [image, class, cx, cy, w, h] normalised."""
        device = heads[0].device
        batch = heads[0].shape[0]
        cap = self.capacity(targets, batch)
        t = targets.to(device, non_blocking=True).to(torch.float32).reshape(-1, 6)
        valid = _valid_rows(t, batch, min(spec.classes for spec in self.specs))
        stand_in = t.new_full((6,), 0.5)  # finite values for masked rows: [0, 0, .5, .5, 1, 1], no host copy
        stand_in[:2] = 0.0
        stand_in[4:] = 1.0
        t = torch.where(valid[:, None], t, stand_in)
        truths = _padded_truths(t, valid, batch, cap)
        parts = {name: torch.zeros((), device=device) for name in ("box", "obj", "cls", "n_pos")}
        for k, (raw, spec) in enumerate(zip(heads, self.specs)):
            for name, value in zip(("box", "obj", "cls", "n_pos"),
                                   self._head_loss(k, raw, spec, t, valid, truths, net_hw)):
                parts[name] = parts[name] + value
        total = parts["box"] + parts["obj"] + parts["cls"]
        return total, {name: value.detach() for name, value in parts.items()}

    def _head_loss(self, k, raw, spec, t, valid, truths, net_hw):
        b, _, h, w = raw.shape
        na, nc = len(spec.mask), spec.classes
        p = raw.float().view(b, na, 5 + nc, h, w).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5+C)
        all_anchors, lookup, anchors_n, mask = self._head_consts(k, spec, raw.device, net_hw)
        img, gj, gi, slot, pos = _assign_slots(spec, t, valid, net_hw, (b, h, w), all_anchors, lookup, mask)
        n_slots = b * na * h * w
        ka = torch.arange(na, device=raw.device)
        onehot = (t[:, 1].long()[:, None] == torch.arange(nc, device=raw.device)).float()  # (N, C)

        with torch.no_grad():
            # per (truth, anchor) row: its slot (non-positives: the spare last one), the union of the classes of
            # the truths sharing that slot, and whether it is the slot's first row (which carries the class term)
            idx = torch.where(pos, slot, n_slots).flatten()
            union, first = _slot_union(idx, onehot[:, None, :].expand(-1, na, -1).reshape(-1, nc))
            assigned = torch.zeros(n_slots + 1, device=raw.device).index_fill_(0, idx, 1.0)[:n_slots] > 0
            pred = _decode_boxes(p[..., :4].detach(), anchors_n, spec.scale_x_y)  # (B, A, H, W, 4) cxcywh
            best_iou, best_t = _best_truth_iou(pred.view(b, -1, 4), truths[0], truths[2])
            # AlexeyAB: no objectness loss where the prediction overlaps a truth (any class) by more than
            # ignore_thresh AND already scores some class above 0.25 (logit above log(1/3))
            class_match = (p[..., 5:].detach().amax(-1) > _LOGIT_QUARTER).flatten()
            ignored = (best_iou.flatten() > spec.ignore_thresh) & class_match
            extra = None
            if spec.truth_thresh < 1:
                extra = best_iou.flatten() > spec.truth_thresh
                tb = torch.gather(truths[1], 1, best_t[..., None].expand(-1, -1, 5)).view(n_slots, 5)
                tcls = (tb[:, 0].long()[:, None] == torch.arange(nc, device=raw.device)).float()
                # an assigned slot that is also a truth_thresh positive: that truth's class joins the union
                tt_rows = torch.cat((extra, extra.new_zeros(1)))[idx]
                union = torch.where(tt_rows[:, None], torch.maximum(union, torch.cat((tcls, tcls[:1]))[idx]), union)
            positive = assigned if extra is None else assigned | extra
            weight = (positive | ~ignored).float().view(b, na, h, w)
            obj_target = positive.float().view(b, na, h, w)
        obj = (F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none") * weight).sum()

        # --- class and box terms: one row per (truth, anchor of this head); every truth's box term counts
        # (AlexeyAB adds the box deltas of the truths that share a slot), the class term once per slot
        pp = p[img[:, None], ka[None, :], gj[:, None], gi[:, None]]  # (N, A, 5+C)
        rows_cls = F.binary_cross_entropy_with_logits(pp[..., 5:], union.view(-1, na, nc), reduction="none").sum(-1)
        cls = torch.where(pos & first.view_as(pos), rows_cls, 0.0).sum()
        ts = t[:, None, :].expand(-1, na, -1)
        rows_box = _box_rows(spec, pp[..., :4], ts[..., 2:6], gi[:, None], gj[:, None], anchors_n[None], (h, w))
        if spec.iou_thresh < 1:  # AlexeyAB divides a positive's summed box deltas by its number of classes
            rows_box = rows_box / union.sum(-1).clamp(min=1).view_as(rows_box)
        box = torch.where(pos, rows_box, 0.0).sum()
        if extra is not None:  # truth_thresh: every prediction towards its best truth, kept where `extra`
            gy = torch.arange(h, device=raw.device).view(1, 1, h, 1).expand(b, na, h, w)
            gx = torch.arange(w, device=raw.device).view(1, 1, 1, w).expand(b, na, h, w)
            tbox = tb[:, 1:5].view(b, na, h, w, 4)
            dense_box = _box_rows(spec, p[..., :4], tbox, gx, gy, anchors_n.view(1, na, 1, 1, 2), (h, w))
            if spec.iou_thresh < 1:  # classes of the slot: its assigned truths' and this truth's
                n_cls = torch.zeros(n_slots + 1, device=raw.device).scatter_reduce_(
                    0, idx, union.sum(-1), "amax")[:n_slots]
                n_cls = torch.where(assigned, n_cls, 1.0)  # a truth_thresh-only slot: one class
                dense_box = dense_box / n_cls.view(b, na, h, w)
            box = box + torch.where(extra.view(b, na, h, w), dense_box, 0.0).sum()
            only_tt = (extra & ~assigned).view(b, na, h, w)  # their class term (assigned slots have theirs above)
            cls = cls + torch.where(only_tt, _class_rows(p[..., 5:], tb[:, 0].view(b, na, h, w)), 0.0).sum()
        n_pos = pos.sum().to(torch.float32)
        return box * spec.iou_normalizer, obj * spec.obj_normalizer, cls, n_pos  # cls_normalizer: see above


_LOGIT_QUARTER = math.log(1 / 3)  # sigmoid(x) > 0.25  <=>  x > log(1/3)


def _slot_union(idx: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (R,) with slot ids and (R, C) one-hot classes -> per row the union (max) of the classes of all rows
    of its slot, and whether it is its slot's first row. Fixed shapes, no host sync: rows are sorted by slot and
    each run of equal slots gets a segment id from a cumulative sum, so the table is (R, C), not (slots, C)."""
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    starts = torch.ones_like(sorted_idx, dtype=torch.bool)
    starts[1:] = sorted_idx[1:] != sorted_idx[:-1]
    seg = torch.empty_like(idx)
    seg[order] = torch.cumsum(starts.long(), 0) - 1
    first = torch.empty_like(starts)
    first[order] = starts
    table = torch.zeros(idx.shape[0], onehot.shape[1], device=onehot.device, dtype=onehot.dtype)
    table = table.scatter_reduce(0, seg[:, None].expand_as(onehot), onehot, "amax")
    return table[seg], first


def _valid_rows(t: torch.Tensor, batch: int, classes: int) -> torch.Tensor:
    """(N,) rows darknet would use: finite, w and h > 0, class in [0, classes), image in [0, batch)."""
    return (torch.isfinite(t).all(1) & (t[:, 4] > 0) & (t[:, 5] > 0) & (t[:, 1] >= 0) & (t[:, 1] < classes)
            & (t[:, 0] >= 0) & (t[:, 0] < batch))


def _class_rows(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """(..., C) logits and (...) class ids -> (...) BCE summed over classes towards the one-hot target."""
    onehot = (cls.long()[..., None] == torch.arange(logits.shape[-1], device=logits.device)).float()
    return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(-1)


def _box_rows(spec: YoloSpec, pxywh: torch.Tensor, txywh: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor,
              anchor_n: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Box term (before iou_normalizer) of raw predictions (..., 4) at cells (gi, gj) with anchors (..., 2)
    (fractions of the input) towards truths (..., 4) cxcywh; shapes broadcast; returns (...)."""
    h, w = hw
    s = spec.scale_x_y
    if spec.iou_loss == "mse" and not spec.new_coords:
        tx, ty = txywh[..., 0] * w - gi, txywh[..., 1] * h - gj
        tw, th = torch.log(txywh[..., 2] / anchor_n[..., 0]), torch.log(txywh[..., 3] / anchor_n[..., 1])
        scale = 2 - txywh[..., 2] * txywh[..., 3]
        xy = _xy_term(pxywh[..., 0], tx, s) + _xy_term(pxywh[..., 1], ty, s)
        wh = 0.5 * ((pxywh[..., 2] - tw) ** 2 + (pxywh[..., 3] - th) ** 2)
        return scale * (xy + wh)
    if spec.iou_loss == "mse":  # new_coords with mse: the decoded form (darknet's mse delta is not copied)
        pred = decode_rows(pxywh, gi, gj, anchor_n, hw, s, True)
        return 1 - bbox_iou_variant(pred, txywh, "iou")
    return DarknetIouBox.apply(pxywh, txywh, gi, gj, anchor_n, hw, s, spec.iou_loss, spec.new_coords,
                               spec.iou_normalizer, spec.max_delta)


def _assign_slots(spec: YoloSpec, t: torch.Tensor, valid: torch.Tensor, net_hw: tuple[int, int],
                  bhw: tuple[int, int, int], all_anchors: torch.Tensor, lookup: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
    """Fixed-shape assignment of one head: per truth row (N,) its image, cell y, cell x; per (row, anchor of
    the mask) (N, A) its flat slot ((img*A + a)*H + y)*W + x and whether it is a positive (truths sharing a slot
    are all positives there, as in AlexeyAB darknet)."""
    b, h, w = bhw
    na = len(spec.mask)
    wh_px = torch.stack((t[:, 4] * net_hw[1], t[:, 5] * net_hw[0]), 1)
    ious = wh_iou(wh_px, all_anchors)  # (N, num)
    best = ious.argmax(1)  # best over ALL anchors of the head's list; ties: the first
    ka = torch.arange(na, device=t.device)
    pos = lookup[best][:, None] == ka[None, :]
    if spec.iou_thresh < 1:
        pos = pos | (ious[:, mask] > spec.iou_thresh)
    pos = pos & valid[:, None]
    img = t[:, 0].long().clamp(0, b - 1)
    gi = (t[:, 2] * w).long().clamp(0, w - 1)
    gj = (t[:, 3] * h).long().clamp(0, h - 1)
    slot = ((img[:, None] * na + ka[None, :]) * h + gj[:, None]) * w + gi[:, None]  # (N, A)
    return img, gj, gi, slot, pos


def assign_targets(spec: YoloSpec, t: torch.Tensor, net_hw: tuple[int, int], grid_hw: tuple[int, int],
                   batch: int | None = None) -> tuple[torch.Tensor, ...]:
    """Darknet's assignment for one head, compacted (this one syncs; for inspection and tests): (image, anchor
    in mask, cell y, cell x, truth row) of every positive, ordered by truth row then anchor.
    t: (N, 6) [image, class, cx, cy, w, h] normalised."""
    device = t.device
    all_anchors = torch.tensor(spec.anchors, dtype=torch.float32, device=device).view(-1, 2)
    mask = torch.tensor(spec.mask, device=device)
    lookup = torch.full((spec.num,), -1, dtype=torch.long, device=device)
    lookup[mask] = torch.arange(len(spec.mask), device=device)
    t = t.float()
    b = int(t[:, 0].max().item()) + 1 if batch is None and t.numel() else (batch or 1)
    valid = _valid_rows(t, b, spec.classes)
    img, gj, gi, _, pos = _assign_slots(spec, t, valid, net_hw, (b, *grid_hw), all_anchors, lookup, mask)
    rows, a = pos.nonzero(as_tuple=True)
    return img[rows], a, gj[rows], gi[rows], rows


def _decode_boxes(p: torch.Tensor, anchors_n: torch.Tensor, s: float) -> torch.Tensor:
    """(B, A, H, W, 4) raw -> cxcywh fractions of the input (classic coords; used for ignore_thresh)."""
    _, na, h, w, _ = p.shape
    gy = torch.arange(h, device=p.device, dtype=p.dtype).view(1, 1, h, 1)
    gx = torch.arange(w, device=p.device, dtype=p.dtype).view(1, 1, 1, w)
    xy = torch.sigmoid(p[..., :2]) * s - 0.5 * (s - 1)
    cx = (xy[..., 0] + gx) / w
    cy = (xy[..., 1] + gy) / h
    wh = torch.exp(p[..., 2:4].clamp(max=10)) * anchors_n.view(1, na, 1, 1, 2)
    return torch.stack((cx, cy, wh[..., 0], wh[..., 1]), -1)


def _padded_truths(t: torch.Tensor, valid: torch.Tensor, batch: int, cap: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Valid truths grouped per image, in row order, at most `cap` per image: (B, T, 4) xyxy, (B, T, 5)
    [class, cx, cy, w, h] and a (B, T) validity mask. Fixed shapes: overflow and invalid rows are written to a
    spare image/column that is cut off."""
    n = t.shape[0]
    img = torch.where(valid, t[:, 0].long(), batch)  # invalid rows -> the spare image `batch`
    counts = torch.zeros(batch + 1, dtype=torch.long, device=t.device).scatter_add_(0, img, torch.ones_like(img))
    order = torch.argsort(img, stable=True)
    img_sorted = img[order]
    start = torch.cumsum(counts, 0) - counts
    rank = (torch.arange(n, device=t.device) - start[img_sorted]).clamp(max=cap)  # past capacity -> spare column
    rows = t[order, 1:6]
    table = torch.zeros(batch + 1, cap + 1, 5, device=t.device)
    table[..., 3:5] = 1.0  # padding: a finite stand-in (its log is used by masked-off truth_thresh terms)
    table[img_sorted, rank] = rows
    present = torch.zeros(batch + 1, cap + 1, dtype=torch.bool, device=t.device)
    present[img_sorted, rank] = True
    table, present = table[:batch, :cap], present[:batch, :cap]
    c = table[..., 1:5]
    xyxy = torch.cat((c[..., :2] - c[..., 2:] / 2, c[..., :2] + c[..., 2:] / 2), -1)
    return xyxy, table, present


def _best_truth_iou(pred_cxcywh: torch.Tensor, truth_xyxy: torch.Tensor, valid: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P, 4) predictions x (B, T, 4) truths -> (B, P) best IoU with any valid truth of the same image, and
    the index of that truth (0 when there is none)."""
    p1 = pred_cxcywh[..., :2] - pred_cxcywh[..., 2:] / 2
    p2 = pred_cxcywh[..., :2] + pred_cxcywh[..., 2:] / 2
    lt = torch.maximum(p1[:, :, None], truth_xyxy[:, None, :, :2])
    rb = torch.minimum(p2[:, :, None], truth_xyxy[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (B, P, T)
    area_p = pred_cxcywh[..., 2] * pred_cxcywh[..., 3]
    area_t = (truth_xyxy[..., 2:] - truth_xyxy[..., :2]).prod(-1)
    iou = inter / (area_p[:, :, None] + area_t[:, None, :] - inter).clamp(min=1e-12)
    return iou.masked_fill(~valid[:, None, :], 0.0).max(-1)
