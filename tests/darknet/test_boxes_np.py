"""darknet/boxes_np.py (detect's NumPy decode and NMS) against the torch reference (decode + postprocess)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darktune.darknet import boxes_np
from darktune.darknet.boxes import ImageGeometry, decode, postprocess
from darktune.darknet.cfg import YoloSpec

V3 = [YoloSpec(mask=(3, 4, 5), anchors=(10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319), classes=4, num=6),
      YoloSpec(mask=(0, 1, 2), anchors=(10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319), classes=4, num=6)]
V4 = [dataclasses.replace(s, scale_x_y=1.05) for s in V3]  # yolov4-tiny's grid sensitivity
SCALED = [dataclasses.replace(s, scale_x_y=2.0, new_coords=True) for s in V3]  # logistic in the conv


def _heads(rng, specs, batch, net_hw, spread):
    """Raw heads like a trained network's: mostly negative objectness, a few cells confident."""
    heads = []
    for k, spec in enumerate(specs):
        h, w = net_hw[0] // (32 >> k), net_hw[1] // (32 >> k)
        raw = rng.normal(0, spread, (batch, len(spec.mask), 5 + spec.classes, h, w)).astype(np.float32)
        raw[:, :, 4] -= 3
        if spec.new_coords:
            raw = 1 / (1 + np.exp(-raw))
        heads.append(raw.reshape(batch, -1, h, w).astype(np.float32))
    return heads


def _reference(heads, specs, net_hw, geo, conf, nms):
    decoded = decode([torch.from_numpy(h) for h in heads], specs, net_hw)
    return [d.numpy() for d in postprocess(decoded, [geo] * len(heads[0]), net_hw, conf, nms)], decoded.numpy()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.sampled_from(["v3", "v4", "scaled"]),
       conf=st.sampled_from([0.05, 0.25, 0.5]), letterbox=st.booleans(), spread=st.sampled_from([1.0, 3.0]),
       size=st.sampled_from([(64, 64), (96, 160)]), image=st.sampled_from([(640, 480), (300, 900), (64, 64)]))
def test_numpy_detections_are_the_reference(seed, which, conf, letterbox, spread, size, image):
    specs = {"v3": V3, "v4": V4, "scaled": SCALED}[which]
    rng = np.random.default_rng(seed)
    heads = _heads(rng, specs, 2, size, spread)
    geo = ImageGeometry(*image, letterbox)
    expected, decoded = _reference(heads, specs, size, geo, conf, 0.45)
    for i in range(2):
        rows = boxes_np.decode_above(heads, specs, size, conf, index=i)
        ref_rows = decoded[i][decoded[i][:, 4] > conf]
        assert rows.dtype == np.float32 and rows.shape == ref_rows.shape
        np.testing.assert_allclose(rows, ref_rows, rtol=1e-6, atol=1e-7)  # the same rows, in the same order
        got = boxes_np.detections(rows, geo, size, conf, 0.45)
        assert got.shape == expected[i].shape and got.dtype == np.float32
        assert np.array_equal(got[:, 5], expected[i][:, 5])  # classes, in the same order
        np.testing.assert_allclose(got[:, 4], expected[i][:, 4], rtol=1e-6)
        np.testing.assert_allclose(got[:, :4], expected[i][:, :4], rtol=1e-5, atol=1e-3)


def test_nothing_above_the_threshold_gives_an_empty_array():
    heads = [np.full((1, 27, 2, 2), -20, np.float32), np.full((1, 27, 4, 4), -20, np.float32)]
    rows = boxes_np.decode_above(heads, V3, (64, 64), 0.25)
    assert rows.shape == (0, 9)
    assert boxes_np.detections(rows, ImageGeometry(10, 10), (64, 64)).shape == (0, 6)


def test_extreme_raw_values_decode_without_a_numpy_overflow_warning():
    """A trained head's objectness far below -88.7 (exp(-x) overflows float32) and a huge tw: no RuntimeWarning,
    the values torch's reference gives (objectness 0, an infinite box)."""
    import warnings

    heads = [np.full((1, 27, 2, 2), -200, np.float32), np.full((1, 27, 4, 4), -200, np.float32)]
    heads[0][0, 4, 0, 0] = 5.0  # one confident cell, whose tw is huge
    heads[0][0, 2, 0, 0] = 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = boxes_np.decode_above(heads, V3, (64, 64), 0.25)
    _, decoded = _reference(heads, V3, (64, 64), ImageGeometry(64, 64), 0.25, 0.45)
    ref = decoded[0][decoded[0][:, 4] > 0.25]
    assert rows.shape == ref.shape == (1, 9) and np.isinf(rows[0, 2]) and np.isinf(ref[0, 2])
    np.testing.assert_array_equal(rows[:, 5:], ref[:, 5:])  # class probabilities of -200: exactly 0


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert boxes_np.nms(boxes, np.array([0.8, 0.9, 0.7], np.float32), 0.45).tolist() == [1, 2]
    rows = np.array([[0.5, 0.5, 0.2, 0.4, 0.9, 0.9, 0.9],   # one box, both classes pass: two detections
                     [0.5, 0.5, 0.2, 0.4, 0.2, 1.0, 1.0]], np.float32)  # objectness below the threshold
    dets = boxes_np.detections(rows, ImageGeometry(200, 100), (64, 64), 0.25)
    assert dets[:, 5].tolist() == [0, 1]
    np.testing.assert_allclose(dets[0, :5], [80, 30, 120, 70, 0.81], rtol=1e-6)


@pytest.mark.parametrize("letterbox", [False, True])
def test_real_heads_give_the_reference_detections(coco_model, photo_path, letterbox):
    """The COCO network's heads on a photograph: the same detections as the torch reference."""
    import cv2

    from darktune.deploy.detect import preprocess_batch

    image = cv2.imread(str(photo_path))
    with torch.inference_mode():
        heads = [h.numpy() for h in coco_model(torch.from_numpy(preprocess_batch([image], (416, 416), letterbox)))]
    specs = [h.spec for h in coco_model.heads]
    geo = ImageGeometry(image.shape[1], image.shape[0], letterbox)
    expected, _ = _reference(heads, specs, (416, 416), geo, 0.1, 0.45)
    got = boxes_np.detections(boxes_np.decode_above(heads, specs, (416, 416), 0.1), geo, (416, 416), 0.1, 0.45)
    assert len(got) >= 2 and got.shape == expected[0].shape
    np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-3)
