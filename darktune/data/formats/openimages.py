"""Open Images CSV <-> Dataset.

Reading takes the boxes CSV (ImageID, Source, LabelName, Confidence, XMin, XMax, YMin, YMax, IsOccluded,
IsTruncated, IsGroupOf, IsDepiction, IsInside; coordinates normalised; extra columns ignored), the
class-descriptions CSV (`LabelName,DisplayName`, e.g. `/m/0d4v4,Window`; a header row is optional, as the
official file has none) and the images folder, where each image is <ImageID>.jpg (.jpeg/.png also tried).
Class names are the display names. An image missing from the folder is skipped and counted (a partial
download is the usual case); a malformed row raises DarktuneError naming file and line, or with skip_bad is
skipped and counted. Flags of -1 (unknown) read as False. The writer copies every image but, the format
being one row per box, an image without boxes has no row and does not come back on reading.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import TextIO

from darktune.data.dataset import Dataset, ImageRecord, Problem, class_name_problem, clipped_box, place_images
from darktune.data.formats.files import open_regular, output_folder, write_error
from darktune.errors import DarktuneError

BOX_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
               "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
_FLAGS = {"IsGroupOf": "is_group_of", "IsDepiction": "is_depiction", "IsTruncated": "is_truncated",
          "IsOccluded": "is_occluded", "IsInside": "is_inside"}
_IMAGE_ID = re.compile(r"[A-Za-z0-9._-]+")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class _Bad(ValueError):
    pass


def _open_csv(path: Path) -> TextIO:
    """A CSV opened as text (UTF-8, BOM dropped). Only a regular file: one symlinked to /dev/zero would be one
    endless line for the csv module, a FIFO would block. CSVs are streamed, so no size cap."""
    return io.TextIOWrapper(open_regular(path, "CSV file"), encoding="utf-8-sig", newline="")


def read_descriptions(path: str | Path) -> dict[str, str]:
    """LabelName -> DisplayName."""
    path = Path(path)
    out: dict[str, str] = {}
    with _open_csv(path) as f:
        reader = csv.reader(f)
        try:
            for row in reader:
                if not row or row == ["LabelName", "DisplayName"]:
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise DarktuneError(f"expected 'LabelName,DisplayName', got {row[:3]}", path=str(path),
                                        line=reader.line_num)
                reason = class_name_problem(row[1].strip())
                if reason:
                    raise DarktuneError(reason, path=str(path), line=reader.line_num)
                out[row[0].strip()] = row[1].strip()
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DarktuneError(f"bad CSV: {exc}", path=str(path), line=reader.line_num) from None
    if not out:
        raise DarktuneError("no classes in the descriptions file", path=str(path))
    return out


def _select(descriptions: dict[str, str], classes: list[str] | None) -> dict[str, str]:
    """LabelName -> output class name, for the wanted classes (by display name or LabelName, any case)."""
    if not classes:
        return dict(descriptions)
    out = {}
    for want in classes:
        hits = [mid for mid, name in descriptions.items() if want.lower() in (name.lower(), mid.lower())]
        if not hits:
            raise DarktuneError(f"class {want!r} is not in the descriptions file")
        out.update({mid: want for mid in hits})
    return out


def _flag(row: dict, key: str) -> bool:
    text = (row.get(key) or "0").strip()
    if text not in ("0", "1", "-1"):
        raise _Bad(f"{key} must be 0, 1 or -1, got {text!r}")
    return text == "1"


def _row_box(row: dict, name: str):
    try:
        xmin, xmax, ymin, ymax = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
    except (TypeError, ValueError):
        raise _Bad("XMin/XMax/YMin/YMax must be numbers") from None
    if not all(math.isfinite(v) for v in (xmin, xmax, ymin, ymax)):
        raise _Bad("coordinates must be finite")
    flags = {flag: _flag(row, key) for key, flag in _FLAGS.items()}
    try:
        return clipped_box(name, xmin, ymin, xmax, ymax, **flags)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _find_image(images_dir: Path, image_id: str) -> Path | None:
    for ext in _IMAGE_EXTS:
        if (images_dir / (image_id + ext)).is_file():
            return images_dir / (image_id + ext)
    return None


class _Collector:
    """Rows -> image records, skips counted."""

    def __init__(self, path: Path, images_dir: Path, known: set[str], wanted: dict[str, str], skip_bad: bool):
        self.path, self.images_dir, self.known, self.wanted, self.skip_bad = path, images_dir, known, wanted, skip_bad
        self.records: dict[str, ImageRecord | None] = {}
        self.skipped: list[Problem] = []

    def add(self, row: dict, line: int) -> None:
        label = (row.get("LabelName") or "").strip()
        try:
            if label not in self.known:
                raise _Bad(f"unknown LabelName {label[:40]!r} (not in the descriptions file)")
            if label not in self.wanted:
                return  # another class
            image_id = (row.get("ImageID") or "").strip()
            if not _IMAGE_ID.fullmatch(image_id):
                raise _Bad(f"bad ImageID {image_id[:40]!r}")
            box = _row_box(row, self.wanted[label])
        except _Bad as exc:
            if not self.skip_bad:
                raise DarktuneError(str(exc), path=str(self.path), line=line) from None
            self.skipped.append(Problem(str(self.path), line, f"{exc} (skipped)"))
            return
        if image_id not in self.records:
            found = _find_image(self.images_dir, image_id)
            if found is None:
                self.skipped.append(Problem(str(self.images_dir / (image_id + ".jpg")), None,
                                            "image not found (its boxes skipped)", "warning"))
            self.records[image_id] = ImageRecord(found) if found else None
        if self.records[image_id] is not None:
            self.records[image_id].boxes.append(box)


def read_openimages(boxes_csv: str | Path, descriptions_csv: str | Path, images_dir: str | Path, *,
                    classes: list[str] | None = None, skip_bad: bool = False) -> Dataset:
    """Read Open Images boxes (see module docstring). `classes`: keep only these (display names or
    LabelNames, any case; the given spelling becomes the class name); rows of other classes are ignored."""
    path = Path(boxes_csv)
    descriptions = read_descriptions(descriptions_csv)
    wanted = _select(descriptions, classes)
    collect = _Collector(path, Path(images_dir), set(descriptions), wanted, skip_bad)
    with _open_csv(path) as f:
        reader = csv.DictReader(f)
        try:
            missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]  # reads the first lines
            if missing:
                raise DarktuneError(f"missing columns {missing}", path=str(path), line=1)
            for row in reader:
                collect.add(row, reader.line_num)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DarktuneError(f"bad CSV: {exc}", path=str(path), line=reader.line_num) from None
    records = [r for r in collect.records.values() if r is not None]
    if classes:
        names = list(dict.fromkeys(classes))
    else:  # descriptions order, only the classes that have boxes (the official file lists 600)
        present = {b.class_name for r in records for b in r.boxes}
        names = [n for n in dict.fromkeys(wanted.values()) if n in present]
    return Dataset(names, records, collect.skipped)


def write_openimages(dataset: Dataset, out_dir: str | Path, *, link: bool = False,
                     label_names: dict[str, str] | None = None) -> tuple[Path, Path, Path]:
    """Write out/boxes.csv, out/class-descriptions.csv (with a header row) and out/images/<ImageID>.<ext>.
    label_names: class name -> LabelName (e.g. {"Window": "/m/0d4v4"}); default /darktune/<index>.
    Returns (boxes CSV, descriptions CSV, images folder)."""
    dataset.validate()
    with output_folder(out_dir) as out:
        placed = place_images(dataset.images, out / "images", link=link)
        mids = {c: (label_names or {}).get(c, f"/darktune/{i}") for i, c in enumerate(dataset.classes)}
        desc = out / "class-descriptions.csv"
        _write_csv(desc, [["LabelName", "DisplayName"], *([mids[c], c] for c in dataset.classes)])
        rows = [list(BOX_COLUMNS)]
        for rec, dst in zip(dataset.images, placed):
            for b in rec.boxes:
                flags = [int(getattr(b, _FLAGS[k])) for k in BOX_COLUMNS[8:]]
                rows.append([dst.stem, "darktune", mids[b.class_name], 1, repr(b.x1), repr(b.x2), repr(b.y1),
                             repr(b.y2), *flags])
        boxes = out / "boxes.csv"
        _write_csv(boxes, rows)
    return boxes, desc, out / "images"


def _write_csv(path: Path, rows: list[list]) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    except OSError as exc:
        raise write_error(exc, path) from None
