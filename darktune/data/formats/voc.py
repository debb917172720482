"""Pascal VOC XML <-> Dataset (XML parsed with defusedxml).

Reading: `src` is a folder of .xml files, one .xml file, or a VOC root holding Annotations/ and JPEGImages/.
Images are found as <images folder>/<filename> (default: JPEGImages/ beside Annotations/, else the XML's
folder). Pixel convention: coordinates are taken as given, as continuous pixel positions, and divided by the
image width/height (x1 = xmin / width, x2 = xmax / width); no 1-based shift is applied. Writing uses the same
convention, with up to 6 decimals (integers stay integers), so a round trip is exact to 1e-6 of a pixel.
<truncated> and <occluded> map to the flags of the same names; the writer adds <group_of>, <depiction> and
<inside> tags, which the reader also understands. <difficult> is read and ignored.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from darktune.data.dataset import Dataset, ImageRecord, Problem, class_name_problem, clipped_box, place_images
from darktune.data.formats.files import output_folder, read_regular, write_error
from darktune.data.formats.image import IMAGE_EXTENSIONS, known_size, read_image_size
from darktune.errors import DarktuneError

_FLAG_TAGS = {"group_of": "is_group_of", "depiction": "is_depiction", "truncated": "is_truncated",
              "occluded": "is_occluded", "inside": "is_inside"}


MAX_XML_BYTES = 64 << 20  # one image's annotation


class _Bad(ValueError):
    pass


def _xml_files(src: Path, images_dir: Path | None) -> tuple[list[Path], Path | None]:
    if src.is_file():
        return [src], images_dir
    if not src.is_dir():
        raise DarktuneError("not found (expected a folder of VOC .xml files)", path=str(src))
    if (src / "Annotations").is_dir():
        src = src / "Annotations"
    if images_dir is None and src.name == "Annotations" and (src.parent / "JPEGImages").is_dir():
        images_dir = src.parent / "JPEGImages"
    files = sorted(src.glob("*.xml"))
    if not files:
        raise DarktuneError("no .xml files in this folder", path=str(src))
    return files, images_dir


def _text(node, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text and child.text.strip() else None


def _number(node, tag: str) -> float:
    text = _text(node, tag)
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _Bad(f"<{tag}> must be a number, got {text!r}")
    return value


def _image_path(root, xml_path: Path, images_dir: Path | None) -> Path:
    folder = images_dir or xml_path.parent
    name = _text(root, "filename")
    if name:
        return folder / name
    for ext in IMAGE_EXTENSIONS:
        if (folder / (xml_path.stem + ext)).is_file():
            return folder / (xml_path.stem + ext)
    raise _Bad("no <filename> and no image named like the XML file")


def _parse(xml_path: Path, images_dir: Path | None) -> ImageRecord:
    from defusedxml import ElementTree as SafeET
    from defusedxml.common import DefusedXmlException

    data = read_regular(xml_path, "XML file", MAX_XML_BYTES)
    try:
        root = SafeET.fromstring(data)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise DarktuneError(f"bad XML: {exc}", path=str(xml_path)) from None
    except (LookupError, ValueError) as exc:  # an unknown encoding in the XML declaration
        raise DarktuneError(f"bad XML: {exc}", path=str(xml_path)) from None
    except RecursionError:
        raise DarktuneError("bad XML: nested too deeply", path=str(xml_path)) from None
    if root.tag != "annotation":
        raise _Bad(f"root element is <{root.tag}>, expected <annotation>")
    rec = ImageRecord(_image_path(root, xml_path, images_dir))
    size = root.find("size")
    if size is not None and _text(size, "width") and _text(size, "height"):
        rec.width, rec.height = int(_number(size, "width")), int(_number(size, "height"))
    if (rec.width or 0) <= 0 or (rec.height or 0) <= 0:  # some tools write 0: take the size from the image itself
        rec.width, rec.height = read_image_size(rec.path)
    for k, obj in enumerate(root.iter("object")):
        try:
            rec.boxes.append(_object_box(obj, rec))
        except _Bad as exc:
            raise _Bad(f"object {k}: {exc}") from None
    return rec


def _object_box(obj, rec: ImageRecord):
    name = _text(obj, "name")
    bnd = obj.find("bndbox")
    if not name or bnd is None:
        raise _Bad("needs <name> and <bndbox>")
    reason = class_name_problem(name)
    if reason:
        raise _Bad(reason)
    xmin, ymin, xmax, ymax = (_number(bnd, t) for t in ("xmin", "ymin", "xmax", "ymax"))
    flags = {flag: _text(obj, tag) in ("1", "true", "True") for tag, flag in _FLAG_TAGS.items()}
    try:
        return clipped_box(name, xmin / rec.width, ymin / rec.height, xmax / rec.width, ymax / rec.height, **flags)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def read_voc(src: str | Path, images_dir: str | Path | None = None, *, skip_bad: bool = False) -> Dataset:
    """Read VOC annotations (see module docstring). Bad XML raises DarktuneError naming the file; a bad
    object raises too, or with skip_bad the file is skipped and counted. Classes in order of appearance."""
    files, folder = _xml_files(Path(src), Path(images_dir) if images_dir else None)
    records, skipped, classes = [], [], {}
    for xml_path in files:
        try:
            rec = _parse(xml_path, folder)
        except (_Bad, DarktuneError) as exc:
            reason = str(exc) if isinstance(exc, _Bad) else str(exc).removeprefix(f"{xml_path}: ")
            if not skip_bad:
                raise DarktuneError(reason, path=str(xml_path)) from None
            skipped.append(Problem(str(xml_path), None, f"{reason} (skipped)"))
            continue
        classes.update(dict.fromkeys(b.class_name for b in rec.boxes))
        records.append(rec)
    return Dataset(list(classes), records, skipped)


def _px(v: float) -> str:
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _annotation_xml(rec: ImageRecord, filename: str, width: int, height: int) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    for b in rec.boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = b.class_name
        for tag, flag in _FLAG_TAGS.items():
            ET.SubElement(obj, tag).text = str(int(getattr(b, flag)))
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", b.x1 * width), ("ymin", b.y1 * height), ("xmax", b.x2 * width),
                       ("ymax", b.y2 * height)):
            ET.SubElement(bnd, tag).text = _px(v)
    ET.indent(root)
    return ET.ElementTree(root)


def write_voc(dataset: Dataset, out_dir: str | Path, *, link: bool = False) -> Path:
    """Write out/Annotations/<name>.xml and out/JPEGImages/<name>.<ext>; returns out."""
    dataset.validate()
    with output_folder(out_dir) as out:
        placed = place_images(dataset.images, out / "JPEGImages", link=link)
        (out / "Annotations").mkdir()
        for rec, dst in zip(dataset.images, placed):
            width, height = known_size(rec)
            xml_path = out / "Annotations" / (dst.stem + ".xml")
            try:
                _annotation_xml(rec, dst.name, width, height).write(xml_path, encoding="utf-8",
                                                                    xml_declaration=True)
            except OSError as exc:
                raise write_error(exc, xml_path) from None
    return out
