"""darktune/deploy/sliced.py: sliced detection on every runtime, with a small random network (fast).

The property the issue asks for: an image no larger than a tile is detected exactly as plain detection does.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktune.cli import main
from darktune.darknet.box_merge import merge_detections
from darktune.data.tile import tile_grid
from darktune.deploy.detect import clip_boxes
from darktune.deploy.runtimes import TorchBackend, make_backend
from darktune.deploy.sliced import Slicing, sliced_detect
from darktune.errors import DarktuneError
from tiny_net import tiny_net


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cfg path, weights path, torch backend) of a random 1-class network at 64 px."""
    cfg, weights, model = tiny_net(tmp_path_factory.mktemp("tiny"))
    return cfg, weights, TorchBackend(model)


def _image(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@settings(max_examples=20, deadline=None)
@given(w=st.integers(1, 64), h=st.integers(1, 64), tile=st.sampled_from([64, 96]), seed=st.integers(0, 99),
       overlap=st.floats(0, 0.9), merge=st.sampled_from(["greedynmm", "nms"]))
def test_image_no_larger_than_a_tile_is_detected_plainly(tiny, w, h, tile, seed, overlap, merge):
    backend = tiny[2]
    image = _image(w, h, seed)  # no larger than the tile (at most 64 px each way)
    plain = backend.detect([image], 0.3, 0.45)[0]
    assert len(plain) or w * h < 1024  # a test that could not see a difference is no test
    sliced = sliced_detect(backend, image, Slicing(tile, overlap, merge=merge), 0.3, 0.45)
    np.testing.assert_array_equal(sliced, plain)


def test_tiles_are_detected_shifted_and_merged(tiny):
    backend = tiny[2]
    image = _image(150, 100, 1)
    slicing = Slicing(64, 0.25, merge="greedynmm", batch=1)
    by_hand = []
    for x1, y1, x2, y2 in tile_grid(150, 100, 64, 0.25):  # x at 0, 48, 86; y at 0, 36
        d = backend.detect([image[y1:y2, x1:x2]], 0.3, 0.45)[0].copy()
        d[:, [0, 2]] += x1
        d[:, [1, 3]] += y1
        by_hand.append(d)
    want = merge_detections(np.concatenate(by_hand), "greedynmm", 0.5, "ios")
    got = sliced_detect(backend, image, slicing, 0.3, 0.45)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert len(got) < sum(map(len, by_hand))  # neighbouring tiles' boxes were merged
    full = sliced_detect(backend, image, Slicing(64, 0.25, full=True), 0.3, 0.45)
    assert len(full) >= 1


@pytest.mark.parametrize("name", ["onnxruntime", "opencv"])
def test_every_runtime_slices_alike(tiny, name):
    pytest.importorskip("onnxruntime" if name == "onnxruntime" else "cv2")
    cfg, weights, torch_backend = tiny
    other = make_backend(name, cfg, weights, batch=None if name == "onnxruntime" else 1, winograd=False)
    image = _image(200, 130, 2)
    slicing = Slicing(64, 0.2, batch=4)
    a = sliced_detect(torch_backend, image, slicing, 0.3, 0.45)
    b = sliced_detect(other, image, slicing, 0.3, 0.45)
    assert len(a) == len(b) and len(a) > 0

    def by_place(d):  # scores within 1e-5 of each other may come in either order from two runtimes
        return d[np.lexsort((np.round(d[:, 1], 1), np.round(d[:, 0], 1)))]

    np.testing.assert_allclose(by_place(a), by_place(b), atol=2e-3)


def test_slicing_options_refused_with_the_flag():
    with pytest.raises(DarktuneError, match="--tile"):
        Slicing(16)
    with pytest.raises(DarktuneError, match="--overlap"):
        Slicing(64, 1.5)
    with pytest.raises(DarktuneError, match="--merge"):
        Slicing(64, merge="wbf")


def test_detect_tile_command(tiny, tmp_path, capsys):
    cfg, weights, _ = tiny
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), _image(200, 130, 3))
    args = ["detect", "--cfg", str(cfg), "--weights", str(weights), "--backend", "torch", str(path), "--json",
            "--thresh", "0.3"]
    assert main(args + ["--tile", "64", "--overlap", "0.2"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["width"] == 200 and all(0 <= d["box"][2] <= 200 for d in record["detections"])
    assert main(args + ["--tile", "8"]) != 0
    assert "--tile must be" in capsys.readouterr().err


def test_detect_tile_on_a_video(tiny, tmp_path, capsys):
    cfg, weights, backend = tiny
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (200, 130))
    frames = [_image(200, 130, 10 + i) for i in range(3)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    assert main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--backend", "torch", str(path), "--json",
                 "--thresh", "0.3", "--tile", "64", "--workers", "1"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["frame"] for r in records] == [0, 1, 2]
    capture = cv2.VideoCapture(str(path))
    for record in records:  # each frame as read back from the file, sliced (a 200x130 frame is 4x3 tiles of 64)
        ok, frame = capture.read()
        want = clip_boxes(sliced_detect(backend, frame, Slicing(64, 0.2), 0.3, 0.45), 200, 130)
        got = np.array([d["box"] + [d["score"]] for d in record["detections"]]).reshape(-1, 5)
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(got, want[:, :5], atol=0.02)
    capture.release()
