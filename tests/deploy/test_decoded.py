"""darktune/deploy/decoded.py: an exported decode graph (decode + NMS inside) run by `detect`, plainly and sliced,
with a small random network at 64 px (fast).

Sliced through the decode graph must give the boxes of sliced detection through the raw-heads graph and torch
(the same tiles, the same per-tile thresholds, the same merge); an image no larger than a tile must give what
plain detection through the decode graph gives.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktune.cli import main
from darktune.deploy.decoded import DecodedOnnxBackend
from darktune.deploy.detect import clip_boxes
from darktune.deploy.runtimes import OnnxRuntimeBackend, TorchBackend, make_backend
from darktune.deploy.sliced import Slicing, sliced_detect
from darktune.errors import DarktuneError
from tiny_net import tiny_net

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CONF, IOU = 0.3, 0.45  # the decode graphs' thresholds, fixed at export


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The tiny network (cfg, weights, model) and its exports: decode graphs with a dynamic batch and a static
    batch of 3 (the last call of 8 tiles padded), and a raw-heads graph."""
    from darktune.deploy.onnx import export_onnx

    folder = tmp_path_factory.mktemp("decoded")
    cfg, weights, model = tiny_net(folder)
    out = {"cfg": cfg, "weights": weights, "model": model}
    for name, batch, decode in (("dynamic", None, True), ("static3", 3, True), ("raw", None, False)):
        out[name] = export_onnx(model, folder / f"{name}.onnx", batch=batch, decode=decode, conf_thresh=CONF,
                                nms_thresh=IOU, names=["crown"], verify=False).path
    return out


@pytest.fixture(scope="module")
def plain(graphs):
    """(the static-batch decode graph's backend, the torch backend) for the property test's many examples."""
    return make_backend("onnxruntime", None, None, onnx=graphs["static3"]), TorchBackend(graphs["model"])


def _image(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _max_pair_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max coordinate/score difference between two detection lists, each row paired with the nearest row of
    the other list (both ways); inf when the counts or classes differ."""
    if len(a) != len(b) or sorted(a[:, 5]) != sorted(b[:, 5]):
        return float("inf")
    if not len(a):
        return 0.0
    gap = np.abs(a[:, None, :5] - b[None, :, :5]).max(2)
    return max(float(gap.min(1).max()), float(gap.min(0).max()))


def test_a_decode_graph_is_recognised_by_make_backend(graphs):
    backend = make_backend("onnxruntime", None, None, onnx=graphs["dynamic"])
    assert isinstance(backend, DecodedOnnxBackend)
    assert (backend.conf_thresh, backend.nms_thresh, backend.net_hw) == (CONF, IOU, (64, 64))
    assert backend.names == ["crown"] and backend.static_batch is None and backend.spec.num_classes == 1
    assert make_backend("onnxruntime", None, None, onnx=graphs["static3"]).static_batch == 3
    assert isinstance(make_backend("onnxruntime", None, None, onnx=graphs["raw"]), OnnxRuntimeBackend)
    with pytest.raises(DarktuneError, match="raw heads"):
        backend.raw(np.zeros((1, 3, 64, 64), np.float32))


@pytest.mark.parametrize("merge, letterbox, height", [("nms", False, 100), ("greedynmm", False, 100),
                                                      ("nms", True, 50)])
def test_sliced_through_the_decode_graph_equals_raw_heads_and_torch(graphs, merge, letterbox, height):
    thresh = CONF  # this network's scores crowd 0.45-0.47: a threshold among them would split float noise
    # 150 x 100: 3 x 2 tiles of 64 px, calls of 4 and 2 tiles, the static graph's padded; 150 x 50: three 64 x 50
    # tiles, which a letterbox pads (so its geometry is tested)
    image = _image(150, height, 2)
    slicing = Slicing(64, 0.2, merge=merge, batch=4)
    torch_backend = TorchBackend(graphs["model"])
    raw = make_backend("onnxruntime", None, None, onnx=graphs["raw"])
    want = sliced_detect(torch_backend, image, slicing, thresh, IOU, letterbox)
    assert len(want) >= 20  # enough boxes across the tiles for the comparison to mean something
    assert _max_pair_diff(sliced_detect(raw, image, slicing, thresh, IOU, letterbox), want) < 1e-3
    for name in ("dynamic", "static3"):
        decoded = make_backend("onnxruntime", None, None, onnx=graphs[name])
        got = sliced_detect(decoded, image, slicing, thresh, IOU, letterbox)
        assert _max_pair_diff(got, want) < 1e-3, name
        assert got[:, 4].min() > thresh and (np.diff(got[:, 4]) <= 0).all()  # merged, by falling score


@settings(max_examples=12, deadline=None)
@given(w=st.integers(1, 64), h=st.integers(1, 64), tile=st.sampled_from([64, 96]), seed=st.integers(0, 99),
       overlap=st.floats(0, 0.9), merge=st.sampled_from(["greedynmm", "nms"]))
def test_image_no_larger_than_a_tile_is_plain_decoded_detection(plain, w, h, tile, seed, overlap, merge):
    backend, torch_backend = plain
    image = _image(w, h, seed)
    plain = backend.detect([image], CONF, IOU)[0]
    assert len(plain) or w * h < 1024  # a test that could not see a difference is no test
    np.testing.assert_array_equal(sliced_detect(backend, image, Slicing(tile, overlap, merge=merge), CONF, IOU),
                                  plain)
    ref = torch_backend.detect([image], CONF, IOU)[0]  # and the graph decodes as darktune does
    assert _max_pair_diff(plain, ref) < 1e-3


def test_thresholds_the_graph_cannot_give_are_refused(graphs):
    backend = make_backend("onnxruntime", None, None, onnx=graphs["dynamic"])
    image = _image(64, 64, 1)
    higher = backend.detect([image], 0.46, IOU)[0]
    assert len(higher) and higher[:, 4].min() > 0.46
    assert len(higher) < len(backend.detect([image], CONF, IOU)[0])
    with pytest.raises(DarktuneError, match=r"below the 0.3 fixed .*--conf 0.2"):
        backend.detect([image], 0.2, IOU)
    with pytest.raises(DarktuneError, match=r"fixed at IoU 0.45 .*--iou 0.5"):
        sliced_detect(backend, _image(200, 130, 1), Slicing(64), CONF, 0.5)


def test_detect_command_slices_through_a_decode_graph(graphs, tmp_path, capsys):
    path = tmp_path / "big.png"
    image = _image(200, 130, 3)
    cv2.imwrite(str(path), image)
    assert main(["detect", "--onnx", str(graphs["static3"]), str(path), "--json", "--tile", "64"]) == 0
    captured = capsys.readouterr()
    assert "decodes and runs NMS in the graph (score > 0.3, IoU 0.45" in captured.err
    (record,) = json.loads(captured.out)
    assert record["backend"] == "onnxruntime" and {d["name"] for d in record["detections"]} == {"crown"}
    backend = make_backend("onnxruntime", None, None, onnx=graphs["static3"])
    want = clip_boxes(sliced_detect(backend, image, Slicing(64, 0.2), CONF, IOU), 200, 130)  # default: the graph's
    got = np.array([d["box"] + [d["score"], d["class_id"]] for d in record["detections"]]).reshape(-1, 6)
    assert len(got) == len(want) > 0
    assert _max_pair_diff(got, want) < 0.02  # the JSON rounds boxes to 0.01 px


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("darktune: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


def test_bad_or_unsupported_onnx_files_are_one_line_errors(graphs, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    image = tmp_path / "im.png"
    cv2.imwrite(str(image), _image(100, 80, 4))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    assert main(["detect", "--onnx", str(bad), "--tile", "64", str(image)]) != 0
    _one_line_error(capsys, "bad.onnx")
    # a (K, 7) graph that darktune did not write: no thresholds, no cfg to run it by
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["k", 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["k", 7])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    assert main(["detect", "--onnx", str(foreign), "--tile", "64", str(image)]) != 0
    assert "export onnx --decode" in _one_line_error(capsys, "foreign.onnx")
    decoded = str(graphs["dynamic"])
    assert main(["detect", "--onnx", decoded, "--tile", "64", "--thresh", "0.1", str(image)]) != 0
    assert "--conf 0.1" in _one_line_error(capsys, "dynamic.onnx")
    assert main(["detect", "--onnx", decoded, "--tile", "64", "--nms", "0.6", str(image)]) != 0
    assert "--iou 0.6" in _one_line_error(capsys, "dynamic.onnx")
