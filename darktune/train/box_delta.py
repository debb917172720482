"""The box term of `iou_loss=iou|giou|diou|ciou` with AlexeyAB darknet's gradient (`yolo_layer.c`
`delta_yolo_box`, `box.c` `dx_box_iou`), as an autograd function.

Darknet does not differentiate its IoU loss through the decode. It takes the gradient of the IoU variant with
respect to the *decoded* box (x, y, w, h as fractions of the image) and writes it straight onto the raw
outputs: no sigmoid derivative, no ``scale_x_y`` and no ``1/grid`` for x/y, and for w/h only the factor
``exp(tw)`` (nothing at all with ``new_coords=1``); no anchor/network-size factor. The result, times
``iou_normalizer``, with NaN/inf set to 0 and clipped to ``+-max_delta`` when the cfg sets it, is the
*delta* (darknet's negative gradient). The gradient of IoU w.r.t. the box is darknet's own, not the exact one:

* IoU part, from the four edges l, r, t, b of the prediction (X its area, I = Iw*Ih the intersection, not
  clamped, U = X + X_truth - I; dI/de is nonzero only where that edge lies inside the truth):
  g_e = (U*dI_e - I*dU_e)/U^2 (0 when U <= 0); dx = g_l + g_r, dy = g_t + g_b, dw = g_r - g_l, dh = g_b - g_t
  (w and h not halved: twice the true derivative).
* giou: + (C*dU_e - U*dC_e)/C^2 per edge (C the enclosing box's area); only that term when the boxes do not
  overlap (Iw <= 0 or Ih <= 0).
* diou/ciou: + the exact gradient of -S/C2 (S the squared centre distance, C2 the enclosing box's squared
  diagonal); ciou adds ``alpha*8/pi^2*(atan(wg/hg) - atan(w/h))*h`` to w (``-...*w`` to h), alpha =
  v/(1 - I/U + v + 1e-6) (the 1/(w^2+h^2) of the true derivative dropped). Without overlap only these terms.

The forward value is ``1 - IoU-variant`` of the decoded box (what the trainer logs as the box loss); only the
backward is darknet's. Measured against the previous autograd form (NOTES hand cases, s=1.05,
iou_normalizer=0.07): the autograd gradient was 0.02x (13x13 head) / 0.01x (26x26) of darknet's on x/y and
0.03-0.1x on w/h.
"""

from __future__ import annotations

import math

import torch

_PI2 = math.pi ** 2


def decode_rows(raw: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor, anchor_n: torch.Tensor,
                hw: tuple[int, int], s: float, new_coords: bool) -> torch.Tensor:
    """Raw (..., 4) at cells (gi, gj) with anchors (..., 2) (fractions of the input) -> cxcywh (..., 4)."""
    h, w = hw
    if new_coords:
        xy = raw[..., :2] * s - 0.5 * (s - 1)
        wh = (raw[..., 2:4] * 2) ** 2 * anchor_n
    else:
        xy = torch.sigmoid(raw[..., :2]) * s - 0.5 * (s - 1)
        wh = torch.exp(raw[..., 2:4].clamp(max=10)) * anchor_n
    return torch.stack(((xy[..., 0] + gi) / w, (xy[..., 1] + gj) / h, wh[..., 0], wh[..., 1]), -1)


def iou_variant(a: torch.Tensor, b: torch.Tensor, kind: str = "iou", eps: float = 1e-9) -> torch.Tensor:
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
    v = (4 / _PI2) * (torch.atan(b[..., 2] / (b[..., 3] + eps)) - torch.atan(a[..., 2] / (a[..., 3] + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - rho2 / c2 - alpha * v


def dx_box_iou(pred: torch.Tensor, truth: torch.Tensor, kind: str) -> torch.Tensor:
    """Darknet's ascent direction of the IoU variant w.r.t. the decoded box: (..., 4) dx, dy, dw, dh."""
    x, y, w, h = pred.unbind(-1)
    tx, ty, tw, th = truth.unbind(-1)
    pl, pr, pt, pb = x - w / 2, x + w / 2, y - h / 2, y + h / 2
    gl, gr, gt, gb = tx - tw / 2, tx + tw / 2, ty - th / 2, ty + th / 2
    iw = torch.minimum(pr, gr) - torch.maximum(pl, gl)
    ih = torch.minimum(pb, gb) - torch.maximum(pt, gt)
    inter = iw * ih  # darknet does not clamp it
    union = w * h + tw * th - inter
    zero = torch.zeros_like(x)
    d_x = {"l": -h, "r": h, "t": -w, "b": w}  # d area / d edge
    d_i = {"l": torch.where(pl > gl, -ih, zero), "r": torch.where(pr < gr, ih, zero),
           "t": torch.where(pt > gt, -iw, zero), "b": torch.where(pb < gb, iw, zero)}
    d_u = {e: d_x[e] - d_i[e] for e in d_x}
    u_ok = union > 0
    u_safe = torch.where(u_ok, union, torch.ones_like(union))
    g = {e: torch.where(u_ok, (u_safe * d_i[e] - inter * d_u[e]) / u_safe ** 2, zero) for e in d_x}
    apart = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        cw = torch.maximum(pr, gr) - torch.minimum(pl, gl)
        ch = torch.maximum(pb, gb) - torch.minimum(pt, gt)
        c = cw * ch
        d_c = {"l": torch.where(pl < gl, -ch, zero), "r": torch.where(pr > gr, ch, zero),
               "t": torch.where(pt < gt, -cw, zero), "b": torch.where(pb > gb, cw, zero)}
        c_ok = c > 0
        c_safe = torch.where(c_ok, c, torch.ones_like(c))
        for e in g:
            term = (c_safe * d_u[e] - union * d_c[e]) / c_safe ** 2
            g[e] = torch.where(apart, term, torch.where(c_ok, g[e] + term, g[e]))
    dx, dy = g["l"] + g["r"], g["t"] + g["b"]
    dw, dh = g["r"] - g["l"], g["b"] - g["t"]
    if kind in ("diou", "ciou"):
        cw = torch.maximum(pr, gr) - torch.minimum(pl, gl)
        ch = torch.maximum(pb, gb) - torch.minimum(pt, gt)
        c2 = cw * cw + ch * ch
        s2 = (x - tx) ** 2 + (y - ty) ** 2
        one = torch.ones_like(x)
        dcw_dx = torch.where(pr > gr, one, zero) - torch.where(pl < gl, one, zero)
        dch_dy = torch.where(pb > gb, one, zero) - torch.where(pt < gt, one, zero)
        dcw_dw = 0.5 * (torch.where(pr > gr, one, zero) + torch.where(pl < gl, one, zero))
        dch_dh = 0.5 * (torch.where(pb > gb, one, zero) + torch.where(pt < gt, one, zero))
        c_ok = c2 > 0
        c_safe = torch.where(c_ok, c2, one)
        ex = (2 * (tx - x) * c_safe - 2 * cw * dcw_dx * s2) / c_safe ** 2
        ey = (2 * (ty - y) * c_safe - 2 * ch * dch_dy * s2) / c_safe ** 2
        ew = 2 * cw * dcw_dw * s2 / c_safe ** 2
        eh = 2 * ch * dch_dh * s2 / c_safe ** 2
        if kind == "ciou":
            da = torch.atan(tw / th) - torch.atan(w / h)
            v = 4 / _PI2 * da * da
            alpha = v / (1 - inter / union + v + 1e-6)
            ew = ew + alpha * 8 / _PI2 * da * h
            eh = eh - alpha * 8 / _PI2 * da * w
        dx = torch.where(apart, ex, torch.where(c_ok, dx + ex, dx))
        dy = torch.where(apart, ey, torch.where(c_ok, dy + ey, dy))
        dw = torch.where(apart, ew, torch.where(c_ok, dw + ew, dw))
        dh = torch.where(apart, eh, torch.where(c_ok, dh + eh, dh))
    return torch.stack((dx, dy, dw, dh), -1)


def darknet_delta(raw: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor, kind: str, new_coords: bool,
                  iou_normalizer: float = 1.0, max_delta: float = 0.0) -> torch.Tensor:
    """Darknet's delta on the raw (tx, ty, tw, th): (..., 4). max_delta <= 0: no clipping (darknet: FLT_MAX)."""
    d = dx_box_iou(pred, truth, kind)
    if not new_coords:
        d = torch.cat((d[..., :2], d[..., 2:] * torch.exp(raw[..., 2:4].clamp(max=10))), -1)
    d = torch.nan_to_num(d * iou_normalizer, nan=0.0, posinf=0.0, neginf=0.0)
    return d.clamp(-max_delta, max_delta) if max_delta > 0 else d


class DarknetIouBox(torch.autograd.Function):
    """Forward: ``1 - IoU-variant`` per row (...); backward: ``-grad * delta`` on the raw (..., 4), delta being
    darknet's (without iou_normalizer, which the caller applies to the summed value and so to the gradient; the
    ``max_delta`` clip is taken in units of the normalised delta, as darknet does)."""

    @staticmethod
    def forward(ctx, raw, truth, gi, gj, anchor_n, hw, s, kind, new_coords, iou_normalizer, max_delta):
        with torch.no_grad():
            pred = decode_rows(raw, gi, gj, anchor_n, hw, s, new_coords)
            value = 1 - iou_variant(pred, truth.expand_as(pred), kind)
        ctx.save_for_backward(raw, pred, truth)
        ctx.opts = (kind, new_coords, iou_normalizer, max_delta)
        return value

    @staticmethod
    def backward(ctx, grad):
        raw, pred, truth = ctx.saved_tensors
        kind, new_coords, k, max_delta = ctx.opts
        delta = darknet_delta(raw, pred, truth.expand_as(pred), kind, new_coords, k, max_delta)
        scale = 1.0 / k if k else 0.0  # the caller multiplies by iou_normalizer once more
        return (-grad[..., None] * delta * scale,) + (None,) * 10
