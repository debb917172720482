"""Where the readers find what an annotation leaves out or spells differently: a COCO image without
width/height takes them from its header, a Windows-style COCO file_name, a VOC <filename> without extension or
in another case (noted), and an Open Images row with too few fields (named with its counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus.datasets import write_image

from darktune.data.formats.coco import read_coco
from darktune.data.formats.openimages import read_openimages
from darktune.data.formats.voc import read_voc
from darktune.errors import DarktuneError


def _coco(tmp_path: Path, images: list[dict], name: str = "ann.json") -> Path:
    anns = [{"id": k + 1, "image_id": im["id"], "category_id": 1, "bbox": [8, 6, 16, 12]}
            for k, im in enumerate(images)]
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "cat"}]}))
    return path


# ----------------------------------------------------------------------------------------------- COCO


@pytest.mark.parametrize("size", [{}, {"width": None, "height": None}, {"height": 48}])
def test_coco_size_missing_is_read_from_the_header(tmp_path, size):
    write_image(tmp_path / "a.jpg", 64, 48)
    ds = read_coco(_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", **size}]))
    rec = ds.images[0]
    assert (rec.width, rec.height) == (64, 48) and not ds.skipped
    b = rec.boxes[0]
    assert (b.x1, b.y1, b.x2, b.y2) == (8 / 64, 6 / 48, 24 / 64, 18 / 48)


def test_coco_size_missing_and_header_unreadable_is_refused_or_counted(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}]
    path = _coco(tmp_path, images)
    with pytest.raises(DarktuneError, match=r"ann.json: images\[1\] \(id 2\): no width/height, and .*b.jpg"):
        read_coco(path)
    ds = read_coco(path, skip_bad=True)
    assert [r.path.name for r in ds.images] == ["a.jpg"]
    assert len(ds.skipped) == 2 and "image not found" in ds.skipped[1].reason
    assert all(p.severity == "error" and "image skipped" in p.reason for p in ds.skipped)


def test_coco_one_declared_size_must_match_the_header(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    with pytest.raises(DarktuneError, match="declared width 100 differs from the image file .*64x48"):
        read_coco(_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 100}]))


def test_coco_windows_file_name_is_read_with_slashes_only_when_needed(tmp_path):
    write_image(tmp_path / "images" / "sub" / "a.jpg", 64, 48)
    ds = read_coco(_coco(tmp_path, [{"id": 1, "file_name": "sub\\a.jpg", "width": 64, "height": 48}]))
    assert ds.images[0].path == tmp_path / "images" / "sub" / "a.jpg" and not ds.skipped
    # a file really named with a backslash (possible on Linux) is taken as written
    write_image(tmp_path / "images" / "sub\\a.jpg", 32, 24)
    ds = read_coco(_coco(tmp_path, [{"id": 1, "file_name": "sub\\a.jpg", "width": 32, "height": 24}]))
    assert ds.images[0].path == tmp_path / "images" / "sub\\a.jpg"
    with pytest.raises(DarktuneError, match="image not found"):
        read_coco(_coco(tmp_path, [{"id": 1, "file_name": "other\\a.jpg", "width": 64, "height": 48}]))


# ------------------------------------------------------------------------------------------------ VOC


def _voc(folder: Path, xml_name: str, filename: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / xml_name
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>64</width><height>48</height>"
                    "</size><object><name>cat</name><bndbox><xmin>9</xmin><ymin>7</ymin><xmax>25</xmax>"
                    "<ymax>19</ymax></bndbox></object></annotation>")
    return path


@pytest.mark.parametrize("xml_name, filename, image, how", [
    ("x3.xml", "x3", "x3.jpg", "named like the XML file"),            # no extension
    ("x3.xml", "X3.JPG", "x3.jpg", "named like the XML file"),        # other case, XML stem matches
    ("0001.xml", "IMG_1.JPG", "img_1.jpg", "same name ignoring case"),  # other case, other stem
    ("0001.xml", "img_1", "IMG_1.jpg", "image extension, ignoring case"),    # no extension, other case
])
def test_voc_filename_fallbacks_are_used_and_noted(tmp_path, xml_name, filename, image, how):
    write_image(tmp_path / "JPEGImages" / image, 64, 48)
    xml = _voc(tmp_path / "Annotations", xml_name, filename)
    ds = read_voc(tmp_path)
    assert ds.images[0].path == tmp_path / "JPEGImages" / image and ds.n_boxes == 1
    [note] = ds.skipped
    assert note.severity == "warning" and note.path == str(xml) and how in note.reason and filename in note.reason


def test_voc_filename_found_as_written_says_nothing_and_no_match_is_not_found(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    _voc(tmp_path, "a.xml", "a.jpg")
    assert not read_voc(tmp_path).skipped
    _voc(tmp_path, "b.xml", "B.JPG")
    with pytest.raises(DarktuneError, match=r"b.xml: .*B.JPG: image not found"):
        read_voc(tmp_path)
    ds = read_voc(tmp_path, skip_bad=True)
    assert len(ds.images) == 1 and [p.severity for p in ds.skipped] == ["error"]


def test_voc_two_files_differing_only_in_case_are_not_guessed(tmp_path):
    write_image(tmp_path / "im" / "Pic.jpg", 64, 48)
    write_image(tmp_path / "im" / "PIC.jpg", 64, 48)
    if len(list((tmp_path / "im").iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    _voc(tmp_path / "ann", "a.xml", "pic.jpg")
    with pytest.raises(DarktuneError, match="image not found"):
        read_voc(tmp_path / "ann", tmp_path / "im")


# ---------------------------------------------------------------------------------------- Open Images

OI_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
             "IsDepiction,IsInside")


def test_openimages_short_row_names_its_field_count(tmp_path):
    (tmp_path / "desc.csv").write_text("/m/0d4v4,Window\n/m/02dgv,Door\n")
    for k in ("000a", "000b"):
        write_image(tmp_path / "imgs" / f"{k}.jpg", 40, 30)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("\n".join([OI_HEADER, "000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                                "000a,x,/m/0d4v4,1,0.1,0.5", "000b,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                                "000b,x,/m/02dgv,1,0.1"]) + "\n")
    args = (boxes, tmp_path / "desc.csv", tmp_path / "imgs")
    with pytest.raises(DarktuneError, match=r"boxes.csv:3: row has 6 fields, the header names 13$"):
        read_openimages(*args)
    ds = read_openimages(*args, skip_bad=True)
    assert ds.images == []
    assert [(p.line, p.reason) for p in ds.skipped] == [
        (3, "row has 6 fields, the header names 13 (image 000a skipped)"),
        (5, "row has 5 fields, the header names 13 (image 000b skipped)")]
    # a short row of a class not asked for is ignored like the other rows of that class
    ds = read_openimages(*args, classes=["Window"], skip_bad=True)
    assert [r.path.name for r in ds.images] == ["000b.jpg"] and [p.line for p in ds.skipped] == [3]
