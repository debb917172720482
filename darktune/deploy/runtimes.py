"""Inference backends behind one interface: torch, ONNX Runtime and OpenCV DNN.

Every backend turns a preprocessed batch (B, 3, H, W) float32 RGB in [0, 1] (`darktune.deploy.detect.preprocess`)
into the raw output of each [yolo] head's conv, (B, A*(5+C), H', W') float32 numpy arrays, in layer order.
Preprocessing, decoding and NMS are darktune's own and shared by all backends (`Backend.detect`), so the
backends differ only in who runs the convolutions.

- torch: an inference copy of `Darknet` (`darktune.deploy.fuse.fuse_model`: batch norm folded in float64, long dot
  products on the accurate GEMM kernel), channels-last on CPU.
- onnxruntime: a raw-heads ONNX model (`darktune.deploy.onnx.export_onnx`, the same folded weights), all graph
  optimisations on.
- opencv: `cv2.dnn.readNetFromDarknet` on the cfg + weights; we read the outputs that feed its yolo layers.
  OpenCV folds batch norm itself (in float32) and by default runs 3x3 convs as Winograd (`winograd=False`
  for exact parity).

Parity (raw heads of yolov3-tiny at 416, COCO weights, max abs difference on real images, heads of magnitude
~25; tests/deploy/test_runtimes.py): each runtime is within 1e-4 of a float64 run of the unfused model, except
OpenCV with Winograd (~2.4e-4), so torch, ONNX Runtime and OpenCV without Winograd agree within 1e-4.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from darktune.darknet.cfg import NetworkSpec, parse_cfg, parse_cfg_text, YoloSpec
from darktune.devices import cpu_count, parse_device, resolve_device
from darktune.darknet.load import load_darknet
from darktune.deploy.decoded import DecodedOnnxBackend, is_decode_graph
from darktune.deploy.detect import detect_from_heads, preprocess_batch
from darktune.deploy.fuse import fuse_model
from darktune.deploy.onnx import export_onnx, ort_session
from darktune.errors import DarktuneError

BACKENDS = ("torch", "onnxruntime", "opencv")


def inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of a `Darknet` for inference only, as the torch backend runs it: batch norm folded into the
    convs in float64 (rounded once), long-dot-product convs on torch's accurate GEMM kernel, eval mode, no
    gradients (`darktune.deploy.fuse.fuse_model`). Not for training and not for `save_weights`."""
    return fuse_model(model)


class Backend:
    """Common part of every backend: `raw` is the backend's own; `detect` is darktune's pipeline around it."""

    name = "backend"

    def __init__(self, spec: NetworkSpec):
        self.spec = spec

    @property
    def net_hw(self) -> tuple[int, int]:
        return self.spec.net.height, self.spec.net.width

    @property
    def head_specs(self) -> list[YoloSpec]:
        return [self.spec.layers[i] for i in self.spec.yolo_indices]

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        """(B, 3, H, W) float32 -> raw heads, each (B, A*(5+C), H', W') float32."""
        raise NotImplementedError

    def for_worker(self) -> "Backend":
        """A backend that may run beside this one in another thread (`darktune.deploy.pipeline`): this one
        when its runtime allows concurrent calls (torch, onnxruntime), else a copy (OpenCV DNN's nets keep
        their buffers in the net)."""
        return self

    def detect(self, images: list[np.ndarray], conf_thresh: float = 0.25, nms_thresh: float = 0.45,
               letterbox: bool = False) -> list[np.ndarray]:
        """BGR images -> per image (n, 6) [x1, y1, x2, y2, score, class] in image pixels."""
        batch = preprocess_batch(images, self.net_hw, letterbox)
        heads = self.raw(batch)
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        return detect_from_heads(heads, self.head_specs, self.net_hw, sizes, conf_thresh, nms_thresh, letterbox)


class TorchBackend(Backend):
    """`Darknet` in torch, tuned for inference: BN folded exactly and long dot products on the accurate GEMM
    kernel (`darktune.deploy.fuse.fuse_model`; `precise=False`: oneDNN everywhere; `fuse=False` runs the training
    model as it is), inference_mode, channels-last memory."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", fuse: bool = True, channels_last: bool = True,
                 spec: NetworkSpec | None = None, precise: bool = True):
        super().__init__(spec or model.spec)
        self.device = resolve_device(device)  # a bad name, no CUDA build, no such GPU: one line naming --device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if fuse:
            net = fuse_model(model, precise=precise)
        else:
            net = copy.deepcopy(model).eval().requires_grad_(False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = net.to(self.device).to(memory_format=self.memory_format)

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            heads = self.model(x.contiguous(memory_format=self.memory_format))
            return [h.float().contiguous().cpu().numpy() for h in heads]


class OnnxRuntimeBackend(Backend):
    """A raw-heads ONNX model in ONNX Runtime. `spec` (for decoding) defaults to the cfg that
    `darktune export onnx` stores in the model's metadata.

    A given `spec` (from the cfg file `cfg_path`) must decode the model's outputs as its own cfg would: the
    output channels must be (classes+5)*len(mask) of each head, and the [yolo] heads (classes, anchors,
    masks, scale_x_y, new_coords) must equal those of the stored cfg, else a DarktuneError naming both files.
    The model's input size always wins (a fixed graph runs at no other); `notes` says when the cfg's differs."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, spec: NetworkSpec | None = None, device: str = "cpu",
                 threads: int | None = None, cfg_path: str | Path | None = None, session=None):
        self.path = str(path)
        self.session = session if session is not None else ort_session(path, device, threads)
        self.notes: list[str] = []
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("darktune.outputs") == "detections":
            raise DarktuneError("this ONNX model decodes and runs NMS in the graph (--decode); the onnxruntime "
                                "backend needs a raw-heads export", path=self.path)
        given = spec is not None
        cfg_name = str(cfg_path) if cfg_path is not None else (spec.path if given else f"{self.path}:metadata")
        stored = _spec_from_metadata(meta, self.path) if not given or meta.get("darktune.cfg") else None
        spec = spec if given else stored
        self.names = meta.get("darktune.names", "").splitlines() or None  # stored by `export onnx --names`
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if isinstance(inp.shape[2], int) and isinstance(inp.shape[3], int):
            if (inp.shape[2], inp.shape[3]) != (spec.net.height, spec.net.width) and given:
                self.notes.append(f"{self.path} takes {inp.shape[3]}x{inp.shape[2]} input, {cfg_name} says "
                                  f"{spec.net.width}x{spec.net.height}: running at {inp.shape[3]}x{inp.shape[2]}")
            spec = spec.with_size(inp.shape[3], inp.shape[2])
        super().__init__(spec)
        _check_outputs(self.session.get_outputs(), self.head_specs, self.path, cfg_name)
        if given and stored is not None:
            _check_same_heads(spec, stored, self.path, cfg_name)

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        step = self.static_batch or len(batch)
        chunks = []
        for start in range(0, len(batch), step):
            part = batch[start:start + step]
            if len(part) < step:  # a static-batch model gets a zero-padded last chunk
                part = np.concatenate([part, np.zeros((step - len(part),) + part.shape[1:], part.dtype)])
            chunks.append(self.session.run(None, {self.input_name: part}))
        n = len(batch)
        if len(chunks) == 1:  # one call: its outputs as they are (no copy)
            return [out[:n].astype(np.float32, copy=False) for out in chunks[0]]
        return [np.concatenate([c[k] for c in chunks])[:n].astype(np.float32, copy=False)
                for k in range(len(chunks[0]))]


def _check_outputs(outputs: list, heads: list[YoloSpec], onnx: str, cfg: str) -> None:
    """Each raw output (B, A*(5+C), H', W') must have the channels that its cfg head decodes."""
    if len(outputs) != len(heads):
        raise DarktuneError(f"the ONNX model has {len(outputs)} outputs, {cfg} has {len(heads)} yolo heads",
                            path=onnx)
    for k, (out, head) in enumerate(zip(outputs, heads)):
        channels = out.shape[1] if len(out.shape) == 4 else None
        if isinstance(channels, int) and channels != head.filters_needed:
            a = len(head.mask)
            theirs = (f"{channels // a - 5} classes" if channels % a == 0 and channels // a > 5
                      else f"{channels} channels")
            raise DarktuneError(f"output {k} of the ONNX model is for {theirs}, {cfg} has {head.classes} "
                                f"class{'es' * (head.classes != 1)} ({head.filters_needed} channels): "
                                "give the cfg the model was exported from", path=onnx)


def _check_same_heads(spec: NetworkSpec, stored: NetworkSpec, onnx: str, cfg: str) -> None:
    """The cfg given for decoding must decode like the cfg stored in the model (`darktune export onnx`)."""
    mine = [spec.layers[i] for i in spec.yolo_indices]
    theirs = [stored.layers[i] for i in stored.yolo_indices]
    if len(mine) != len(theirs):
        raise DarktuneError(f"{cfg} has {len(mine)} yolo heads, the cfg stored in the model {len(theirs)}",
                            path=onnx)
    for k, (a, b) in enumerate(zip(mine, theirs)):
        for key in ("classes", "anchors", "mask", "scale_x_y", "new_coords"):
            va, vb = getattr(a, key), getattr(b, key)
            if va != vb:
                show = (lambda v: ",".join(f"{x:g}" for x in v)) if isinstance(va, tuple) else str
                raise DarktuneError(f"yolo head {k}: {cfg} has {key}={show(va)}, the cfg stored in the model "
                                    f"{key}={show(vb)}; boxes would be decoded wrongly: give the cfg the model "
                                    "was exported from, or leave --cfg out to use the stored one", path=onnx)


def _spec_from_metadata(meta: dict, path: str) -> NetworkSpec:
    text = meta.get("darktune.cfg")
    if not text:
        raise DarktuneError("the ONNX model carries no darktune cfg metadata; give --cfg", path=path)
    return parse_cfg_text(text, f"{path}:metadata")


class OpenCVBackend(Backend):
    """OpenCV DNN's own darknet importer. We read the blobs that feed its yolo layers (the head convs'
    outputs, `conv_15`/`conv_22` in yolov3-tiny) and decode them ourselves.

    `winograd` is OpenCV's own default (on since OpenCV 4.7): 3x3 convs use Winograd F(6x6, 3x3) on CPU,
    ~2x faster here but ~1.4e-4 off exact float math on raw heads of magnitude ~25 (its transforms round
    more than a direct sum; measured per layer from layer 0 on). `winograd=False` computes the convs directly
    (~3e-5 off exact, as ONNX Runtime): the setting for parity checks."""

    name = "opencv"

    def __init__(self, cfg: str | Path, weights: str | Path, spec: NetworkSpec, device: str = "cpu",
                 threads: int | None = None, winograd: bool = True):
        import cv2

        super().__init__(spec)
        self.files, self.device = (cfg, weights), device
        try:
            self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        except cv2.error as exc:
            raise DarktuneError(f"OpenCV DNN cannot load the model: {_cv_message(exc)}", path=str(weights)) from None
        dev = parse_device(device)  # OpenCV has its own CUDA: torch's build does not matter here
        if dev.type == "cuda":
            count = cv2.cuda.getCudaEnabledDeviceCount() if hasattr(cv2, "cuda") else 0
            if count == 0:
                raise DarktuneError(f"--device {device}: this OpenCV build has no CUDA support")
            if dev.index is not None:
                if dev.index >= count:
                    raise DarktuneError(f"--device {device}: no such GPU; OpenCV sees {count} CUDA "
                                        f"device{'s' * (count != 1)}")
                cv2.cuda.setDevice(dev.index)
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)
        else:
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if hasattr(self.net, "enableWinograd"):  # must be set before the first forward
            self.net.enableWinograd(winograd)
        self.winograd = winograd
        cv2.setNumThreads(threads or cpu_count())
        self.outputs = head_layer_names(list(self.net.getLayerNames()), spec)

    def for_worker(self) -> "OpenCVBackend":
        """A second net from the same files, on one thread (a net cannot run two inputs at once)."""
        return OpenCVBackend(*self.files, self.spec, self.device, threads=1, winograd=self.winograd)

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        import cv2

        self.net.setInput(np.ascontiguousarray(batch, dtype=np.float32))
        try:
            outs = self.net.forward(self.outputs)
        except cv2.error as exc:
            raise DarktuneError(f"OpenCV DNN failed: {_cv_message(exc)}") from None
        return [np.asarray(o, dtype=np.float32) for o in outs]


def head_layer_names(names: list[str], spec: NetworkSpec) -> list[str]:
    """OpenCV's names of the layers whose outputs feed each [yolo] layer: the one right before
    `permute_<i>` (OpenCV inserts a permute in front of every yolo layer i)."""
    out = []
    for i in spec.yolo_indices:
        key = f"permute_{i}"
        if key not in names or names.index(key) == 0:
            raise DarktuneError(f"OpenCV DNN has no layer '{key}' in front of yolo layer {i}; layers: "
                                f"{', '.join(names[-8:])}")
        out.append(names[names.index(key) - 1])
    return out


def _cv_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def make_backend(name: str, cfg: str | Path | None, weights: str | Path | None, *, size: int | None = None,
                 device: str = "cpu", onnx: str | Path | None = None, batch: int | None = 1,
                 threads: int | None = None, fuse: bool = True, precise: bool = True,
                 winograd: bool = True) -> Backend | DecodedOnnxBackend:
    """Build backend `name` for a cfg + weights. onnxruntime uses `onnx` if given (a decode graph, recognised by
    its output, runs as `darktune.deploy.decoded.DecodedOnnxBackend`), else exports the model to a
    temporary raw-heads ONNX file (static `batch`, or a dynamic batch axis with batch=None). `fuse` and
    `precise` are the torch backend's (see TorchBackend); `winograd` OpenCV's (False: direct, exact convs)."""
    if name not in BACKENDS:
        raise DarktuneError(f"unknown backend '{name}'; known: {', '.join(BACKENDS)}")
    # a misspelt --device (or, for torch, a GPU that is not there) fails before any model is loaded
    if name == "torch":
        resolve_device(device)
    else:
        parse_device(device)  # ONNX Runtime and OpenCV check their own CUDA support
    if name == "onnxruntime" and onnx is not None:  # a raw-heads model, or a decode graph (NMS inside)
        session = ort_session(onnx, device, threads)
        kind = DecodedOnnxBackend if is_decode_graph(session) else OnnxRuntimeBackend
        backend = kind(onnx, parse_cfg(cfg) if cfg else None, device, threads, cfg_path=cfg, session=session)
        if size is not None and backend.net_hw != (size, size):
            raise DarktuneError(f"the ONNX model takes {backend.net_hw[1]}x{backend.net_hw[0]} input, not --size "
                                f"{size}; export it again with --size", path=str(onnx))
        return backend
    if cfg is None or weights is None:
        raise DarktuneError(f"the {name} backend needs --cfg and --weights")
    model, _ = load_darknet(cfg, weights, size=size)
    if name == "torch":
        return TorchBackend(model, device, fuse=fuse, precise=precise)
    if name == "opencv":
        return OpenCVBackend(cfg, weights, model.spec, device, threads, winograd=winograd)
    import tempfile


    with tempfile.TemporaryDirectory(prefix="darktune-onnx-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", batch=batch, verify=False).path
        return OnnxRuntimeBackend(path, model.spec, device, threads)  # the session holds the model in memory


@dataclass
class Timings:
    """Per call: wall-clock seconds and this process's CPU seconds (all its threads, spin-waiting included;
    less sensitive than wall time to other processes competing for the CPUs)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def time_backends(backends: list[Backend], batch: np.ndarray, iters: int = 50, warmup: int = 10,
                  block: int = 5, progress: bool = False) -> dict[str, Timings]:
    """Time `raw(batch)` (host input to host outputs) `iters` times for each backend.

    After `warmup` calls each, the backends take turns in blocks of `block` timed calls, so a slow spell of a
    shared machine hits all of them alike; each block starts with one untimed call, so threads that the
    previous backend left spinning (ONNX Runtime, OpenMP) do not count against the next one."""
    import time

    for backend in backends:
        for _ in range(warmup):
            backend.raw(batch)
    times = {b.name: Timings() for b in backends}
    rounds = range(-(-iters // block))
    if progress:
        import sys

        from tqdm import tqdm

        rounds = tqdm(rounds, desc="timing", unit="round", file=sys.stderr, leave=False)
    for _ in rounds:
        for backend in backends:
            backend.raw(batch)
            t = times[backend.name]
            for _ in range(min(block, iters - len(t.wall))):
                wall, cpu = time.perf_counter(), time.process_time()
                backend.raw(batch)
                t.cpu.append(time.process_time() - cpu)
                t.wall.append(time.perf_counter() - wall)
    return times


def latency_summary(timings: Timings, batch: int) -> dict[str, float]:
    """Median / p90 / mean / min wall latency in ms, images per second at the median, median CPU ms."""
    ms = np.asarray(timings.wall) * 1000.0
    median = float(np.median(ms))
    return {"median_ms": median, "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "images_per_s": batch * 1000.0 / median,
            "cpu_ms": float(np.median(timings.cpu)) * 1000.0 if timings.cpu else None, "iters": len(ms)}
