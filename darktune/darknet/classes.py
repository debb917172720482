"""A trained model's classes matched to a dataset's by name, and the output rows that go with them.

A COCO model already finds "person" and "car". `match_classes` pairs each of the data's class names with one
of the model's: names compared without case, spaces, '_' or '-' ("Dining_Table" = "dining table"), else through
`ALIASES` (a short table: pedestrian/people/human -> person, bike -> bicycle, and Pascal VOC's names for COCO's
classes: aeroplane, motorbike, sofa, tvmonitor). `copy_class_rows` copies, in each [yolo] head's input conv,
every anchor's box (tx, ty, tw, th) and objectness rows and the matched classes' rows from the model into a
network with the data's classes; `model_for_classes` makes that network whole (every other layer copied, the
rows of classes the model lacks silenced), so a COCO model is evaluated on the user's classes as they are.
`names_beside` finds the names file that belongs with a cfg or weights file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from darktune.darknet.cfg import YoloSpec
from darktune.darknet.model import Darknet
from darktune.errors import DarktuneError

# data's name (normalised) -> the COCO name it means (normalised); exact matches are tried first
ALIASES = {
    "pedestrian": "person", "pedestrians": "person", "people": "person", "human": "person", "persons": "person",
    "bike": "bicycle", "motorbike": "motorcycle", "aeroplane": "airplane", "plane": "airplane", "sofa": "couch",
    "tvmonitor": "tv", "television": "tv", "mobilephone": "cellphone", "cars": "car",
}
SILENT_BIAS = -30.0  # a class row the model lacks, in an evaluated model: sigmoid(-30) ~ 1e-13, never reported


def normalise(name: str) -> str:
    """Lower case, without spaces, '_' or '-': how class names are compared."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


@dataclass(frozen=True)
class ClassMatch:
    """`rows[j]`: the model's class index for the data's class j, or None (a class the model does not have)."""

    data_names: tuple[str, ...]
    model_names: tuple[str, ...]
    rows: tuple[int | None, ...]

    @property
    def matched(self) -> int:
        return sum(r is not None for r in self.rows)

    def describe(self) -> list[str]:
        """One line per data class: 'person <- person (0)' or 'tree: not among the model's classes'."""
        return [f"{name} <- {self.model_names[r]} ({r})" if r is not None else f"{name}: not among the model's classes"
                for name, r in zip(self.data_names, self.rows)]

    def to_dict(self) -> dict:
        return {name: ({"model_class": r, "model_name": self.model_names[r]} if r is not None else None)
                for name, r in zip(self.data_names, self.rows)}


def match_classes(data_names: list[str], model_names: list[str]) -> ClassMatch:
    """Each data class's model class by name (see the module docstring); a model class goes to one data class
    only (the first, an exact match before an alias)."""
    index: dict[str, int] = {}
    for i, name in enumerate(model_names):
        index.setdefault(normalise(name), i)
    rows: list[int | None] = [index.get(normalise(n)) for n in data_names]
    for j, name in enumerate(data_names):
        if rows[j] is None:
            rows[j] = index.get(ALIASES.get(normalise(name), ""))
    taken: set[int] = set()
    for j in sorted(range(len(rows)), key=lambda j: (normalise(data_names[j]) not in index, j)):
        if rows[j] is not None and rows[j] in taken:
            rows[j] = None
        elif rows[j] is not None:
            taken.add(rows[j])
    return ClassMatch(tuple(data_names), tuple(model_names), tuple(rows))


def read_names_file(path: str | Path) -> list[str]:
    """The non-empty lines of a names file."""
    p = Path(path)
    if not p.is_file():
        raise DarktuneError("names file not found (or not a regular file)", path=str(path))
    try:
        return [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DarktuneError(f"cannot read names: {exc}", path=str(path)) from None


def names_beside(path: str | Path) -> Path | None:
    """A names file that belongs with a cfg or weights file: <stem>.names beside it (`darktune export darknet`
    writes model.cfg + model.names), else obj.names (a `darktune train` run folder, darknet's habit), else the
    only .names file in its folder (the zoo's yolov3-tiny.cfg + coco.names); None if there is none of these."""
    path = Path(path)
    for candidate in (path.with_suffix(".names"), path.parent / "obj.names"):
        if candidate.is_file():
            return candidate
    found = [p for p in path.parent.glob("*.names") if p.is_file()]
    return found[0] if len(found) == 1 else None


def head_convs(model: Darknet) -> list[tuple[int, YoloSpec]]:
    """(index of the conv feeding a [yolo] layer, that [yolo]'s spec) for every head."""
    return [(i - 1, model.spec.layers[i]) for i in model.spec.yolo_indices]


def _row_map(yolo_anchors: int, src_classes: int, dst_classes: int, rows: tuple[int | None, ...]
             ) -> tuple[list[int], list[int]]:
    """(target rows, source rows) of one head: per anchor, the 5 box/objectness rows and the matched classes."""
    dst, src = [], []
    for a in range(yolo_anchors):
        s0, d0 = a * (5 + src_classes), a * (5 + dst_classes)
        dst += [d0 + k for k in range(5)]
        src += [s0 + k for k in range(5)]
        for j, r in enumerate(rows):
            if r is not None:
                dst.append(d0 + 5 + j)
                src.append(s0 + 5 + r)
    return dst, src


@torch.no_grad()
def copy_class_rows(source: Darknet, target: Darknet, match: ClassMatch) -> list[int]:
    """Copy the matched rows of every head's input conv from `source` (the model's classes) into `target`
    (the data's): each anchor's box and objectness rows and the rows of the data's classes the model has (every
    tensor of the layer whose first dimension is the conv's outputs: weight, bias, batch norm). The other
    classes' rows of `target` are left as they are. Returns the conv layers written."""
    written = []
    for (i, src_yolo), (_, dst_yolo) in zip(head_convs(source), head_convs(target)):
        if len(src_yolo.mask) != len(dst_yolo.mask):
            raise DarktuneError(f"layer {i + 1}: [yolo] heads with different anchor counts cannot share rows")
        dst_rows, src_rows = _row_map(len(dst_yolo.mask), src_yolo.classes, dst_yolo.classes, match.rows)
        src_state, dst_state = source.layers[i].state_dict(), target.layers[i].state_dict()
        for key, value in dst_state.items():
            theirs = src_state[key]
            if value.dim() and value.shape[0] == target.layers[i].spec.filters:
                value[dst_rows] = theirs[src_rows].to(value.dtype)
            elif value.shape == theirs.shape:  # e.g. batch norm's num_batches_tracked
                value.copy_(theirs)
        target.layers[i].load_state_dict(dst_state)
        written.append(i)
    return written


@torch.no_grad()
def copy_other_layers(source: Darknet, target: Darknet) -> list[int]:
    """Copy every layer with weights except the heads' input convs (same shapes in both networks)."""
    heads = {i for i, _ in head_convs(target)}
    copied = []
    for i, layer in enumerate(target.layers):
        if i in heads or not list(layer.state_dict()):
            continue
        layer.load_state_dict(source.layers[i].state_dict())
        copied.append(i)
    return copied


@torch.no_grad()
def model_for_classes(source: Darknet, data_names: list[str], model_names: list[str]) -> tuple[Darknet, ClassMatch]:
    """`source` (a model for `model_names`) as a network for `data_names` (in eval mode): every layer copied, the
    heads' rows of the matched classes kept exactly, the rows of classes the model lacks silenced (zero weights,
    bias `SILENT_BIAS`: never detected). An error when no class matches."""
    if len(model_names) != source.spec.num_classes:
        raise DarktuneError(f"{len(model_names)} class names for a model with {source.spec.num_classes} classes")
    match = match_classes(data_names, model_names)
    if not match.matched:
        raise DarktuneError(f"none of the data's classes ({', '.join(data_names[:8])}) is among the model's "
                            f"{len(model_names)} classes (by name; aliases: see darktune.darknet.classes)")
    target = Darknet(source.spec.with_classes(len(data_names))).eval()
    copy_other_layers(source, target)
    for i, yolo in head_convs(target):
        conv = target.layers[i].conv
        conv.weight.zero_()
        if conv.bias is not None:
            per = conv.bias.view(len(yolo.mask), 5 + yolo.classes)
            per[:, 5:] = SILENT_BIAS
        elif target.layers[i].bn is not None:  # a head conv with batch norm: silenced through its scale and shift
            target.layers[i].bn.weight.view(len(yolo.mask), 5 + yolo.classes)[:, 5:] = 0.0
            target.layers[i].bn.bias.view(len(yolo.mask), 5 + yolo.classes)[:, 5:] = SILENT_BIAS
    copy_class_rows(source, target, match)
    return target, match


def model_to_data(match: ClassMatch) -> list[int]:
    """Per model class, the data class it is reported as (-1: not reported)."""
    out = [-1] * len(match.model_names)
    for j, r in enumerate(match.rows):
        if r is not None:
            out[r] = j
    return out


def remap_detections(dets: np.ndarray, model_to_data_rows: list[int]) -> np.ndarray:
    """(n, 6) [x1, y1, x2, y2, score, class] detections of the model -> those of the classes the data has, with
    the data's class ids (the others dropped). The same rows, scores and boxes as `model_for_classes` gives
    (its NMS is per class, so the other classes never changed them)."""
    table = np.asarray(model_to_data_rows, dtype=np.int64)
    cls = table[dets[:, 5].astype(np.int64)]
    keep = cls >= 0
    out = dets[keep].copy()
    out[:, 5] = cls[keep]
    return out
