"""Which [yolo] head learns each box: darknet's assignment rule, applied to a data set's labels at a network size.

Darknet gives a truth box to the anchor whose box, centred on the truth, has the highest IoU with it (over all of
the cfg's anchors); the [yolo] layer whose mask holds that anchor learns the box, the others treat it as
background. Anchors are pixels of the network input, so the same relative box goes to a different head at
another network size: at 128 px a window a third of the image wide is a 43-pixel box and goes to the stride-16
head, at 416 px a 139-pixel box and the stride-32 head. Freezing N layers freezes every head before layer N, and a
head that is frozen cannot learn its boxes: that is what these shares tell (the report uses them to explain the
cost of freezing 20 layers).

Owns: `HeadShare`, `best_anchors(wh, anchors)`, `head_shares(spec, wh, size)`, `training_box_sizes(obj_data)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darktune.data.stats import wh_iou
from darktune.darknet.specs import NetworkSpec
from darktune.data.formats.yolo import label_path_for, read_label_file, read_obj_data


@dataclass(frozen=True)
class HeadShare:
    layer: int  # index of the [yolo] layer
    mask: tuple[int, ...]
    boxes: int  # boxes whose best anchor is in this head's mask
    share: float  # boxes / all boxes


def best_anchors(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Index of the best anchor for each (w, h) box, both in pixels: (n, 2), (k, 2) -> (n,), by the shapes'
    IoU at a common corner (the same as centred). Ties go to the first anchor, as in darknet's loop."""
    return np.argmax(wh_iou(wh, anchors), axis=1)


def head_shares(spec: NetworkSpec, wh: np.ndarray, size: int) -> list[HeadShare]:
    """Share of the boxes (relative w, h in [0, 1], shape (n, 2)) that each [yolo] head of `spec` learns in a
    `size` x `size` network. Heads are listed in layer order; a box whose best anchor is in no mask counts for
    none."""
    heads = [(i, spec.layers[i]) for i in spec.yolo_indices]
    if not heads or len(wh) == 0:
        return [HeadShare(i, tuple(h.mask), 0, 0.0) for i, h in heads]
    anchors = np.asarray(heads[0][1].anchors, dtype=np.float64).reshape(-1, 2)
    best = best_anchors(np.asarray(wh, dtype=np.float64) * size, anchors)
    out = []
    for i, head in heads:
        n = int(np.isin(best, np.asarray(head.mask)).sum())
        out.append(HeadShare(i, tuple(head.mask), n, n / len(wh)))
    return out


def training_box_sizes(obj_data: str | Path) -> np.ndarray:
    """(w, h) of every valid box of a darknet data set's train list, relative to the image, shape (n, 2). Bad
    label lines are left out (`darktune data check` reports them); a missing label file is an image without
    boxes, as in darknet."""
    data = read_obj_data(obj_data)
    sizes = []
    for image in data.train:
        label = label_path_for(image)
        if label.is_file():
            rows, _ = read_label_file(label, len(data.names))
            sizes.append(rows[:, 3:5])
    return np.concatenate(sizes).astype(np.float64) if sizes else np.zeros((0, 2))
