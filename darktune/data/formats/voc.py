"""Pascal VOC XML <-> Dataset (XML parsed with defusedxml).

Reading: `src` is a folder of .xml files, one .xml file, or a VOC root holding Annotations/ and JPEGImages/.
Images are found as <images folder>/<filename> (default: JPEGImages/ beside Annotations/, else the XML's
folder); a <filename> not found as written (no extension, another case) falls back to the XML's own stem with
an image extension, then to a file whose name matches either ignoring case, with a warning naming the XML. A <size>
must match the image file's header (only the header is read; a missing or 0 size is taken from it).

Pixel convention (darknet's scripts/voc_label.py, also ultralytics' VOC conversion): VOC numbers pixels from
1, so a pixel number p is the continuous position p - 1: x1 = (xmin - 1) / width, x2 = (xmax - 1) / width
(voc_label.py: cx = (xmin + xmax) / 2 - 1, w = xmax - xmin, over the width); a box (1, 1, 100, 80) in a
100x80 image is cx 0.495, w 0.99. A corner that only the shift puts left of or above the image (xmin 0, from
0-based tools) is clamped to the edge; beyond that, overshoot up to the box tolerance is clipped and more is
an error. Writing is the inverse (xmin = x1 * width + 1, so a box reaching the right edge has xmax =
width + 1), whole pixels as integers, else up to 6 decimals: VOC -> darknet -> VOC gives back the same
numbers. A box with xmin == xmax (or ymin == ymax) has no area in this convention.

<truncated>, <occluded> and <difficult> map to is_truncated, is_occluded and is_difficult; the writer adds
<group_of>, <depiction> and <inside> tags, which the reader also understands. Exact duplicate objects (same
name and box) are dropped with a warning.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from darktune.data.dataset import BOX_TOLERANCE, Dataset, ImageRecord, Problem, class_name_problem, place_images
from darktune.files import is_outside, output_folder, outside_note, read_regular, write_error
from darktune.data.formats.image import IMAGE_EXTENSIONS, declared_size_problem, known_size, read_image_size
from darktune.data.formats.records import BadBox, EmptyBox, clip_to_image
from darktune.errors import DarktuneError

_FLAG_TAGS = {"group_of": "is_group_of", "depiction": "is_depiction", "truncated": "is_truncated",
              "occluded": "is_occluded", "inside": "is_inside", "difficult": "is_difficult"}


MAX_XML_BYTES = 64 << 20  # one image's annotation


class _Bad(BadBox):
    pass


class _Outside(_Bad):
    """<filename> leads out of the images folder: a counted skip whatever skip_bad says."""


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


class _ImageFinder:
    """<filename> -> the image file. Not found as written, it falls back, in order, to the XML's own stem with
    an image extension, then to a file whose name matches ignoring case (<filename>, <filename> with an image
    extension when it has none, or the XML's stem with one); a fallback comes with a note (the
    caller counts it as a warning). Folder listings for the case-insensitive match are kept per read."""

    def __init__(self, images_dir: Path | None, allow_outside: bool = False):
        self.images_dir = images_dir
        self.allow_outside = allow_outside
        self.n_outside: dict[Path, int] = {}  # images folder -> images read from outside it (when allowed)
        self.listings: dict[Path, dict[str, list[str]]] = {}  # folder -> lower-cased name -> names

    def _ignoring_case(self, folder: Path, names: dict[str, str]) -> tuple[Path, str] | None:
        """The one file whose name matches one of `names` (name -> how it was made) ignoring case."""
        if folder not in self.listings:
            listing: dict[str, list[str]] = {}
            try:
                for entry in folder.iterdir():
                    listing.setdefault(entry.name.lower(), []).append(entry.name)
            except OSError:
                pass
            self.listings[folder] = listing
        for name, how in names.items():
            hits = [folder / n for n in self.listings[folder].get(name.lower(), []) if (folder / n).is_file()]
            if len(hits) == 1:  # two files differing only in case: neither is a safe guess
                return hits[0], how
        return None

    def find(self, root, xml_path: Path) -> tuple[Path, str | None]:
        """(image path, note about the fallback used or None); _Bad when there is no <filename> and no image
        named like the XML file."""
        folder = self.images_dir or xml_path.parent
        name = _text(root, "filename")
        stems = [xml_path.stem + ext for ext in IMAGE_EXTENSIONS]
        if not name:
            for candidate in stems:
                if (folder / candidate).is_file():
                    return folder / candidate, None
            raise _Bad("no <filename> and no image named like the XML file")
        path = folder / name
        if is_outside(folder, path):  # '../../x.jpg' or '/etc/x.jpg': followed only when allowed
            if not self.allow_outside:
                raise _Outside(f"<filename> points outside the images folder {folder}: {path} (not read; "
                               "--allow-outside-images reads it)")
            self.n_outside[folder] = self.n_outside.get(folder, 0) + 1
        if path.is_file():
            return path, None
        for candidate in stems:
            if (folder / candidate).is_file():
                return folder / candidate, (f"<filename> {name!r} not found in {folder}; using {candidate}, "
                                            "named like the XML file")
        names = {path.name: "the same name ignoring case"}
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            names |= {path.name + ext: "the same name with an image extension, ignoring case"
                      for ext in IMAGE_EXTENSIONS}
        names |= {stem: "named like the XML file, ignoring case" for stem in stems}
        found = self._ignoring_case(path.parent, names)
        if found is not None:
            return found[0], f"<filename> {name!r} not found in {folder}; using {found[0].name} ({found[1]})"
        return path, None  # the size check names it as not found


_XML_REFUSALS = {"EntitiesForbidden": "XML entity declarations are refused (a possible entity-expansion attack)",
                 "ExternalReferenceForbidden": "XML external references are refused (a possible external-entity "
                                               "attack)",
                 "DTDForbidden": "XML document type declarations are refused"}


def _refusal(exc) -> str:
    """defusedxml's refusal in plain words (its own text is a repr such as EntitiesForbidden(name='lol', ...))."""
    if type(exc).__name__ == "EntitiesForbidden" and (getattr(exc, "sysid", None) or getattr(exc, "pubid", None)):
        return "XML external entity declarations are refused (a possible external-entity attack)"
    return _XML_REFUSALS.get(type(exc).__name__, f"XML refused by the safe parser ({type(exc).__name__})")


def _xml_root(xml_path: Path):
    from defusedxml import ElementTree as SafeET
    from defusedxml.common import DefusedXmlException

    data = read_regular(xml_path, "XML file", MAX_XML_BYTES)
    try:
        return SafeET.fromstring(data)
    except DefusedXmlException as exc:
        raise DarktuneError(_refusal(exc), path=str(xml_path)) from None
    except ET.ParseError as exc:
        raise DarktuneError(f"bad XML: {exc}", path=str(xml_path)) from None
    except (LookupError, ValueError) as exc:  # an unknown encoding in the XML declaration
        raise DarktuneError(f"bad XML: {exc}", path=str(xml_path)) from None
    except RecursionError:
        raise DarktuneError("bad XML: nested too deeply", path=str(xml_path)) from None


def _size(root, path: Path) -> tuple[int, int]:
    """The image size: <size> when given (it must match the file's header), else the header's."""
    size = root.find("size")
    if size is not None and _text(size, "width") and _text(size, "height"):
        width, height = int(_number(size, "width")), int(_number(size, "height"))
        if width > 0 and height > 0:  # some tools write 0: take the size from the image itself
            reason = declared_size_problem(path, width, height)
            if reason:
                raise _Bad(f"<size>: {reason}")
            return width, height
    return read_image_size(path)


def _parse(xml_path: Path, finder: _ImageFinder, skip_bad: bool) -> tuple[ImageRecord, list[Problem]]:
    """One XML file -> its image record and the problems of boxes dropped alone (empty boxes under skip_bad,
    duplicates) or of an image found by a fallback. A bad file or object raises _Bad or DarktuneError."""
    root = _xml_root(xml_path)
    if root.tag != "annotation":
        raise _Bad(f"root element is <{root.tag}>, expected <annotation>")
    path, note = finder.find(root, xml_path)
    rec = ImageRecord(path)
    rec.width, rec.height = _size(root, rec.path)
    problems, seen = [], {}
    if note:
        problems.append(Problem(str(xml_path), None, note, "warning"))
    for k, obj in enumerate(root.iter("object")):
        try:
            box, clip = _object_box(obj, rec)
        except EmptyBox as exc:
            if not skip_bad:
                raise _Bad(f"object {k}: {exc}") from None
            problems.append(Problem(str(xml_path), None, f"object {k}: {exc} (box skipped)"))
            continue
        except BadBox as exc:
            raise _Bad(f"object {k}: {exc}") from None
        if clip:  # past the image edge: clipped, or dropped when mostly outside (counted either way)
            problems.append(Problem(str(xml_path), None, f"object {k}: {clip}", "warning"))
        if box is None:
            continue
        key = (box.class_name, box.x1, box.y1, box.x2, box.y2)
        if key in seen:
            problems.append(Problem(str(xml_path), None, f"object {k}: duplicate of object {seen[key]} (same name "
                                                         "and box; dropped)", "warning"))
            continue
        seen[key] = k
        rec.boxes.append(box)
    return rec, problems


def _shifted(value: float, size: int) -> float:
    """A VOC pixel number -> a normalised darknet coordinate (darknet's voc_label.py: value - 1). A value the
    shift alone puts left of the image (0 from 0-based tools) is clamped to its edge."""
    x = (value - 1) / size
    return 0.0 if -1 / size - BOX_TOLERANCE <= x < 0 else x


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
    return clip_to_image(name, _shifted(xmin, rec.width), _shifted(ymin, rec.height), _shifted(xmax, rec.width),
                         _shifted(ymax, rec.height), f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}",
                         rec.width, rec.height, **flags)


def read_voc(src: str | Path, images_dir: str | Path | None = None, *, skip_bad: bool = False,
             allow_outside: bool = False) -> Dataset:
    """Read VOC annotations (see module docstring). Bad XML raises DarktuneError naming the file; a bad
    object, a missing image or a <size> that differs from the image's raise too, or with skip_bad the file is
    skipped and counted; an empty box (xmin == xmax or ymin == ymax) is skipped alone with skip_bad.
    Classes in order of appearance."""
    files, folder = _xml_files(Path(src), Path(images_dir) if images_dir else None)
    finder = _ImageFinder(folder, allow_outside)
    records, skipped, classes = [], [], {}
    for xml_path in files:
        try:
            rec, problems = _parse(xml_path, finder, skip_bad)
        except (_Bad, DarktuneError) as exc:
            reason = str(exc) if isinstance(exc, _Bad) else str(exc).removeprefix(f"{xml_path}: ")
            if not skip_bad and not isinstance(exc, _Outside):  # outside the folder: always a counted skip
                raise DarktuneError(reason, path=str(xml_path)) from None
            skipped.append(Problem(str(xml_path), None, f"{reason} (skipped)"))
            continue
        skipped += problems
        classes.update(dict.fromkeys(b.class_name for b in rec.boxes))
        records.append(rec)
    skipped += [Problem(str(src), None, outside_note(Path(src), n, where), "warning")
                for where, n in finder.n_outside.items()]
    return Dataset(list(classes), records, skipped)


def _px(v: float) -> str:
    """A pixel number: a whole pixel as an integer (within 1e-4 px: darknet's 8-decimal labels move VOC's
    integers by up to 1e-8 x the image size), else up to 6 decimals."""
    if abs(v - round(v)) < 1e-4:
        return str(round(v))
    return f"{v:.6f}".rstrip("0").rstrip(".")


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
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", b.x1 * width + 1), ("ymin", b.y1 * height + 1), ("xmax", b.x2 * width + 1),
                       ("ymax", b.y2 * height + 1)):
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
