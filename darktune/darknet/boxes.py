"""Boxes: format conversion, IoU, decoding of [yolo] heads (darknet semantics) and class-wise NMS.

Decoded rows are ordered (y, x, anchor) per head and heads are concatenated in layer order, as OpenCV DNN
lays out its yolo outputs, so results can be compared row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from darktune.darknet.cfg import YoloSpec


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (N, M) of xyxy boxes; empty boxes give 0, never NaN."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def decode_head(raw: torch.Tensor, spec: YoloSpec, net_hw: tuple[int, int]) -> torch.Tensor:
    """(B, A*(5+C), H, W) raw conv output -> (B, H*W*A, 5+C): cx, cy, w, h (fractions of the network input),
    objectness, class probabilities (not multiplied by objectness)."""
    b, _, h, w = raw.shape
    a = len(spec.mask)
    p = raw.view(b, a, 5 + spec.classes, h, w).permute(0, 3, 4, 1, 2).float()  # (B, H, W, A, 5+C)
    anchors = torch.tensor(spec.masked_anchors, dtype=p.dtype, device=p.device)  # (A, 2) pixels
    gy, gx = torch.meshgrid(torch.arange(h, device=p.device, dtype=p.dtype),
                            torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij")
    s = spec.scale_x_y
    if spec.new_coords:  # the conv already applied logistic
        xy = p[..., 0:2] * s - 0.5 * (s - 1)
        wh = (p[..., 2:4] * 2) ** 2 * anchors
        rest = p[..., 4:]
    else:
        xy = torch.sigmoid(p[..., 0:2]) * s - 0.5 * (s - 1)
        wh = torch.exp(p[..., 2:4]) * anchors
        rest = torch.sigmoid(p[..., 4:])
    cx = (xy[..., 0] + gx[..., None]) / w
    cy = (xy[..., 1] + gy[..., None]) / h
    bw = wh[..., 0] / net_hw[1]
    bh = wh[..., 1] / net_hw[0]
    out = torch.cat((torch.stack((cx, cy, bw, bh), -1), rest), -1)
    return out.reshape(b, h * w * a, 5 + spec.classes)


def decode(heads: list[torch.Tensor], specs: list[YoloSpec], net_hw: tuple[int, int]) -> torch.Tensor:
    """All heads decoded and concatenated: (B, N, 5+C)."""
    return torch.cat([decode_head(r, s, net_hw) for r, s in zip(heads, specs)], 1)


@dataclass(frozen=True)
class ImageGeometry:
    """How an original image (width, height) was mapped onto the network input."""

    width: int
    height: int
    letterbox: bool = False

    def to_image(self, boxes: torch.Tensor, net_hw: tuple[int, int]) -> torch.Tensor:
        """Normalised network-input cxcywh -> xyxy pixels of the original image."""
        b = boxes.clone()
        if self.letterbox:
            nh, nw = net_hw
            scale = min(nw / self.width, nh / self.height)
            new_w, new_h = self.width * scale / nw, self.height * scale / nh
            b[..., 0] = (b[..., 0] - (1 - new_w) / 2) / new_w
            b[..., 1] = (b[..., 1] - (1 - new_h) / 2) / new_h
            b[..., 2] /= new_w
            b[..., 3] /= new_h
        xyxy = cxcywh_to_xyxy(b)
        return xyxy * torch.tensor([self.width, self.height, self.width, self.height],
                                   dtype=xyxy.dtype, device=xyxy.device)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS (darknet's do_nms_sort for one class): indices kept, by descending score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order])
    over = (iou > iou_thresh).cpu()
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Class-wise NMS in one pass: boxes of different classes are moved apart so they never overlap."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_thresh)


def postprocess(decoded: torch.Tensor, geometries: list[ImageGeometry], net_hw: tuple[int, int],
                conf_thresh: float = 0.25, nms_thresh: float = 0.45, max_det: int = 1000) -> list[torch.Tensor]:
    """Darknet-style detections per image: (n, 6) [x1, y1, x2, y2, score, class] in original-image pixels.

    As darknet: a box is a candidate when objectness > thresh; each class whose objectness*probability
    exceeds the threshold gives a detection; NMS is per class.
    """
    results = []
    for d, geo in zip(decoded, geometries):
        obj = d[:, 4]
        d = d[obj > conf_thresh]
        scores = d[:, 4:5] * d[:, 5:]  # (n, C)
        box_idx, cls = torch.nonzero(scores > conf_thresh, as_tuple=True)
        sc = scores[box_idx, cls]
        if sc.numel() > max_det * 4:  # keep NMS bounded on pathological inputs
            top = torch.topk(sc, max_det * 4).indices
            box_idx, cls, sc = box_idx[top], cls[top], sc[top]
        xyxy = geo.to_image(d[box_idx, :4], net_hw)
        keep = batched_nms(xyxy, sc, cls, nms_thresh)[:max_det]
        results.append(torch.cat((xyxy[keep], sc[keep, None], cls[keep, None].to(xyxy.dtype)), 1))
    return results
