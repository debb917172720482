"""Tests of darktune/data/augment.py: darknet augmentation semantics and the box transforms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktune.data.augment import (
    MIN_BOX_NORM,
    MIN_BOX_PX,
    AugmentConfig,
    augment_mosaic,
    augment_sample,
    distort_colour,
    flip_boxes,
    rand_scale,
    darknet_size,
    random_network_size,
    resize_sample,
)
from darktune.errors import DarktuneError

coord = st.floats(0.0, 1.0, allow_nan=False, width=32)


@st.composite
def boxes_strategy(draw, max_n: int = 6) -> np.ndarray:
    n = draw(st.integers(0, max_n))
    rows = []
    for _ in range(n):
        x0, x1 = sorted((draw(coord), draw(coord)))
        y0, y1 = sorted((draw(coord), draw(coord)))
        rows.append([draw(st.integers(0, 3)), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    return np.array(rows, np.float32).reshape(-1, 5)


configs = st.builds(
    AugmentConfig,
    jitter=st.floats(0.0, 0.45),
    hue=st.floats(0.0, 0.5),
    saturation=st.floats(1.0, 3.0),
    exposure=st.floats(1.0, 3.0),
    flip=st.booleans(),
    mosaic=st.booleans(),
    letterbox=st.booleans(),
)


def _valid(boxes: np.ndarray, out_w: int, out_h: int) -> None:
    assert boxes.dtype == np.float32 and boxes.shape[1] == 5
    _, cx, cy, w, h = boxes.T.astype(np.float64)
    eps = 1e-6
    assert np.all(cx - w / 2 >= -eps) and np.all(cx + w / 2 <= 1 + eps)
    assert np.all(cy - h / 2 >= -eps) and np.all(cy + h / 2 <= 1 + eps)
    assert np.all(w * out_w >= MIN_BOX_PX - 1e-3) and np.all(h * out_h >= MIN_BOX_PX - 1e-3)
    assert np.all(w >= MIN_BOX_NORM - eps) and np.all(h >= MIN_BOX_NORM - eps)


@given(boxes_strategy())
def test_flip_twice_is_identity(boxes):
    np.testing.assert_allclose(flip_boxes(flip_boxes(boxes)), boxes, atol=1e-7)
    if len(boxes):
        assert not np.allclose(flip_boxes(boxes)[:, 1], boxes[:, 1]) or np.allclose(boxes[:, 1], 0.5)


@settings(max_examples=60, deadline=None)
@given(boxes=boxes_strategy(), cfg=configs, seed=st.integers(0, 2**31), w=st.integers(8, 90),
       h=st.integers(8, 90), size=st.sampled_from([32, 64, (64, 48)]))
def test_boxes_stay_inside_and_degenerate_dropped(boxes, cfg, seed, w, h, size):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if cfg.mosaic:
        out, out_boxes = augment_mosaic([(img, boxes)] * 4, size, cfg, rng)
    else:
        out, out_boxes = augment_sample(img, boxes, size, cfg, rng)
    ow, oh = (size, size) if isinstance(size, int) else size
    assert out.shape == (oh, ow, 3) and out.dtype == np.uint8
    _valid(out_boxes, ow, oh)
    assert len(out_boxes) <= len(boxes) * (4 if cfg.mosaic else 1)
    assert set(out_boxes[:, 0].tolist()) <= set(boxes[:, 0].tolist())


def test_degenerate_boxes_are_dropped():
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0.5, 0.5, 0.2, 0.2], [1, 0.5, 0.5, 0.002, 0.3], [2, 0.999, 0.5, 0.1, 0.1]], np.float32)
    _, out = resize_sample(img, boxes, 50)
    assert out[:, 0].tolist() == [0, 2]  # the 0.1 px wide box is gone; the half-outside one is clipped
    np.testing.assert_allclose(out[1, 1:], [0.9745, 0.5, 0.051, 0.1], atol=1e-4)


def _white_box_image(rng, w, h):
    x0, x1 = sorted(rng.integers(2, w - 2, 2) + [0, 8])
    y0, y1 = sorted(rng.integers(2, h - 2, 2) + [0, 8])
    x1, y1 = min(x1, w), min(y1, h)
    img = np.zeros((h, w, 3), np.uint8)
    img[y0:y1, x0:x1] = 255
    box = np.array([[0, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]], np.float32)
    return img, box


def _bright_extent(img: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel extent of the bright area vs the box, in output pixels."""
    h, w = img.shape[:2]
    ys, xs = np.nonzero(img[..., 0] > 160)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    _, cx, cy, bw, bh = box[0]
    expect = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
    return found, expect


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_box_follows_the_pixels(seed, letterbox):
    """Geometry only (no colour change): the box of a white rectangle stays on the white pixels."""
    rng = np.random.default_rng(seed)
    img, box = _white_box_image(rng, int(rng.integers(40, 120)), int(rng.integers(40, 120)))
    cfg = AugmentConfig(jitter=0.3, flip=True, letterbox=letterbox)
    out, out_box = augment_sample(img, box, 96, cfg, rng)
    if len(out_box) == 0:
        assert (out[..., 0] > 160).sum() <= 4  # dropped only when (nearly) nothing is left
        return
    found, expect = _bright_extent(out, out_box)
    np.testing.assert_allclose(found, expect, atol=1.6)


def test_mosaic_boxes_follow_the_pixels():
    rng = np.random.default_rng(3)
    samples = [_white_box_image(rng, 80, 60) for _ in range(4)]
    out, boxes = augment_mosaic(samples, 128, AugmentConfig(jitter=0.1, flip=True), rng)
    assert 1 <= len(boxes) <= 4
    for b in boxes:  # every box covers mostly white pixels
        _, cx, cy, w, h = b * [1, 128, 128, 128, 128]
        patch = out[int(cy - h / 2 + 1):int(cy + h / 2 - 1), int(cx - w / 2 + 1):int(cx + w / 2 - 1), 0]
        assert patch.size == 0 or patch.mean() > 200


def test_resize_without_augmentation_keeps_boxes():
    rng = np.random.default_rng(0)
    img, box = _white_box_image(rng, 100, 50)
    out, out_box = resize_sample(img, box, 64)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out_box, box, atol=1e-6)
    out, out_box = resize_sample(img, box, 64, letterbox=True)  # 100x50 -> 64x32 centred vertically
    np.testing.assert_allclose(out_box[0, [1, 3]], box[0, [1, 3]], atol=1e-6)
    np.testing.assert_allclose(out_box[0, 2], 0.25 + box[0, 2] / 2, atol=1e-6)
    assert (out[:16] == 127).all() and (out[-16:] == 127).all()


def test_colour_distortion():
    rng = np.random.default_rng(0)
    img = rng.integers(30, 200, (16, 16, 3), dtype=np.uint8)
    assert distort_colour(img, rng, AugmentConfig()) is img  # identity settings: untouched
    brighter = [distort_colour(img, np.random.default_rng(s), AugmentConfig(exposure=2.0)) for s in range(6)]
    means = sorted(b.astype(float).mean() for b in brighter)
    assert means[0] < img.mean() - 5 and means[-1] > img.mean() + 5  # both directions of rand_scale
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    shifted = distort_colour(red, np.random.default_rng(1), AugmentConfig(hue=0.5))
    assert not np.array_equal(shifted, red)


def test_rand_scale_range():
    rng = np.random.default_rng(0)
    vals = np.array([rand_scale(rng, 1.5) for _ in range(2000)])
    assert vals.min() >= 1 / 1.5 - 1e-12 and vals.max() <= 1.5 + 1e-12
    assert 0.4 < (vals > 1).mean() < 0.6
    assert rand_scale(rng, 1.0) == 1.0


def test_random_network_size_is_darknets():
    """roundl(r*base/32 + 1)*32 (detector.c), by hand: 416: r=1.4 -> 608, 1/1.4 -> 320, 1 -> 448 (the +1 biases
    up); 160: r=1/1.2 or 1/1.4 -> 160 (never above base when r < 1)."""
    assert darknet_size(1.4, 416) == 608 and darknet_size(1 / 1.4, 416) == 320 and darknet_size(1.0, 416) == 448
    assert darknet_size(1 / 1.2, 160) == 160 and darknet_size(1 / 1.4, 160) == 160
    rng = np.random.default_rng(0)
    sizes = {random_network_size(rng, 416) for _ in range(1000)}
    assert sizes == set(range(320, 609, 32))
    assert {random_network_size(rng, 160) for _ in range(400)} == {160, 192, 224, 256}


def test_from_net_params():
    cfg = AugmentConfig.from_net_params({"hue": ".1", "saturation": "1.5", "exposure": "1.5", "width": "416",
                                         "mosaic": "1"}, jitter=0.3)
    assert cfg == AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True, mosaic=True)
    assert not AugmentConfig.from_net_params({"flip": "0"}).flip
    assert AugmentConfig.from_net_params({"letter_box": "1"}).letterbox
    with pytest.raises(DarktuneError, match="hue"):
        AugmentConfig.from_net_params({"hue": "abc"})
    with pytest.raises(DarktuneError, match="saturation"):
        AugmentConfig.from_net_params({"saturation": "0.5"})
    with pytest.raises(DarktuneError, match="jitter"):
        AugmentConfig(jitter=0.6)
