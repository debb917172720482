"""A rule of thumb, from a dataset's object sizes, for whether to tile and which tile size and overlap fit.

What matters is an object's size in network pixels: Tiny YOLO's finer head has a stride of 16 (a 26x26 grid
at 416) and its smallest anchors are 10x14 and 23x27 px, so an object under 16 network pixels (one cell) is
mostly missed, and one of about 32 (two cells) is found well.

- plain resize: an object of s px in a W x H image becomes s * net / max-side px; tiling is advised when the
  median object (geometric mean of width and height) falls under 16 network px and the images are larger
  than the network;
- tile size: the largest multiple of 32 at which the median object still spans 32 network px when a tile is
  resized to the network (s * net / tile >= 32), at most the largest image side; fewer, larger tiles cost
  less time. A tile smaller than the network enlarges the objects (they are small even at full resolution);
- overlap: enough that 95% of the objects fit whole into some tile (overlap * tile >= the 95th percentile of
  the larger box side), rounded up to 0.05, between 0.1 and 0.5.
"""

from __future__ import annotations

import math

import numpy as np

from darktune.data.dataset import Dataset
from darktune.data.formats.image import known_size
from darktune.errors import DarktuneError

MISSED_PX = 16  # an object under one cell of the finer head (stride 16) is mostly missed
TARGET_PX = 32  # two cells: found well


def _object_sizes(dataset: Dataset) -> tuple[np.ndarray, int]:
    """(n, 4) per box: width and height in pixels, and its image's width and height; images whose size cannot
    be read are left out and counted."""
    rows, unread = [], 0
    for rec in dataset.images:
        if not rec.boxes:
            continue
        try:
            w, h = known_size(rec)
        except DarktuneError:
            unread += 1
            continue
        rows += [(b.w * w, b.h * h, w, h) for b in rec.boxes]
    return np.asarray(rows, np.float64).reshape(-1, 4), unread


def tiling_advice(dataset: Dataset, size: tuple[int, int] = (416, 416)) -> dict | None:
    """The rule of thumb (module docstring) as a dict: needed, tile, overlap, the median object in network
    px with a plain resize and with that tile, the share under 16 px with a plain resize, and `advice` in
    words; None when the dataset has no box."""
    sizes, unread = _object_sizes(dataset)
    if not len(sizes):
        return None
    net = min(size)
    side = np.sqrt(sizes[:, 0] * sizes[:, 1])  # geometric mean of width and height, pixels
    longest = np.maximum(sizes[:, 2], sizes[:, 3])
    resized = side * net / longest
    median_native, median_resized = float(np.median(side)), float(np.median(resized))
    needed = median_resized < MISSED_PX and float(np.median(longest)) > net
    tile = int(max(32, min(math.floor(median_native * net / TARGET_PX / 32) * 32, longest.max())))
    p95 = float(np.percentile(np.maximum(sizes[:, 0], sizes[:, 1]), 95))
    overlap = min(0.5, max(0.1, math.ceil(p95 / tile * 20 - 1e-9) / 20))
    out = {"needed": bool(needed), "network": net, "median_object_px": round(median_native, 1),
           "median_object_net_px_resized": round(median_resized, 1),
           "share_under_16_net_px_resized": round(float((resized < MISSED_PX).mean()), 4),
           "tile": tile, "overlap": overlap,
           "median_object_net_px_tiled": round(median_native * net / tile, 1), "images_unread": unread}
    if needed:
        out["advice"] = (f"tile: the median object is {median_resized:.1f} px at the network's {net} px with a plain "
                         f"resize ({out['share_under_16_net_px_resized']:.0%} under {MISSED_PX} px); tiles of {tile} "
                         f"px with overlap {overlap:g} make it {out['median_object_net_px_tiled']:.0f} px: data tile "
                         f"--size {tile} --overlap {overlap:g}, then detect/map --tile {tile} --overlap {overlap:g}")
    else:
        out["advice"] = (f"no tiling needed: the median object is {median_resized:.1f} px at the network's {net} px "
                         f"with a plain resize (at least {MISSED_PX} px, or images no larger than the network)")
    return out
