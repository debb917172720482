"""The in-memory detection dataset.

Owns: `Box` / `ImageRecord` / `Dataset` (boxes as normalised corners in [0, 1]), `Problem` (one finding about
one file, with its line), `image_identity` (which file an image path names; merging sources by it is
darktune/data/merge.py), and placing image copies under new unique names. The darknet layout on disk (reading,
writing, label files) is `darktune.data.formats.yolo`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path


from darktune.files import (copy_file)
from darktune.errors import DarktuneError

# A box may overshoot the image by this much (normalised) and is clipped; more is an error.
BOX_TOLERANCE = 1e-3
MIN_BOX_SIZE = 1e-6  # smaller is no box (and would be 0 in float32)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Problem:
    """One finding about a file. severity "error": the file (or record) is not used; "warning": used as read."""

    path: str
    line: int | None
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.severity}: {self.reason}"

    def to_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "reason": self.reason, "severity": self.severity}


@dataclass(frozen=True, slots=True)
class Box:
    """One object: class name and normalised corners (x to the right, y down), plus Open Images flags and VOC's
    `difficult` (`is_difficult`)."""

    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float
    is_group_of: bool = False
    is_depiction: bool = False
    is_truncated: bool = False
    is_occluded: bool = False
    is_inside: bool = False
    is_difficult: bool = False

    def __post_init__(self):
        coords = (self.x1, self.y1, self.x2, self.y2)
        if not all(isinstance(c, (int, float)) and math.isfinite(c) and 0.0 <= c <= 1.0 for c in coords):
            raise ValueError(f"box corners must be finite numbers in [0, 1], got {coords}")
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise ValueError(f"box has no area: {coords}")

    @property
    def w(self) -> float:
        return self.x2 - self.x1

    @property
    def h(self) -> float:
        return self.y2 - self.y1

    @property
    def cx(self) -> float:
        return (self.x1 + self.x2) / 2

    @property
    def cy(self) -> float:
        return (self.y1 + self.y2) / 2

    def flags(self) -> dict[str, bool]:
        return {"is_group_of": self.is_group_of, "is_depiction": self.is_depiction,
                "is_truncated": self.is_truncated, "is_occluded": self.is_occluded, "is_inside": self.is_inside,
                "is_difficult": self.is_difficult}


def class_name_problem(name) -> str | None:
    """Why `name` cannot be a class name (one line of obj.names), or None."""
    if not isinstance(name, str) or not name.strip():
        return f"bad class name {name!r} (empty)"
    if "\n" in name or "\r" in name:
        return f"bad class name {name[:60]!r} (a line break cannot be written to obj.names)"
    bad = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if bad is not None:  # NUL cuts the name in darknet's C reader; ESC and CSI drive the terminal that prints it
        return f"bad class name {name[:60]!r} (control character {bad!r}: refused in class names)"
    return None


def clipped_box(class_name: str, x1: float, y1: float, x2: float, y2: float, *,
                tol: float = BOX_TOLERANCE, **flags: bool) -> Box:
    """A Box from normalised corners; overshoot up to `tol` is clipped. Raises ValueError(reason) otherwise."""
    coords = [float(c) for c in (x1, y1, x2, y2)]
    if not all(math.isfinite(c) for c in coords):
        raise ValueError(f"coordinates are not finite numbers: {coords}")
    if any(c < -tol or c > 1 + tol for c in coords):
        raise ValueError(f"box lies outside the image: corners {coords} not in [0, 1]")
    x1, y1, x2, y2 = (min(1.0, max(0.0, c)) for c in coords)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box has no area (x1={x1}, y1={y1}, x2={x2}, y2={y2})")
    return Box(class_name, x1, y1, x2, y2, **flags)


@dataclass
class ImageRecord:
    """One image and its boxes. width/height are pixels when known (None: read from the file when needed)."""

    path: Path
    width: int | None = None
    height: int | None = None
    boxes: list[Box] = field(default_factory=list)


@dataclass
class Dataset:
    """Class names (index = darknet class id) and images. `skipped` lists what readers reported: records they
    dropped (severity "error", `dropped`) and notes on what they read as it was (severity "warning", `notes`:
    crowd boxes read as group-of, duplicate annotations kept once, Open Images rows of Confidence 0)."""

    classes: list[str]
    images: list[ImageRecord]
    skipped: list[Problem] = field(default_factory=list)

    @property
    def dropped(self) -> list[Problem]:
        return [p for p in self.skipped if p.severity == "error"]

    @property
    def notes(self) -> list[Problem]:
        return [p for p in self.skipped if p.severity != "error"]

    def __post_init__(self):
        for name in self.classes:
            reason = class_name_problem(name)
            if reason:
                raise DarktuneError(reason)
        if len(set(self.classes)) != len(self.classes):
            raise DarktuneError(f"duplicate class names in {self.classes}")

    @property
    def n_boxes(self) -> int:
        return sum(len(r.boxes) for r in self.images)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for rec in self.images:
            for b in rec.boxes:
                counts[b.class_name] = counts.get(b.class_name, 0) + 1
        return counts

    def validate(self) -> None:
        """Every box names a known class and no image file is listed twice (DarktuneError naming the image
        otherwise: two records of one picture would be written as two images, maybe one in train and one in
        valid; `merge_datasets` merges them)."""
        known = set(self.classes)
        seen: set[tuple] = set()
        for rec in self.images:
            for b in rec.boxes:
                if b.class_name not in known:
                    raise DarktuneError(f"box class {b.class_name!r} is not one of {self.classes}", path=str(rec.path))
            key = image_identity(rec.path)
            if key in seen:
                raise DarktuneError("image listed more than once in the dataset (merge its records first: "
                                    "merge_datasets)", path=str(rec.path))
            seen.add(key)

    def select_classes(self, names: list[str], keep_empty: bool = False) -> Dataset:
        """Keep only boxes of `names`, matched exactly (case included: Cat, cat and CAT are three classes); the
        order given becomes the class order. A name that matches a class only in another case is an error
        naming the exact spellings. Images that had boxes but none left are dropped unless keep_empty; images
        without any box (explicit negatives) are kept."""
        missing = [n for n in names if n not in self.classes]
        if missing:
            raise DarktuneError(_unknown_classes_message(missing, self.classes))
        wanted = set(names)
        images = []
        for rec in self.images:
            boxes = [b for b in rec.boxes if b.class_name in wanted]
            if boxes or keep_empty or not rec.boxes:
                images.append(replace(rec, boxes=boxes))
        return Dataset(list(names), images, list(self.skipped))


def _unknown_classes_message(missing: list[str], classes: list[str], shown: int = 20) -> str:
    """Why `missing` are not classes; names that differ from a class only in case get its exact spellings."""
    head = f"{'class' if len(missing) == 1 else 'classes'} {', '.join(repr(n) for n in missing)} not found"
    hints = []
    for name in missing:
        found = [repr(c) for c in classes if c.lower() == name.lower()]
        spellings = " or ".join(filter(None, [", ".join(found[:-1]), found[-1]])) if found else ""
        if spellings:
            hints.append(spellings if len(missing) == 1 else f"{spellings} for {name!r}")
    if hints:
        return f"{head} (class names are matched exactly, case included); did you mean {', '.join(hints)}?"
    listed = ", ".join(repr(c) for c in classes[:shown])
    more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
    return f"{head}; the dataset has {listed}{more}"


def image_identity(path: str | Path) -> tuple:
    """Which file an image path names: (device, inode) when the file exists, so a symlink, a hardlink or
    another spelling of the same file are one image; otherwise the absolute, resolved path."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        if st.st_ino:
            return ("file", st.st_dev, st.st_ino)
    except OSError:
        pass
    try:
        return ("path", str(p.resolve()))
    except (OSError, RuntimeError):  # a symlink loop
        return ("path", str(p.absolute()))


# ----------------------------------------------------------------------------------------------- writing


def place_images(records: list[ImageRecord], images_dir: Path, link: bool = False) -> list[Path]:
    """Copy (or hardlink, falling back to a copy) each image into `images_dir` under a unique safe name.

    Names keep the source stem (unsafe characters -> '_'); stems are unique case-insensitively, so label
    files `<stem>.txt` never collide either. Sources are only read. Use inside `output_folder`."""
    images_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    out = []
    for rec in records:
        src = Path(rec.path)
        stem = _NAME_UNSAFE.sub("_", src.stem).strip("._") or "image"
        candidate, n = stem, 0
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}_{n}"
        used.add(candidate.lower())
        dst = images_dir / (candidate + src.suffix.lower())
        copy_file(src, dst, link)
        out.append(dst)
    return out
