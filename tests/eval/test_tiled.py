"""darktune/eval/tiled.py: whole-image mAP by sliced detection; it agrees with `detect --tile`'s slicing."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import darktune.eval.tiled as tiled
from darktune.cli import main
from darktune.deploy.runtimes import TorchBackend
from darktune.deploy.sliced import sliced_detect
from darktune.eval.tiled import Slicing, WholeSet, evaluate_tiled, load_whole_set, predict_tiled
from tiny_net import tiny_net


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_net(tmp_path_factory.mktemp("tiny_eval"), seed=1)


def _dataset(folder, sizes):
    """A darknet dataset of random images with one box each; obj.data path."""
    images = folder / "images"
    images.mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = images / f"im{i}.png"
        cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8))
        path.with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
        paths.append(path)
    (folder / "valid.txt").write_text("".join(f"{p}\n" for p in paths))
    (folder / "obj.names").write_text("thing\n")
    obj = folder / "obj.data"
    obj.write_text(f"classes=1\ntrain={folder / 'valid.txt'}\nvalid={folder / 'valid.txt'}\n"
                   f"names={folder / 'obj.names'}\n")
    return obj


def test_whole_image_detections_are_those_of_sliced_detection(model, tmp_path):
    cfg, weights, net = model
    obj = _dataset(tmp_path, [(200, 130), (60, 50)])  # one image is sliced, one fits a tile
    ws = load_whole_set(obj)
    assert len(ws) == 2 and ws.truths[0].shape == (1, 5)
    np.testing.assert_allclose(ws.truths[0][0, 1:], [80, 52, 120, 78])  # truths in whole-image pixels
    slicing = Slicing(64, 0.2)
    got = predict_tiled(net, ws, slicing, conf_thresh=0.3, nms_thresh=0.45)
    backend = TorchBackend(net, fuse=False, channels_last=False)  # the same model, the same batches of tiles
    for image, dets in zip(ws.images, got):
        want = sliced_detect(backend, image, slicing, 0.3, 0.45)
        assert len(dets) > 0
        np.testing.assert_allclose(dets, want, atol=1e-4)


def _white_box(crops):
    """A stand-in detector: the box around the white pixels of each crop, score 0.5 + its share of 64x64."""
    out = []
    for crop in crops:
        ys, xs = np.nonzero(crop[..., 0] == 255)
        if len(xs) == 0:
            out.append(np.zeros((0, 6), np.float32))
            continue
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        out.append(np.array([[x1, y1, x2, y2, 0.5 + (x2 - x1) * (y2 - y1) / 8192, 0]], np.float32))
    return out


def test_object_no_tile_holds_whole_is_merged_and_scored_on_the_whole_image(model, monkeypatch):
    # a 150x100 image, a white box at x 44..80, y 20..60. Tiles of 64, overlap 0.2 (stride 64 - 12 = 52): x at
    # 0, 52, 86; y at 0, 36. No tile holds the box whole: tile (0, 0) sees x 44..64, tile (52, 0) x 52..80 (both
    # y 20..60); the tiles at y 36 see y 36..60 of each. Shifted back, the parts match by IoS (x 52..64 is 12 of
    # the 20 px of the left part: 0.6 > 0.5; the lower parts lie inside the upper ones) and merge into 44..80 x
    # 20..60: the truth, IoU 1, AP 1. NMS by IoU keeps the best part (28x40 px) and, as false positives, the
    # parts that overlap it by IoU <= 0.5.
    _, _, net = model
    image = np.zeros((100, 150, 3), np.uint8)
    image[20:60, 44:80] = 255
    ws = WholeSet(["x.png"], [image], [np.array([[0, 44, 20, 80, 60]], np.float64)], ["thing"], 0)
    monkeypatch.setattr(tiled, "_detect_crops", lambda net_, crops, *rest: _white_box(crops))
    greedy = Slicing(64, 0.2, merge="greedynmm")
    assert greedy.match == "ios" and Slicing(64, 0.2).match == "iou"  # each merge's own metric by default
    (dets,) = predict_tiled(net, ws, greedy)
    np.testing.assert_allclose(dets[:, :4], [[44, 20, 80, 60]])
    assert evaluate_tiled(net, ws, greedy, conf_thresh=0.25).map == pytest.approx(1.0)
    (by_nms,) = predict_tiled(net, ws, Slicing(64, 0.2))
    np.testing.assert_allclose(by_nms[0, :4], [52, 20, 80, 60])  # the largest part (28x40) scores best
    assert len(by_nms) > 1


def test_map_tile_command(model, tmp_path, capsys):
    cfg, weights, _ = model
    obj = _dataset(tmp_path, [(200, 130)])
    assert main(["map", "--cfg", str(cfg), "--weights", str(weights), "--data", str(obj), "--tile", "64",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tiling"] == {"tile": 64, "overlap": 0.2, "tile_full": False, "merge": "nms"}
    assert out["images"] == 1 and 0.0 <= out["map"] <= 1.0
