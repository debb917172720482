"""Boxes past the image edge (`darktune.data.formats.records.clip_to_image`), worked by hand on a 100 x 100 image
and through each reader: clipped to the image; dropped when less than a quarter of the box or under 2 px lies
inside; an error when the box does not touch the image at all; counted in the import summary."""

from __future__ import annotations

import json

import pytest
from corpus.datasets import write_image

from darktune.cli import main
from darktune.data.formats.coco import read_coco
from darktune.data.formats.records import CLIPPED, CLIPPED_AWAY, BadBox, EmptyBox, clip_counts, clip_to_image
from darktune.data.formats.voc import read_voc
from darktune.data.formats.yolo import read_yolo
from darktune.errors import DarktuneError


def px(x1, y1, x2, y2, size=100):
    """clip_to_image of a box given in pixels of a size x size image."""
    return clip_to_image("a", x1 / size, y1 / size, x2 / size, y2 / size, "test", size, size)


@pytest.mark.parametrize("corners, kept, note", [
    ((10, 10, 30, 50), (0.10, 0.10, 0.30, 0.50), ""),  # inside: as given
    ((-0.05, 10, 30, 50), (0.0, 0.10, 0.30, 0.50), ""),  # within the 0.001 tolerance: clipped without a note
    ((-10, 10, 30, 50), (0.0, 0.10, 0.30, 0.50), CLIPPED),  # 30x40 of 40x40 inside = 75%
    ((-50, -50, 50, 50), (0.0, 0.0, 0.50, 0.50), CLIPPED),  # 50x50 of 100x100 = 25%: kept (the limit)
    ((80, 60, 120, 140), (0.80, 0.60, 1.0, 1.0), CLIPPED),  # 20x40 of 40x80 = 25%
    ((-90, 0, 10, 100), None, CLIPPED_AWAY),  # 10x100 of 100x100 = 10%
    ((-51, -50, 50, 50), None, CLIPPED_AWAY),  # 50x50 of 101x100 = 24.8%
    ((98.5, 10, 100.5, 12), None, CLIPPED_AWAY),  # 75% inside, but 1.5 px wide
])
def test_clip_rule_worked_by_hand(corners, kept, note):
    box, got = px(*corners)
    assert got.startswith(note) if note else got == ""
    if kept is None:
        assert box is None and "inside" in got
    else:
        assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx(kept)


def test_without_the_pixel_size_the_minimum_is_a_fraction_of_the_image():
    box, note = clip_to_image("a", 0.9985, 0.1, 1.0015, 0.3, "t")  # half inside, but only 0.0015 wide
    assert box is None and "under 0.002 of the image inside" in note
    assert clip_to_image("a", 0.99, 0.1, 1.003, 0.3, "t")[0] is not None  # 0.01 inside, 77%


@pytest.mark.parametrize("corners, error, match", [
    ((110, 10, 150, 60), BadBox, "outside the image, not only past its edge"),
    ((-40, 10, -5, 60), BadBox, "outside the image"),
    ((30, 10, 20, 60), BadBox, "corners swapped"),
    ((-10, 10, -10, 60), EmptyBox, "zero width"),
])
def test_boxes_that_are_not_objects_at_the_edge_stay_errors(corners, error, match):
    with pytest.raises(error, match=match):
        px(*corners)


def test_nan_is_an_error():
    with pytest.raises(BadBox, match="not finite"):
        clip_to_image("a", float("nan"), 0, 0.5, 0.5, "t")


def _coco(tmp_path, boxes):
    write_image(tmp_path / "a.jpg", 100, 100)
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    return tmp_path / "a.json"


def test_coco_reader_clips_and_counts(tmp_path):
    ds = read_coco(_coco(tmp_path, [[-10, 10, 40, 40], [-90, 0, 100, 100], [10, 10, 20, 20]]))
    assert [(b.x1, b.x2) for b in ds.images[0].boxes] == [(0.0, pytest.approx(0.3)), (0.1, pytest.approx(0.3))]
    assert clip_counts(ds.notes) == {"n_boxes_clipped": 1, "n_boxes_dropped_at_edge": 1}
    assert any("annotations[1]" in p.reason and CLIPPED_AWAY in p.reason for p in ds.notes)


def test_voc_and_yolo_readers_clip(tmp_path):
    write_image(tmp_path / "v" / "a.jpg", 100, 100)
    (tmp_path / "v" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>100</width><height>100</height></size><object>"
        "<name>cat</name><bndbox><xmin>-9</xmin><ymin>11</ymin><xmax>31</xmax><ymax>51</ymax></bndbox></object>"
        "</annotation>")
    voc = read_voc(tmp_path / "v")
    assert (voc.images[0].boxes[0].x1, voc.images[0].boxes[0].x2) == (0.0, pytest.approx(0.3))
    assert clip_counts(voc.notes)["n_boxes_clipped"] == 1
    write_image(tmp_path / "y" / "a.jpg", 100, 100)
    (tmp_path / "y" / "obj.names").write_text("cat\n")
    # a centre inside keeps at least a quarter inside: only the size rule can drop a YOLO box
    (tmp_path / "y" / "a.txt").write_text("0 0.1 0.5 0.4 0.2\n0 0.9999 0.5 0.0024 0.2\n0 0.5 0.5 0.2 0.2\n")
    yolo = read_yolo(tmp_path / "y")
    assert [round(b.x1, 6) for b in yolo.images[0].boxes] == [0.0, 0.4]  # the second: 0.0013 wide inside
    assert clip_counts(yolo.notes) == {"n_boxes_clipped": 1, "n_boxes_dropped_at_edge": 1}
    (tmp_path / "y" / "a.txt").write_text("0 1.5 0.5 0.2 0.2\n")  # a centre outside: still an error
    with pytest.raises(DarktuneError, match=r"a.txt:1: centre"):
        read_yolo(tmp_path / "y")


def test_import_summary_counts_clipped_boxes(tmp_path, capsys):
    src = _coco(tmp_path, [[-10, 10, 40, 40], [-90, 0, 100, 100], [10, 10, 20, 20]])
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n_boxes"], summary["n_boxes_clipped"], summary["n_boxes_dropped_at_edge"]) == (2, 1, 1)
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out2")]) == 0
    out = capsys.readouterr()
    assert "2 boxes reached past the image edge: 1 clipped to the image, 1 dropped" in out.out
    assert CLIPPED not in out.err  # counted in one line, not listed box by box
