"""Export: ONNX (raw heads, in-graph decode + NMS, fp16, dynamic batch) and darknet cfg + weights, each checked
against darktune's torch model, ONNX Runtime and OpenCV DNN on a real photo and a synthetic scene.

Raw and decoded heads are compared within error budgets derived from the arithmetic (tests/parity.py): each
runtime against float64 within its budget, two runtimes within the sum of theirs; boxes after NMS must be the
same boxes.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from test_runtimes import (
    assert_heads_close,
    assert_same_boxes,
    person_model,
    synthetic_scene,
    torch_heads,
    write_model,
)

from darktune.deploy.runtimes import OpenCVBackend, ort_session
from darktune.cli import main
from darktune.data.formats.image import read_image
from darktune.deploy.detect import detect_from_heads, preprocess_batch
from darktune.errors import DarktuneError
from darktune.deploy.onnx import OnnxExport, export_onnx, graph_detections
from darktune.darknet.model import Darknet
from parity import decoded_budget, excess, reference


@pytest.fixture(scope="module")
def images(photo_path):
    photo = read_image(photo_path)
    return [photo, synthetic_scene(photo)]


@pytest.fixture(scope="module")
def one_class(coco_model, tmp_path_factory):
    """(model, cfg, weights, names) of a 1-class 'person' model written to disk."""
    model = person_model(coco_model)
    folder = tmp_path_factory.mktemp("one")
    cfg, weights = write_model(model, folder)
    names = folder / "obj.names"
    names.write_text("person\n")
    return model, cfg, weights, names


def _pair_budget(model, a: str, b: str, decoded: bool = False) -> float:
    """The largest budget (raw heads, or decoded boxes and scores) of runtime a against runtime b on the
    export's own check input: a bound for the max abs difference the export reports."""
    from darktune.deploy.onnx import verification_input

    x = verification_input(1, model.input_size)
    ra, rb = reference(model, x, a), reference(model, x, b)
    if not decoded:
        return max(float((p + q).max()) for p, q in zip(ra.budget, rb.budget))
    d = decoded_budget(ra, [h.spec for h in model.heads], model.input_size, rb)
    return max(float(d[..., 0:2].max() + d[..., 2:4].max() / 2), float((d[..., 4:5] + d[..., 5:]).max()))


def _torch_dets(model, images, conf=0.1, nms=0.45):
    batch = preprocess_batch(images, model.input_size)
    with torch.inference_mode():
        heads = model(torch.from_numpy(batch))
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    return detect_from_heads(heads, [h.spec for h in model.heads], model.input_size, sizes, conf, nms)


def test_export_onnx_cli_raw_heads(coco, coco_model, images, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "onnx", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--out", str(out),
                 "--names", str(coco.names), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == ["head_16", "head_23"] and report["batch"] == 1 and not report["fp16"]
    check = _pair_budget(coco_model, "onnxruntime", "torch")
    assert max(report["max_abs_diff"].values()) <= check  # the export's own check (vs the torch backend)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 416, 416]  # static shapes by default
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["darktune.outputs"] == "raw" and "classes=80" in meta["darktune.cfg"]
    assert meta["darktune.names"].splitlines()[27] == "tie"
    session = ort_session(out)
    batch = preprocess_batch(images, (416, 416))
    got = [np.concatenate(parts) for parts in zip(*(session.run(None, {"images": b[None]}) for b in batch))]
    specs = [h.spec for h in coco_model.heads]
    refs = {name: reference(coco_model, batch, name) for name in ("onnxruntime", "torch", "opencv")}
    assert excess(got, refs["onnxruntime"]) <= 1  # ONNX Runtime against float64
    assert_heads_close(got, torch_heads(coco_model, batch), specs, (416, 416), (refs["onnxruntime"], refs["torch"]))
    theirs = OpenCVBackend(coco.cfg, coco.weights, coco_model.spec, winograd=False).raw(batch)
    assert_heads_close(got, theirs, specs, (416, 416), (refs["onnxruntime"], refs["opencv"]))  # and OpenCV DNN
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    assert_same_boxes(detect_from_heads(got, specs, (416, 416), sizes, 0.1, 0.45), _torch_dets(coco_model, images))


@pytest.mark.parametrize("which", ["coco", "one-class"])
def test_decode_graph_same_boxes_as_postprocess(which, coco_model, one_class, images, tmp_path):
    model = coco_model if which == "coco" else one_class[0]
    result = export_onnx(model, tmp_path / "d.onnx", batch=None, decode=True, conf_thresh=0.1, nms_thresh=0.45,
                         verify=False)
    assert result.output_names == ["detections"]
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "NonMaxSuppression" in ops
    batch = preprocess_batch(images, model.input_size)
    out = ort_session(result.path).run(None, {"images": batch})[0]  # dynamic batch: both images at once
    assert out.ndim == 2 and out.shape[1] == 7 and out.dtype == np.float32
    assert set(np.unique(out[:, 0])) == {0.0, 1.0}
    assert (out[:, 1:5] >= -0.5).all() and (out[:, 1:5] <= 1.5).all()  # fractions of the input size
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    graph = graph_detections(out, 2, model.input_size, sizes)
    ours = _torch_dets(model, images)
    assert sum(len(d) for d in ours) >= 3
    assert_same_boxes(graph, ours)


def test_decode_export_check_covers_boxes(coco, coco_model, tmp_path, capsys):
    """At the default score threshold (0.25) the COCO model finds nothing on the check input, so the check
    compares the decoded tensors before NMS and reruns a copy of the graph at a lower threshold: detections
    are compared, and the CLI says at which threshold."""
    result = export_onnx(coco_model, tmp_path / "d.onnx", decode=True)
    assert result.candidates == (2535, 80)
    budget = _pair_budget(coco_model, "onnxruntime", "torch", decoded=True)  # boxes (xyxy) and scores
    assert result.max_abs_diff["boxes"] <= budget and result.max_abs_diff["scores"] <= budget
    assert result.detections == (0, 0)  # the premise: nothing above 0.25 on the synthetic input
    assert 0 < result.check_conf < 0.25
    graph, ours = result.check_detections
    assert graph == ours >= 5 and result.max_abs_diff["check_detections"] <= budget
    high = export_onnx(coco_model, tmp_path / "low.onnx", decode=True, conf_thresh=0.005)
    assert high.detections[0] == high.detections[1] >= 20 and high.check_conf is None  # no second run needed
    assert main(["export", "onnx", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--out",
                 str(tmp_path / "c.onnx"), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "no box to compare" in out and "lowered for the check" in out and "DIFFER" not in out
    assert f"{graph} detections in the graph, {ours} by darktune, max difference" in out


def test_fp16_decode_check_pairs_boxes_despite_score_noise(coco_model, tmp_path):
    """float16 noise (~4e-4 on scores) may swap near-equal scores: the check pairs each box with its nearest
    twin of the same class, so the difference reported is the noise, not a mismatched pair."""
    model = Darknet(coco_model.spec.with_size(256)).eval()
    model.load_state_dict(coco_model.state_dict())
    result = export_onnx(model, tmp_path / "h.onnx", decode=True, fp16=True)
    counts = result.check_detections or result.detections
    assert counts[0] == counts[1] >= 5
    assert result.max_abs_diff.get("check_detections", result.max_abs_diff["detections"]) < 5e-3
    assert result.max_abs_diff["scores"] < 5e-3


def test_decode_check_without_any_box_says_so():
    from darktune.cli.export import decode_check_lines

    result = OnnxExport(None, "images", ["detections"], 1, (64, 64), False, True, detections=(0, 0),
                        candidates=(1, 1), max_abs_diff={"boxes": 0.0, "scores": 0.0, "detections": 0.0})
    lines = decode_check_lines(result, 0.25)
    assert "1 box x 1 class" in lines[0]
    assert lines[-1].startswith("the comparison after NMS covered no box")
    result.detections, result.max_abs_diff["detections"] = (3, 2), float("inf")
    assert "DIFFER" in "\n".join(decode_check_lines(result, 0.25))


def test_fp16_export_float32_io(coco_model, images, tmp_path):
    model = Darknet(coco_model.spec.with_size(256)).eval()  # smaller input: float16 convs are slow on CPU
    model.load_state_dict(coco_model.state_dict())
    result = export_onnx(model, tmp_path / "h.onnx", fp16=True)
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in proto.graph.output)
    conv_weights = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert conv_weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_weights)
    assert max(result.max_rel_diff.values()) < 1e-2
    assert result.path.stat().st_size < 0.6 * 35_434_956
    batch = preprocess_batch(images[:1], (256, 256))
    got = ort_session(result.path).run(None, {"images": batch})
    dets = detect_from_heads(got, [h.spec for h in model.heads], (256, 256),
                             [(images[0].shape[1], images[0].shape[0])], 0.3, 0.45)[0]
    ref = _torch_dets(model, images[:1], 0.3)[0]
    assert len(ref) >= 1
    assert sorted(dets[:, 5].tolist()) == sorted(ref[:, 5].tolist())  # same objects, boxes within fp16 noise
    assert np.abs(np.sort(dets[:, 4]) - np.sort(ref[:, 4])).max() < 0.02


def test_export_darknet_loads_in_opencv_with_same_detections(coco, one_class, images, tmp_path, capsys):
    model, _, weights, names = one_class
    out = tmp_path / "deploy"
    # the COCO cfg (classes=80, filters=255) with 1-class weights: the export fixes classes and filters
    assert main(["export", "darknet", "--cfg", str(coco.cfg), "--weights", str(weights), "--names", str(names),
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == 1 and report["max_abs_diff"] <= _pair_budget(model, "opencv", "torch")
    text = (out / "model.cfg").read_text()
    assert text.count("classes=1\n") == 2 and text.count("filters=18\n") == 2 and "filters=255" not in text
    assert (out / "model.weights").read_bytes() == weights.read_bytes()
    assert (out / "model.names").read_text() == "person\n"
    assert "classes = 1" in (out / "obj.data").read_text()
    theirs = OpenCVBackend(out / "model.cfg", out / "model.weights", model.spec).detect(images, 0.1, 0.45)
    assert_same_boxes(theirs, _torch_dets(model, images))


def test_export_darknet_from_run_folder(one_class, tmp_path, capsys):
    _, cfg, weights, _names = one_class
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "model.cfg").write_bytes(cfg.read_bytes())
    (run / "weights" / "best.weights").write_bytes(weights.read_bytes())
    (run / "weights" / "last.weights").write_bytes(b"\0" * 20)  # best wins
    (run / "obj.names").write_text("window\n")
    assert main(["export", "darknet", "--run", str(run), "--out", str(tmp_path / "out"), "--stem", "window"]) == 0
    assert "(1 class)" in capsys.readouterr().out
    assert (tmp_path / "out" / "window.names").read_text() == "window\n"
    assert (tmp_path / "out" / "window.weights").read_bytes() == weights.read_bytes()


def test_export_errors(coco, one_class, tmp_path, capsys):
    _, cfg, weights, _names = one_class
    cases = [
        (["darknet", "--cfg", str(cfg), "--weights", str(weights), "--out", str(cfg.parent)], "overwrite"),
        (["darknet", "--cfg", str(cfg), "--weights", str(weights), "--names", str(coco.names),
          "--out", str(tmp_path / "o")], "80 names for a model with 1 class\n"),
        (["onnx", "--run", str(tmp_path), "--out", str(tmp_path / "m.onnx")], "no model.cfg in the run folder"),
        (["onnx", "--cfg", str(cfg), "--out", str(tmp_path / "m.onnx")], "give --run RUN, or --cfg and --weights"),
        (["onnx", "--cfg", str(coco.cfg), "--weights", str(coco.names), "--out", str(tmp_path / "m.onnx")],
         "coco.names"),
    ]
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert cfg.read_bytes() and not (tmp_path / "m.onnx").exists()
    with pytest.raises(DarktuneError, match="batch"):
        export_onnx(None, tmp_path / "x.onnx", batch=0)


def _export_fails(argv, message, capsys):
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_export_out_that_is_the_wrong_kind_of_path_is_refused(one_class, tmp_path, capsys):
    _, cfg, weights, _names = one_class
    model_args = ["--cfg", str(cfg), "--weights", str(weights)]
    folder, file = tmp_path / "dk", tmp_path / "exist.onnx"
    folder.mkdir()
    file.write_bytes(b"keep")
    _export_fails(["onnx", *model_args, "--out", str(folder)], f"{folder}: is a folder; --out names the .onnx",
                  capsys)
    _export_fails(["darknet", *model_args, "--out", str(file)], f"{file}: is not a folder", capsys)
    _export_fails(["onnx", *model_args, "--out", str(file / "m.onnx")], f"{file}: is not a folder", capsys)
    _export_fails(["darknet", *model_args, "--out", str(file / "sub")], f"{file}: is not a folder", capsys)
    (folder / "model.cfg").mkdir()  # a target of the export that is a folder: refused even with --overwrite
    _export_fails(["darknet", *model_args, "--out", str(folder), "--overwrite"],
                  f"{folder / 'model.cfg'}: is not a regular file", capsys)
    assert file.read_bytes() == b"keep" and sorted(p.name for p in folder.iterdir()) == ["model.cfg"]


def test_export_refuses_to_overwrite_without_overwrite(one_class, tmp_path, capsys):
    _, cfg, weights, _names = one_class
    model_args = ["--cfg", str(cfg), "--weights", str(weights), "--size", "128"]
    onnx_out = tmp_path / "m.onnx"
    onnx_out.write_bytes(b"old")
    _export_fails(["onnx", *model_args, "--out", str(onnx_out)],
                  f"{onnx_out}: already exists; pass --overwrite to replace it, or choose another --out", capsys)
    assert onnx_out.read_bytes() == b"old"
    assert main(["export", "onnx", *model_args, "--out", str(onnx_out), "--overwrite", "--json"]) == 0
    capsys.readouterr()
    assert onnx.load(str(onnx_out)).producer_name == "darktune"

    out = tmp_path / "deploy"
    out.mkdir()  # an empty folder is fine
    assert main(["export", "darknet", *model_args, "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["model.cfg", "model.names", "model.weights", "obj.data"]
    _export_fails(["darknet", *model_args, "--out", str(out)],
                  f"{out}: already holds an export (model.cfg, model.weights, model.names, obj.data); pass "
                  "--overwrite to replace it, or choose another --out", capsys)
    (out / "model.cfg").unlink()
    (out / "model.weights").unlink()
    (out / "model.names").unlink()
    _export_fails(["darknet", *model_args, "--out", str(out)], "already holds an export (obj.data)", capsys)
    assert [p.name for p in out.iterdir()] == ["obj.data"]


def _at(model: Darknet, size: int) -> Darknet:
    small = Darknet(model.spec.with_size(size)).eval()
    small.load_state_dict(model.state_dict())
    return small


def test_export_darknet_overwrite_leaves_no_stale_names(coco, coco_model, one_class, tmp_path, capsys):
    """An 80-class model without names exported over a 1-class export: every file is the new model's."""
    _, cfg, weights, names = one_class
    out = tmp_path / "deploy"
    assert main(["export", "darknet", "--cfg", str(cfg), "--weights", str(weights), "--names", str(names),
                 "--size", "128", "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "model.names").read_text() == "person\n"
    bare = tmp_path / "bare"  # the COCO cfg alone: no names file beside it
    bare.mkdir()
    (bare / "yolov3-tiny.cfg").write_bytes(coco.cfg.read_bytes())
    assert main(["export", "darknet", "--cfg", str(bare / "yolov3-tiny.cfg"), "--weights", str(coco.weights),
                 "--size", "128", "--out", str(out), "--overwrite", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["classes"] == 80 and report["placeholder_names"]
    assert report["max_abs_diff"] <= _pair_budget(_at(coco_model, 128), "opencv", "torch")
    assert "holds placeholders class_0 .. class_79; edit it or export again with --names" in captured.err
    assert (out / "model.names").read_text().splitlines() == [f"class_{i}" for i in range(80)]
    data = (out / "obj.data").read_text()
    assert "classes = 80\n" in data and f"names = {(out / 'model.names').resolve()}\n" in data
    assert "classes=80" in (out / "model.cfg").read_text()
    assert (out / "model.weights").read_bytes() == coco.weights.read_bytes()


def test_export_finds_names_beside_the_cfg_as_detect_does(coco, tmp_path, capsys):
    """The fetched COCO model: coco.names beside yolov3-tiny.cfg (the folder's only .names file)."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "yolov3-tiny.cfg").write_bytes(coco.cfg.read_bytes())
    (zoo / "coco.names").write_bytes(coco.names.read_bytes())
    model_args = ["--cfg", str(zoo / "yolov3-tiny.cfg"), "--weights", str(coco.weights), "--size", "128"]
    assert main(["export", "darknet", *model_args, "--out", str(tmp_path / "dk"), "--json"]) == 0
    captured = capsys.readouterr()
    assert not json.loads(captured.out)["placeholder_names"]
    assert f"class names from {zoo / 'coco.names'}" in captured.err
    assert (tmp_path / "dk" / "model.names").read_text().splitlines()[27] == "tie"
    assert main(["export", "onnx", *model_args, "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    capsys.readouterr()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["darktune.names"].splitlines()[27] == "tie"
    # <cfg stem>.names wins over the folder's other names; a found file with another class count is not used
    (zoo / "yolov3-tiny.names").write_text("person\n")
    assert main(["export", "onnx", *model_args, "--out", str(tmp_path / "n.onnx")]) == 0
    err = capsys.readouterr().err  # (the count's wording comes from darktune.deploy.detect.read_names)
    assert f"note: {zoo / 'yolov3-tiny.names'}: 1 " in err and "for a model with 80 classes; not used" in err
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "n.onnx")).metadata_props}
    assert "darktune.names" not in meta


@pytest.mark.slow
def test_model_trained_by_darktune_train_exports_to_opencv(coco, images, tmp_path, capsys):
    """A real `darktune train` run (2 iterations from COCO conv.15 on 4 synthetic window images) exported with
    --run: names come from the run's dataset, OpenCV DNN gives darktune's detections on the written files."""
    from darktune.darknet.load import load_darknet
    from darktune.data.synth.sets import make_target_set
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    data = make_target_set(tmp_path / "target", 4, 96, seed=0)
    run = tmp_path / "run"
    # darknet's objectness start (0.5): after 2 iterations the new heads still give boxes above 0.05 to compare
    # (at darktune's default start, 0.01, they give none yet)
    train(TrainConfig(cfg=str(coco.cfg), data=str(data), weights=str(coco.weights), upto=15, iterations=2,
                      batch=2, size=64, out=str(run), augment=False, log_every=100, obj_prior=0.5))
    capsys.readouterr()
    out = tmp_path / "deploy"
    assert main(["export", "darknet", "--run", str(run), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == 1
    assert report["max_abs_diff"] <= _pair_budget(load_darknet(out / "model.cfg", out / "model.weights")[0], "opencv",
                                                  "torch")
    assert (out / "model.names").read_text() == "window\n"
    assert (out / "model.weights").read_bytes() == (run / "weights" / "best.weights").read_bytes()
    assert (out / "model.weights").stat().st_mode & 0o044  # readable by others (umask allowing)
    model, _ = load_darknet(out / "model.cfg", out / "model.weights")
    scenes = images + [read_image(min((tmp_path / "target" / "images").glob("*.jpg")))]
    ours = _torch_dets(model, scenes, conf=0.05)
    assert sum(len(d) for d in ours) >= 1
    theirs = OpenCVBackend(out / "model.cfg", out / "model.weights", model.spec).detect(scenes, 0.05, 0.45)
    assert_same_boxes(theirs, ours)


def test_onnx_nms_semantics_at_equality_match_darktune():
    """ONNX Runtime's NonMaxSuppression keeps score > threshold (not >=) and suppresses IoU > threshold (not
    >=), as darknet and darktune.darknet.boxes.nms do: a box at exactly IoU 0.5 survives, a score of exactly 0.25
    does not."""
    from onnx import TensorProto, helper

    from darktune.darknet.boxes import nms

    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "m", "iou", "thresh"], ["selected"])], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 3])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        initializer=[helper.make_tensor("m", TensorProto.INT64, [1], [10]),
                     helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5]),
                     helper.make_tensor("thresh", TensorProto.FLOAT, [1], [0.25])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    boxes = np.array([[[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6]]], np.float32)  # IoU(0, 1) = 0.5 exactly
    scores = np.array([[[0.9, 0.8, 0.25]]], np.float32)
    selected = session.run(None, {"boxes": boxes, "scores": scores})[0][:, 2].tolist()
    keep = torch.tensor(scores[0, 0] > 0.25).nonzero().flatten()
    ours = keep[nms(torch.from_numpy(boxes[0])[keep], torch.from_numpy(scores[0, 0])[keep], 0.5)].tolist()
    assert selected == ours == [0, 1]
