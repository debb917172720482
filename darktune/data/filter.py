"""Annotation-noise filter: drop boxes (and images) that do not look like single objects.

The study filtered a noisy Open Images "Window" set by hand, removing boxes drawn around groups of windows.
These rules automate that. Flags (Open Images IsGroupOf, ..., and VOC `difficult`, which darknet's
voc_label.py leaves out of training) are used when asked, but the shape rules catch most group
boxes without them, because a box around a row, column or block of windows is larger and more elongated
than any single window, and usually encloses other boxes:

- containers: a box that contains >= `container_min` other boxes of its class (each >= 90% inside it and at
  most 2/3 of its area) is a group box.
- max_rel_size T: a box that is larger and/or more elongated than the other boxes of its class in the
  same image (needs >= 2 others): max(1, area ratio) * aspect-ratio factor > T, ratios against the medians
  of the others. Windows of one facade look alike; a box around two of them is twice as long.
- area / aspect: absolute bounds (area as a fraction of the image; aspect w/h in pixels when the image size
  is known, else in normalised units).
- like: the shape of a small reference set of good boxes (e.g. the target set). Its shapes (see
  `reference_shapes`: area fraction and pixel aspect kept) are clustered with k-means under IoU distance
  (as darknet calc_anchors does) and a box is kept only if its best shape IoU with a centre is >= like_iou.
- max_boxes N: an image with more than N boxes is dropped whole (crowded scenes carry unlabelled objects).

Each removed box is attributed to the first rule (in the order above, flags first) that flags it; the report
also counts every box each rule flags. An image whose boxes were all removed is dropped ("emptied": it still
shows the objects, now unlabelled); with whole_images, an image loses all its boxes as soon as one is removed,
and the boxes the rules left are counted under the pseudo-rule "whole_image" (an image whose every box a rule
removed is "emptied" either way, so each dropped image is counted once, under one reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.stats import kmeans_anchors, wh_iou
from darktune.errors import DarktuneError

_FLAG_RULES = (("group_of", "drop_group_of", "is_group_of"), ("depiction", "drop_depiction", "is_depiction"),
               ("truncated", "drop_truncated", "is_truncated"), ("occluded", "drop_occluded", "is_occluded"),
               ("difficult", "drop_difficult", "is_difficult"))
INSIDE_FRACTION = 0.9
CONTAINER_AREA_RATIO = 1.5


@dataclass
class FilterRules:
    """Which rules to apply (all off by default). `like` is (n, 2) normalised reference box shapes."""

    drop_group_of: bool = False
    drop_depiction: bool = False
    drop_truncated: bool = False
    drop_occluded: bool = False
    drop_difficult: bool = False
    drop_containers: bool = False
    container_min: int = 2
    max_rel_size: float | None = None
    area: tuple[float, float] | None = None
    aspect: tuple[float, float] | None = None
    like: np.ndarray | None = None
    like_k: int = 9
    like_iou: float = 0.35
    max_boxes: int | None = None
    whole_images: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("area", "aspect"):
            bounds = getattr(self, name)
            if bounds is not None and not (len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]):
                raise DarktuneError(f"{name} needs MIN <= MAX, both >= 0; got {bounds}")
        if self.container_min < 1:
            raise DarktuneError(f"container_min must be >= 1, got {self.container_min}")
        if self.max_rel_size is not None and self.max_rel_size <= 1:
            raise DarktuneError(f"max_rel_size must be > 1, got {self.max_rel_size}")
        if self.max_boxes is not None and self.max_boxes < 1:
            raise DarktuneError(f"max_boxes must be >= 1, got {self.max_boxes}")
        if not 0 < self.like_iou <= 1:
            raise DarktuneError(f"like_iou must be in (0, 1], got {self.like_iou}")
        if self.like is not None:
            self.like = np.asarray(self.like, np.float64).reshape(-1, 2)
            if len(self.like) == 0:
                raise DarktuneError("the reference set for 'like' has no boxes")

    def active(self) -> list[str]:
        """Names of the rules that are on, in attribution order ("whole_image" last, with any other rule)."""
        names = ["max_boxes"] if self.max_boxes is not None else []
        names += [name for name, attr, _ in _FLAG_RULES if getattr(self, attr)]
        names += [name for name, on in (("containers", self.drop_containers),
                                        ("rel_size", self.max_rel_size is not None), ("area", self.area is not None),
                                        ("aspect", self.aspect is not None), ("like", self.like is not None)) if on]
        return names + ["whole_image"] if names and self.whole_images else names


@dataclass
class RuleCount:
    rule: str
    flagged: int = 0  # boxes this rule flags, whichever rule removed them
    removed: int = 0  # boxes removed because of this rule (first rule that flags a box)
    images: int = 0  # images where this rule removed at least one box (not all of them are dropped)


@dataclass
class FilterReport:
    """Counts of a filter run. `rules`: per active rule, boxes and images (see RuleCount); `images_removed`:
    images dropped, by reason ("max_boxes", "emptied": every box removed, "whole_image": the rest of an image's
    boxes removed with --whole-images), each dropped image under exactly one reason."""

    n_images_in: int = 0
    n_images_out: int = 0
    n_boxes_in: int = 0
    n_boxes_out: int = 0
    rules: list[RuleCount] = field(default_factory=list)
    images_removed: dict[str, int] = field(default_factory=dict)
    like_centres: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"n_images_in": self.n_images_in, "n_images_out": self.n_images_out,
                "n_boxes_in": self.n_boxes_in, "n_boxes_out": self.n_boxes_out,
                "rules": [vars(r) for r in self.rules], "images_removed": dict(self.images_removed),
                "like_centres": self.like_centres}

    def format_table(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in self.images_removed.items() if v)
        totals = (f"boxes {self.n_boxes_in} -> {self.n_boxes_out}, images {self.n_images_in} -> "
                  f"{self.n_images_out}" + (f" (images dropped: {dropped})" if dropped else ""))
        if not self.rules:
            return f"no filter rule given, so no box was removed\n{totals}"
        lines = [f"{'rule':<14} {'flagged':>8} {'removed':>8} {'images':>7}"]
        lines += [f"{r.rule:<14} {r.flagged:>8} {r.removed:>8} {r.images:>7}" for r in self.rules]
        lines.append("(flagged, removed: boxes; images: images in which the rule removed a box)")
        if not any(r.flagged for r in self.rules):
            lines.append(f"no rule flagged any box (active: {', '.join(r.rule for r in self.rules)})")
        lines.append(totals)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- geometry


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (n, m) of xyxy boxes; boxes without area give 0."""
    inter = pairwise_intersection(a, b)
    area_a = _area(a)
    area_b = _area(b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pairwise_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _area(xyxy: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)


def contained_counts(xyxy: np.ndarray, classes: list[str]) -> np.ndarray:
    """For each box, how many other boxes of its class lie (>= 90%) inside it and are at most 2/3 its area."""
    n = len(xyxy)
    if n < 2:
        return np.zeros(n, int)
    area = _area(xyxy)
    inter = pairwise_intersection(xyxy, xyxy)
    inside = inter >= INSIDE_FRACTION * area[None, :]  # [i, j]: j inside i
    bigger = area[:, None] >= CONTAINER_AREA_RATIO * area[None, :]
    cls = np.asarray(classes)
    same = cls[:, None] == cls[None, :]
    return (inside & bigger & same & ~np.eye(n, dtype=bool)).sum(1)


def relative_size_outliers(xyxy: np.ndarray, classes: list[str], limit: float,
                           aspect_scale: float = 1.0) -> np.ndarray:
    """Boxes that stand out from the other boxes of their class in the image (needs >= 2 others): flagged
    when max(1, A) * max(R, 1/R) > limit, with A the box area over the median area of the others and R its
    aspect (w/h) over their median aspect. Larger or more elongated than its neighbours = likely a group.
    `aspect_scale` (W/H) makes aspects pixel aspects; it cancels in R but keeps the medians meaningful."""
    w = np.clip(xyxy[:, 2] - xyxy[:, 0], 1e-12, None)
    h = np.clip(xyxy[:, 3] - xyxy[:, 1], 1e-12, None)
    area, aspect = w * h, w * aspect_scale / h
    cls = np.asarray(classes)
    out = np.zeros(len(area), bool)
    for i in range(len(area)):
        others = (cls == cls[i]) & (np.arange(len(area)) != i)
        if others.sum() >= 2:
            a = area[i] / np.median(area[others])
            r = aspect[i] / np.median(aspect[others])
            out[i] = max(1.0, a) * max(r, 1.0 / r) > limit
    return out


# ---------------------------------------------------------------------------------------------- rules


def _rule_masks(rec: ImageRecord, rules: FilterRules, centres: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """(rule name, flagged mask over rec.boxes) for each active box rule, in attribution order."""
    boxes = rec.boxes
    xyxy = np.array([(b.x1, b.y1, b.x2, b.y2) for b in boxes], np.float64).reshape(-1, 4)
    classes = [b.class_name for b in boxes]
    w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    masks = []
    for name, attr, flag in _FLAG_RULES:
        if getattr(rules, attr):
            masks.append((name, np.array([getattr(b, flag) for b in boxes], bool)))
    if rules.drop_containers:
        masks.append(("containers", contained_counts(xyxy, classes) >= rules.container_min))
    if rules.max_rel_size is not None:
        scale = rec.width / rec.height if rec.width and rec.height else 1.0
        masks.append(("rel_size", relative_size_outliers(xyxy, classes, rules.max_rel_size, scale)))
    if rules.area is not None:
        masks.append(("area", (w * h < rules.area[0]) | (w * h > rules.area[1])))
    if rules.aspect is not None:
        scale = rec.width / rec.height if rec.width and rec.height else 1.0
        aspect = w * scale / h
        masks.append(("aspect", (aspect < rules.aspect[0]) | (aspect > rules.aspect[1])))
    if centres is not None:
        sx = np.sqrt(rec.width / rec.height) if rec.width and rec.height else 1.0
        best = wh_iou(np.stack([w * sx, h / sx], 1), centres).max(1) if len(boxes) else np.zeros(0)
        masks.append(("like", best < rules.like_iou))
    return masks


def reference_shapes(dataset: Dataset) -> np.ndarray:
    """(n, 2) box shapes for the `like` rule: normalised (w, h) scaled by sqrt(W/H) and sqrt(H/W) when the
    image size is known, which keeps the area fraction and the pixel aspect ratio, so shapes from landscape
    and portrait images compare fairly."""
    out = []
    for rec in dataset.images:
        sx = float(np.sqrt(rec.width / rec.height)) if rec.width and rec.height else 1.0
        out += [(b.w * sx, b.h / sx) for b in rec.boxes]
    return np.array(out, np.float64).reshape(-1, 2)


def like_centres(reference_wh: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster centres of the reference shapes (k reduced to the number of distinct shapes)."""
    wh = np.asarray(reference_wh, np.float64).reshape(-1, 2)
    k = min(k, len(np.unique(wh, axis=0)))
    return kmeans_anchors(wh, k, seed)[0]


def filter_dataset(dataset: Dataset, rules: FilterRules) -> tuple[Dataset, FilterReport]:
    """Apply `rules`; returns a new Dataset (the input is not changed) and the report."""
    centres = like_centres(rules.like, rules.like_k, rules.seed) if rules.like is not None else None
    report = FilterReport(n_images_in=len(dataset.images), n_boxes_in=dataset.n_boxes,
                          like_centres=centres.tolist() if centres is not None else [])
    counts = {name: RuleCount(name) for name in rules.active()}  # every active rule gets a row, even at 0
    images_removed = {"max_boxes": 0, "emptied": 0, "whole_image": 0}
    kept_images = []
    for rec in dataset.images:
        kept, reason = _filter_image(rec, rules, centres, counts)
        if reason:
            images_removed[reason] += 1
        else:
            kept_images.append(replace(rec, boxes=kept))
    report.rules = list(counts.values())
    report.images_removed = images_removed
    report.n_images_out = len(kept_images)
    report.n_boxes_out = sum(len(r.boxes) for r in kept_images)
    return Dataset(list(dataset.classes), kept_images, list(dataset.skipped)), report


def _filter_image(rec: ImageRecord, rules: FilterRules, centres, counts: dict[str, RuleCount]
                  ) -> tuple[list[Box], str | None]:
    """(boxes kept, reason the image is dropped or None); adds to `counts` (a RuleCount per active rule)."""
    if rules.max_boxes is not None:
        c = counts["max_boxes"]
        if len(rec.boxes) > rules.max_boxes:
            c.flagged += len(rec.boxes)
            c.removed += len(rec.boxes)
            c.images += 1
            return [], "max_boxes"
    removed = np.zeros(len(rec.boxes), bool)
    for name, mask in _rule_masks(rec, rules, centres):
        c = counts[name]
        new = mask & ~removed
        c.flagged += int(mask.sum())
        c.removed += int(new.sum())
        c.images += bool(new.any())
        removed |= mask
    kept = [b for b, r in zip(rec.boxes, removed) if not r]
    if rec.boxes and not kept:
        return [], "emptied"
    if rules.whole_images and removed.any():
        c = counts["whole_image"]
        c.flagged += len(kept)
        c.removed += len(kept)
        c.images += 1
        return [], "whole_image"
    return kept, None
