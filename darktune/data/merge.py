"""Several annotation sources as one dataset: records that point to the same image file become one image.

Owns: `merge_datasets(datasets, skip_bad) -> (Dataset, MergeCounts)`. Two sources that each label some of the
objects of a picture must not become two copies, each with unlabelled objects, one maybe in train and one in
valid (`Dataset.validate` refuses an image listed twice).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from darktune.data.dataset import Box, Dataset, ImageRecord, Problem, image_identity
from darktune.errors import DarktuneError
from darktune.plural import plural


@dataclass
class MergeCounts:
    """What `merge_datasets` did with records that point to one image file."""

    images: int = 0  # images listed more than once, now one record each
    records: int = 0  # records folded into the first record of their image
    boxes: int = 0  # identical boxes dropped from the union

    def message(self) -> str:
        """One line for a summary ("" when nothing was merged)."""
        if not self.images:
            return ""
        were = "was" if self.images == 1 else "were"
        dropped = f"; {plural(self.boxes, 'identical box', 'identical boxes')} dropped" if self.boxes else ""
        return (f"{plural(self.images, 'image')} listed more than once {were} merged ({self.images + self.records} "
                f"records -> {self.images}, each with the union of its boxes{dropped})")

    def to_dict(self) -> dict:
        return {"n_images_merged": self.images, "n_records_merged": self.records,
                "n_duplicate_boxes_dropped": self.boxes}


def merge_datasets(datasets: list[Dataset], *, skip_bad: bool = False) -> tuple[Dataset, MergeCounts]:
    """One dataset: classes in order of first appearance, images in order of first appearance, and records
    that point to the same image file (see `image_identity`; within one dataset too) merged into one image
    with the union of their boxes (identical boxes once). Two sources that each label some of the objects
    of a picture must not become two copies, each with unlabelled objects, one maybe in train and one in
    valid. Records of one image with different known sizes contradict each other: DarktuneError naming
    the image, or with skip_bad the image is skipped and counted."""
    classes: list[str] = []
    for ds in datasets:
        classes += [c for c in ds.classes if c not in classes]
    skipped = [p for ds in datasets for p in ds.skipped]
    first: dict[tuple, ImageRecord] = {}
    box_keys: dict[tuple, set] = {}
    extra: dict[tuple, list[int]] = {}  # image -> [records folded in, identical boxes dropped]
    bad: set[tuple] = set()
    for rec in (r for ds in datasets for r in ds.images):
        key = image_identity(rec.path)
        if key not in first:
            first[key] = replace(rec, boxes=list(rec.boxes))
            box_keys[key] = {_box_key(b) for b in rec.boxes}
            continue
        kept = first[key]
        if kept.width and kept.height and rec.width and rec.height and (kept.width, kept.height) != (rec.width,
                                                                                                     rec.height):
            reason = (f"listed more than once with different sizes ({kept.width}x{kept.height} and "
                      f"{rec.width}x{rec.height}), so its boxes disagree")
            if not skip_bad:
                raise DarktuneError(reason, path=str(rec.path))
            if key not in bad:
                skipped.append(Problem(str(rec.path), None, f"{reason} (image skipped)"))
            bad.add(key)
            continue
        kept.width, kept.height = kept.width or rec.width, kept.height or rec.height
        folded = extra.setdefault(key, [0, 0])
        folded[0] += 1
        for b in rec.boxes:
            if _box_key(b) in box_keys[key]:
                folded[1] += 1
            else:
                box_keys[key].add(_box_key(b))
                kept.boxes.append(b)
    good = [v for k, v in extra.items() if k not in bad]
    counts = MergeCounts(len(good), sum(v[0] for v in good), sum(v[1] for v in good))
    images = [rec for key, rec in first.items() if key not in bad]
    return Dataset(classes, images, skipped), counts


def _box_key(box: Box) -> tuple:
    """Boxes equal to 1e-6 of the image (and of one class) are the same object."""
    return (box.class_name, *(round(c, 6) for c in (box.x1, box.y1, box.x2, box.y2)))
