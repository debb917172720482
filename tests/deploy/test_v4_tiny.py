"""Tiny YOLOv4 in every runtime and export: the official COCO model and a 1-class model made from it give the
same heads (within the error budgets of tests/parity.py) and the same boxes in torch, ONNX Runtime and OpenCV
DNN; ONNX (raw heads and decoded) and darknet exports keep them; `detect` and `bench infer` run it on all
three. What is particular to v4-tiny: route groups (groups=2 group_id=1, the CSP halves), scale_x_y=1.05 in
the decode (OpenCV applies it in its own yolo layer: darktune's decode must give the same numbers), leaky,
and size-2 stride-2 max pooling. Size 160 keeps the tests fast; the v3 tests hold 416."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from darktune.cli import main
from darktune.darknet.boxes import decode
from darktune.darknet.model import Darknet, Route
from darktune.data.formats.image import read_image
from darktune.deploy.detect import detect_from_heads, preprocess_batch
from darktune.deploy.onnx import export_onnx, graph_detections, ort_session, verification_input
from darktune.deploy.runtimes import OpenCVBackend, make_backend
from parity import excess, reference
from test_runtimes import (assert_heads_close, assert_same_boxes, person_model, synthetic_scene, torch_heads,
                           write_model)

SIZE = 160


def _at(model: Darknet, size: int) -> Darknet:
    small = Darknet(model.spec.with_size(size)).eval()
    small.load_state_dict(model.state_dict())
    return small


@pytest.fixture(scope="module")
def images(photo_path):
    photo = read_image(photo_path)
    return [photo, synthetic_scene(photo)]


@pytest.fixture(scope="module")
def coco_at_size(coco_v4_model):
    return _at(coco_v4_model, SIZE)


@pytest.fixture(scope="module", params=["coco", pytest.param("one-class", marks=pytest.mark.slow)])
def v4_files(request, coco_v4, coco_at_size, coco_v4_model, tmp_path_factory):
    """(model at SIZE, cfg, weights) of the official COCO yolov4-tiny and of a 1-class 'person' model."""
    if request.param == "coco":
        return coco_at_size, coco_v4.cfg, coco_v4.weights
    model = _at(person_model(coco_v4_model), SIZE)
    return (model, *write_model(model, tmp_path_factory.mktemp("v4-one-class")))


_REFERENCES: dict = {}


def _reference(model: Darknet, batch: np.ndarray, runtime: str):
    """parity.reference, computed once per model, batch and runtime in this module (a float64 run of v4-tiny
    with its budgets takes seconds)."""
    key = (id(model), batch.shape, hash(batch.tobytes()), runtime)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference(model, batch, runtime)
    return _REFERENCES[key]


def _torch_dets(model: Darknet, images, conf=0.1, nms=0.45):
    batch = preprocess_batch(images, model.input_size)
    with torch.inference_mode():
        heads = model(torch.from_numpy(batch))
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    return detect_from_heads(heads, [h.spec for h in model.heads], model.input_size, sizes, conf, nms)


def test_the_v4_particulars_are_in_the_model(coco_v4_model):
    spec = coco_v4_model.spec
    groups = [i for i, layer in enumerate(coco_v4_model.layers) if isinstance(layer, Route) and layer.groups > 1]
    assert groups == [3, 11, 19] and all(spec.layers[i].group_id == 1 for i in groups)
    assert [h.spec.scale_x_y for h in coco_v4_model.heads] == [1.05, 1.05]
    assert [h.spec.mask for h in coco_v4_model.heads] == [(3, 4, 5), (1, 2, 3)]


def test_three_runtimes_same_heads_and_boxes(v4_files, images):
    """torch, ONNX Runtime and OpenCV DNN (no Winograd): each within its budget of float64, pairwise within the
    sum, decoded within the budget through the decode; the same boxes everywhere, OpenCV with its default
    Winograd convs included."""
    model, cfg, weights = v4_files
    batch = preprocess_batch(images, model.input_size)
    specs = [h.spec for h in model.heads]
    names = ("torch", "onnxruntime", "opencv")
    backends = [make_backend(name, cfg, weights, size=SIZE, batch=2, winograd=False) for name in names]
    heads = [b.raw(batch) for b in backends]
    refs = [_reference(model, batch, name) for name in names]
    for got, ref in zip(heads, refs):
        assert_heads_close(got, ref.heads, specs, model.input_size, (ref,))
        assert_heads_close(got, heads[0], specs, model.input_size, (ref, refs[0]))
    assert_heads_close(heads[1], heads[2], specs, model.input_size, (refs[1], refs[2]))
    winograd = make_backend("opencv", cfg, weights, size=SIZE)  # its budget: the next test
    results = [b.detect(images, 0.1, 0.45) for b in [*backends, winograd]]
    assert sum(len(d) for d in results[0]) >= 2
    for other in results[1:]:
        assert_same_boxes(results[0], other)


@pytest.mark.slow
def test_opencv_winograd_within_its_budget(coco_v4, coco_at_size, photo_path):
    batch = preprocess_batch([read_image(photo_path)], coco_at_size.input_size)
    winograd = make_backend("opencv", coco_v4.cfg, coco_v4.weights, size=SIZE)
    assert winograd.winograd
    assert excess(winograd.raw(batch), reference(coco_at_size, batch, "opencv-winograd")) <= 1


def test_opencv_yolo_layer_decodes_as_darktune(coco_v4, coco_at_size, images):
    """OpenCV DNN decodes in its own yolo layers, scale_x_y included: darktune's decode of the same raw heads
    gives its x, y, w, h and objectness to float32 rounding, and its class scores (obj * prob, which OpenCV
    zeroes at or below 0.2); decoding without scale_x_y would be ~1e-3 off."""
    model = coco_at_size
    backend = OpenCVBackend(coco_v4.cfg, coco_v4.weights, model.spec, winograd=False)
    backend.net.setInput(preprocess_batch(images, model.input_size))
    yolo = [n for n in backend.net.getLayerNames() if n.startswith("yolo_")]
    assert yolo == ["yolo_30", "yolo_37"]
    *raw, d13, d26 = backend.net.forward(backend.outputs + yolo)
    specs = [h.spec for h in model.heads]
    ours = decode([torch.from_numpy(r) for r in raw], specs, model.input_size).numpy()
    theirs = np.concatenate([d13.reshape(2, -1, 85), d26.reshape(2, -1, 85)], 1)
    assert ours.shape == theirs.shape
    assert np.abs(ours[..., :5] - theirs[..., :5]).max() <= 1e-6
    scores, kept = ours[..., 4:5] * ours[..., 5:], theirs[..., 5:] > 0
    assert kept.sum() >= 2 and np.abs(scores[kept] - theirs[..., 5:][kept]).max() <= 1e-6
    assert scores[~kept].max() <= 0.2 + 1e-6
    plain = decode([torch.from_numpy(r) for r in raw], [dataclasses.replace(s, scale_x_y=1.0) for s in specs],
                   model.input_size).numpy()
    assert np.abs(plain[..., :2] - theirs[..., :2]).max() > 1e-4


def test_export_onnx_raw_and_decoded(coco_v4, coco_at_size, images, tmp_path, capsys):
    """`export onnx` of the COCO v4-tiny: raw heads within the budget of float64 and of torch (the export's own
    check too), the cfg with scale_x_y and route groups stored in the model; the decode graph (scale_x_y in
    the graph) gives the boxes of darktune's own post-processing."""
    model = coco_at_size
    raw = tmp_path / "v4.onnx"
    assert main(["export", "onnx", "--cfg", str(coco_v4.cfg), "--weights", str(coco_v4.weights), "--size",
                 str(SIZE), "--out", str(raw), "--names", str(coco_v4.names), "--batch", "dynamic", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == ["head_30", "head_37"]
    meta = {p.key: p.value for p in onnx.load(str(raw)).metadata_props}
    assert "scale_x_y=1.05" in meta["darktune.cfg"] and "group_id=1" in meta["darktune.cfg"]
    batch = preprocess_batch(images, model.input_size)
    got = ort_session(raw).run(None, {"images": batch})
    refs = {name: _reference(model, batch, name) for name in ("onnxruntime", "torch")}
    check = verification_input(1, model.input_size)  # the export's own check: ONNX Runtime vs torch on it
    pair = zip(reference(model, check, "onnxruntime").budget, reference(model, check, "torch").budget)
    assert max(report["max_abs_diff"].values()) <= max(float((p + q).max()) for p, q in pair)
    specs = [h.spec for h in model.heads]
    assert excess(got, refs["onnxruntime"]) <= 1
    assert_heads_close(got, torch_heads(model, batch), specs, model.input_size, (refs["onnxruntime"], refs["torch"]))
    decoded = export_onnx(model, tmp_path / "v4-decoded.onnx", batch=None, decode=True, conf_thresh=0.1,
                          nms_thresh=0.45)
    assert decoded.max_abs_diff["boxes"] < 1e-3 and decoded.max_abs_diff["scores"] < 1e-3  # its own check
    out = ort_session(decoded.path).run(None, {"images": batch})[0]
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    mine = _torch_dets(model, images)
    assert sum(len(d) for d in mine) >= 2
    assert_same_boxes(graph_detections(out, 2, model.input_size, sizes), mine)


def test_export_darknet_one_class_loads_in_opencv(coco_v4, coco_v4_model, images, tmp_path, capsys):
    """A 1-class v4-tiny written by `export darknet` (the COCO cfg re-headed by the weights' class count): route
    groups and scale_x_y written back, OpenCV DNN reads it and finds the same boxes as torch."""
    model = _at(person_model(coco_v4_model), SIZE)
    _, weights = write_model(model, tmp_path / "one")
    names = tmp_path / "one" / "obj.names"
    names.write_text("person\n")
    out = tmp_path / "deploy"
    assert main(["export", "darknet", "--cfg", str(coco_v4.cfg), "--weights", str(weights), "--names",
                 str(names), "--size", str(SIZE), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == 1 and report["max_abs_diff"] < 1e-3
    text = (out / "model.cfg").read_text()
    assert text.count("classes=1\n") == 2 and text.count("filters=18\n") == 2
    assert text.count("groups=2\n") == 3 and text.count("group_id=1\n") == 3 and text.count("scale_x_y=1.05") == 2
    assert (out / "model.weights").read_bytes() == weights.read_bytes()
    theirs = OpenCVBackend(out / "model.cfg", out / "model.weights", model.spec).detect(images, 0.1, 0.45)
    mine = _torch_dets(model, images)
    assert sum(len(d) for d in mine) >= 1
    assert_same_boxes(theirs, mine)


def test_detect_and_bench_on_all_runtimes(coco_v4, photo_path, tmp_path, capsys):
    model_args = ["--cfg", str(coco_v4.cfg), "--weights", str(coco_v4.weights)]
    onnx_path = tmp_path / "v4.onnx"
    assert main(["export", "onnx", *model_args, "--size", "160", "--out", str(onnx_path), "--names",
                 str(coco_v4.names)]) == 0
    runs = {}
    for backend, extra in [("torch", model_args), ("opencv", model_args), ("onnxruntime", ["--onnx", str(onnx_path)])]:
        capsys.readouterr()
        assert main(["detect", str(photo_path), "--backend", backend, *extra, "--size", "160", "--json",
                     "--thresh", "0.2"]) == 0
        runs[backend] = json.loads(capsys.readouterr().out)[0]["detections"]
    assert [d["name"] for d in runs["torch"]][:1] == ["person"]
    for other in (runs["opencv"], runs["onnxruntime"]):
        assert [d["name"] for d in other] == [d["name"] for d in runs["torch"]]
        assert all(abs(x - y) <= 0.02 for p, q in zip(other, runs["torch"]) for x, y in zip(p["box"], q["box"]))
    capsys.readouterr()
    assert main(["bench", "infer", *model_args, "--size", "160", "--iters", "2", "--warmup", "1", "--backend",
                 "torch,onnxruntime,opencv", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["backends"]) == {"torch", "onnxruntime", "opencv"} and report["size"] == 160
