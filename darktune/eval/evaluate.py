"""mAP of a `Darknet` model on a dataset split: images decoded once into RAM, batched inference, darknet's
decoding (score threshold 0.005, NMS 0.45 as ``detector map``), figures from `darktune.eval.metrics.evaluate`.

Used by ``darktune map`` and by the trainer between iterations. Images are resized once to the network size
(plain resize, or letterbox when the cfg says ``letter_box=1``) and kept as uint8; truths stay in original
pixels and detections are mapped back to them, so IoU is measured as darknet measures it.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from darktune.darknet.boxes import ImageGeometry, decode, postprocess
from darktune.darknet.load import classes_in_weights, load_darknet
from darktune.darknet.memory import check_memory
from darktune.errors import DarktuneError
from darktune.darknet.cfg import parse_cfg
from darktune.darknet.classes import model_for_classes, names_beside, read_names_file
from darktune.data.check import check_dataset
from darktune.data.formats.yolo import read_obj_data
from darktune.data.formats.image import read_image
from darktune.eval.metrics import evaluate
from darktune.numbers import COUNT
from darktune.darknet.prefix import fold_bn, forward_rest, frozen_prefix_length, memory_budget, run_prefix

MAP_CONF_THRESH = 0.005  # darknet validate_detector_map
MAP_NMS_THRESH = 0.45


@dataclass
class EvalSet:
    """A split ready for repeated evaluation."""

    paths: list[str]
    images: torch.Tensor  # (N, 3, H, W) uint8 RGB at the network size
    geometries: list[ImageGeometry]
    truths: list[np.ndarray]  # (m, 5) [class, x1, y1, x2, y2] in original pixels
    names: list[str]
    n_skipped: int
    net_hw: tuple[int, int]

    def __len__(self) -> int:
        return len(self.paths)


_CACHE: OrderedDict[tuple, EvalSet] = OrderedDict()  # a few decoded sets, reused by runs in one process


def _decode_one(path: Path, net_hw: tuple[int, int], letterbox: bool) -> tuple[np.ndarray, int, int]:
    import cv2


    bgr = read_image(path)
    h, w = bgr.shape[:2]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    nh, nw = net_hw
    if not letterbox:
        out = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    else:
        scale = min(nw / w, nh / h)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        out = np.full((nh, nw, 3), 128, np.uint8)
        top, left = (nh - rh) // 2, (nw - rw) // 2
        out[top:top + rh, left:left + rw] = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out.transpose(2, 0, 1)), w, h


def load_eval_set(obj_data: str | Path, net_hw: tuple[int, int], split: str = "valid", letterbox: bool = False,
                  max_images: int | None = None, progress: bool = False) -> EvalSet:
    """Check (cached) and decode a split once; bad images are skipped and counted."""
    od = read_obj_data(obj_data)
    report = check_dataset(obj_data, split, progress=progress)
    good = report.good[:max_images] if max_images else report.good
    key = (str(Path(od.path).resolve()), split, tuple(net_hw), letterbox, tuple(str(p) for p, _ in good),
           tuple(Path(p).stat().st_mtime_ns for p, _ in good))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if not good:
        raise DarktuneError(f"no usable images in the {split} list ({report.n_skipped_images} skipped)",
                            path=str(od.path))
    with ThreadPoolExecutor(max_workers=2) as pool:
        decoded = list(pool.map(lambda item: _decode_one(Path(item[0]), net_hw, letterbox), good))
    images = torch.from_numpy(np.stack([d[0] for d in decoded]))
    geos, truths = [], []
    for (img, w, h), (_, labels) in zip(decoded, good):
        geos.append(ImageGeometry(w, h, letterbox))
        lab = np.asarray(labels, np.float64).reshape(-1, 5)
        cx, cy, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
        truths.append(np.stack([lab[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1))
    es = EvalSet([str(p) for p, _ in good], images, geos, truths, list(od.names), report.n_skipped_images,
                 tuple(net_hw))
    _CACHE[key] = es
    while len(_CACHE) > 4:
        _CACHE.popitem(last=False)
    return es


class PrefixCache:
    """The frozen layers' outputs on an `EvalSet`, kept between the evaluations of one training run.

    Frozen layers never change during a run (nor their batch-norm statistics), so their outputs on the fixed
    validation images are the same at every evaluation: computed once (batch by batch, exactly as `predict`
    computes them), an evaluation then runs only the trainable layers. With freeze 13 that skips about two
    thirds of yolov3-tiny's convolution work, with freeze 20 about five sixths; the detections are bit-identical
    (same batches, same kernels, same folded weights). The key holds every frozen tensor's storage and version
    counter, so loading or editing frozen weights, a different prefix (e.g. after `--unfreeze-at`), another
    set, batch size, device or precision all recompute. Nothing is kept above `max_bytes` (default: 1 GiB or an
    eighth of the RAM, whichever is smaller)."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = memory_budget(1 << 30, 0.125) if max_bytes is None else max_bytes
        self.key: tuple | None = None
        self.states: list = []
        self.es: EvalSet | None = None  # held so that id(es) in the key cannot be reused by another set
        self.too_big = False
        self.builds = 0  # how many times the states were computed (for tests and logs)

    def lookup(self, key: tuple) -> list | None:
        return self.states if self.key == key else None

    def store(self, key: tuple, es: EvalSet, states: list) -> None:
        self.key, self.es, self.states = key, es, states
        self.builds += 1

def _prefix_key(net, prefix: int, es: EvalSet, batch_size: int, device, autocast_dtype, channels_last) -> tuple:
    tensors = [t for i in range(prefix) for t in (*net.layers[i].parameters(), *net.layers[i].buffers())]
    return (id(es), len(es), prefix, batch_size, str(device), autocast_dtype, channels_last,
            tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors))


@torch.no_grad()
def predict(model: torch.nn.Module, es: EvalSet, batch_size: int = 32, conf_thresh: float = MAP_CONF_THRESH,
            nms_thresh: float = MAP_NMS_THRESH, device: str | torch.device = "cpu",
            autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
            prefix_cache: PrefixCache | None = None) -> list[np.ndarray]:
    """Detections per image, (n, 6) [x1, y1, x2, y2, score, class] in original pixels. `prefix_cache`: reuse the
    frozen layers' outputs between calls (see `PrefixCache`)."""
    net = getattr(model, "model", model)  # a Darknet (or a wrapper holding one)
    specs = [h.spec for h in net.heads]
    COUNT.check(batch_size, "--batch")
    if getattr(net, "spec", None) is not None:  # a Darknet: its batch's memory is known before it runs
        check_memory(net.spec, min(batch_size, max(1, len(es))), device, what=f"evaluating {net.spec.path}")
    was_training = net.training
    net.eval()
    folded = fold_bn(net, range(len(net.layers)))  # inference: batch norm folded into the convs
    prefix = frozen_prefix_length(net) if prefix_cache is not None else 0
    states = key = None
    if prefix:
        key = _prefix_key(net, prefix, es, batch_size, device, autocast_dtype, channels_last)
        states = prefix_cache.lookup(key)
    build = prefix > 0 and states is None and not prefix_cache.too_big
    new_states: list = []
    out: list[np.ndarray] = []
    try:
        for n, start in enumerate(range(0, len(es), batch_size)):
            with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if states is not None:
                    state = states[n]
                else:
                    x = es.images[start:start + batch_size].to(device, non_blocking=True).float().div_(255.0)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    state = run_prefix(net, x, prefix, folded)
                    if build:
                        new_states.append(state)
                        if state.nbytes() * -(-len(es) // batch_size) > prefix_cache.max_bytes:
                            build, new_states, prefix_cache.too_big = False, [], True
                heads = forward_rest(net, state, folded)
            decoded = decode([h.float() for h in heads], specs, es.net_hw)
            dets = postprocess(decoded, es.geometries[start:start + batch_size], es.net_hw, conf_thresh, nms_thresh)
            out.extend(d.cpu().numpy() for d in dets)
    finally:
        net.train(was_training)
    if build:
        prefix_cache.store(key, es, new_states)
    return out


def evaluate_model(model: torch.nn.Module, es: EvalSet, protocol: str = "darknet", batch_size: int = 32,
                   device: str | torch.device = "cpu", conf_thresh: float = 0.25, **kwargs):
    """`darktune.eval.metrics.MapResult` of `model` on `es` under `protocol`."""
    dets = predict(model, es, batch_size, device=device, **kwargs)
    return evaluate(dets, es.truths, len(es.names), protocol=protocol, class_names=es.names,
                    conf_thresh=conf_thresh, image_names=es.paths)


CLASS_MAPS = ("auto", "names", "none")


def load_for_data(cfg: str | Path, weights: str | Path, data: str | Path, size: int | None = None,
                  class_map: str = "auto", model_names: str | Path | None = None):
    """(model in eval mode, spec, ClassMatch or None) for evaluating `weights` on `data`.

    `class_map`: "none": the cfg as given when the weights fit it, else re-headed for the data's class count
    (as `darktune train` writes them); other class counts are an error naming both. "names": the model's
    classes (names from `model_names`, else the names file beside the weights or the cfg, e.g. the zoo's
    coco.names) mapped onto the data's by name (`darktune.darknet.classes.model_for_classes`: a COCO model
    scored on the data's "person"; a class the model lacks is never detected). "auto" (default): "none" when
    the weights hold the data's class count, else "names"."""
    if class_map not in CLASS_MAPS:
        raise DarktuneError(f"--class-map must be one of {', '.join(CLASS_MAPS)}, got {class_map!r}")
    data_names = list(read_obj_data(data).names)
    fitted = classes_in_weights(parse_cfg(cfg), weights)
    if class_map == "none" or (class_map == "auto" and fitted == len(data_names)):
        if fitted != len(data_names):
            found = f"a {fitted}-class model" if fitted else "no class count of this cfg"
            raise DarktuneError(f"weights hold {found}, the data has {len(data_names)} classes (--class-map names "
                                "maps the model's classes onto the data's by name)", path=str(weights))
        model, _ = load_darknet(cfg, weights, size=size or None, classes=len(data_names))
        return model, model.spec, None
    if fitted is None:
        raise DarktuneError(f"weights hold no class count of this cfg ({cfg})", path=str(weights))
    names_file = model_names or names_beside(weights) or names_beside(cfg)
    if names_file is None:
        raise DarktuneError(f"weights hold a {fitted}-class model and the data has {len(data_names)} classes; "
                            "to map the model's classes onto the data's by name give --model-names FILE (its "
                            "names file, e.g. coco.names)", path=str(weights))
    model_class_names = read_names_file(names_file)
    if len(model_class_names) != fitted:
        raise DarktuneError(f"{len(model_class_names)} names for weights of {fitted} classes", path=str(names_file))
    source, _ = load_darknet(cfg, weights, size=size or None, classes=fitted)
    model, match = model_for_classes(source, data_names, model_class_names)
    return model, model.spec, match
