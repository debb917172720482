"""Box math: IoU properties, conversions, decode semantics, NMS."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darktune.darknet.boxes import (ImageGeometry, batched_nms, box_iou, cxcywh_to_xyxy, decode_head, nms, postprocess,
                            xyxy_to_cxcywh)
from darktune.darknet.cfg import YoloSpec

coord = st.floats(0, 1, allow_nan=False)
box = st.tuples(coord, coord, coord, coord).map(lambda t: (min(t[0], t[2]), min(t[1], t[3]),
                                                            max(t[0], t[2]), max(t[1], t[3])))


@settings(max_examples=200, deadline=None)
@given(st.lists(box, min_size=1, max_size=6), st.lists(box, min_size=1, max_size=6))
def test_iou_symmetric_and_bounded(a, b):
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    iou = box_iou(ta, tb)
    assert torch.allclose(iou, box_iou(tb, ta).T)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all() and not torch.isnan(iou).any()


@settings(max_examples=100, deadline=None)
@given(st.lists(box, min_size=1, max_size=6))
def test_conversion_round_trip(a):
    t = torch.tensor(a, dtype=torch.float64)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(t)), t)


def test_decode_cell_and_anchor():
    spec = YoloSpec(mask=(0,), anchors=(32.0, 64.0), classes=2, num=1)
    raw = torch.zeros(1, 7, 2, 3)
    raw[0, 0, 1, 2] = 0.0  # tx -> sigmoid 0.5
    raw[0, 2, 1, 2] = math.log(2.0)  # tw -> 2 * anchor
    out = decode_head(raw, spec, (64, 96))  # rows ordered (y, x, anchor)
    row = out[0, 1 * 3 + 2]
    assert torch.allclose(row[:4], torch.tensor([(2 + 0.5) / 3, (1 + 0.5) / 2, 64 / 96, 64 / 64]))
    assert torch.allclose(row[4:], torch.full((3,), 0.5))


def test_nms_and_classwise():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]
    assert sorted(batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.45).tolist()) == [0, 1, 2]


def test_postprocess_threshold_and_pixels():
    decoded = torch.zeros(1, 3, 7)
    decoded[0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.4, 0.9, 0.9, 0.1])
    decoded[0, 1] = torch.tensor([0.5, 0.5, 0.2, 0.4, 0.2, 1.0, 1.0])  # objectness below threshold
    dets = postprocess(decoded, [ImageGeometry(200, 100)], (64, 64), conf_thresh=0.25)[0]
    assert dets.shape == (1, 6)
    assert torch.allclose(dets[0, :4], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    assert dets[0, 5] == 0 and abs(float(dets[0, 4]) - 0.81) < 1e-6


def test_letterbox_geometry_inverts():
    geo = ImageGeometry(200, 100, letterbox=True)
    # a box covering the whole letterboxed content area maps back to the whole image
    out = geo.to_image(torch.tensor([[0.5, 0.5, 1.0, 0.5]]), (64, 64))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 200.0, 100.0]]), atol=1e-4)
