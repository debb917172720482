"""Darknet / YOLO format -> Dataset: an obj.data (names + train/valid lists) or a folder of images with a
label .txt beside each (classes from obj.names or classes.txt). Writing is `dataset.write_darknet`."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import numpy as np

from darktune.data.dataset import (Box, Dataset, ImageRecord, Problem, clipped_box, label_path_for,
                                   read_label_file, read_names, read_obj_data)
from darktune.data.formats.image import IMAGE_EXTENSIONS
from darktune.errors import DarktuneError


def _folder_images(folder: Path) -> tuple[list[str], list[Path]]:
    for name in ("obj.names", "classes.txt"):
        if (folder / name).is_file():
            names = read_names(folder / name)
            break
    else:
        raise DarktuneError("no obj.data, obj.names or classes.txt in this folder", path=str(folder))
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return names, images


def not_an_image_file(path: Path) -> str | None:
    """Why an entry named like an image cannot be taken as one (a dangling or looping link, a folder, a device
    or FIFO), or None for a regular file. Such an entry is a counted, named skip, never dropped unsaid."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "image is a symlink loop (not read)"
        if path.is_symlink():
            return "image is a dangling symlink: its target is missing"
        if exc.errno == errno.ENOENT:
            return None  # a listed image not on disk: counted later as such (data stats leaves it out)
        return f"image cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "image is a folder, not a file (not read)"
    if not stat.S_ISREG(mode):
        return "image is not a regular file: a device or FIFO (not read)"
    return None


def read_yolo(src: str | Path, *, skip_bad: bool = False) -> Dataset:
    """Read a darknet dataset: `src` is an obj.data file, a folder holding obj.data, or a folder of images
    with labels and obj.names/classes.txt. Images of train and valid lists are merged (listed once).
    A bad label line raises DarktuneError (file:line); skip_bad: the image is skipped and counted instead."""
    src = Path(src)
    if src.is_file() or (src / "obj.data").is_file():
        od = read_obj_data(src)
        names, images = od.names, list(dict.fromkeys(od.train + od.valid))
    elif src.is_dir():
        names, images = _folder_images(src)
    else:
        raise DarktuneError("not found (expected obj.data or a dataset folder)", path=str(src))
    records, skipped = [], []
    for img in images:
        reason = not_an_image_file(img)
        if reason:  # whatever its label says, it is not an image import can copy: skipped and named
            skipped.append(Problem(str(img), None, reason))
            continue
        boxes, problems = _boxes_for(img, names)
        if problems:
            if not skip_bad:
                p = problems[0]
                raise DarktuneError(p.reason, path=p.path, line=p.line)
            skipped += problems
            continue
        records.append(ImageRecord(img, None, None, boxes))
    return Dataset(list(names), records, skipped)


def _boxes_for(image: Path, names: list[str]) -> tuple[list[Box], list[Problem]]:
    """Boxes of one image from its label file (none when there is no label file) and its error problems."""
    label = label_path_for(image)
    if not label.is_file():
        if label.exists():  # a folder, device or FIFO: an image whose labels cannot be read is not a negative
            return [], [Problem(str(label), None, "label file is not a regular file (not read)")]
        return [], []
    rows, problems = read_label_file(label, len(names), dtype=np.float64)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        return [], errors
    boxes = []
    for cls, cx, cy, w, h in rows.tolist():
        boxes.append(clipped_box(names[int(cls)], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return boxes, []
