"""COCO detection JSON <-> Dataset.

Reading: `images` (id, file_name, width, height; a missing or null width/height is read from the image
file's header, and only an image whose header cannot be read is refused), `categories` (id, name; ids
arbitrary, classes ordered by id), `annotations` (image_id, category_id, bbox [x, y, w, h] in pixels).
`iscrowd` (0/1) maps to is_group_of: a crowd box is kept as a group-of box (`data filter --drop-group-of`
removes it) and the crowd boxes are counted in one warning. An `attributes` dict (CVAT style: occluded,
truncated, depiction, inside, group_of; JSON booleans or 0/1) maps to the other flags. file_name resolves
against the images folder (default: the JSON's folder, or an images/ folder beside it or beside its parent,
whichever holds the first image); a Windows-style "sub\\a.jpg" that is not found as written is read with /
separators. Each image's declared width/height must match its file's header (only the header is read). What a
bad record costs (its image, or only an empty box) is in `records`. Writing: out/annotations.json and
out/images/ (copies or hardlinks), categories numbered from 1; VOC's difficult flag is not written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from darktune.data.dataset import Dataset, ImageRecord, Problem, class_name_problem, place_images
from darktune.files import (MAX_ANNOTATION_BYTES, is_outside, output_folder, outside_note, read_regular,
                            write_text)
from darktune.data.formats.image import declared_size_problem, known_size, read_image_size
from darktune.data.formats.records import BadBox, EmptyBox, clip_to_image
from darktune.errors import DarktuneError
from darktune.plural import plural

_ATTRS = {"group_of": "is_group_of", "depiction": "is_depiction", "truncated": "is_truncated",
          "occluded": "is_occluded", "inside": "is_inside"}


class _Bad(BadBox):
    """A bad record; the reader turns it into a DarktuneError or a counted skip."""


def _int(rec: dict, key: str, positive: bool = False) -> int:
    v = rec.get(key)
    # JSON NaN / 1e999 parse to float nan / inf: int() of those raises, so finiteness comes first
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v))
            or v != int(v) or (positive and v <= 0)):
        raise _Bad(f"{key!r} must be {'a positive' if positive else 'an'} integer, got {v!r}")
    return int(v)


def _load(path: Path) -> dict:
    data = read_regular(path, "COCO file", MAX_ANNOTATION_BYTES)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DarktuneError(f"COCO file is not UTF-8 text (byte {exc.start})", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise DarktuneError(f"bad JSON: {exc.msg}", path=str(path), line=exc.lineno) from None
    except RecursionError:
        raise DarktuneError("bad JSON: nested too deeply", path=str(path)) from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit limit
        raise DarktuneError(f"bad JSON: {exc}", path=str(path)) from None
    if not isinstance(doc, dict):
        raise DarktuneError("COCO file must hold a JSON object", path=str(path))
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DarktuneError(f"missing list {key!r}", path=str(path))
    return doc


def _categories(doc: dict, path: Path) -> dict[int, str]:
    cats = {}
    for i, c in enumerate(doc["categories"]):
        try:
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
                raise _Bad("needs 'id' and a non-empty 'name'")
            reason = class_name_problem(c["name"].strip())
            if reason:
                raise _Bad(reason)
            cid = _int(c, "id")
            if cid in cats:
                raise _Bad(f"duplicate category id {cid}")
            cats[cid] = c["name"].strip()
        except _Bad as exc:
            raise DarktuneError(f"categories[{i}]: {exc}", path=str(path)) from None
    if len(set(cats.values())) != len(cats):
        raise DarktuneError("two categories share a name", path=str(path))
    return dict(sorted(cats.items()))


def _size_field(im: dict, key: str) -> int | None:
    """A declared width or height; None when absent or null (the image header then gives it)."""
    return None if im.get(key) is None else _int(im, key, True)


def _image_file(folder: Path, file_name: str) -> Path:
    """folder / file_name; a Windows-style name ("sub\\a.jpg") is read with / separators when it is not
    found as written."""
    path = folder / file_name
    if "\\" in file_name and not path.is_file():
        alt = folder / file_name.replace("\\", "/")
        if alt.is_file():
            return alt
    return path


def _images(doc: dict, images_dir: Path, path: Path) -> dict[int, ImageRecord]:
    out = {}
    for i, im in enumerate(doc["images"]):
        try:
            if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise _Bad("needs 'id' and 'file_name'")
            iid = _int(im, "id")
            if iid in out:
                raise _Bad(f"duplicate image id {iid}")
            out[iid] = ImageRecord(_image_file(images_dir, im["file_name"]), _size_field(im, "width"),
                                   _size_field(im, "height"))
        except _Bad as exc:
            raise DarktuneError(f"images[{i}]: {exc}", path=str(path)) from None
    return out


def _flag(value, what: str) -> bool:
    """A JSON boolean or 0/1 (a string such as "false" would read as true)."""
    if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise _Bad(f"{what} must be true/false or 0/1, got {value!r}")


def _flags(ann: dict) -> dict[str, bool]:
    attrs = ann.get("attributes")
    if attrs is None:
        attrs = {}
    elif not isinstance(attrs, dict):
        raise _Bad(f"'attributes' must be an object, got {type(attrs).__name__}")
    flags = {flag: _flag(attrs[key], f"attributes.{key}") for key, flag in _ATTRS.items() if key in attrs}
    if _flag(ann.get("iscrowd", 0), "'iscrowd'"):
        flags["is_group_of"] = True
    return flags


def _bbox(ann: dict) -> tuple[float, float, float, float]:
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise _Bad(f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    return tuple(float(v) for v in bbox)


def _box(ann: dict, bbox: tuple[float, float, float, float], rec: ImageRecord, name: str):
    x, y, w, h = bbox
    return clip_to_image(name, x / rec.width, y / rec.height, (x + w) / rec.width, (y + h) / rec.height,
                         f"bbox [{x:g}, {y:g}, {w:g}, {h:g}]", rec.width, rec.height, **_flags(ann))


def _default_images_dir(doc: dict, path: Path) -> Path:
    """The JSON's folder, or images/ beside it or beside its parent (COCO's own layout), whichever holds the
    first listed image."""
    candidates = [path.parent, path.parent / "images", path.parent.parent / "images"]
    first = doc["images"][0].get("file_name") if doc["images"] and isinstance(doc["images"][0], dict) else None
    if isinstance(first, str) and first:
        for folder in candidates:
            if _image_file(folder, first).is_file():
                return folder
    return path.parent


def _where(i: int, ann) -> str:
    aid = ann.get("id") if isinstance(ann, dict) else None
    return f"annotations[{i}]" + (f" (id {aid})" if aid is not None else "")


def crowd_note(n: int) -> str:
    """The warning that counts the crowd boxes read (`Problem.reason`, severity "warning")."""
    return (f"{plural(n, 'crowd annotation')} (iscrowd=1) read as group-of boxes (kept; "
            "`darktune data filter --drop-group-of` removes them)")


class _Reader:
    """Annotations -> boxes of their images, with the skips and notes counted (see `read_coco`)."""

    def __init__(self, path: Path, doc: dict, images: dict[int, ImageRecord], cats: dict[int, str], skip_bad: bool):
        self.path, self.images, self.cats, self.skip_bad = path, images, cats, skip_bad
        self.annotations: list = doc["annotations"]
        self.skipped: list[Problem] = []
        self.dropped: set[int] = set()  # image ids
        self.seen: dict[tuple, int] = {}  # (image id, category id, bbox) -> index of the first
        self.crowd: dict[int, int] = {}  # image id -> crowd boxes read
        self.from_header: set[int] = set()  # image ids whose size was read from the image file

    def fill_sizes(self) -> None:
        """An image without width/height takes them from its file's header (a declared one of the two must
        match it); one whose header cannot be read is bad."""
        for i, (iid, rec) in enumerate(self.images.items()):
            if iid in self.dropped or (rec.width is not None and rec.height is not None):
                continue
            declared = (rec.width, rec.height)
            try:
                rec.width, rec.height = read_image_size(rec.path)
            except DarktuneError as exc:
                self.dropped.add(iid)
                self.fail(f"images[{i}] (id {iid})", f"no width/height, and {exc}", "image skipped")
                continue
            self.from_header.add(iid)
            if declared[0] not in (None, rec.width) or declared[1] not in (None, rec.height):
                self.dropped.add(iid)
                self.fail(f"images[{i}] (id {iid})", (f"declared {'width' if declared[0] else 'height'} "
                                                      f"{declared[0] or declared[1]} differs from the image file "
                                                      f"{rec.path}, which is {rec.width}x{rec.height}"),
                          "image skipped")

    def fail(self, where: str, reason: str, cost: str) -> None:
        if not self.skip_bad:
            raise DarktuneError(f"{where}: {reason}", path=str(self.path))
        self.skipped.append(Problem(str(self.path), None, f"{where}: {reason} ({cost})"))

    def add(self, i: int) -> None:
        ann = self.annotations[i]
        where = _where(i, ann)
        try:
            if not isinstance(ann, dict):
                raise _Bad("not an object")
            iid = _int(ann, "image_id")
            if iid not in self.images:
                raise _Bad(f"unknown image id {iid}")
        except _Bad as exc:
            return self.fail(where, str(exc), "skipped")
        rec = self.images[iid]
        if iid in self.dropped or rec.width is None or rec.height is None:
            return  # its image has no size (counted once, in fill_sizes)
        try:
            cid = _int(ann, "category_id")
            if cid not in self.cats:
                raise _Bad(f"unknown category id {cid}")
            bbox = _bbox(ann)
            box, clip = _box(ann, bbox, rec, self.cats[cid])
        except EmptyBox as exc:
            return self.fail(where, str(exc), "box skipped")
        except BadBox as exc:
            self.dropped.add(iid)
            return self.fail(where, str(exc), f"image {rec.path} skipped")
        if clip:  # past the image edge: clipped, or dropped when mostly outside (counted either way)
            self.skipped.append(Problem(str(self.path), None, f"{where}: {clip}", "warning"))
        if box is None:
            return
        key = (iid, cid, *bbox)
        if key in self.seen:
            first = _where(self.seen[key], self.annotations[self.seen[key]])
            self.skipped.append(Problem(str(self.path), None, (f"{where}: duplicate of {first} (same image, "
                                                               "category and bbox; dropped)"), "warning"))
            return
        self.seen[key] = i
        if ann.get("iscrowd"):
            self.crowd[iid] = self.crowd.get(iid, 0) + 1
        rec.boxes.append(box)

    def check_sizes(self) -> None:
        """Each kept image's declared width/height against its file's header (a missing file is bad too)."""
        for i, (iid, rec) in enumerate(self.images.items()):
            if iid in self.dropped or iid in self.from_header:
                continue
            try:
                reason = declared_size_problem(rec.path, rec.width, rec.height)
            except DarktuneError as exc:
                reason = str(exc)
            if reason:
                self.dropped.add(iid)
                self.fail(f"images[{i}] (id {iid})", reason, "image skipped")


def _outside(reader: _Reader, folder: Path, allow: bool) -> None:
    """A file_name that leaves the images folder ('../../x.jpg', '/etc/x.jpg') is read only when allowed (then
    counted in one note); otherwise its image is a counted skip naming the record, whatever skip_bad says."""
    n = 0
    for i, (iid, rec) in enumerate(reader.images.items()):
        if not is_outside(folder, rec.path):
            continue
        n += 1
        if not allow:
            reader.dropped.add(iid)
            reader.skipped.append(Problem(str(reader.path), None, (
                f"images[{i}] (id {iid}): file_name points outside the images folder {folder}: {rec.path} (not "
                "read; --allow-outside-images reads it; image skipped)")))
    if allow and n:
        reader.skipped.append(Problem(str(reader.path), None, outside_note(reader.path, n, folder), "warning"))


def read_coco(json_path: str | Path, images_dir: str | Path | None = None, *, skip_bad: bool = False,
              allow_outside: bool = False) -> Dataset:
    """Read a COCO detection file. Structural errors raise DarktuneError naming the file and record. A bad
    annotation (unknown category id, bad bbox or flag), an image that is missing or whose declared size differs
    from its file's, raise too, or with skip_bad skip the image (counted in `skipped`): see `records`. An
    annotation of an unknown image id, or a box of zero width or height, is skipped alone. Exact duplicates
    (image, category, bbox) are dropped with a warning; crowd annotations are counted in one warning. A file_name
    leading out of the images folder is a counted skip unless allow_outside (then one note counts them)."""
    path = Path(json_path)
    doc = _load(path)
    cats = _categories(doc, path)
    folder = Path(images_dir) if images_dir else _default_images_dir(doc, path)
    images = _images(doc, folder, path)
    reader = _Reader(path, doc, images, cats, skip_bad)
    _outside(reader, folder, allow_outside)
    reader.fill_sizes()
    for i in range(len(doc["annotations"])):
        reader.add(i)
    reader.check_sizes()
    kept = [rec for iid, rec in images.items() if iid not in reader.dropped]
    n_crowd = sum(n for iid, n in reader.crowd.items() if iid not in reader.dropped)
    if n_crowd:
        reader.skipped.append(Problem(str(path), None, crowd_note(n_crowd), "warning"))
    return Dataset(list(cats.values()), kept, reader.skipped)


def write_coco(dataset: Dataset, out_dir: str | Path, *, link: bool = False) -> Path:
    """Write out/annotations.json and out/images/; returns the JSON path. Box flags go to `iscrowd`
    (group-of) and `attributes`."""
    dataset.validate()
    with output_folder(out_dir) as out:
        placed = place_images(dataset.images, out / "images", link=link)
        doc = _coco_doc(dataset, placed)
        json_path = out / "annotations.json"
        write_text(json_path, json.dumps(doc))
    return json_path


def _coco_doc(dataset: Dataset, placed: list[Path]) -> dict:
    cat_id = {c: i + 1 for i, c in enumerate(dataset.classes)}
    images, anns = [], []
    for i, (rec, dst) in enumerate(zip(dataset.images, placed), 1):
        width, height = known_size(rec)
        images.append({"id": i, "file_name": dst.name, "width": width, "height": height})
        for b in rec.boxes:
            x, y, w, h = b.x1 * width, b.y1 * height, b.w * width, b.h * height
            attrs = {key: getattr(b, flag) for key, flag in _ATTRS.items()}
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_id[b.class_name],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(b.is_group_of),
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "attributes": attrs})
    return {"info": {"description": "written by darktune"}, "images": images, "annotations": anns,
            "categories": [{"id": cat_id[c], "name": c, "supercategory": ""} for c in dataset.classes]}
