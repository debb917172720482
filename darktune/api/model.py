"""`Model`: a darknet detector (cfg + weights + class names) to load, train, evaluate, run and export in a few
lines, each call one library function of the layers below (the same ones the `darktune` commands call).

The training options are TrainConfig's (`TRAIN_OPTIONS`, derived from its fields: the `darktune train` flags
with '_' for '-'), so a notebook and the command line take the same options with the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from darktune.darknet import zoo
from darktune.darknet.classes import names_beside, read_names_file
from darktune.darknet.load import classes_in_weights, load_darknet
from darktune.darknet.cfg import parse_cfg
from darktune.data.formats.image import read_image
from darktune.deploy.darknet_export import load_for_export
from darktune.deploy.detect import TorchDetector, clip_boxes
from darktune.deploy.onnx import OnnxExport, export_onnx
from darktune.devices import resolve_device
from darktune.errors import DarktuneError
from darktune.eval.evaluate import evaluate_model, load_eval_set, load_for_data
from darktune.eval.metrics import MapResult
from darktune.files import folder_lock
from darktune.train.config import OPTIONS, TrainConfig
from darktune.train.files import check_fresh_run_folder, make_run_folder
from darktune.train.loop import train as train_run
from darktune.train.state import TrainResult

# every TrainConfig option but the three a Model supplies itself
TRAIN_OPTIONS: tuple[str, ...] = tuple(name for name in OPTIONS if name not in ("cfg", "data", "weights"))


@dataclass(frozen=True)
class Detection:
    """One detected object: `box` is (x1, y1, x2, y2) in pixels of the image, clipped to it."""

    class_id: int
    name: str
    score: float
    box: tuple[float, float, float, float]


@dataclass
class Model:
    """A cfg, its weights (None: untrained) and class names. `Model.load` makes one; `train` moves it to the
    weights it trained."""

    cfg: Path
    weights: Path | None
    names: list[str]
    names_file: Path | None = None
    run_dir: Path | None = None  # the training run these weights come from, if any
    _detectors: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source: str | Path | None = None, *, cfg: str | Path | None = None,
             weights: str | Path | None = None, names: str | Path | None = None) -> Model:
        """A zoo model by name ("yolov3-tiny", "yolov4-tiny": fetched once into $DARKTUNE_HOME, verified), a
        `darktune train` run folder (model.cfg, weights/best.weights or else last.weights, obj.names), or
        `cfg` and `weights` files. Class names: `names` (a names file), else one beside the weights or the cfg
        with one name per class, else class_0, class_1, ..."""
        if source is not None and (cfg is not None or weights is not None):
            raise DarktuneError("give a model name or run folder, or cfg= and weights=, not both")
        if source is not None and str(source) in zoo.KNOWN:
            fetched = zoo.fetch(str(source))
            cfg, weights, names = fetched.cfg, fetched.weights, names or fetched.names
        elif source is not None and Path(source).is_dir():
            cfg, weights, names = _run_files(Path(source), names)
        elif source is not None:
            raise DarktuneError(f"not a known model ({', '.join(zoo.KNOWN)}) nor a run folder", path=str(source))
        if cfg is None:
            raise DarktuneError("Model.load needs a model name, a run folder or cfg=")
        model = cls(Path(cfg), None if weights is None else Path(weights), [])
        model._set_names(names)
        if source is not None and Path(source).is_dir():
            model.run_dir = Path(source)
        return model

    def _set_names(self, names: str | Path | None) -> None:
        n = self.num_classes
        found = names or (names_beside(self.weights) if self.weights else None) or names_beside(self.cfg)
        listed = read_names_file(found) if found else []
        if names and len(listed) != n:
            raise DarktuneError(f"{len(listed)} names for a model with {n} classes", path=str(names))
        self.names, self.names_file = (listed, Path(found)) if len(listed) == n else ([f"class_{i}" for i in
                                                                                       range(n)], None)
        self._detectors.clear()

    @property
    def num_classes(self) -> int:
        """The class count the weights hold for this cfg (the cfg's own without weights)."""
        spec = parse_cfg(self.cfg)
        if self.weights is None:
            return spec.num_classes
        n = classes_in_weights(spec, self.weights)
        if n is None:
            raise DarktuneError(f"the weights fit no class count of {self.cfg}", path=str(self.weights))
        return n

    # ------------------------------------------------------------------------------------------ training
    def train(self, data: str | Path, *, progress: bool = True, overwrite: bool = False,
              **options: Any) -> TrainResult:
        """`darktune train --cfg CFG --weights WEIGHTS --data DATA ...` with `options` named as TrainConfig's
        fields (`TRAIN_OPTIONS`: iterations=300, freeze=13, keep_classes=True, out="runs/x", ...). A run folder
        that holds a run needs resume=True or overwrite=True, as on the command line. Afterwards the model holds
        the run's best weights (its last ones when it evaluated nothing) and the data's class names."""
        unknown = sorted(set(options) - set(TRAIN_OPTIONS))
        if unknown:
            raise DarktuneError(f"unknown training option{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                                f"(known: {', '.join(TRAIN_OPTIONS)})")
        config = TrainConfig(cfg=str(self.cfg), data=str(data),
                             weights=None if self.weights is None else str(self.weights), **options)
        make_run_folder(config.out)
        with folder_lock(Path(config.out), "training"):
            check_fresh_run_folder(config.out, config.resume, overwrite)
            result = train_run(config, progress=progress)
        best = result.run_dir / "weights" / "best.weights"
        self.cfg = result.run_dir / "model.cfg"
        self.weights = best if best.is_file() else result.run_dir / "weights" / "last.weights"
        self.run_dir = result.run_dir
        self._set_names(result.run_dir / "obj.names")
        return result

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, data: str | Path, *, split: str = "valid", protocol: str = "darknet",
                 size: int | None = None, class_map: str = "auto", batch: int = 32, device: str = "cpu",
                 max_images: int | None = None, thresh: float = 0.25) -> MapResult:
        """`darktune map`: mAP on the data's split under `protocol` (`.map`, `.classes`, `.summary()`). With
        another class count than the data's, the model's classes are mapped onto the data's by name
        (`class_map`, as `map --class-map`)."""
        if self.weights is None:
            raise DarktuneError("an untrained model (no weights) has nothing to evaluate")
        dev = resolve_device(device)
        model, spec, _ = load_for_data(self.cfg, self.weights, data, size, class_map, self.names_file)
        es = load_eval_set(data, (spec.net.height, spec.net.width), split, spec.net.letter_box, max_images)
        return evaluate_model(model.to(dev), es, protocol, batch, dev, conf_thresh=thresh)

    # ------------------------------------------------------------------------------------------ detection
    def detect(self, images: str | Path | np.ndarray | Iterable[str | Path | np.ndarray], *, thresh: float = 0.25,
               nms: float = 0.45, size: int | None = None, letterbox: bool | None = None,
               device: str = "cpu") -> list[list[Detection]]:
        """Detections of each image (a path or a BGR uint8 array as OpenCV reads it), one list per image,
        decoded as `darktune detect` decodes them (the torch runtime). `letterbox`: default the cfg's."""
        if isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        detector = self._detector(size, device)
        box = detector.model.spec.net.letter_box if letterbox is None else letterbox
        out = []
        for image in images:
            bgr = image if isinstance(image, np.ndarray) else read_image(Path(image))
            dets = clip_boxes(detector.detect([bgr], thresh, nms, box)[0], bgr.shape[1], bgr.shape[0])
            out.append([Detection(int(d[5]), self.names[int(d[5])], float(d[4]),
                                  tuple(float(v) for v in d[:4])) for d in dets])
        return out

    def _detector(self, size: int | None, device: str) -> TorchDetector:
        key = (size, device)
        if key not in self._detectors:
            dev = resolve_device(device)
            model, _ = load_darknet(self.cfg, self.weights, size=size, classes=self.num_classes)
            self._detectors[key] = TorchDetector(model.to(dev), dev)
        return self._detectors[key]

    # ------------------------------------------------------------------------------------------ export
    def export_onnx(self, path: str | Path, *, size: int | None = None, **options: Any) -> OnnxExport:
        """`darktune export onnx`: the model as ONNX at `path` (options as `darktune.deploy.onnx.export_onnx`:
        batch, fp16, decode, opset, conf_thresh, nms_thresh, max_det, verify, overwrite), the class names
        stored in it."""
        if self.weights is None:
            raise DarktuneError("an untrained model (no weights): nothing to export")
        model, _ = load_for_export(self.cfg, self.weights, None, size)
        return export_onnx(model, path, names=self.names, **options)


def _run_files(run: Path, names: str | Path | None) -> tuple[Path, Path, str | Path | None]:
    """(cfg, weights, names) of a `darktune train` run folder."""
    cfg = run / "model.cfg"
    weights = next((p for p in (run / "weights" / "best.weights", run / "weights" / "last.weights") if p.is_file()),
                   None)
    if not cfg.is_file() or weights is None:
        raise DarktuneError("not a darktune run folder (model.cfg and weights/best.weights or last.weights)",
                            path=str(run))
    return cfg, weights, names or (run / "obj.names" if (run / "obj.names").is_file() else None)
