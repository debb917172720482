"""Export a `Darknet` model for edge runtimes: ONNX (raw heads, or decode + NMS in the graph), checked against
darktune's own torch model right after it is written. The darknet export (cfg + weights + names, checked in
OpenCV DNN) and the loading of a trained run that both use live in darktune/export_darknet.py.

ONNX (`export_onnx`), made with the TorchScript-based exporter (`torch.onnx.export(dynamo=False)`):
- input `images`: (B, 3, H, W) float32, RGB in [0, 1], plain resize as `darktune.deploy.detect.preprocess`.
- raw (default): one output per [yolo] layer i, named `head_<i>` (e.g. `head_16`, `head_23` for yolov3-tiny):
  the raw conv output that feeds that yolo layer, (B, A*(5+C), H/s, W/s) float32, no sigmoid/exp applied;
  decode with `darktune.darknet.boxes.decode` (anchors are in the cfg stored in the model's metadata).
- decode (`decode=True`): one output `detections` (K, 7) float32 rows [batch_index, x1, y1, x2, y2, score,
  class], boxes as fractions (0..1) of the network input's width/height, score = objectness * class
  probability; NMS is the ONNX NonMaxSuppression op, per class, with the threshold and IoU fixed at export
  (score > conf_thresh, suppress when IoU > nms_thresh: darknet's semantics). Rows come grouped by image, then
  class, by descending score. `graph_detections` maps them onto original-image pixels.
- the check of a decode graph (`verify`) compares, on a fixed synthetic input, the decoded boxes and scores that
  enter NMS (every candidate, before any threshold; read from a copy of the graph with them as extra outputs)
  and the detections after NMS at the export's threshold; when that threshold leaves fewer than
  `CHECK_MIN_DETECTIONS` on the check input, the copy is also run with a lower score threshold, so the
  comparison after NMS covers boxes (`OnnxExport.check_conf`).
- static shapes by default (TensorRT-friendly); `batch=None` makes the batch axis dynamic (`batch`).
- batch norm is folded into the convs in float64 (`darktune.deploy.fuse.fuse_model`), so the graph holds the same
  float32 weights as darktune's torch backend runs; `fp16=True` stores weights and computes in
  float16, while the graph's input and outputs stay float32 (casts inside the graph).
- metadata_props: `darktune.cfg` (cfg text at the exported size), `darktune.outputs` (`raw` | `detections`),
  `darktune.names` (newline-separated, if given), thresholds for decode graphs.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from darktune.darknet.boxes import (
    ImageGeometry,
    cxcywh_to_xyxy,
    decode,
    nms,
    postprocess,
    xyxy_to_cxcywh,
)
from darktune.darknet.cfg import format_cfg, parse_cfg_text
from darktune.darknet.memory import check_memory
from darktune.deploy.fuse import fuse_model
from darktune.devices import cpu_count, parse_device
from darktune.errors import DarktuneError, optional_import
from darktune.files import atomic_write_bytes, blocking_file

INPUT_NAME = "images"
DEFAULT_OPSET = 17
CHECK_MIN_DETECTIONS = 20  # fewer at the export threshold: the decode check also runs at a lower one
DECODE_TOLERANCE = 1e-5  # the same heads decoded with the stored cfg and with the model's (float32 rounding)


@dataclass
class OnnxExport:
    path: Path
    input_name: str
    output_names: list[str]
    batch: int | None  # None: dynamic
    net_hw: tuple[int, int]
    fp16: bool
    decode: bool
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # vs darktune's torch backend, per output
    max_rel_diff: dict[str, float] = field(default_factory=dict)  # max abs diff / max |torch output|
    # decode graphs (see the module docstring): max_abs_diff has "boxes" and "scores" (before NMS, over
    # `candidates` boxes x classes) and "detections" (after NMS, inf when the counts differ), plus
    # "check_detections" at check_conf when the check lowered the threshold
    detections: tuple[int, int] | None = None  # (graph, darktune) detection counts at the export's threshold
    candidates: tuple[int, int] | None = None  # (boxes, classes) entering NMS on the check input
    check_conf: float | None = None  # the lowered score threshold of the check, if it needed one
    check_detections: tuple[int, int] | None = None  # (graph, darktune) detection counts at check_conf

    def to_dict(self) -> dict:
        return {"path": str(self.path), "input": self.input_name, "outputs": self.output_names,
                "batch": self.batch if self.batch is not None else "dynamic", "size": list(self.net_hw),
                "fp16": self.fp16, "decode": self.decode, "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff,
                "detections": list(self.detections) if self.detections else None,
                "candidates": list(self.candidates) if self.candidates else None, "check_conf": self.check_conf,
                "check_detections": list(self.check_detections) if self.check_detections else None}


class _Half(nn.Module):
    """float32 in -> float16 network -> float32 heads out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h.float() for h in self.net(x.half())]


class _OnnxNMS(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes (B, N, 4) corners, scores (B, C, N) -> selected (K, 3) int64
    [batch, class, box]. The eager forward (run while tracing) is darktune's NMS with the same semantics."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou: float, thresh: float):
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = torch.nonzero(scores[b, c] > thresh).flatten()
                keep = idx[nms(boxes[b, idx], scores[b, c, idx], iou)][:max_per_class]
                rows += [(b, c, int(i)) for i in keep]
        return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, thresh: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([thresh], dtype=torch.float32)),
                    center_point_box_i=0)


class _DecodeNMS(nn.Module):
    """Raw heads -> decode (darktune.darknet.boxes.decode) -> class-wise NMS -> (K, 7) detections."""

    def __init__(self, net: nn.Module, specs: list, net_hw: tuple[int, int], conf: float, iou: float,
                 max_det: int):
        super().__init__()
        self.net, self.specs, self.net_hw = net, specs, net_hw
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = decode(self.net(x), self.specs, self.net_hw)  # (B, N, 5+C)
        boxes = cxcywh_to_xyxy(decoded[..., :4])  # (B, N, 4) fractions of the input
        scores = (decoded[..., 4:5] * decoded[..., 5:]).transpose(1, 2)  # (B, C, N)
        sel = _OnnxNMS.apply(boxes, scores, self.max_det, self.iou, self.conf)  # (K, 3)
        b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
        n, k = boxes.shape[1], scores.shape[1]
        det_boxes = boxes.reshape(-1, 4).index_select(0, b * n + i)
        det_scores = scores.reshape(-1).index_select(0, (b * k + c) * n + i)
        return torch.cat((b[:, None].float(), det_boxes, det_scores[:, None], c[:, None].float()), 1)


def check_parents(path: Path) -> None:
    """The nearest existing path above `path` must be a folder (else mkdir would fail with a traceback)."""
    parent = blocking_file(path.parent)
    if parent is not None:
        raise DarktuneError(f"is not a folder, so {path} cannot be written there", path=str(parent))


def check_onnx_out(out: str | Path, overwrite: bool = False) -> Path:
    """`out` as the .onnx file to write: not a folder, and not an existing file unless `overwrite`."""
    out = Path(out)
    if out.is_dir():
        raise DarktuneError(f"is a folder; --out names the .onnx file to write (e.g. {out / 'model.onnx'})",
                            path=str(out))
    if out.exists() and not out.is_file():
        raise DarktuneError("is not a regular file; --out names the .onnx file to write", path=str(out))
    check_parents(out)
    if out.exists() and not overwrite:
        raise DarktuneError("already exists; pass --overwrite to replace it, or choose another --out", path=str(out))
    return out


def export_onnx(model: nn.Module, out: str | Path, *, batch: int | None = 1, fp16: bool = False,
                decode: bool = False, opset: int = DEFAULT_OPSET, conf_thresh: float = 0.25,
                nms_thresh: float = 0.45, max_det: int = 1000, names: list[str] | None = None,
                verify: bool = True, overwrite: bool = False) -> OnnxExport:
    """Write `model` (a `Darknet`, at its spec's input size) as ONNX; see the module docstring for the
    graph's contract. An existing `out` is refused unless `overwrite`. With `verify`, ONNX Runtime runs it at
    once and the differences to torch are recorded."""
    onnx = optional_import("onnx", "export", "ONNX export")
    if verify:  # checked before the export's work, not after it
        optional_import("onnxruntime", "export", "verifying the ONNX export")

    if batch is not None and batch < 1:
        raise DarktuneError(f"batch must be >= 1 or dynamic, got {batch}")
    out = check_onnx_out(out, overwrite)
    spec, net_hw = model.spec, model.input_size
    # the trace and the check hold the batch in torch and in ONNX Runtime at once
    check_memory(spec, 2 * (batch or 2), "cpu", what=f"exporting {spec.path}", advice="use a smaller --batch or --size")
    net: nn.Module = fuse_model(model, precise=False).cpu()  # precise: a CPU kernel choice, same graph
    if fp16:
        net = _Half(net)
    heads = [f"head_{i}" for i in spec.yolo_indices]
    if decode:
        net = _DecodeNMS(net, [spec.layers[i] for i in spec.yolo_indices], net_hw, conf_thresh, nms_thresh,
                         max_det)
    outputs = ["detections"] if decode else heads
    dynamic = {INPUT_NAME: {0: "batch"}, **({} if decode else {o: {0: "batch"} for o in outputs})}
    x = torch.rand(batch or 2, 3, *net_hw, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="darktune-export-") as tmp:
        raw_path = Path(tmp) / "model.onnx"
        _torch_export(net, x, raw_path, outputs, opset, dynamic if batch is None else None)
        proto = onnx.load(str(raw_path))
    meta = {"darktune.cfg": format_cfg(spec), "darktune.outputs": "detections" if decode else "raw",
            "darktune.input": "RGB float [0,1], plain resize, NCHW", "darktune.fp16": str(int(fp16))}
    if decode:
        meta.update({"darktune.conf_thresh": str(conf_thresh), "darktune.nms_thresh": str(nms_thresh),
                     "darktune.darknet.boxes": "normalised xyxy of the network input"})
    if names:
        meta["darktune.names"] = "\n".join(names)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "darktune"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DarktuneError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from None

    atomic_write_bytes(out, proto.SerializeToString())
    result = OnnxExport(out, INPUT_NAME, outputs, batch, net_hw, fp16, decode)
    if verify:
        _verify(result, model, conf_thresh, nms_thresh)
    return result


def _torch_export(net: nn.Module, x: torch.Tensor, path: Path, outputs: list[str], opset: int,
                  dynamic: dict | None) -> None:
    with warnings.catch_warnings():
        # static shapes are intended: the tracer's notes about Python ints taken from shapes are expected
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net.eval(), (x,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=outputs, opset_version=opset, dynamic_axes=dynamic,
                              do_constant_folding=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise DarktuneError(f"torch.onnx.export failed (opset {opset}): {str(exc).splitlines()[0]}") from None


def ort_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session with all graph optimisations (BN folding, conv+activation fusion, NCHWc
    layouts), one intra-op thread per CPU, no spinning."""
    ort = optional_import("onnxruntime", "export", "the onnxruntime backend")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    # No spin-waiting between runs: as fast on an idle machine (26.6 vs 26.4 ms, yolov3-tiny 416, 2 cores) and
    # much faster when other processes want the CPUs (92 vs 119 ms median at load ~7; spinning threads that
    # get preempted stall the others).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    dev = parse_device(device)  # ONNX Runtime has its own CUDA: torch's build does not matter here
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DarktuneError(f"--device {device}: this onnxruntime build has no CUDAExecutionProvider "
                                "(install onnxruntime-gpu)")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": dev.index or 0}))
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    failures = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidArgument, ort_errors.NoSuchFile,
                ort_errors.InvalidGraph, ort_errors.NotImplemented, ort_errors.RuntimeException, OSError)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except failures as exc:
        raise DarktuneError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}",
                            path=str(path)) from None


def verification_input(batch: int, net_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A fixed image-like batch: smooth random colour fields (not white noise, so heads see structure)."""
    rng = np.random.default_rng(seed)
    h, w = net_hw
    coarse = rng.random((batch, 3, h // 32 + 1, w // 32 + 1)).astype(np.float32)
    t = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear",
                                        align_corners=False)
    return t.clamp(0, 1).numpy()


def _verify(result: OnnxExport, model: nn.Module, conf: float, iou: float) -> None:
    session = ort_session(result.path)
    x = verification_input(result.batch or 2, result.net_hw)
    got = session.run(None, {result.input_name: x})
    with torch.inference_mode():
        ref = fuse_model(model).cpu()(torch.from_numpy(x))  # as the torch backend runs it
    if not result.decode:
        for name, g, r in zip(result.output_names, got, ref):
            diff = float(np.abs(g - r.numpy()).max())
            result.max_abs_diff[name] = diff
            result.max_rel_diff[name] = diff / max(float(np.abs(r.numpy()).max()), 1e-12)
        _check_decoded(result, session, got, ref, model)
        return
    decoded = decode(list(ref), [h.spec for h in model.heads], result.net_hw)  # (B, N, 5+C)
    ours = _postprocess_fractions(decoded, result.net_hw, conf, iou)
    theirs = graph_detections(got[0], len(x), result.net_hw, [(1, 1)] * len(x))
    result.detections = (sum(len(t) for t in theirs), sum(len(o) for o in ours))
    result.max_abs_diff["detections"] = _max_box_diff(theirs, ours)
    # the copy of the graph: NMS inputs as outputs, and a lower threshold when the export's left few boxes
    ref_boxes = cxcywh_to_xyxy(decoded[..., :4]).numpy()  # (B, N, 4)
    ref_scores = (decoded[..., 4:5] * decoded[..., 5:]).transpose(1, 2).numpy()  # (B, C, N)
    result.candidates = (ref_scores.shape[0] * ref_scores.shape[2], ref_scores.shape[1])
    if result.detections[1] < CHECK_MIN_DETECTIONS:
        result.check_conf = _check_threshold(ref_scores, conf)
    with tempfile.TemporaryDirectory(prefix="darktune-check-") as tmp:
        check_path = Path(tmp) / "check.onnx"
        check_path.write_bytes(_check_graph(result.path, result.check_conf))
        det, boxes, scores = ort_session(check_path).run(None, {result.input_name: x})
    result.max_abs_diff["boxes"] = float(np.abs(boxes - ref_boxes).max())
    result.max_abs_diff["scores"] = float(np.abs(scores - ref_scores).max())
    if result.check_conf is not None:
        theirs = graph_detections(det, len(x), result.net_hw, [(1, 1)] * len(x))
        ours = _postprocess_fractions(decoded, result.net_hw, result.check_conf, iou)
        result.check_detections = (sum(len(t) for t in theirs), sum(len(o) for o in ours))
        result.max_abs_diff["check_detections"] = _max_box_diff(theirs, ours)


def _check_decoded(result: OnnxExport, session, got: list, ref: list, model: nn.Module) -> None:
    """The raw heads decoded as a runtime decodes them, with the cfg stored in the file (scale_x_y, new_coords,
    anchors, masks: every key that changes the decode): equal raw heads prove nothing when the stored cfg decodes
    them otherwise. The graph's own heads decoded with the stored cfg and with the model's heads must give the
    same boxes (a difference is the cfg's, not float noise: past DECODE_TOLERANCE, relative, the export is
    refused); max_abs_diff["decoded"] says how far the graph's boxes, objectness and class probabilities are
    from torch's, end to end."""
    meta = session.get_modelmeta().custom_metadata_map
    stored = parse_cfg_text(meta.get("darktune.cfg", ""), f"{result.path}:metadata")
    heads = [torch.from_numpy(g).float() for g in got]
    theirs = decode(heads, [stored.layers[i] for i in stored.yolo_indices], result.net_hw)
    as_model = decode(heads, [h.spec for h in model.heads], result.net_hw)
    ours = decode(list(ref), [h.spec for h in model.heads], result.net_hw)
    same = theirs.shape == ours.shape
    result.max_abs_diff["decoded"] = float((theirs - ours).abs().max()) if same else float("inf")
    # relative past 1 (a box of exp(t) anchors can be many input sizes wide), absolute below
    diff = float(((theirs - as_model).abs() / as_model.abs().clamp(min=1)).max()) if same else float("inf")
    result.max_rel_diff["decoded"] = diff
    if not diff <= DECODE_TOLERANCE:
        raise DarktuneError(f"written, but the cfg stored in it decodes its heads to other boxes than the model "
                            f"does (max relative difference {diff:.3g}): do not use it", path=str(result.path))


def _postprocess_fractions(decoded: torch.Tensor, net_hw: tuple[int, int], conf: float, iou: float
                           ) -> list[np.ndarray]:
    """darktune's detections, boxes as fractions of the input (as graph_detections gives them for size (1, 1))."""
    return [o.numpy() for o in postprocess(decoded, [ImageGeometry(1, 1)] * len(decoded), net_hw, conf, iou)]


def _check_threshold(scores: np.ndarray, conf: float, want: int = CHECK_MIN_DETECTIONS) -> float | None:
    """A score threshold below `conf` that lets through at least `want` of the highest (box, class) scores of
    the check input (10x that at most; NMS thins them), placed mid-way in the widest gap between neighbouring
    scores there, so that float noise between ONNX Runtime and torch cannot move a candidate across it.
    None when no candidate scores above 0."""
    top = np.sort(scores[scores > 0].ravel())[::-1][: 10 * want + 1]
    if len(top) == 0:
        return None
    lo = max(want - 1, int((top >= conf).sum()))
    if lo >= len(top) - 1:  # few candidates at all: take every one
        return min(float(top[-1]), conf) / 2
    window = top[lo:]
    i = int(np.argmax(window[:-1] - window[1:]))
    return float(window[i] + window[i + 1]) / 2


def _check_graph(path: Path, thresh: float | None) -> bytes:
    """A copy of the decode graph at `path` with the decoded boxes (B, N, 4) and scores (B, C, N) that enter
    NonMaxSuppression as extra outputs, and, if `thresh` is given, NMS's score threshold set to it."""
    onnx = optional_import("onnx", "export", "ONNX export")
    from onnx import TensorProto, helper

    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "NonMaxSuppression")
    for name in node.input[:2]:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    if thresh is not None:
        old = node.input[4]
        proto.graph.initializer.append(helper.make_tensor("darktune_check_thresh", TensorProto.FLOAT, [1],
                                                          [thresh]))
        node.input[4] = "darktune_check_thresh"
        if not any(old in n.input for n in proto.graph.node):  # the old threshold's Constant: unused now
            for n in [n for n in proto.graph.node if old in n.output]:
                proto.graph.node.remove(n)
    return proto.SerializeToString()


def _max_box_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Max difference between two detection lists, rows (x1, y1, x2, y2, score, class), inf when their counts
    differ, 0 when both are empty (then the comparison covered no box). Each row is paired with the nearest
    row of its class in the other list (both ways), so near-equal scores that swap order do not pair the
    wrong boxes."""
    worst = 0.0
    for x, y in zip(a, b):
        if len(x) != len(y):
            return float("inf")
        for cls in np.unique(x[:, 5]):
            xc, yc = x[x[:, 5] == cls, :5], y[y[:, 5] == cls, :5]
            if len(xc) != len(yc):
                return float("inf")
            gap = np.abs(xc[:, None, :] - yc[None, :, :]).max(2)  # (n, n): worst coordinate of each pairing
            worst = max(worst, float(gap.min(1).max()), float(gap.min(0).max()))
    return worst


def graph_detections(detections: np.ndarray, batch: int, net_hw: tuple[int, int],
                     image_sizes: list[tuple[int, int]], letterbox: bool = False) -> list[np.ndarray]:
    """(K, 7) output of a decode graph -> per image (n, 6) [x1, y1, x2, y2, score, class] in pixels of the
    original image of (width, height) `image_sizes`, as `darktune.darknet.boxes.postprocess` returns them."""
    det = torch.as_tensor(np.asarray(detections, dtype=np.float32))
    out = []
    for b in range(batch):
        rows = det[det[:, 0] == b]
        geo = ImageGeometry(image_sizes[b][0], image_sizes[b][1], letterbox)
        boxes = geo.to_image(xyxy_to_cxcywh(rows[:, 1:5]), net_hw)
        out.append(torch.cat((boxes, rows[:, 5:7]), 1).numpy())
    return out
