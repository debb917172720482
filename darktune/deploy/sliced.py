"""Sliced detection: a large image cut into the tiles of `darktune.data.tile.tile_grid`, the tiles run through
any backend in batches, their boxes shifted back to the image and merged across tiles
(`darktune.darknet.box_merge`: NMS by IoU by default, or greedy match-and-merge).

A backend is anything with `detect(images, conf_thresh, nms_thresh, letterbox)`: the raw-heads runtimes of
`darktune.deploy.runtimes` (darktune's decode and per-tile NMS) and an exported decode graph
(`darktune.deploy.decoded`: the graph's decode and NMS per tile); the merge across tiles is the same for all.

Optionally (`full=True`) the whole image, resized to the network, is detected as well and merged with the
tiles: large objects that no tile holds whole are then found too. An image no larger than one tile is
detected plainly, exactly as `Backend.detect` does (the same call, the same boxes).
"""

from __future__ import annotations

import numpy as np

from darktune.darknet.box_merge import merge_detections
from darktune.data.tile import fits_one_tile, tile_grid
from darktune.eval.tiled import Slicing, shift

__all__ = ["Slicing", "sliced_detect", "tile_detections"]


def tile_detections(backend, image: np.ndarray, slicing: Slicing, conf_thresh: float, nms_thresh: float,
                    letterbox: bool = False) -> list[np.ndarray]:
    """Per tile of `image`, its detections (each tile detected plainly by `backend.detect`, `slicing.batch`
    tiles per call) in image pixels."""
    h, w = image.shape[:2]
    tiles = tile_grid(w, h, slicing.size, slicing.overlap)
    out = []
    for start in range(0, len(tiles), slicing.batch):
        part = tiles[start:start + slicing.batch]
        dets = backend.detect([image[y1:y2, x1:x2] for x1, y1, x2, y2 in part], conf_thresh, nms_thresh, letterbox)
        out += [shift(d, x1, y1) for d, (x1, y1, _, _) in zip(dets, part)]
    return out


def sliced_detect(backend, image: np.ndarray, slicing: Slicing, conf_thresh: float = 0.25,
                  nms_thresh: float = 0.45, letterbox: bool = False) -> np.ndarray:
    """(n, 6) [x1, y1, x2, y2, score, class] in pixels of `image` (BGR uint8), by falling score. An image
    that fits one tile (and no `full`) gives exactly `backend.detect([image])[0]`."""
    h, w = image.shape[:2]
    if fits_one_tile(w, h, slicing.size):
        return backend.detect([image], conf_thresh, nms_thresh, letterbox)[0]
    parts = tile_detections(backend, image, slicing, conf_thresh, nms_thresh, letterbox)
    if slicing.full:
        parts.append(backend.detect([image], conf_thresh, nms_thresh, letterbox)[0])
    dets = np.concatenate(parts) if parts else np.zeros((0, 6), np.float32)
    return merge_detections(dets, slicing.merge, slicing.match_thresh, slicing.match)
