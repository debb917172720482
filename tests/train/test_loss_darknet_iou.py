"""iou_loss=iou|giou|diou|ciou: the gradient on the raw outputs is AlexeyAB darknet's delta (yolo_layer.c
delta_yolo_box, box.c dx_box_iou), pinned with numbers computed by hand from darknet's formulas (the two CIoU
rows are /work/v4prep NOTES §2.1's table: s=1.05, iou_normalizer=0.07, network 416)."""

import math

import pytest
import torch

from darktune.darknet.specs import YoloSpec
from darktune.train.box_delta import darknet_delta, dx_box_iou
from darktune.train.loss import YoloLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _delta_through_the_loss(raw4, cell, grid, anchor_px, truth, kind="ciou", s=1.05, k=0.07, max_delta=0.0):
    """-d(total)/d raw at the assigned cell, one truth, one anchor, network 416."""
    spec = YoloSpec(mask=(0,), anchors=anchor_px, num=1, classes=1, scale_x_y=s, iou_loss=kind,
                    iou_normalizer=k, max_delta=max_delta)
    head = torch.zeros(1, 6, grid, grid, dtype=torch.float32)
    head[0, :4, cell[1], cell[0]] = torch.tensor(raw4)
    head.requires_grad_(True)
    targets = torch.tensor([[0.0, 0.0, *truth]])
    total, _ = YoloLoss([spec])([head], targets, (416, 416))
    total.backward()
    return (-head.grad[0, :4, cell[1], cell[0]]).tolist()


@pytest.mark.parametrize("raw4, cell, grid, anchor, truth, expected", [
    ((0.2, -0.3, 0.1, -0.2), (6, 6), 13, (81, 82), (6.7 / 13, 6.4 / 13, 100 / 416, 60 / 416),
     (0.018971, -0.002805, 0.525767, -0.519867)),
    ((-0.5, 0.4, 0.3, 0.0), (10, 12), 26, (23, 27), (10.3 / 26, 12.8 / 26, 20 / 416, 35 / 416),
     (-0.030403, 0.083600, -1.144669, 0.818330)),
])
def test_ciou_delta_is_darknets_on_the_notes_hand_cases(raw4, cell, grid, anchor, truth, expected):
    got = _delta_through_the_loss(raw4, cell, grid, anchor, truth)
    assert got == pytest.approx(expected, abs=2e-6)


def test_iou_delta_by_hand():
    """pred (0.5, 0.5, 0.2, 0.2), truth (0.55, 0.5, 0.2, 0.2): Iw 0.15, Ih 0.2, I 0.03, U 0.05; only the right edge
    is inside the truth: g_l = 0.03*0.2/0.05^2 = 2.4, g_r = 0.05*0.2/0.05^2 = 4, g_t = 2.4, g_b = -2.4 ->
    dx = 6.4, dy = 0, dw = 4 - 2.4 = 1.6, dh = -2.4 - 2.4 = -4.8 (w, h not halved); tw = th = 0: exp = 1.
    (A 1x1 head: sigmoid(0) = 0.5 is the pred's centre, anchor 0.2*416 its size.)"""
    anchor = 0.2 * 416
    got = _delta_through_the_loss((0.0, 0.0, 0.0, 0.0), (0, 0), 1, (anchor, anchor),
                                  (0.55, 0.5, 0.2, 0.2), kind="iou", s=1.0, k=1.0)
    assert got == pytest.approx([6.4, 0.0, 1.6, -4.8], abs=1e-4)
    # the same with tw = log 2 (twice the anchor: pred w 0.4): only w's delta gets the factor exp(tw)
    d = darknet_delta(torch.tensor([0.0, 0.0, math.log(2), 0.0]), torch.tensor([0.5, 0.5, 0.2, 0.2]),
                      torch.tensor([0.55, 0.5, 0.2, 0.2]), "iou", new_coords=False)
    assert d.tolist() == pytest.approx([6.4, 0.0, 3.2, -4.8], abs=1e-4)
    # new_coords=1: no chain factor at all on w, h
    d = darknet_delta(torch.tensor([0.0, 0.0, 3.0, 0.0]), torch.tensor([0.5, 0.5, 0.2, 0.2]),
                      torch.tensor([0.55, 0.5, 0.2, 0.2]), "iou", new_coords=True)
    assert d.tolist() == pytest.approx([6.4, 0.0, 1.6, -4.8], abs=1e-4)


def test_giou_and_diou_deltas_by_hand():
    """Same boxes. GIoU: enclosing box C = 0.25*0.2 = 0.05 (right edge of the truth sticks out: dC_r = 0),
    dC_l = -0.2 (pred's left edge is the enclosing one), t/b: no (equal edges): term_e = (C*dU_e - U*dC_e)/C^2 =
    (dU_e - dC_e)/0.05: l (-0.2 + 0.2)/0.05 = 0, r 0, t -4, b 4 -> dx 6.4, dy 0, dw 1.6, dh -4.8 + 8 = 3.2.
    DIoU: S = 0.05^2 = 0.0025, Cw 0.25, Ch 0.2, C2 = 0.1025; dCw/dx = 0 - 1 = -1 (only the left edge is outside):
    ex = (2*0.05*0.1025 - 2*0.25*(-1)*0.0025)/0.1025^2 = 1.0945866; dCw/dw = 0.5: ew = 2*0.25*0.5*0.0025/0.1025^2
    = 0.0594884."""
    p, t = torch.tensor([0.5, 0.5, 0.2, 0.2], dtype=torch.float64), torch.tensor([0.55, 0.5, 0.2, 0.2],
                                                                                  dtype=torch.float64)
    assert dx_box_iou(p, t, "giou").tolist() == pytest.approx([6.4, 0.0, 1.6, 3.2], abs=1e-9)
    assert dx_box_iou(p, t, "diou").tolist() == pytest.approx([6.4 + 1.0945866, 0.0, 1.6 + 0.0594884, -4.8],
                                                               abs=1e-6)


def test_no_overlap_keeps_only_the_distance_term():
    """pred (0.2, 0.5, 0.1, 0.1), truth (0.8, 0.5, 0.1, 0.1): S = 0.36, Cw = 0.7, Ch = 0.1, C2 = 0.5;
    dCw/dx = 0 - 1 = -1: dx = (2*0.6*0.5 - 2*0.7*(-1)*0.36)/0.25 = (0.6 + 0.504)/0.25 = 4.416; dy = 0;
    dCw/dw = 0.5: dw = 2*0.7*0.5*0.36/0.25 = 1.008; dh = 0 (Ch not changed by h: both edges equal); same aspect."""
    p, t = torch.tensor([0.2, 0.5, 0.1, 0.1], dtype=torch.float64), torch.tensor([0.8, 0.5, 0.1, 0.1],
                                                                                  dtype=torch.float64)
    assert dx_box_iou(p, t, "ciou").tolist() == pytest.approx([4.416, 0.0, 1.008, 0.0], abs=1e-9)


def test_max_delta_clips_the_normalised_delta():
    got = _delta_through_the_loss((0.0, 0.0, 0.0, 0.0), (0, 0), 1, (83.2, 83.2), (0.55, 0.5, 0.2, 0.2),
                                  kind="iou", s=1.0, k=1.0, max_delta=2.0)
    assert got == pytest.approx([2.0, 0.0, 1.6, -2.0], abs=1e-4)


def test_value_is_one_minus_the_variant_times_the_normaliser():
    spec = YoloSpec(mask=(0,), anchors=(83.2, 83.2), num=1, classes=1, iou_loss="iou", iou_normalizer=0.5)
    head = torch.zeros(1, 6, 1, 1)  # one cell: pred (0.5, 0.5, 0.2, 0.2)
    _, parts = YoloLoss([spec])([head], torch.tensor([[0.0, 0.0, 0.55, 0.5, 0.2, 0.2]]), (416, 416))
    assert parts["box"].item() == pytest.approx(0.5 * (1 - 0.03 / 0.05), abs=1e-5)
