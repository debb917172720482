"""What the COCO, VOC and Open Images readers do with one record (`darktune.data.formats.records` and the
readers): VOC's 1-based pixels as darknet's voc_label.py converts them, VOC `difficult`, a bad box costs its
image (an empty box only itself), COCO flags as booleans or 0/1, crowd boxes kept as group-of and counted,
exact duplicates dropped, declared image sizes checked against the file header (EXIF rotation named), Open
Images Confidence 0 rows skipped, XML refusals in plain words."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from corpus.datasets import write_image
from corpus.images import with_exif_orientation

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.formats.yolo import write_darknet
from darktune.data.filter import FilterRules, filter_dataset
from darktune.data.formats.coco import read_coco, write_coco
from darktune.data.formats.openimages import read_openimages
from darktune.data.formats.voc import read_voc, write_voc
from darktune.data.formats.yolo import read_yolo
from darktune.errors import DarktuneError


def voc_label_convert(size, box):
    """darknet scripts/voc_label.py `convert`, verbatim: size (w, h), box (xmin, xmax, ymin, ymax)."""
    dw = 1. / (size[0])
    dh = 1. / (size[1])
    x = (box[0] + box[1]) / 2.0 - 1
    y = (box[2] + box[3]) / 2.0 - 1
    w = box[1] - box[0]
    h = box[3] - box[2]
    return (x * dw, y * dh, w * dw, h * dh)


def voc_xml(objects, width=100, height=80, filename="a.jpg", size=True) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])."""
    body = "".join(
        f"<object><name>{o[0]}</name><difficult>{o[5] if len(o) > 5 else 0}</difficult><bndbox><xmin>{o[1]}</xmin>"
        f"<ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>" for o in objects)
    sz = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{filename}</filename>{sz}{body}</annotation>"


def _voc_numbers(xml_text: str) -> list[list[str]]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml_text)
    return [[o.find("bndbox").find(t).text for t in ("xmin", "ymin", "xmax", "ymax")] for o in root.iter("object")]


# ------------------------------------------------------------------------------------------------ VOC


VOC_BOXES = [("cat", 1, 1, 100, 80), ("dog", 10.5, 20.25, 40.75, 60.5), ("cat", 37, 2, 61, 79)]


def test_voc_pixels_follow_darknet_voc_label(tmp_path):
    write_image(tmp_path / "a.jpg", 100, 80)
    (tmp_path / "a.xml").write_text(voc_xml(VOC_BOXES))
    boxes = read_voc(tmp_path).images[0].boxes
    for (_, xmin, ymin, xmax, ymax), b in zip(VOC_BOXES, boxes):
        assert (b.cx, b.cy, b.w, b.h) == pytest.approx(voc_label_convert((100, 80), (xmin, xmax, ymin, ymax)),
                                                       abs=1e-12)
    assert boxes[0].cx == pytest.approx(0.495)  # the QA case: 0.505 before


def test_voc_round_trip_through_darknet_gives_back_the_numbers(tmp_path):
    write_image(tmp_path / "src" / "a.jpg", 100, 80)
    write_image(tmp_path / "src" / "b.jpg", 4000, 3000)
    (tmp_path / "src" / "a.xml").write_text(voc_xml(VOC_BOXES))
    big = [("cat", 1, 1, 4000, 3000), ("dog", 1234, 17, 3999, 2001)]
    (tmp_path / "src" / "b.xml").write_text(voc_xml(big, 4000, 3000, "b.jpg"))
    start = read_voc(tmp_path / "src")
    back = read_yolo(write_darknet(start, tmp_path / "yolo", val_fraction=0))  # 8-decimal label files
    out = write_voc(back.select_classes(start.classes), tmp_path / "voc")
    for name, objects in (("a", VOC_BOXES), ("b", big)):
        numbers = _voc_numbers((out / "Annotations" / f"{name}.xml").read_text())
        assert numbers == [[f"{v:g}" for v in o[1:5]] for o in objects]


def test_voc_write_is_the_inverse_and_zero_based_edges_are_clamped(tmp_path):
    img = write_image(tmp_path / "a.png", 300, 200)
    ds = Dataset(["w"], [ImageRecord(img, 300, 200, [Box("w", 0.0, 0.1, 1.0, 1.0)])])
    xml = (write_voc(ds, tmp_path / "voc") / "Annotations" / "a.xml").read_text()
    assert _voc_numbers(xml) == [["1", "21", "301", "201"]]  # right edge: xmax = width + 1
    write_image(tmp_path / "z" / "a.jpg", 100, 80)
    (tmp_path / "z" / "a.xml").write_text(voc_xml([("cat", 0, 0, 50, 40)]))  # a 0-based tool's corner
    b = read_voc(tmp_path / "z").images[0].boxes[0]
    assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx((0.0, 0.0, 0.49, 39 / 80))


def test_voc_empty_box_is_skipped_alone_and_named(tmp_path):
    write_image(tmp_path / "v8.jpg", 100, 100)
    (tmp_path / "v8.xml").write_text(voc_xml([("cat", 50, 50, 60, 60), ("cat", 1, 1, 1, 1)], 100, 100, "v8.jpg"))
    with pytest.raises(DarktuneError, match=r"v8.xml: object 1: box has no area") as err:
        read_voc(tmp_path)
    assert "xmin=1 ymin=1 xmax=1 ymax=1" in str(err.value)
    ds = read_voc(tmp_path, skip_bad=True)
    assert len(ds.images) == 1 and ds.n_boxes == 1  # the file kept with its other box
    [p] = ds.skipped
    assert p.path == str(tmp_path / "v8.xml") and p.reason.startswith("object 1: ") and "(box skipped)" in p.reason
    (tmp_path / "v8.xml").write_text(voc_xml([("cat", 50, 50, 60, 60), ("cat", 30, 1, 10, 5)], 100, 100, "v8.jpg"))
    ds = read_voc(tmp_path, skip_bad=True)  # swapped corners: a bad box, the file goes
    assert not ds.images and "corners swapped" in ds.skipped[0].reason


def test_voc_difficult_is_read_and_written_back(tmp_path):
    write_image(tmp_path / "a.jpg", 100, 80)
    (tmp_path / "a.xml").write_text(voc_xml([("cat", 5, 5, 50, 40, 1), ("cat", 60, 5, 90, 40, 0)]))
    ds = read_voc(tmp_path)
    assert [b.is_difficult for b in ds.images[0].boxes] == [True, False]
    xml = (write_voc(ds, tmp_path / "out") / "Annotations" / "a.xml").read_text()
    assert xml.count("<difficult>1</difficult>") == 1 and xml.count("<difficult>0</difficult>") == 1
    assert [b.is_difficult for b in read_voc(tmp_path / "out").images[0].boxes] == [True, False]
    assert "is_difficult" not in json.dumps(json.loads(write_coco(ds, tmp_path / "coco").read_text()))


def test_voc_duplicate_objects_are_dropped_with_a_warning(tmp_path):
    write_image(tmp_path / "a.jpg", 100, 80)
    (tmp_path / "a.xml").write_text(voc_xml([("cat", 5, 5, 50, 40), ("cat", 5, 5, 50, 40)]))
    ds = read_voc(tmp_path)
    assert ds.n_boxes == 1
    assert [(p.severity, p.reason) for p in ds.skipped] == [
        ("warning", "object 1: duplicate of object 0 (same name and box; dropped)")]


@pytest.mark.parametrize("text, message", [
    ('<!DOCTYPE a [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><annotation>&lol2;</annotation>',
     "XML entity declarations are refused (a possible entity-expansion attack)"),
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/hostname">]><annotation>&x;</annotation>',
     "XML external entity declarations are refused (a possible external-entity attack)"),
])
def test_xml_refusals_are_plain_words(tmp_path, text, message):
    (tmp_path / "bomb.xml").write_text(text)
    with pytest.raises(DarktuneError) as err:
        read_voc(tmp_path)
    assert str(err.value) == f"{tmp_path / 'bomb.xml'}: {message}"


# ------------------------------------------------------------------------------------- declared sizes


def test_declared_size_must_match_the_image(tmp_path):
    write_image(tmp_path / "f_size.jpg", 200, 150)
    doc = {"images": [{"id": 6, "file_name": "f_size.jpg", "width": 100, "height": 75}],
           "categories": [{"id": 3, "name": "car"}],
           "annotations": [{"id": 13, "image_id": 6, "category_id": 3, "bbox": [10, 10, 50, 40]}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DarktuneError) as err:
        read_coco(tmp_path / "ann.json")
    assert str(err.value) == (f"{tmp_path / 'ann.json'}: images[0] (id 6): declared size 100x75 differs from the "
                              f"image file {tmp_path / 'f_size.jpg'}, which is 200x150 (its boxes would be scaled "
                              "by the wrong size)")
    ds = read_coco(tmp_path / "ann.json", skip_bad=True)
    assert not ds.images and "(image skipped)" in ds.skipped[0].reason
    write_image(tmp_path / "v" / "a.jpg", 120, 90)
    (tmp_path / "v" / "a.xml").write_text(voc_xml([("cat", 5, 5, 50, 40)], 100, 80))
    with pytest.raises(DarktuneError, match=r"a.xml: <size>: declared size 100x80 differs .* which is 120x90"):
        read_voc(tmp_path / "v")
    assert len(read_voc(tmp_path / "v", skip_bad=True).skipped) == 1


def test_size_of_an_exif_rotated_picture_is_named(tmp_path):
    _, jpg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))  # stored 160x120
    (tmp_path / "e.jpg").write_bytes(with_exif_orientation(jpg.tobytes(), 6))
    doc = {"images": [{"id": 5, "file_name": "e.jpg", "width": 120, "height": 160}],  # the displayed size
           "categories": [{"id": 1, "name": "person"}],
           "annotations": [{"id": 12, "image_id": 5, "category_id": 1, "bbox": [10, 20, 30, 60]}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DarktuneError, match=r"ann.json: images\[0\] \(id 5\): declared size 120x160 .* is "
                                            r"160x120 turned by EXIF orientation 6: the annotation was made on the "
                                            r"picture as a viewer shows it"):
        read_coco(tmp_path / "ann.json")
    doc["images"][0].update(width=160, height=120)  # the stored size: fine (data check warns about EXIF)
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    assert read_coco(tmp_path / "ann.json").n_boxes == 1


def test_missing_coco_image_is_a_counted_skip(tmp_path):
    write_image(tmp_path / "a.jpg", 40, 30)
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                      {"id": 2, "file_name": "missing.jpg", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "w"}],
           "annotations": [{"id": 1, "image_id": i, "category_id": 1, "bbox": [4, 3, 20, 15]} for i in (1, 2)]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DarktuneError, match=r"ann.json: images\[1\] \(id 2\): .*missing.jpg: image not found"):
        read_coco(tmp_path / "ann.json")
    ds = read_coco(tmp_path / "ann.json", skip_bad=True)
    assert [r.path.name for r in ds.images] == ["a.jpg"] and len(ds.skipped) == 1


# ------------------------------------------------------------------------------------------------ COCO


def _coco(tmp_path, anns, width=64, height=48) -> Path:
    write_image(tmp_path / "neg.jpg", width, height)
    write_image(tmp_path / "b.jpg", width, height)
    doc = {"images": [{"id": 1, "file_name": "neg.jpg", "width": width, "height": height},
                      {"id": 2, "file_name": "b.jpg", "width": width, "height": height}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
           "annotations": [{"id": k + 1, "image_id": a[0], "category_id": a[1], "bbox": a[2], **a[3]}
                           for k, a in enumerate(anns)]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    return tmp_path / "ann.json"


def test_coco_bad_box_drops_its_image(tmp_path):
    path = _coco(tmp_path, [(1, 1, [5, 5, 10, 10], {}), (1, 3, [30, 30, -10, 20], {}), (2, 1, [1, 1, 5, 5], {})])
    ds = read_coco(path, skip_bad=True)
    assert [r.path.name for r in ds.images] == ["b.jpg"] and ds.n_boxes == 1  # neg.jpg not kept half-labelled
    [p] = ds.skipped
    assert p.path == str(path) and p.reason.startswith("annotations[1] (id 2): box has no area: corners swapped")
    assert p.reason.endswith(f"(image {tmp_path / 'neg.jpg'} skipped)")


def test_coco_empty_box_is_skipped_alone(tmp_path):
    path = _coco(tmp_path, [(1, 1, [5, 5, 10, 10], {}), (1, 3, [10, 10, 0, 20], {})])
    with pytest.raises(DarktuneError, match=r"annotations\[1\] \(id 2\): box has no area: zero width"):
        read_coco(path)
    ds = read_coco(path, skip_bad=True)
    assert len(ds.images) == 2 and ds.n_boxes == 1 and ds.skipped[0].reason.endswith("(box skipped)")


@pytest.mark.parametrize("extra", [{"attributes": {"occluded": "false"}}, {"attributes": {"occluded": "0"}},
                                   {"attributes": {"truncated": 2}}, {"iscrowd": "0"}, {"attributes": [1]}])
def test_coco_flags_must_be_booleans_or_0_1(tmp_path, extra):
    path = _coco(tmp_path, [(2, 1, [1, 1, 5, 5], {}), (1, 1, [5, 5, 10, 10], extra)])
    with pytest.raises(DarktuneError, match=r"ann.json: annotations\[1\] \(id 2\): .*must be"):
        read_coco(path)
    ds = read_coco(path, skip_bad=True)
    assert [r.path.name for r in ds.images] == ["b.jpg"] and len(ds.skipped) == 1


def test_coco_flags_read_as_given(tmp_path):
    path = _coco(tmp_path, [(1, 1, [5, 5, 10, 10], {"attributes": {"occluded": False, "truncated": 1}}),
                            (1, 1, [20, 5, 10, 10], {"attributes": {"occluded": True, "truncated": 0}})])
    a, b = read_coco(path).images[0].boxes
    assert (a.is_occluded, a.is_truncated, b.is_occluded, b.is_truncated) == (False, True, True, False)


def test_coco_crowd_boxes_are_group_of_and_counted(tmp_path):
    path = _coco(tmp_path, [(1, 1, [5, 5, 10, 10], {"iscrowd": 1}), (1, 1, [20, 5, 10, 10], {"iscrowd": 0}),
                            (2, 1, [1, 1, 40, 40], {"iscrowd": 1})])
    ds = read_coco(path)
    assert [b.is_group_of for r in ds.images for b in r.boxes] == [True, False, True]
    assert [(p.severity, p.reason) for p in ds.skipped] == [("warning", (
        "2 crowd annotations (iscrowd=1) read as group-of boxes (kept; `darktune data filter --drop-group-of` "
        "removes them)"))]
    filtered, _ = filter_dataset(ds, FilterRules(drop_group_of=True))
    assert filtered.n_boxes == 1


def test_coco_exact_duplicates_are_dropped_and_counted(tmp_path):
    bbox = [10, 10, 20, 15]
    path = _coco(tmp_path, [(1, 1, bbox, {}), (1, 1, list(bbox), {}), (1, 3, bbox, {}), (2, 1, bbox, {})])
    ds = read_coco(path)
    assert ds.n_boxes == 3  # other class or other image: not duplicates
    assert [(p.severity, p.reason) for p in ds.skipped] == [
        ("warning", ("annotations[1] (id 2): duplicate of annotations[0] (id 1) (same image, category and "
                     "bbox; dropped)"))]
    obj = write_darknet(ds, tmp_path / "out", val_fraction=0)
    assert read_yolo(obj).n_boxes == 3


# --------------------------------------------------------------------------------------------- Open Images


HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
          "IsDepiction,IsInside")


def _oi(tmp_path, rows) -> tuple[Path, Path, Path]:
    (tmp_path / "boxes.csv").write_text(HEADER + "\n" + "".join(r + "\n" for r in rows))
    (tmp_path / "desc.csv").write_text("/m/0d4v4,Window\n/m/02dgv,Door\n")
    for k in ("000a", "000b"):
        write_image(tmp_path / "imgs" / f"{k}.jpg", 40, 30)
    return tmp_path / "boxes.csv", tmp_path / "desc.csv", tmp_path / "imgs"


def test_openimages_confidence_0_rows_are_skipped_and_counted(tmp_path):
    b, d, i = _oi(tmp_path, ["000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                             "000a,verification,/m/02dgv,0,0.6,0.9,0.2,0.6,0,0,0,0,0",
                             "000b,verification,/m/0d4v4,0,0.1,0.5,0.2,0.6,0,0,0,0,0"])
    ds = read_openimages(b, d, i)
    assert ds.n_boxes == 1 and [r.path.name for r in ds.images] == ["000a.jpg"]
    [p] = ds.skipped
    assert (p.line, p.severity) == (3, "warning") and p.reason.startswith("2 rows with Confidence 0 skipped")
    b, d, i = _oi(tmp_path, ["000a,x,/m/0d4v4,high,0.1,0.5,0.2,0.6,0,0,0,0,0"])
    with pytest.raises(DarktuneError, match=r"boxes.csv:2: Confidence must be a number in \[0, 1\]"):
        read_openimages(b, d, i)


def test_openimages_bad_row_drops_its_image_and_duplicates_are_dropped(tmp_path):
    b, d, i = _oi(tmp_path, ["000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                             "000a,x,/m/02dgv,1,0.6,0.9,0.2,0.6,0,0,7,0,0",
                             "000b,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                             "000b,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                             "000b,x,/m/0d4v4,1,0.6,0.6,0.2,0.6,0,0,0,0,0"])
    ds = read_openimages(b, d, i, skip_bad=True)
    assert [r.path.name for r in ds.images] == ["000b.jpg"] and ds.n_boxes == 1
    assert [(p.line, p.severity, p.reason) for p in ds.skipped] == [
        (3, "error", "IsGroupOf must be 0, 1 or -1, got '7' (image 000a skipped)"),
        (5, "warning", "duplicate of line 4 (same image, label and box; dropped)"),
        (6, "error", "box has no area: zero width or height (XMin=0.6 XMax=0.6 YMin=0.2 YMax=0.6) (box skipped)")]


# ------------------------------------------------------------------------------------------------- cost


def test_size_check_reads_headers_only(tmp_path, monkeypatch):
    """The declared-size check opens each image once and reads its first 4 KiB, never the whole file."""
    from darktune.data.formats import image

    big = np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)
    _, jpg = cv2.imencode(".jpg", big)
    assert len(jpg) > 100_000
    (tmp_path / "a.jpg").write_bytes(jpg.tobytes())
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 800, "height": 600}],
           "categories": [{"id": 1, "name": "w"}], "annotations": []}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    reads = []
    real_open = image.open_regular

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

    monkeypatch.setattr(image, "open_regular", lambda *a, **k: Spy(real_open(*a, **k)))
    assert len(read_coco(tmp_path / "ann.json").images) == 1
    assert reads == [4096]


def test_import_prints_reader_warnings_as_notes_not_skips(tmp_path, capsys):
    """Crowd boxes are read (as group-of) and counted: the import says so as a note, and skips nothing."""
    from darktune.cli import main

    path = _coco(tmp_path, [(1, 1, [5, 5, 10, 10], {"iscrowd": 1}), (2, 1, [20, 5, 10, 10], {})])
    assert main(["data", "import", str(path), "--images", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["n_skipped"] == 0 and summary["n_notes"] == 1 and summary["n_boxes"] == 2
    assert "note: " in captured.err and "crowd annotation" in captured.err and "skipped:" not in captured.err
