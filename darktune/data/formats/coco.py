"""COCO detection JSON <-> Dataset.

Reading: `images` (id, file_name, width, height), `categories` (id, name; ids arbitrary, classes ordered by
id), `annotations` (image_id, category_id, bbox [x, y, w, h] in pixels). `iscrowd` maps to is_group_of, and
an `attributes` dict (CVAT style: occluded, truncated, depiction, inside, group_of) to the other flags.
file_name resolves against the images folder (default: the JSON's folder, or an images/ folder beside it
or beside its parent, whichever holds the first image). Writing: out/annotations.json and
out/images/ (copies or hardlinks), categories numbered from 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from darktune.data.dataset import Dataset, ImageRecord, Problem, class_name_problem, clipped_box, place_images
from darktune.data.formats.files import MAX_ANNOTATION_BYTES, output_folder, read_regular, write_text
from darktune.data.formats.image import known_size
from darktune.errors import DarktuneError

_ATTRS = {"group_of": "is_group_of", "depiction": "is_depiction", "truncated": "is_truncated",
          "occluded": "is_occluded", "inside": "is_inside"}


class _Bad(ValueError):
    """A bad record; the reader turns it into a DarktuneError or a counted skip."""


def _int(rec: dict, key: str, positive: bool = False) -> int:
    v = rec.get(key)
    # JSON NaN / 1e999 parse to float nan / inf: int() of those raises, so finiteness comes first
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v))
            or v != int(v) or (positive and v <= 0)):
        raise _Bad(f"{key!r} must be a {'positive ' if positive else ''}integer, got {v!r}")
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


def _images(doc: dict, images_dir: Path, path: Path) -> dict[int, ImageRecord]:
    out = {}
    for i, im in enumerate(doc["images"]):
        try:
            if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise _Bad("needs 'id' and 'file_name'")
            iid = _int(im, "id")
            if iid in out:
                raise _Bad(f"duplicate image id {iid}")
            out[iid] = ImageRecord(images_dir / im["file_name"], _int(im, "width", True), _int(im, "height", True))
        except _Bad as exc:
            raise DarktuneError(f"images[{i}]: {exc}", path=str(path)) from None
    return out


def _box(ann: dict, images: dict[int, ImageRecord], cats: dict[int, str]):
    if not isinstance(ann, dict):
        raise _Bad("not an object")
    iid, cid = _int(ann, "image_id"), _int(ann, "category_id")
    if iid not in images:
        raise _Bad(f"unknown image id {iid}")
    if cid not in cats:
        raise _Bad(f"unknown category id {cid}")
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise _Bad(f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    rec = images[iid]
    x, y, w, h = (float(v) for v in bbox)
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    flags = {flag: bool(attrs.get(key, False)) for key, flag in _ATTRS.items()}
    flags["is_group_of"] = flags["is_group_of"] or bool(ann.get("iscrowd", 0))
    try:
        box = clipped_box(cats[cid], x / rec.width, y / rec.height, (x + w) / rec.width, (y + h) / rec.height,
                          **flags)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return iid, box


def _default_images_dir(doc: dict, path: Path) -> Path:
    """The JSON's folder, or images/ beside it or beside its parent (COCO's own layout), whichever holds the
    first listed image."""
    candidates = [path.parent, path.parent / "images", path.parent.parent / "images"]
    first = doc["images"][0].get("file_name") if doc["images"] and isinstance(doc["images"][0], dict) else None
    if isinstance(first, str) and first:
        for folder in candidates:
            if (folder / first).is_file():
                return folder
    return path.parent


def read_coco(json_path: str | Path, images_dir: str | Path | None = None, *, skip_bad: bool = False) -> Dataset:
    """Read a COCO detection file. Structural errors raise DarktuneError naming the file and record; a bad
    annotation (unknown image or category id, bad bbox) raises too, or with skip_bad is skipped and counted."""
    path = Path(json_path)
    doc = _load(path)
    cats = _categories(doc, path)
    images = _images(doc, Path(images_dir) if images_dir else _default_images_dir(doc, path), path)
    skipped = []
    for i, ann in enumerate(doc["annotations"]):
        try:
            iid, box = _box(ann, images, cats)
        except _Bad as exc:
            aid = ann.get("id") if isinstance(ann, dict) else None
            where = f"annotations[{i}]" + (f" (id {aid})" if aid is not None else "")
            if not skip_bad:
                raise DarktuneError(f"{where}: {exc}", path=str(path)) from None
            skipped.append(Problem(str(path), None, f"{where}: {exc} (skipped)"))
            continue
        images[iid].boxes.append(box)
    return Dataset(list(cats.values()), list(images.values()), skipped)


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
