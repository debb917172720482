"""Darknet module: shapes, numbering, and parity with OpenCV DNN on the official weights."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cfgs import yolov3_cfg, yolov4_tiny_cfg
from darktune.darknet.boxes import decode
from darktune.darknet.cfg import parse_cfg_text
from darktune.deploy.detect import preprocess, read_image
from darktune.darknet.model import Darknet, count_parameters
from parity import decoded_budget, pair_excess, reference


@pytest.mark.parametrize("text_fn,size,out_hw", [
    (lambda: None, 416, [(13, 13), (26, 26)]),
    (yolov4_tiny_cfg, 320, [(10, 10), (20, 20)]),
    (yolov3_cfg, 128, [(4, 4), (8, 8), (16, 16)]),
])
def test_head_shapes_and_finite(coco_spec, text_fn, size, out_hw):
    text = text_fn()
    spec = (coco_spec if text is None else parse_cfg_text(text)).with_classes(3).with_size(size)
    torch.manual_seed(0)
    model = Darknet(spec).eval()
    with torch.no_grad():
        heads = model(torch.rand(2, 3, size, size))
    assert [tuple(h.shape[-2:]) for h in heads] == out_hw
    assert all(h.shape[:2] == (2, 3 * 8) for h in heads)
    assert all(torch.isfinite(h).all() for h in heads)


def test_parameter_count(coco_model):
    assert count_parameters(coco_model) == 8_852_366


def test_any_size_multiple_of_32(coco_model):
    with torch.no_grad():
        heads = coco_model(torch.rand(1, 3, 320, 256))
    assert [tuple(h.shape[-2:]) for h in heads] == [(10, 8), (20, 16)]


def _opencv(coco, blob: np.ndarray, layers: list[str]) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromDarknet(str(coco.cfg), str(coco.weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableWinograd(False)  # direct convs: the budget of tests/parity.py "opencv"
    net.setInput(blob)
    return net.forward(layers)


def test_yolo_outputs_equal_opencv_dnn(coco, coco_model, photo_path):
    image = read_image(photo_path)
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False)
    assert np.abs(blob[0] - preprocess(image, (416, 416))).max() < 1e-6
    with torch.no_grad():
        heads = coco_model(torch.from_numpy(blob))
    ours = decode(heads, [h.spec for h in coco_model.heads], (416, 416))[0].numpy()
    theirs = np.concatenate(_opencv(coco, blob, ["yolo_16", "yolo_23"]), 0)
    assert theirs.shape == ours.shape == (13 * 13 * 3 + 26 * 26 * 3, 85)
    # budgets from the arithmetic (tests/parity.py): torch's training model and OpenCV DNN against float64
    specs = [h.spec for h in coco_model.heads]
    refs = [reference(coco_model, blob, name) for name in ("torch-unfused", "opencv")]
    budget = decoded_budget(refs[0], specs, (416, 416), refs[1])[0]
    assert (np.abs(theirs[:, :5] - ours[:, :5]) <= budget[:, :5]).all()
    # OpenCV reports objectness*class probability and zeroes values <= its 0.2 threshold
    prob = ours[:, 4:5] * ours[:, 5:]
    prob_budget = budget[:, 4:5] + budget[:, 5:]  # |d(o c)| <= |do| + |dc| for o, c in [0, 1] (to first order)
    shown = theirs[:, 5:] > 0
    assert shown.any()
    assert (np.abs(theirs[:, 5:][shown] - prob[shown]) <= prob_budget[shown]).all()
    assert (prob[~shown] <= 0.2 + prob_budget[~shown]).all()
    raw = _opencv(coco, blob, ["conv_15", "conv_22"])
    assert pair_excess(raw, [h.numpy() for h in heads], *refs) <= 1


def test_frozen_spec_is_kept(coco_model):
    assert coco_model.layers[11].size == 2 and coco_model.layers[11].stride == 1
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = coco_model.layers[11](x)
    assert y.shape[-2:] == (4, 4) and y[0, 0, -1, -1] == 15 and y[0, 0, 0, 0] == 5
