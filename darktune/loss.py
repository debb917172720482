"""YOLOv3 loss with darknet's semantics (AlexeyAB `yolo_layer.c`), vectorised over the batch.

Targets are built with tensor ops only (no Python loop over truths). For each `[yolo]` head:

* Assignment: for every truth the best anchor over *all* ``num`` anchors of the head's anchor list (IoU of
  width/height only, both centred) decides; when that anchor is in the head's ``mask`` the truth is assigned
  to anchor ``mask.index(best)`` at cell ``(int(cy*H), int(cx*W))``. A truth whose best anchor is in no mask
  (e.g. anchor 0 with the official COCO cfg trained with mask 1,2,3) is no positive anywhere, as in darknet.
  Two truths on the same cell and anchor: the later one wins (darknet overwrites the deltas).
* Objectness: BCE towards 1 at assigned cells; BCE towards 0 elsewhere, except predictions whose decoded box
  has IoU > ``ignore_thresh`` with some truth of the image (no loss at all for those). × ``obj_normalizer``.
* Classes: BCE per class at assigned cells, one-hot target. × ``cls_normalizer``.
* Box, ``iou_loss=mse`` (default): darknet's deltas ``scale * (t - x) * iou_normalizer`` with
  ``scale = 2 - w*h``. Darknet applies the x/y delta to the logit without the sigmoid's derivative, so the
  loss whose gradient is exactly darknet's is a cross-entropy on the sigmoid for x/y (shifted so its minimum
  is 0) and ``0.5 * (t - x)^2`` on tw/th.
  ``iou_loss=iou|giou|diou|ciou``: ``iou_normalizer * (1 - IoU-variant)`` on the decoded box (no 2-wh scale).
* Not implemented (defaults keep them off): ``truth_thresh < 1``, ``iou_thresh < 1`` (extra anchors),
  ``focal_loss``, ``new_coords`` box terms use their decoded form.

`YoloLoss(...)(heads, targets, net_hw)` returns ``(total, parts)``: ``total`` is the *sum* over the images of
the batch (darknet's cost); the trainer divides by the iteration's batch size, which with SGD(momentum,
weight_decay=decay) reproduces darknet's update. ``parts`` are detached tensors (no host sync).

Default: darknet's loss unchanged (mse box term for cfgs that say nothing); no change was benchmarked faster.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from darktune.cfg import YoloSpec


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of centred boxes from widths/heights: (N, 2) x (K, 2) -> (N, K)."""
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / union.clamp(min=1e-12)


def bbox_iou_variant(a: torch.Tensor, b: torch.Tensor, kind: str = "iou", eps: float = 1e-9) -> torch.Tensor:
    """Elementwise IoU / GIoU / DIoU / CIoU of cxcywh boxes (..., 4)."""
    a1, a2 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b1, b2 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a2, b2) - torch.maximum(a1, b1)).clamp(min=0).prod(-1)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    c_wh = torch.maximum(a2, b2) - torch.minimum(a1, b1)  # smallest enclosing box
    if kind == "giou":
        c_area = c_wh.prod(-1) + eps
        return iou - (c_area - union) / c_area
    c2 = (c_wh ** 2).sum(-1) + eps
    rho2 = ((a[..., :2] - b[..., :2]) ** 2).sum(-1)
    if kind == "diou":
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(b[..., 2] / (b[..., 3] + eps))
                              - torch.atan(a[..., 2] / (a[..., 3] + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - rho2 / c2 - alpha * v


def _xy_term(logit: torch.Tensor, target: torch.Tensor, s: float) -> torch.Tensor:
    """Loss whose gradient w.r.t. the logit is darknet's x/y delta ``s*sigmoid(x) - 0.5*(s-1) - t``, minus its
    minimum so a perfect fit costs 0."""
    shift = target + 0.5 * (s - 1)

    def f(x: torch.Tensor) -> torch.Tensor:
        return s * F.softplus(x) - shift * x

    q = (shift / s).clamp(1e-6, 1 - 1e-6)
    return f(logit) - f(torch.log(q) - torch.log1p(-q))


class YoloLoss:
    """The loss of all `[yolo]` heads of a network; `specs` are the heads' YoloSpec in layer order."""

    def __init__(self, specs: list[YoloSpec]):
        self.specs = list(specs)
        self._cache: dict = {}

    def _head_consts(self, k: int, spec: YoloSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (k, str(device))
        if key not in self._cache:
            all_anchors = torch.tensor(spec.anchors, dtype=torch.float32, device=device).view(-1, 2)
            lookup = torch.full((spec.num,), -1, dtype=torch.long, device=device)
            lookup[torch.tensor(spec.mask, device=device)] = torch.arange(len(spec.mask), device=device)
            self._cache[key] = (all_anchors, lookup, all_anchors[torch.tensor(spec.mask, device=device)])
        return self._cache[key]

    def __call__(self, heads: list[torch.Tensor], targets: torch.Tensor, net_hw: tuple[int, int]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """heads: raw (B, A*(5+C), H, W) per head; targets (N, 6) [image, class, cx, cy, w, h] normalised."""
        device = heads[0].device
        batch = heads[0].shape[0]
        t = targets.to(device=device, dtype=torch.float32)
        t = t[(t[:, 4] > 0) & (t[:, 5] > 0)]
        truth_xyxy, truth_valid = _padded_truths(t, batch)
        parts = {name: torch.zeros((), device=device) for name in ("box", "obj", "cls")}
        n_pos = torch.zeros((), device=device)
        for k, (raw, spec) in enumerate(zip(heads, self.specs)):
            box, obj, cls, pos = self._head_loss(k, raw, spec, t, truth_xyxy, truth_valid, net_hw)
            parts["box"] = parts["box"] + box
            parts["obj"] = parts["obj"] + obj
            parts["cls"] = parts["cls"] + cls
            n_pos = n_pos + pos
        total = parts["box"] + parts["obj"] + parts["cls"]
        out = {name: value.detach() for name, value in parts.items()}
        out["n_pos"] = n_pos
        return total, out

    def _head_loss(self, k, raw, spec, t, truth_xyxy, truth_valid, net_hw):
        b, _, h, w = raw.shape
        na, nc = len(spec.mask), spec.classes
        p = raw.float().view(b, na, 5 + nc, h, w).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5+C)
        all_anchors, lookup, anchors = self._head_consts(k, spec, raw.device)
        anchors_n = anchors / torch.tensor([net_hw[1], net_hw[0]], device=raw.device)  # fraction of input
        s = spec.scale_x_y

        img, a, gj, gi, keep = assign_targets(spec, t, net_hw, (h, w), all_anchors, lookup)
        ts = t[keep]

        # --- objectness: ignore predictions that already overlap a truth well
        with torch.no_grad():
            pred = _decode_boxes(p[..., :4].detach(), anchors_n, s)  # (B, A, H, W, 4) cxcywh
            ignore = _best_truth_iou(pred.view(b, -1, 4), truth_xyxy, truth_valid) > spec.ignore_thresh
            weight = (~ignore).view(b, na, h, w).float()
            obj_target = torch.zeros_like(weight)
            weight[img, a, gj, gi] = 1.0
            obj_target[img, a, gj, gi] = 1.0
        obj = (F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none") * weight).sum()

        # --- class and box terms at the assigned cells
        pp = p[img, a, gj, gi]  # (P, 5+C)
        cls_target = F.one_hot(ts[:, 1].long(), nc).float()
        cls = F.binary_cross_entropy_with_logits(pp[:, 5:], cls_target, reduction="sum")
        box = self._box_term(spec, pp[:, :4], ts, gi, gj, anchors_n[a], (h, w))
        n_pos = torch.tensor(float(img.numel()), device=raw.device)
        return box * spec.iou_normalizer, obj * spec.obj_normalizer, cls * spec.cls_normalizer, n_pos

    @staticmethod
    def _box_term(spec, pxywh, ts, gi, gj, anchor_n, hw):
        h, w = hw
        s = spec.scale_x_y
        if spec.iou_loss == "mse" and not spec.new_coords:
            tx, ty = ts[:, 2] * w - gi, ts[:, 3] * h - gj
            tw, th = torch.log(ts[:, 4] / anchor_n[:, 0]), torch.log(ts[:, 5] / anchor_n[:, 1])
            scale = 2 - ts[:, 4] * ts[:, 5]
            xy = _xy_term(pxywh[:, 0], tx, s) + _xy_term(pxywh[:, 1], ty, s)
            wh = 0.5 * ((pxywh[:, 2] - tw) ** 2 + (pxywh[:, 3] - th) ** 2)
            return (scale * (xy + wh)).sum()
        if spec.new_coords:
            xy = pxywh[:, :2] * s - 0.5 * (s - 1)
            wh = (pxywh[:, 2:4] * 2) ** 2 * anchor_n
        else:
            xy = torch.sigmoid(pxywh[:, :2]) * s - 0.5 * (s - 1)
            wh = torch.exp(pxywh[:, 2:4].clamp(max=10)) * anchor_n
        grid = torch.stack((gi, gj), 1).to(xy.dtype)
        pred = torch.cat(((xy + grid) / torch.tensor([w, h], device=xy.device, dtype=xy.dtype), wh), 1)
        kind = "iou" if spec.iou_loss == "mse" else spec.iou_loss
        return (1 - bbox_iou_variant(pred, ts[:, 2:6], kind)).sum()


def assign_targets(spec: YoloSpec, t: torch.Tensor, net_hw: tuple[int, int], grid_hw: tuple[int, int],
                   all_anchors: torch.Tensor | None = None, lookup: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, ...]:
    """Darknet's assignment for one head: (image, anchor in mask, cell y, cell x, truth row) of every truth
    this head is responsible for. t: (N, 6) [image, class, cx, cy, w, h] normalised."""
    if all_anchors is None or lookup is None:
        all_anchors = torch.tensor(spec.anchors, dtype=torch.float32, device=t.device).view(-1, 2)
        lookup = torch.full((spec.num,), -1, dtype=torch.long, device=t.device)
        lookup[list(spec.mask)] = torch.arange(len(spec.mask), device=t.device)
    h, w = grid_hw
    wh_px = t[:, 4:6] * torch.tensor([net_hw[1], net_hw[0]], dtype=t.dtype, device=t.device)
    best = wh_iou(wh_px, all_anchors).argmax(1)  # best over ALL anchors of the head's list; ties: the first
    a = lookup[best]
    rows = torch.nonzero(a >= 0).squeeze(1)
    a = a[rows]
    img = t[rows, 0].long()
    gi = (t[rows, 2] * w).long().clamp(0, w - 1)
    gj = (t[rows, 3] * h).long().clamp(0, h - 1)
    keep = _last_per_key(((img * len(spec.mask) + a) * h + gj) * w + gi)  # later truth wins a shared slot
    return img[keep], a[keep], gj[keep], gi[keep], rows[keep]


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


def _padded_truths(t: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truths grouped per image: (B, T, 4) xyxy and a (B, T) validity mask, T = most truths in one image."""
    img = t[:, 0].long()
    counts = torch.bincount(img, minlength=batch)
    tmax = max(1, int(counts.max())) if t.numel() else 1
    order = torch.argsort(img, stable=True)
    img_sorted = img[order]
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(img), device=t.device) - start[img_sorted]
    boxes = torch.zeros(batch, tmax, 4, device=t.device)
    valid = torch.zeros(batch, tmax, dtype=torch.bool, device=t.device)
    c = t[order, 2:6]
    boxes[img_sorted, rank] = torch.cat((c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2), 1)
    valid[img_sorted, rank] = True
    return boxes, valid


def _best_truth_iou(pred_cxcywh: torch.Tensor, truth_xyxy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, P, 4) predictions x (B, T, 4) truths -> (B, P) best IoU with any valid truth of the same image."""
    p1 = pred_cxcywh[..., :2] - pred_cxcywh[..., 2:] / 2
    p2 = pred_cxcywh[..., :2] + pred_cxcywh[..., 2:] / 2
    lt = torch.maximum(p1[:, :, None], truth_xyxy[:, None, :, :2])
    rb = torch.minimum(p2[:, :, None], truth_xyxy[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (B, P, T)
    area_p = pred_cxcywh[..., 2] * pred_cxcywh[..., 3]
    area_t = (truth_xyxy[..., 2:] - truth_xyxy[..., :2]).prod(-1)
    iou = inter / (area_p[:, :, None] + area_t[:, None, :] - inter).clamp(min=1e-12)
    return iou.masked_fill(~valid[:, None, :], 0.0).amax(-1)


def _last_per_key(key: torch.Tensor) -> torch.Tensor:
    """Indices of the last occurrence of each distinct key (sorted by key)."""
    if key.numel() == 0:
        return key
    uniq, inverse = torch.unique(key, return_inverse=True)
    idx = torch.arange(key.numel(), device=key.device)
    return torch.zeros(len(uniq), dtype=torch.long, device=key.device).scatter_reduce(0, inverse, idx, "amax")
