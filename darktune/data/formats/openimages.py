"""Open Images CSV <-> Dataset.

Reading takes the boxes CSV (ImageID, Source, LabelName, Confidence, XMin, XMax, YMin, YMax, IsOccluded,
IsTruncated, IsGroupOf, IsDepiction, IsInside; coordinates normalised; extra columns ignored), the
class-descriptions CSV (`LabelName,DisplayName`, e.g. `/m/0d4v4,Window`; a header row is optional, as the
official file has none) and the images folder, where each image is <ImageID>.jpg (.jpeg/.png also tried).
Class names are the display names. An image missing from the folder is skipped and counted (a partial
download is the usual case); a malformed row (too few fields among them) raises DarktuneError naming file
and line, or with skip_bad is skipped and counted with its whole image (an empty box, XMin == XMax, alone):
see `records`. Rows with
Confidence 0 (a label verified absent, not a box; boxes have 1) are skipped and counted in one warning;
exact duplicate rows are dropped with a warning. Flags of -1 (unknown) read as False. The writer copies
every image but, the format being one row per box, an image without boxes has no row and does not come back
on reading.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import TextIO

from darktune.data.dataset import Dataset, ImageRecord, Problem, class_name_problem, place_images
from darktune.files import open_regular, output_folder, write_error
from darktune.data.formats.records import BadBox, EmptyBox, clip_to_image
from darktune.errors import DarktuneError
from darktune.plural import plural

BOX_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
               "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
_FLAGS = {"IsGroupOf": "is_group_of", "IsDepiction": "is_depiction", "IsTruncated": "is_truncated",
          "IsOccluded": "is_occluded", "IsInside": "is_inside"}
_IMAGE_ID = re.compile(r"[A-Za-z0-9._-]+")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class _Bad(BadBox):
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


def _confidence(row: dict) -> float:
    """Confidence (1 on every box of the official files; empty reads as 1)."""
    text = (row.get("Confidence") or "").strip()
    try:
        value = float(text) if text else 1.0
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise _Bad(f"Confidence must be a number in [0, 1], got {text[:40]!r}")
    return value


def _row_box(row: dict, name: str):
    try:
        xmin, xmax, ymin, ymax = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
    except (TypeError, ValueError):
        raise _Bad("XMin/XMax/YMin/YMax must be numbers") from None
    if not all(math.isfinite(v) for v in (xmin, xmax, ymin, ymax)):
        raise _Bad("coordinates must be finite")
    flags = {flag: _flag(row, key) for key, flag in _FLAGS.items()}
    return clip_to_image(name, xmin, ymin, xmax, ymax, f"XMin={xmin:g} XMax={xmax:g} YMin={ymin:g} YMax={ymax:g}",
                         **flags)


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
        self.dropped: set[str] = set()  # images with a bad row
        self.seen: dict[tuple, int] = {}  # (image, label, coordinates) -> line
        self.absent: list[int] = []  # lines of Confidence 0 rows

    def fail(self, line: int, reason: str, cost: str) -> None:
        if not self.skip_bad:
            raise DarktuneError(reason, path=str(self.path), line=line)
        self.skipped.append(Problem(str(self.path), line, f"{reason} ({cost})"))

    def add(self, row: dict, line: int, n_columns: int) -> None:
        label = (row.get("LabelName") or "").strip()
        image_id = (row.get("ImageID") or "").strip()
        good_id = _IMAGE_ID.fullmatch(image_id) is not None
        n_missing = sum(v is None for k, v in row.items() if k is not None)  # DictReader fills a short row with None
        if n_missing:
            if label in self.known and label not in self.wanted:
                return  # another class
            reason = f"row has {plural(n_columns - n_missing, 'field')}, the header names {n_columns}"
            if not good_id:
                return self.fail(line, reason, "skipped")
            self.dropped.add(image_id)
            return self.fail(line, reason, f"image {image_id} skipped")
        try:
            if label not in self.known:
                raise _Bad(f"unknown LabelName {label[:40]!r} (not in the descriptions file)")
            if label not in self.wanted:
                return  # another class
            if not good_id:
                return self.fail(line, f"bad ImageID {image_id[:40]!r}", "skipped")
            if _confidence(row) == 0:  # a verified-absent label, not a box
                self.absent.append(line)
                return
            box, clip = _row_box(row, self.wanted[label])
        except EmptyBox as exc:
            return self.fail(line, str(exc), "box skipped")
        except BadBox as exc:
            if not good_id:
                return self.fail(line, str(exc), "skipped")
            self.dropped.add(image_id)
            return self.fail(line, str(exc), f"image {image_id} skipped")
        if clip:  # past the image edge: clipped, or dropped when mostly outside (counted either way)
            self.skipped.append(Problem(str(self.path), line, clip, "warning"))
        if box is None:
            return
        key = (image_id, label, box.x1, box.y1, box.x2, box.y2)
        if key in self.seen:
            self.skipped.append(Problem(str(self.path), line, f"duplicate of line {self.seen[key]} (same image, "
                                                              "label and box; dropped)", "warning"))
            return
        self.seen[key] = line
        if image_id not in self.records:
            found = _find_image(self.images_dir, image_id)
            if found is None:
                self.skipped.append(Problem(str(self.images_dir / (image_id + ".jpg")), None,
                                            "image not found (its boxes skipped)", "warning"))
            self.records[image_id] = ImageRecord(found) if found else None
        if self.records[image_id] is not None:
            self.records[image_id].boxes.append(box)

    def finish(self) -> list[ImageRecord]:
        """The kept records; the Confidence 0 rows counted in one warning."""
        if self.absent:
            self.skipped.append(Problem(str(self.path), self.absent[0], (
                f"{plural(len(self.absent), 'row')} with Confidence 0 skipped (verified-absent labels, not boxes; "
                "the first on this line)"), "warning"))
        return [r for k, r in self.records.items() if r is not None and k not in self.dropped]


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
                collect.add(row, reader.line_num, len(reader.fieldnames))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DarktuneError(f"bad CSV: {exc}", path=str(path), line=reader.line_num) from None
    records = collect.finish()
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


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def _formula_cell(rows: list[list]) -> str | None:
    """The first text cell a spreadsheet would run as a formula ('=cmd|...'), described, or None."""
    for r, row in enumerate(rows, 1):
        for c, cell in enumerate(row):
            if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
                return f"row {r}, column {c + 1}: {cell[:40]!r}"
    return None


def _write_csv(path: Path, rows: list[list]) -> None:
    """Refuse, not quote, a cell a spreadsheet would run: OWASP's leading apostrophe would change the class name
    or LabelName every program reading the file sees (a round trip would rename the class), and no Open Images
    name (a /m/... id, a display name) starts with = + - @, a tab or CR."""
    cell = _formula_cell(rows)
    if cell:
        raise DarktuneError(f"not written: a cell would run as a formula in a spreadsheet ({cell}); rename that "
                            "class", path=str(path))
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    except OSError as exc:
        raise write_error(exc, path) from None
