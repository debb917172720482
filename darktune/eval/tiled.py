"""mAP of a tiled model on whole images: each validation image is cut into the tiles of
`darktune.data.tile.tile_grid`, the tiles run through the model in batches, their boxes shifted back and
merged across tiles (`darktune.darknet.box_merge`), and the merged boxes scored against the image's own
truths. This is what `darktune detect --tile` gives a user, so the figure (`map --tile`, and the training
option `--eval-tile`) is the accuracy they will get, not the accuracy on tiles.

`Slicing` holds the settings shared with sliced detection (`darktune.deploy.sliced`). An image that fits one
tile is detected plainly (resized to the network as `darktune.eval.evaluate` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from darktune.darknet import boxes_np
from darktune.darknet.box_merge import MERGES, METRICS, merge_detections
from darktune.darknet.boxes import ImageGeometry
from darktune.data.check import check_dataset
from darktune.data.formats.image import read_image
from darktune.data.formats.yolo import read_obj_data
from darktune.data.tile import check_tiling, fits_one_tile, tile_grid
from darktune.errors import DarktuneError
from darktune.eval.evaluate import MAP_CONF_THRESH, MAP_NMS_THRESH
from darktune.eval.metrics import evaluate


@dataclass(frozen=True)
class Slicing:
    """How to slice: tile size and overlap (as `data tile`), the whole image too (`full`), and the merge
    across tiles (`nms` or `greedynmm`, by `iou` or `ios` above `match_thresh`; `match` None: iou for nms, ios
    for greedynmm); `batch` tiles per call. NMS by IoU is the default: on dense small objects (tree crowns)
    greedy merging by IoS also joins neighbouring objects (docs/tiles.md has the figures)."""

    size: int = 416
    overlap: float = 0.2
    full: bool = False
    merge: str = "nms"
    match: str | None = None
    match_thresh: float = 0.5
    batch: int = 8

    def __post_init__(self):
        if self.match is None:
            object.__setattr__(self, "match", "iou" if self.merge == "nms" else "ios")
        check_tiling(self.size, self.overlap, "--tile")
        if self.merge not in MERGES:
            raise DarktuneError(f"--merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if self.match not in METRICS:
            raise DarktuneError(f"--match must be one of {', '.join(METRICS)}, got {self.match!r}")
        if not 0.0 <= self.match_thresh <= 1.0:
            raise DarktuneError(f"--match-thresh must be between 0 and 1, got {self.match_thresh:g}")
        if self.batch < 1:
            raise DarktuneError(f"the tile batch must be at least 1, got {self.batch}")


def shift(dets: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Detections of a tile at offset (dx, dy) -> image pixels (a copy)."""
    out = np.array(dets, np.float32, copy=True).reshape(-1, 6)
    out[:, [0, 2]] += np.float32(dx)
    out[:, [1, 3]] += np.float32(dy)
    return out


@dataclass
class WholeSet:
    """A split's images at their own size (BGR uint8) and truths (m, 5) [class, x1, y1, x2, y2] in pixels."""

    paths: list[str]
    images: list[np.ndarray]
    truths: list[np.ndarray]
    names: list[str]
    n_skipped: int

    def __len__(self) -> int:
        return len(self.paths)


def load_whole_set(obj_data: str | Path, split: str = "valid", max_images: int | None = None,
                   progress: bool = False) -> WholeSet:
    """Check a split (cached, as `load_eval_set`) and read its images whole; bad images skipped and counted."""
    od = read_obj_data(obj_data)
    report = check_dataset(obj_data, split, progress=progress)
    good = report.good[:max_images] if max_images else report.good
    if not good:
        raise DarktuneError(f"no usable images in the {split} list ({report.n_skipped_images} skipped)",
                            path=str(od.path))
    images, truths = [], []
    for path, labels in good:
        image = read_image(path)
        h, w = image.shape[:2]
        lab = np.asarray(labels, np.float64).reshape(-1, 5)
        cx, cy, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
        truths.append(np.stack([lab[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1))
        images.append(image)
    return WholeSet([str(p) for p, _ in good], images, truths, list(od.names), report.n_skipped_images)


def _to_input(crops: list[np.ndarray], net_hw: tuple[int, int], letterbox: bool) -> np.ndarray:
    """BGR crops -> (B, 3, h, w) float32 RGB in [0, 1] (plain resize, or letterbox with darknet's grey)."""
    import cv2

    nh, nw = net_hw
    batch = np.empty((len(crops), 3, nh, nw), np.float32)
    for crop, plane in zip(crops, batch):
        if letterbox:
            ih, iw = crop.shape[:2]
            scale = min(nw / iw, nh / ih)
            rw, rh = max(1, round(iw * scale)), max(1, round(ih * scale))
            canvas = np.full((nh, nw, 3), 128, np.uint8)
            top, left = (nh - rh) // 2, (nw - rw) // 2
            canvas[top:top + rh, left:left + rw] = cv2.resize(crop, (rw, rh), interpolation=cv2.INTER_LINEAR)
        else:
            canvas = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR)
        np.divide(canvas.transpose(2, 0, 1)[::-1], np.float32(255), out=plane, dtype=np.float32)
    return batch


@torch.no_grad()
def _detect_crops(net, crops: list[np.ndarray], letterbox: bool, device, conf: float, nms: float
                  ) -> list[np.ndarray]:
    net_hw = tuple(net.input_size)
    heads = net(torch.from_numpy(_to_input(crops, net_hw, letterbox)).to(device))
    arrays = [h.float().cpu().numpy() for h in heads]
    specs = [h.spec for h in net.heads]
    out = []
    for i, crop in enumerate(crops):
        decoded = boxes_np.decode_above(arrays, specs, net_hw, conf, index=i)
        geo = ImageGeometry(crop.shape[1], crop.shape[0], letterbox)
        out.append(boxes_np.detections(decoded, geo, net_hw, conf, nms))
    return out


def predict_tiled(model: torch.nn.Module, ws: WholeSet, slicing: Slicing, device: str | torch.device = "cpu",
                  conf_thresh: float = MAP_CONF_THRESH, nms_thresh: float = MAP_NMS_THRESH,
                  letterbox: bool | None = None) -> list[np.ndarray]:
    """Detections per whole image, (n, 6) [x1, y1, x2, y2, score, class] in its pixels, sliced and merged."""
    net = getattr(model, "model", model)
    letterbox = net.spec.net.letter_box if letterbox is None else letterbox
    was_training = net.training
    net.eval()
    out = []
    try:
        for image in ws.images:
            h, w = image.shape[:2]
            if fits_one_tile(w, h, slicing.size):
                out.append(_detect_crops(net, [image], letterbox, device, conf_thresh, nms_thresh)[0])
                continue
            tiles = tile_grid(w, h, slicing.size, slicing.overlap)
            parts = []
            for start in range(0, len(tiles), slicing.batch):
                part = tiles[start:start + slicing.batch]
                dets = _detect_crops(net, [image[y1:y2, x1:x2] for x1, y1, x2, y2 in part], letterbox, device,
                                     conf_thresh, nms_thresh)
                parts += [shift(d, t[0], t[1]) for d, t in zip(dets, part)]
            if slicing.full:
                parts += _detect_crops(net, [image], letterbox, device, conf_thresh, nms_thresh)
            out.append(merge_detections(np.concatenate(parts), slicing.merge, slicing.match_thresh, slicing.match))
    finally:
        net.train(was_training)
    return out


def evaluate_tiled(model: torch.nn.Module, ws: WholeSet, slicing: Slicing, protocol: str = "darknet",
                   device: str | torch.device = "cpu", conf_thresh: float = 0.25):
    """`darktune.eval.metrics.MapResult` of `model` on the whole images of `ws`, sliced as `slicing` says."""
    dets = predict_tiled(model, ws, slicing, device)
    return evaluate(dets, ws.truths, len(ws.names), protocol=protocol, class_names=ws.names,
                    conf_thresh=conf_thresh, image_names=ws.paths)
