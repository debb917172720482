"""Augmentation rules pinned to AlexeyAB darknet (data.c load_data_detection) with numbers computed by hand:
[yolo] resize, the mosaic cut and windows, mosaic on about half the samples."""

import numpy as np
import pytest

from darktune.data.augment import (AugmentConfig, _geometry, augment_mosaic, mosaic_cut, mosaic_windows,
                                   resize_offsets, resize_range)
from darktune.data.loader import DetectionDataset


def test_resize_offsets_by_hand():
    """640x480, jitter 0, resize 1.5: down = 1/1.5, up = 1.5; min_rdw = 640*(1 - 1.5)/2 = -160, max_rdw =
    640*(1 - 1/1.5)/2 = 106.7 (darknet truncates: 106), min_rdh -120, max_rdh 80. Left/top share r1,
    right/bottom r2: r = (0, 0) -> crop 960x720 (objects x 0.667); (1, 1) -> 426.7x320 (x 1.5);
    (0.25, 0.75) -> pleft -93.3, pright 39.9 (darknet -93, 39: crop 694x520)."""
    assert resize_range(1.5) == pytest.approx((-0.25, 1 / 6))
    assert resize_range(0.8) == pytest.approx(((1 - 1.25) / 2, 0.0))  # under 1: only zoom out
    pl, pr, pt, pb = resize_offsets(0.0, 0.0, 1.5, 640, 480)
    assert (pl, pr, pt, pb) == pytest.approx((-160, -160, -120, -120))
    pl, pr, pt, pb = resize_offsets(1.0, 1.0, 1.5, 640, 480)
    assert (640 - pl - pr, 480 - pt - pb) == pytest.approx((426.667, 320), abs=1e-3)
    pl, pr, pt, pb = resize_offsets(0.25, 0.75, 1.5, 640, 480)
    assert (pl, pr) == pytest.approx((-93.333, 39.999), abs=1e-3) and (pt, pb) == pytest.approx((-70, 30))
    assert 640 - pl - pr == pytest.approx(693.33, abs=0.01) and 480 - pt - pb == pytest.approx(520)


def test_resize_scales_both_axes_together():
    """jitter 0: the crop's aspect is the source's whatever the draw, and its scale spans 1/1.5 .. 1.5."""
    scales = []
    for seed in range(300):
        ax, _, ay, _ = _geometry(np.random.default_rng(seed), (640, 480), (416, 416), 0.0, False, False, 1.5)
        assert ax * 640 / 416 == pytest.approx(ay * 480 / 416, rel=1e-9)  # left/top share r1, right/bottom r2
        scales.append(ax * 640 / 416)
    assert 0.66 < min(scales) < 0.75 and 1.35 < max(scales) < 1.5
    # resize = 1 draws nothing: the random stream (and so every earlier run) is unchanged
    a = _geometry(np.random.default_rng(1), (640, 480), (416, 416), 0.2, False, False, 1.0)
    b = _geometry(np.random.default_rng(1), (640, 480), (416, 416), 0.2, False, False)
    assert a == b


def test_mosaic_cut_range():
    """rand_int(int(0.2*416), int(0.8*416)) = 83..332 inclusive."""
    rng = np.random.default_rng(0)
    cuts = np.array([mosaic_cut(rng, 416, 416) for _ in range(4000)])
    assert cuts.min() == 83 and cuts.max() == 332


def test_mosaic_windows_by_hand():
    """cut_x = cut_y = 83 at 416, no padding: tile 0 (83x83) is the window [333, 416) of its source; a box
    centred at (0.9, 0.9), size 0.1 there lands at ((0.9*416 - 333)/416) = 0.0995, size 0.1 (its full-image
    scale; resizing the image into the tile would give 0.1*83/416 = 0.02)."""
    w = mosaic_windows((83, 83), (416, 416), [(0, 0, 0, 0)] * 4)
    assert w == [((0, 0, 83, 83), (333, 333)), ((83, 0, 416, 83), (0, 333)),
                 ((0, 83, 83, 416), (333, 0)), ((83, 83, 416, 416), (0, 0))]
    # padding of the source (here 20 px right, 10 px bottom) shifts the left/top tiles' windows inward
    w = mosaic_windows((83, 83), (416, 416), [(0, 0, 20, 10)] * 4)
    assert w[0][1] == (313, 323)


def test_mosaic_tiles_keep_the_full_image_scale():
    img = np.full((416, 416, 3), 40, np.uint8)
    img[354:395, 354:395] = 255
    boxes = np.array([[0, 0.9, 0.9, 0.1, 0.1]], np.float32)
    cfg = AugmentConfig()  # no jitter, flip or colour
    out, b = augment_mosaic([(img, boxes)] * 4, 416, cfg, np.random.default_rng(5))
    cx, cy = mosaic_cut(np.random.default_rng(5), 416, 416)  # the first draw is the cut
    assert len(b) == 1  # only tile 0 shows the box (the others' windows cut it off)
    np.testing.assert_allclose(b[0], [0, (0.9 * 416 - 416 + cx) / 416, (0.9 * 416 - 416 + cy) / 416, 0.1, 0.1],
                               atol=1e-5)
    assert out[cy - 416 + 374, cx - 416 + 374].min() == 255


def test_about_half_the_samples_are_mosaics(tmp_path):
    import cv2

    items = []
    for i in range(4):
        img = np.full((64, 64, 3), 60 * i, np.uint8)
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), img)
        items.append((path, np.array([[0, 0.5, 0.5, 0.5, 0.5]], np.float32)))
    ds = DetectionDataset(items, 64, AugmentConfig(mosaic=True))
    mixed = 0
    for epoch in range(200):
        out, _ = ds.load(0, epoch, seed=1)
        mixed += len(np.unique(out[..., 0])) > 1  # a mosaic mixes the sources' grey levels (4 draws of 4)
    assert 0.35 < mixed / 200 < 0.6
