"""Detection with an exported decode graph (`darktune export onnx --decode`: decode and NMS inside the graph) in
ONNX Runtime, behind the same `detect` call as the backends of `darktune.deploy.runtimes`, so that
`darktune detect --onnx` and sliced detection (`darktune.deploy.sliced`) run it as they run a raw-heads model.

The graph (`darktune.deploy.onnx`) takes (B, 3, H, W) float32 RGB in [0, 1], B fixed at export or dynamic, and
gives (K, 7) rows [batch, x1, y1, x2, y2, score, class], boxes as fractions of the network input. Preprocessing
stays outside the graph (darktune's plain resize or letterbox), so both work: each image's boxes are mapped
back to its own pixels with the geometry it was preprocessed with (`graph_detections`). A static batch takes
the images in its own batch size, the last call padded with zeros (their rows are dropped).

The score threshold and the NMS IoU are fixed in the graph at export (its metadata says which). A call may ask
for a higher score threshold: the rows are filtered, which equals NMS at that threshold (a box only suppresses
boxes of lower score, which the higher threshold drops too). A lower score threshold or another IoU cannot be
had from the graph and is refused with the file named.

A graph is recognised as a decode graph by its output, one (K, 7) tensor, or by darktune's metadata
(`darktune.outputs = detections`); only darktune's own decode graphs are run (their metadata holds the cfg,
hence the classes, and the thresholds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from darktune.darknet.cfg import NetworkSpec, parse_cfg_text
from darktune.deploy.detect import preprocess_batch
from darktune.deploy.onnx import graph_detections, ort_session
from darktune.errors import DarktuneError

THRESH_TOLERANCE = 1e-9  # a threshold read back from the metadata's text equals the flag's float


def is_decode_graph(session) -> bool:
    """An ONNX Runtime session of a decode graph: darktune's metadata says so, or its one output is (K, 7)."""
    if session.get_modelmeta().custom_metadata_map.get("darktune.outputs") == "detections":
        return True
    outputs = session.get_outputs()
    return len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[1] == 7


class DecodedOnnxBackend:
    """A decode graph in ONNX Runtime: `detect` as `darktune.deploy.runtimes.Backend.detect` (BGR images -> per
    image (n, 6) [x1, y1, x2, y2, score, class] in image pixels), with the graph's own decode and NMS.

    `spec` (from the cfg file `cfg_path`) gives the classes and the letterbox default; by default the cfg stored
    in the graph. A given one must have the stored one's classes. The graph's input size always wins."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, spec: NetworkSpec | None = None, device: str = "cpu",
                 threads: int | None = None, cfg_path: str | Path | None = None, session=None):
        self.path = str(path)
        self.session = session if session is not None else ort_session(path, device, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if not is_decode_graph(self.session):
            raise DarktuneError("not a decode graph (one (K, 7) detections output): export it with "
                                "`darktune export onnx --decode`", path=self.path)
        self.conf_thresh = _threshold(meta, "darktune.conf_thresh", self.path)
        self.nms_thresh = _threshold(meta, "darktune.nms_thresh", self.path)
        stored = parse_cfg_text(meta["darktune.cfg"], f"{self.path}:metadata") if meta.get("darktune.cfg") else None
        if spec is None and stored is None:
            raise DarktuneError("the decode graph carries no darktune cfg metadata; give --cfg", path=self.path)
        if spec is not None and stored is not None and spec.num_classes != stored.num_classes:
            raise DarktuneError(f"{cfg_path or spec.path} has {spec.num_classes} classes, the cfg stored in the "
                                f"graph {stored.num_classes}: give the cfg it was exported from, or leave --cfg "
                                "out", path=self.path)
        spec = spec if spec is not None else stored
        self.names = meta.get("darktune.names", "").splitlines() or None
        self.notes: list[str] = [f"{self.path} decodes and runs NMS in the graph (score > {self.conf_thresh:g}, "
                                 f"IoU {self.nms_thresh:g}, fixed at export)"]
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3"):
            raise DarktuneError(f"the decode graph's input is {inp.shape}, not (B, 3, H, W)", path=self.path)
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if isinstance(inp.shape[2], int) and isinstance(inp.shape[3], int):
            if (inp.shape[2], inp.shape[3]) != (spec.net.height, spec.net.width) and cfg_path is not None:
                self.notes.append(f"{self.path} takes {inp.shape[3]}x{inp.shape[2]} input, {cfg_path} says "
                                  f"{spec.net.width}x{spec.net.height}: running at {inp.shape[3]}x{inp.shape[2]}")
            spec = spec.with_size(inp.shape[3], inp.shape[2])
        self.spec = spec

    @property
    def net_hw(self) -> tuple[int, int]:
        return self.spec.net.height, self.spec.net.width

    def for_worker(self) -> "DecodedOnnxBackend":
        """This one: ONNX Runtime sessions may run in several threads at once."""
        return self

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        raise DarktuneError("this ONNX model decodes and runs NMS in the graph (--decode): it gives detections, "
                            "not raw heads; use a raw-heads export here", path=self.path)

    def check_thresholds(self, conf_thresh: float, nms_thresh: float) -> None:
        """Refuse what the graph cannot give: a score threshold below its own, another NMS IoU."""
        if conf_thresh < self.conf_thresh - THRESH_TOLERANCE:
            raise DarktuneError(f"score threshold {conf_thresh:g} is below the {self.conf_thresh:g} fixed in the "
                                f"decode graph at export: export it again with --conf {conf_thresh:g}, or use a "
                                "raw-heads export", path=self.path)
        if abs(nms_thresh - self.nms_thresh) > THRESH_TOLERANCE:
            raise DarktuneError(f"NMS IoU {nms_thresh:g}: the decode graph's NMS is fixed at IoU "
                                f"{self.nms_thresh:g} at export: export it again with --iou {nms_thresh:g}, or "
                                "use a raw-heads export", path=self.path)

    def detect(self, images: list[np.ndarray], conf_thresh: float = 0.25, nms_thresh: float = 0.45,
               letterbox: bool = False) -> list[np.ndarray]:
        """BGR images -> per image (n, 6) [x1, y1, x2, y2, score, class] in image pixels, in the graph's order
        (by class, then falling score); `nms_thresh` must be the graph's and `conf_thresh` no lower than its."""
        self.check_thresholds(conf_thresh, nms_thresh)
        batch = preprocess_batch(images, self.net_hw, letterbox).astype(self.input_dtype, copy=False)
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        step = self.static_batch or max(1, len(batch))
        out: list[np.ndarray] = []
        for start in range(0, len(batch), step):
            part = batch[start:start + step]
            n = len(part)
            if n < step:  # a static-batch graph gets a zero-padded last call; the padding's rows are dropped
                part = np.concatenate([part, np.zeros((step - n,) + part.shape[1:], part.dtype)])
            (rows,) = self.session.run(None, {self.input_name: part})
            out += graph_detections(rows, n, self.net_hw, sizes[start:start + n], letterbox)
        if conf_thresh > self.conf_thresh:
            out = [d[d[:, 4] > conf_thresh] for d in out]
        return out


def run_thresholds(backend, thresh: float | None, nms: float | None, defaults: tuple[float, float]
                   ) -> tuple[float, float]:
    """(score threshold, NMS IoU) of a detect run on `backend`: as given, else `defaults`; on a decode graph, its
    own NMS IoU and its score threshold where higher than the default, and a given one that the graph cannot
    honour refused (naming the file)."""
    if not isinstance(backend, DecodedOnnxBackend):
        return (defaults[0] if thresh is None else thresh), (defaults[1] if nms is None else nms)
    thresh = max(defaults[0], backend.conf_thresh) if thresh is None else thresh
    nms = backend.nms_thresh if nms is None else nms
    backend.check_thresholds(thresh, nms)
    return thresh, nms


def _threshold(meta: dict, key: str, path: str) -> float:
    """A threshold stored in a decode graph's metadata by `export_onnx`."""
    text = meta.get(key)
    if text is None:
        raise DarktuneError(f"a decode graph without darktune's metadata ({key}): only graphs written by "
                            "`darktune export onnx --decode` can be run", path=path)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise DarktuneError(f"the metadata's {key}={text!r} is not a threshold between 0 and 1", path=path)
    return value
