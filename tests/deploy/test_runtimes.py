"""Inference backends: torch (BN folded exactly), ONNX Runtime and OpenCV DNN give the same heads and the same
boxes; `darktune.deploy.fuse` folds exactly and runs long dot products accurately.

Tolerances are error budgets derived from the arithmetic per model, input and output element
(tests/parity.py, docs/parity.md): each runtime against a float64 run of the same network within its budget,
two runtimes against each other within the sum of their budgets, decoded outputs within the budget mapped
through the decode. OpenCV's default Winograd 3x3 convs have a much looser budget and are required to give
the same boxes.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from darktune.deploy.runtimes import (
    OnnxRuntimeBackend,
    OpenCVBackend,
    Timings,
    TorchBackend,
    head_layer_names,
    inference_copy,
    latency_summary,
    make_backend,
    time_backends,
)
from darktune.darknet.boxes import decode
from darktune.darknet.cfg import write_cfg
from darktune.data.formats.image import read_image
from darktune.deploy.detect import preprocess_batch
from darktune.errors import DarktuneError
from darktune.deploy.fuse import GemmConv2d, fold_batch_norm, fuse_model
from darktune.darknet.model import Darknet
from darktune.darknet.weights import save_weights
from parity import Reference, conv_budget, decoded_budget, excess, pair_excess, reference


# ------------------------------------------------------------------ helpers shared with test_export, test_detect
def person_model(coco_model: Darknet) -> Darknet:
    """A 1-class model made from the COCO one: re-headed with spec.with_classes(1), every layer that fits
    copied, and each head conv's rows for (x, y, w, h, obj, 'person') taken from the COCO head, so it finds
    people in real photos as a fine-tuned 1-class detector would (a random head would find nothing real)."""
    spec = coco_model.spec.with_classes(1)
    model = Darknet(spec).eval()
    src, dst = coco_model.state_dict(), model.state_dict()
    for key, value in src.items():
        if dst[key].shape == value.shape:
            dst[key] = value.clone()
    for i in spec.yolo_indices:
        rows = [a * 85 + j for a in range(len(spec.layers[i].mask)) for j in range(6)]
        for name in ("weight", "bias"):
            dst[f"layers.{i - 1}.conv.{name}"] = src[f"layers.{i - 1}.conv.{name}"][rows].clone()
    model.load_state_dict(dst)
    return model


def write_model(model: Darknet, folder) -> tuple:
    """cfg + weights files of a model (for OpenCV DNN and the CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_cfg(model.spec, folder / "model.cfg"), save_weights(model, folder / "model.weights")


def synthetic_scene(photo: np.ndarray) -> np.ndarray:
    """A 640x480 scene: grey gradient, the photo shrunk once and once mirrored, a few flat shapes."""
    canvas = np.empty((480, 640, 3), np.uint8)
    canvas[:] = np.linspace(40, 200, 640, dtype=np.uint8)[None, :, None]
    small = cv2.resize(photo, (200, 234), interpolation=cv2.INTER_AREA)
    canvas[200:434, 20:220] = small
    canvas[100:334, 400:600] = small[:, ::-1]
    cv2.rectangle(canvas, (260, 40), (360, 120), (30, 160, 30), -1)
    cv2.circle(canvas, (320, 400), 50, (200, 40, 40), -1)
    return canvas


def assert_same_boxes(a: list[np.ndarray], b: list[np.ndarray], px: float = 0.01, score: float = 1e-4) -> None:
    """Same detections per image up to order: count, classes, boxes within `px` pixels, scores within `score`."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y), (x, y)
        if not len(x):
            continue
        x, y = (d[np.lexsort((d[:, 0], d[:, 1], -np.round(d[:, 4], 3), d[:, 5]))] for d in (x, y))
        assert np.array_equal(x[:, 5], y[:, 5])
        assert np.abs(x[:, :4] - y[:, :4]).max() <= px
        assert np.abs(x[:, 4] - y[:, 4]).max() <= score


def max_diff(got: list[np.ndarray], ref: list) -> float:
    """Max abs difference over all heads."""
    return max(float(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)).max()) for g, r in zip(got, ref))


def float64_heads(model: Darknet, batch: np.ndarray) -> list[np.ndarray]:
    """Raw heads of the unfused model run in float64: exact float math to ~1e-12, the reference."""
    import copy

    with torch.inference_mode():
        return [h.numpy() for h in copy.deepcopy(model).double()(torch.from_numpy(batch).double())]


def torch_heads(model: Darknet, batch: np.ndarray) -> list[np.ndarray]:
    """Raw heads as darktune's torch backend computes them (BN folded, accurate long dot products)."""
    with torch.inference_mode():
        return [h.numpy() for h in fuse_model(model)(torch.from_numpy(batch))]


def assert_heads_close(got: list[np.ndarray], ref: list[np.ndarray], specs, net_hw, budgets: tuple[Reference, ...]
                       ) -> None:
    """Raw heads `got` and `ref` of two runtimes within the sum of their budgets against float64 (`budgets`:
    one Reference per runtime, or one when `ref` is the float64 reference itself), and decoded within the
    budget mapped through the decode."""
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == np.float32
    first, *more = budgets
    worst = pair_excess(got, ref, first, more[0]) if more else excess(got, first)
    assert worst <= 1, f"raw heads {worst:.3g} x their error budget"
    dg = decode([torch.from_numpy(g) for g in got], specs, net_hw).double().numpy()
    dr = decode([torch.from_numpy(np.asarray(r)) for r in ref], specs, net_hw).double().numpy()
    assert (np.abs(dg - dr) <= decoded_budget(first, specs, net_hw, *more)).all()


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def images(photo_path):
    photo = read_image(photo_path)
    return [photo, synthetic_scene(photo)]


@pytest.fixture(scope="module", params=["coco", "one-class"])
def model_files(request, coco, coco_model, tmp_path_factory):
    """(model, cfg path, weights path) for the official COCO model and a 1-class model."""
    if request.param == "coco":
        return coco_model, coco.cfg, coco.weights
    model = person_model(coco_model)
    return (model, *write_model(model, tmp_path_factory.mktemp("one-class")))


# ------------------------------------------------------------------ tests
def test_fuse_model_folds_exactly_and_leaves_model_alone(coco_model):
    before = {k: v.clone() for k, v in coco_model.state_dict().items()}
    fused = inference_copy(coco_model)
    assert all(getattr(b, "bn", None) is None for b in fused.layers)
    assert coco_model.layers[0].bn is not None and not coco_model.training
    assert all(torch.equal(v, coco_model.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in fused.parameters())
    # folded in float64, rounded once: the float32 weights are the correctly rounded exact values
    block = coco_model.layers[12]
    weight, bias = fold_batch_norm(block.conv, block.bn)
    assert weight.dtype == torch.float64
    assert torch.equal(fused.layers[12].conv.weight, weight.float()) and torch.equal(fused.layers[12].conv.bias,
                                                                                    bias.float())
    # only the long dot products (layers 10, 12, 14, 21 of yolov3-tiny) take the GEMM kernel
    gemm = [i for i, b in enumerate(fused.layers) if isinstance(getattr(b, "conv", None), GemmConv2d)]
    assert gemm == [10, 12, 14, 21]
    assert not any(isinstance(getattr(b, "conv", None), GemmConv2d) for b in fuse_model(coco_model, precise=False)
                   .layers)
    # the folding algebra itself: in float64 the fused model is the unfused one
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m64 = Darknet(coco_model.spec.with_size(96)).eval()
    m64.load_state_dict(coco_model.state_dict())
    m64.double()
    with torch.inference_mode():
        assert max_diff(fuse_model(m64)(x), m64(x)) < 1e-9


def test_gemm_conv_is_accurate_on_long_dot_products():
    """A layer-12-like conv (512 -> 1024, 3x3: 4,608-term dot products, outputs up to ~26): the GEMM kernel
    stays within the conv's error budget of float64 (tests/parity.py) in either memory format, and it is the
    same conv as nn.Conv2d."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(512, 1024, 3, padding=1)
    gemm = GemmConv2d(512, 1024, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
        conv.bias.copy_(torch.randn(1024, generator=g))
    gemm.load_state_dict(conv.state_dict())
    x = torch.rand(1, 512, 13, 13, generator=g) * 3
    with torch.inference_mode():
        exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        ours, plain = gemm(x), conv(x)
        channels_last = gemm.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    budget = conv_budget(x, conv.weight, conv.bias, padding=1)
    assert ((ours.double() - exact).abs() <= budget).all() and ((channels_last.double() - exact).abs() <= budget).all()
    assert (ours - plain).abs().max() < 1e-3 * exact.abs().max()


def test_three_backends_same_heads_and_boxes(model_files, images):
    """torch, ONNX Runtime and OpenCV DNN (no Winograd) each within its error budget of float64 on the raw heads
    of real images, pairwise within the sum; OpenCV with its default Winograd convs within its (looser) budget
    and gives the same boxes."""
    model, cfg, weights = model_files
    batch = preprocess_batch(images, model.input_size)
    specs = [h.spec for h in model.heads]
    names = ("torch", "onnxruntime", "opencv")
    backends = [make_backend(name, cfg, weights, batch=2, winograd=False) for name in names]
    assert [type(b) for b in backends] == [TorchBackend, OnnxRuntimeBackend, OpenCVBackend]
    heads = [b.raw(batch) for b in backends]
    refs = [reference(model, batch, name) for name in names]
    for got, ref in zip(heads, refs):
        assert_heads_close(got, ref.heads, specs, model.input_size, (ref,))  # vs float64
        assert_heads_close(got, heads[0], specs, model.input_size, (ref, refs[0]))  # vs torch
    assert_heads_close(heads[1], heads[2], specs, model.input_size, (refs[1], refs[2]))  # ORT vs OpenCV DNN
    winograd = make_backend("opencv", cfg, weights)
    assert winograd.winograd and not backends[2].winograd
    assert max_diff(winograd.raw(batch), heads[2]) > 0  # the setting takes effect
    assert excess(winograd.raw(batch), reference(model, batch, "opencv-winograd")) <= 1
    results = [b.detect(images, 0.1, 0.45) for b in [*backends, winograd]]
    assert sum(len(d) for d in results[0]) >= 3  # people (and ties) are found, so boxes are really compared
    for other in results[1:]:
        assert_same_boxes(results[0], other)


def test_opencv_head_layer_names(coco, coco_spec):
    net = cv2.dnn.readNetFromDarknet(str(coco.cfg), str(coco.weights))
    assert head_layer_names(list(net.getLayerNames()), coco_spec) == ["conv_15", "conv_22"]
    with pytest.raises(DarktuneError, match="permute_16"):
        head_layer_names(["conv_0", "yolo_16"], coco_spec)


def test_onnxruntime_static_batch_takes_any_batch_and_reads_cfg_from_metadata(coco_model, tmp_path):
    from darktune.deploy.onnx import export_onnx

    path = export_onnx(_small(coco_model), tmp_path / "m.onnx", batch=2, verify=False).path
    backend = OnnxRuntimeBackend(path)  # no spec: decoded with the cfg stored in the model
    assert backend.spec.num_classes == 80 and backend.net_hw == (128, 128) and backend.static_batch == 2
    x = np.random.default_rng(0).random((3, 3, 128, 128), dtype=np.float32)
    ref = torch_heads(_small(coco_model), x)
    got = backend.raw(x)  # 3 images through a batch-2 graph: padded, then trimmed
    assert [g.shape for g in got] == [r.shape for r in ref]
    budgets = [reference(_small(coco_model), x, name) for name in ("onnxruntime", "torch")]
    assert pair_excess(got, ref, *budgets) <= 1


def _small(model: Darknet) -> Darknet:
    small = Darknet(model.spec.with_size(128)).eval()
    small.load_state_dict(model.state_dict())
    return small


def test_backend_errors(coco, tmp_path):
    from darktune.darknet.load import load_darknet
    from darktune.deploy.onnx import export_onnx

    with pytest.raises(DarktuneError, match="unknown backend"):
        make_backend("tensorrt", coco.cfg, coco.weights)
    with pytest.raises(DarktuneError, match="needs --cfg and --weights"):
        make_backend("opencv", coco.cfg, None)
    with pytest.raises(DarktuneError, match="multiple of 32"):
        make_backend("torch", coco.cfg, coco.weights, size=100)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(DarktuneError, match="bad.onnx"):
        OnnxRuntimeBackend(bad)
    graph = export_onnx(load_darknet(coco.cfg, coco.weights, size=128)[0], tmp_path / "d.onnx", decode=True,
                        verify=False)
    with pytest.raises(DarktuneError, match="raw-heads"):
        OnnxRuntimeBackend(graph.path)
    raw = export_onnx(load_darknet(coco.cfg, coco.weights, size=128)[0], tmp_path / "r.onnx", verify=False).path
    with pytest.raises(DarktuneError, match="not --size 416"):
        make_backend("onnxruntime", None, None, onnx=raw, size=416)


def test_time_backends_and_summary(coco):
    backend = make_backend("torch", coco.cfg, coco.weights, size=64)
    times = time_backends([backend], np.zeros((1, 3, 64, 64), np.float32), iters=7, warmup=1, block=3)
    assert len(times["torch"].wall) == len(times["torch"].cpu) == 7 and min(times["torch"].wall) > 0
    s = latency_summary(Timings([0.010, 0.020, 0.030, 0.040], [0.02] * 4), batch=4)
    assert s["median_ms"] == pytest.approx(25.0) and s["images_per_s"] == pytest.approx(160.0)
    assert s["p90_ms"] == pytest.approx(37.0) and s["cpu_ms"] == pytest.approx(20.0)


def test_bench_infer_cli_json(coco, capsys):
    from darktune.cli import main

    rc = main(["bench", "infer", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--size", "96",
               "--iters", "3", "--warmup", "1", "--backend", "torch,opencv", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["backends"]) == {"torch", "opencv"} and report["batch"] == 1 and report["size"] == 96
    assert report["backends"]["opencv"]["speed_vs_opencv"] == pytest.approx(1.0)
    assert report["backends"]["torch"]["iters"] == 3 and report["fastest"] in report["backends"]
    assert main(["bench", "infer", "--backend", "torch,caffe", "--cfg", str(coco.cfg),
                 "--weights", str(coco.weights)]) == 2
    assert "unknown backend 'caffe'" in capsys.readouterr().err


def test_onnxruntime_refuses_a_cfg_that_decodes_the_model_differently(coco, coco_model, tmp_path):
    import dataclasses

    from darktune.deploy.onnx import export_onnx

    onnx = export_onnx(_small(coco_model), tmp_path / "coco.onnx", verify=False).path  # 80 classes at 128
    one = write_cfg(coco_model.spec.with_classes(1), tmp_path / "one.cfg")
    with pytest.raises(DarktuneError) as info:
        make_backend("onnxruntime", one, None, onnx=onnx)
    message = str(info.value)
    assert "coco.onnx" in message and "one.cfg" in message and "80 classes" in message and "1 class " in message
    # the same network with other anchors: the outputs fit, the boxes would not
    spec = coco_model.spec
    layers = list(spec.layers)
    i = spec.yolo_indices[0]
    layers[i] = dataclasses.replace(layers[i], anchors=tuple(a * 2 for a in layers[i].anchors))
    other = write_cfg(dataclasses.replace(spec, layers=tuple(layers)), tmp_path / "anchors.cfg")
    with pytest.raises(DarktuneError, match=r"yolo head 0: .*anchors.cfg has anchors=20,28.*stored in the model"):
        make_backend("onnxruntime", other, None, onnx=onnx)
    # the cfg it came from (at 416): accepted, run at the model's 128, with a note
    backend = make_backend("onnxruntime", coco.cfg, None, onnx=onnx)
    assert backend.net_hw == (128, 128) and "takes 128x128 input" in backend.notes[0]
    assert make_backend("onnxruntime", None, None, onnx=onnx).notes == []
