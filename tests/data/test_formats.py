"""Annotation formats: yolo -> coco -> voc -> yolo round trips keep every box within 1e-6; Open Images and
COCO/VOC flags survive; the darknet layout (obj.data forms, label paths, split, name collisions); malformed
annotation files give a DarktuneError naming the file and record (or counted skips)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from corpus.datasets import write_image

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.formats.yolo import label_path_for, read_obj_data, split_indices, write_darknet
from darktune.data.formats.coco import read_coco, write_coco
from darktune.data.formats.openimages import read_openimages, write_openimages
from darktune.data.formats.voc import read_voc, write_voc
from darktune.data.formats.yolo import read_yolo
from darktune.errors import DarktuneError


def random_boxes(rng, classes, n):
    out = []
    for _ in range(n):
        x1, y1 = rng.uniform(0, 0.8, 2)
        w, h = rng.uniform(0.01, 0.2, 2)
        out.append(Box(str(rng.choice(classes)), float(x1), float(y1), float(x1 + w), float(y1 + h)))
    return out


@pytest.fixture
def yolo_src(tmp_path):
    """A darknet dataset with varied image sizes and types, written by write_darknet."""
    rng = np.random.default_rng(0)
    classes = ["window", "door", "balcony"]
    recs = []
    for i, (w, h, ext) in enumerate([(64, 48, ".jpg"), (97, 131, ".png"), (640, 480, ".jpg"), (33, 200, ".bmp"),
                                     (120, 90, ".png"), (80, 80, ".jpg")]):
        img = write_image(tmp_path / "raw" / f"img{i}{ext}", w, h, 20 * i)
        recs.append(ImageRecord(img, None, None, random_boxes(rng, classes, i % 4)))
    return write_darknet(Dataset(classes, recs), tmp_path / "yolo", val_fraction=0.3, seed=1)


def _by_stem(ds: Dataset) -> dict[str, list[Box]]:
    return {Path(r.path).stem: r.boxes for r in ds.images}


def _assert_same_boxes(a: Dataset, b: Dataset, tol: float = 1e-6, flags: bool = False):
    assert a.classes == b.classes
    ba, bb = _by_stem(a), _by_stem(b)
    assert ba.keys() == bb.keys()
    for stem in ba:
        assert len(ba[stem]) == len(bb[stem]), stem
        for x, y in zip(ba[stem], bb[stem]):
            assert x.class_name == y.class_name
            assert max(abs(x.x1 - y.x1), abs(x.y1 - y.y1), abs(x.x2 - y.x2), abs(x.y2 - y.y2)) <= tol, (x, y)
            if flags:
                assert x.flags() == y.flags()


def test_round_trip_yolo_coco_voc_yolo(yolo_src, tmp_path):
    start = read_yolo(yolo_src)
    assert start.n_boxes > 5 and len(start.images) == 6
    coco_json = write_coco(start, tmp_path / "coco")
    from_coco = read_coco(coco_json)
    _assert_same_boxes(start, from_coco)
    voc_dir = write_voc(from_coco, tmp_path / "voc")
    from_voc = read_voc(voc_dir)
    assert set(from_voc.classes) == set(start.classes)
    from_voc = from_voc.select_classes(start.classes)  # VOC lists classes in order of appearance
    back = read_yolo(write_darknet(from_voc, tmp_path / "yolo2", val_fraction=0.3, seed=1))
    _assert_same_boxes(start, back)
    _assert_same_boxes(start, from_voc)


def test_coco_file_loads_in_pycocotools_and_keeps_flags(tmp_path):
    pycocotools_coco = pytest.importorskip("pycocotools.coco")
    img = write_image(tmp_path / "a.jpg", 200, 100)
    ds = Dataset(["w"], [ImageRecord(img, None, None, [Box("w", 0.1, 0.2, 0.5, 0.6, is_group_of=True,
                                                           is_occluded=True), Box("w", 0.6, 0.1, 0.7, 0.3)])])
    path = write_coco(ds, tmp_path / "c")
    api = pycocotools_coco.COCO(str(path))
    ann = api.loadAnns(api.getAnnIds())[0]
    assert ann["bbox"] == pytest.approx([20, 20, 80, 40]) and ann["iscrowd"] == 1
    _assert_same_boxes(ds, read_coco(path), flags=True)


def test_voc_keeps_flags_and_reads_standard_layout(tmp_path):
    img = write_image(tmp_path / "a.png", 300, 200)
    ds = Dataset(["w", "d"], [ImageRecord(img, 300, 200, [Box("w", 0.1, 0.2, 0.5, 0.6, is_truncated=True),
                                                          Box("d", 0.123456, 0.1, 0.7, 0.3, is_inside=True)])])
    out = write_voc(ds, tmp_path / "voc")
    assert (out / "Annotations" / "a.xml").is_file() and (out / "JPEGImages" / "a.png").is_file()
    xml = (out / "Annotations" / "a.xml").read_text()
    assert "<xmin>31</xmin>" in xml and "<xmin>38.0368</xmin>" in xml  # VOC's 1-based pixels, ints stay ints
    _assert_same_boxes(ds, read_voc(out), flags=True)


def test_openimages_round_trip_keeps_flags_exactly(tmp_path):
    rng = np.random.default_rng(4)
    recs = []
    for i in range(4):
        boxes = [Box(b.class_name, b.x1, b.y1, b.x2, b.y2, is_group_of=bool(i % 2), is_depiction=bool(i == 2),
                     is_truncated=True, is_occluded=bool(i == 3), is_inside=bool(i == 1))
                 for b in random_boxes(rng, ["Window", "Door"], 3)]
        recs.append(ImageRecord(write_image(tmp_path / "src" / f"{i:04x}abc.jpg", 50, 40), None, None, boxes))
    ds = Dataset(["Window", "Door"], recs)
    boxes_csv, desc, images = write_openimages(ds, tmp_path / "oi", label_names={"Window": "/m/0d4v4"})
    back = read_openimages(boxes_csv, desc, images)
    _assert_same_boxes(ds, back, tol=0.0, flags=True)
    assert "/m/0d4v4,Window" in desc.read_text()
    only = read_openimages(boxes_csv, desc, images, classes=["window"])
    assert only.classes == ["window"] and {b.class_name for r in only.images for b in r.boxes} == {"window"}


def _oi_files(tmp_path, rows, header=None, desc="/m/0d4v4,Window\n/m/02dgv,Door\n"):
    header = header or ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
                        "IsGroupOf,IsDepiction,IsInside")
    (tmp_path / "boxes.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    (tmp_path / "desc.csv").write_text(desc)
    (tmp_path / "imgs").mkdir(exist_ok=True)
    write_image(tmp_path / "imgs" / "000a.jpg", 40, 30)
    return tmp_path / "boxes.csv", tmp_path / "desc.csv", tmp_path / "imgs"


def test_openimages_reader_errors_and_skips(tmp_path):
    good = "000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,1,1,0,-1"
    b, d, i = _oi_files(tmp_path, [good, "000b,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0",
                                   "000a,x,/m/02dgv,1,0.3,0.4,0.3,0.4,0,0,0,0,0"])
    ds = read_openimages(b, d, i, classes=["Window"])
    assert ds.n_boxes == 1 and ds.images[0].boxes[0].is_group_of and ds.images[0].boxes[0].is_truncated
    assert len(ds.skipped) == 1 and "000b" in ds.skipped[0].path  # missing image: skipped, counted
    for bad_row, what in [("000a,x,/m/0d4v4,1,0.1,abc,0.2,0.6,0,0,0,0,0", "numbers"),
                          ("000a,x,/m/zzz,1,0.1,0.5,0.2,0.6,0,0,0,0,0", "unknown LabelName"),
                          ("000a,x,/m/0d4v4,1,0.5,0.1,0.2,0.6,0,0,0,0,0", "no area"),
                          ("000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,7,0,0", "IsGroupOf"),
                          ("../../etc,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0", "ImageID")]:
        b, d, i = _oi_files(tmp_path, [good, bad_row])
        with pytest.raises(DarktuneError, match=what) as err:
            read_openimages(b, d, i)
        assert str(err.value).startswith(f"{b}:3:")
        assert len(read_openimages(b, d, i, skip_bad=True).skipped) == 1
    b, d, i = _oi_files(tmp_path, [good], header="ImageID,LabelName,XMin,XMax,YMin,YMax")
    with pytest.raises(DarktuneError, match="missing columns"):
        read_openimages(b, d, i)
    b, d, i = _oi_files(tmp_path, [good], desc="LabelName,DisplayName\n/m/0d4v4,Window,extra\n")
    with pytest.raises(DarktuneError, match="desc.csv:2"):
        read_openimages(b, d, i)
    b, d, i = _oi_files(tmp_path, [good])
    with pytest.raises(DarktuneError, match="not in the descriptions"):
        read_openimages(b, d, i, classes=["Cat"])


def _coco_doc():
    return {"images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 5, "name": "door"}, {"id": 2, "name": "window"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [4, 3, 20, 15]}]}


@pytest.mark.parametrize("mutate, what", [
    (lambda d: d["annotations"][0].pop("bbox"), "bbox"),
    (lambda d: d["annotations"][0].update(bbox="4 3 20 15"), "bbox"),
    (lambda d: d["annotations"][0].update(bbox=[4, 3, -2, 15]), "no area"),
    (lambda d: d["annotations"][0].update(image_id=99), "unknown image id 99"),
    (lambda d: d["annotations"][0].update(category_id=3), "unknown category id 3"),
    (lambda d: d["annotations"][0].update(image_id="7"), "image_id"),
    (lambda d: d["images"][0].update(width="40"), r"images\[0\]"),
    (lambda d: d["categories"].append({"id": 2, "name": "x"}), "duplicate category"),
    (lambda d: d.pop("annotations"), "annotations"),
])
def test_coco_malformed_records_name_file_and_record(tmp_path, mutate, what):
    doc = _coco_doc()
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    write_image(tmp_path / "a.jpg", 40, 30)
    with pytest.raises(DarktuneError, match=what) as err:
        read_coco(path)
    assert str(path) in str(err.value)


def test_coco_reader_basics_bad_json_and_skip(tmp_path):
    write_image(tmp_path / "a.jpg", 40, 30)
    doc = _coco_doc()
    (tmp_path / "ok.json").write_text(json.dumps(doc))
    ds = read_coco(tmp_path / "ok.json")
    assert ds.classes == ["window", "door"]  # ordered by category id
    b = ds.images[0].boxes[0]
    assert (b.x1, b.y1, b.x2, b.y2) == (0.1, 0.1, 0.6, 0.6)
    (tmp_path / "bad.json").write_text('{"images": [\n1,\n')
    with pytest.raises(DarktuneError, match=r"bad.json:3: bad JSON"):
        read_coco(tmp_path / "bad.json")
    doc["annotations"].append({"id": 9, "image_id": 123, "category_id": 2, "bbox": [0, 0, 1, 1]})
    (tmp_path / "skip.json").write_text(json.dumps(doc))
    ds = read_coco(tmp_path / "skip.json", skip_bad=True)
    assert ds.n_boxes == 1 and len(ds.skipped) == 1 and "annotations[1] (id 9)" in ds.skipped[0].reason


VOC_OK = """<annotation><filename>a.jpg</filename><size><width>40</width><height>30</height></size>
<object><name>window</name><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>4</xmin><ymin>3</ymin><xmax>24</xmax><ymax>18</ymax></bndbox></object></annotation>"""


@pytest.mark.parametrize("text, what", [
    (VOC_OK.replace("</annotation>", ""), "bad XML"),
    (VOC_OK.replace("<xmin>4</xmin>", ""), "xmin"),
    (VOC_OK.replace("<xmin>4</xmin>", "<xmin>four</xmin>"), "xmin"),
    (VOC_OK.replace("<name>window</name>", ""), "name"),
    (VOC_OK.replace("<xmin>4</xmin>", "<xmin>400</xmin>").replace("<xmax>24</xmax>", "<xmax>500</xmax>"),
     "outside the image, not only past its edge"),
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbb"><!ENTITY c "&b;&b;&b;">]><annotation>&c;</annotation>',
     "XML entity declarations are refused"),
])
def test_voc_malformed_files_are_named(tmp_path, text, what):
    write_image(tmp_path / "a.jpg", 40, 30)
    (tmp_path / "a.xml").write_text(text)
    with pytest.raises(DarktuneError, match=what) as err:
        read_voc(tmp_path)
    assert str(tmp_path / "a.xml") in str(err.value)
    (tmp_path / "b.xml").write_text(VOC_OK)
    ds = read_voc(tmp_path, skip_bad=True)
    assert ds.n_boxes == 1 and len(ds.skipped) == 1 and ds.images[0].boxes[0].is_truncated


def test_voc_size_zero_reads_the_image(tmp_path):
    write_image(tmp_path / "a.jpg", 80, 60)
    (tmp_path / "a.xml").write_text(VOC_OK.replace("<width>40</width>", "<width>0</width>"))
    rec = read_voc(tmp_path).images[0]
    assert (rec.width, rec.height) == (80, 60)


# ------------------------------------------------------------------------------------- darknet layout


def _tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_darknet_layout_names_and_split(tmp_path):
    srcs = [write_image(tmp_path / "a" / "x.jpg", 20, 20), write_image(tmp_path / "b" / "x.jpg", 20, 20),
            write_image(tmp_path / "b" / "X.png", 20, 20), write_image(tmp_path / "c" / "we ird#name.jpg", 20, 20)]
    before = _tree_hash(tmp_path)
    ds = Dataset(["w"], [ImageRecord(p, None, None, [Box("w", 0.1, 0.1, 0.3, 0.4)]) for p in srcs])
    obj = write_darknet(ds, tmp_path / "out", val_fraction=0.5, seed=3)
    assert _tree_hash(tmp_path / "a") == {k[2:]: v for k, v in before.items() if k.startswith("a/")}
    names = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert names == ["X_2.png", "X_2.txt", "we_ird_name.jpg", "we_ird_name.txt", "x.jpg", "x.txt", "x_1.jpg",
                     "x_1.txt"]
    od = read_obj_data(obj)
    assert od.names == ["w"] and len(od.train) == 2 and len(od.valid) == 2
    assert all(p.is_absolute() and p.is_file() for p in od.train + od.valid)
    line = (tmp_path / "out" / "images" / "x.txt").read_text()
    assert line == "0 0.20000000 0.25000000 0.20000000 0.30000000\n"
    assert {k: v for k, v in _tree_hash(tmp_path).items() if not k.startswith("out/")} == before
    with pytest.raises(DarktuneError, match="not empty"):
        write_darknet(ds, tmp_path / "out")


def test_split_is_seeded():
    assert split_indices(10, 0.3, 1) == split_indices(10, 0.3, 1)
    assert split_indices(10, 0.3, 1) != split_indices(10, 0.3, 2)
    train, valid = split_indices(10, 0.3, 1)
    assert len(valid) == 3 and sorted(train + valid) == list(range(10))
    assert split_indices(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])
    assert len(split_indices(2, 0.01, 0)[1]) == 1
    with pytest.raises(DarktuneError):
        split_indices(5, 1.0, 0)


def test_obj_data_paths_absolute_relative_to_file_and_to_cwd(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    img = write_image(root / "data" / "images" / "a.jpg", 10, 10)
    (root / "data" / "obj.names").write_text("window\n\n")
    (root / "data" / "train.txt").write_text("images/a.jpg\n")  # relative to the list's folder
    (root / "data" / "valid.txt").write_text(f"{img}\n")
    (root / "data" / "obj.data").write_text("classes = 1\ntrain = train.txt\nvalid=" + str(root / "data" / "valid.txt")
                                            + "\nnames = obj.names\n# comment\n")
    od = read_obj_data(root / "data")
    assert od.names == ["window"] and od.train == [root / "data" / "images" / "a.jpg"] and od.valid == [img]
    (root / "data" / "obj2.data").write_text("classes=1\ntrain=data/train.txt\nnames=data/obj.names\n")
    monkeypatch.chdir(root)  # darknet's form: relative to the working folder
    od = read_obj_data(root / "data" / "obj2.data")
    assert od.train[0].resolve() == img.resolve() and od.valid == []


@pytest.mark.parametrize("text, what", [
    ("classes=2\ntrain=t.txt\nnames=n.names\n", "classes=2 but"),
    ("classes=1\nnames=n.names\n", "missing 'train"),
    ("classes=1\ntrain=t.txt\nnames=missing.names\n", "names file not found"),
    ("classes=1\ntrain t.txt\nnames=n.names\n", ":2: expected 'key = value'"),
])
def test_obj_data_errors(tmp_path, text, what):
    (tmp_path / "n.names").write_text("a\n")
    (tmp_path / "t.txt").write_text("")
    (tmp_path / "obj.data").write_text(text)
    with pytest.raises(DarktuneError, match=what):
        read_obj_data(tmp_path / "obj.data")


def test_label_path_rule(tmp_path):
    img = write_image(tmp_path / "set" / "images" / "a.jpg", 10, 10)
    assert label_path_for(img) == tmp_path / "set" / "images" / "a.txt"
    (tmp_path / "set" / "labels").mkdir()
    (tmp_path / "set" / "labels" / "a.txt").write_text("")
    assert label_path_for(img) == tmp_path / "set" / "labels" / "a.txt"
    voc = tmp_path / "VOC" / "JPEGImages" / "b.jpg"
    (tmp_path / "VOC" / "labels").mkdir(parents=True)
    (tmp_path / "VOC" / "labels" / "b.txt").write_text("")
    assert label_path_for(voc) == tmp_path / "VOC" / "labels" / "b.txt"


def test_read_yolo_bad_label_names_line_or_skips(tmp_path):
    folder = tmp_path / "ds"
    write_image(folder / "a.jpg", 10, 10)
    write_image(folder / "b.jpg", 10, 10)
    (folder / "classes.txt").write_text("w\n")
    (folder / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (folder / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DarktuneError, match=r"b.txt:2: class 3 out of range"):
        read_yolo(folder)
    ds = read_yolo(folder, skip_bad=True)
    assert len(ds.images) == 1 and len(ds.skipped) == 1


def test_select_classes_and_empty_images():
    ds = Dataset(["Window", "Door"], [ImageRecord(Path("a.jpg"), boxes=[Box("Door", 0, 0, 1, 1)]),
                                      ImageRecord(Path("b.jpg"), boxes=[Box("Window", 0, 0, 1, 1)]),
                                      ImageRecord(Path("c.jpg"))])
    sel = ds.select_classes(["Window"])  # the case rules of the match are tested in test_dataset.py
    assert sel.classes == ["Window"] and [r.path.name for r in sel.images] == ["b.jpg", "c.jpg"]
    assert len(ds.select_classes(["Window"], keep_empty=True).images) == 3
    with pytest.raises(DarktuneError, match="not found"):
        ds.select_classes(["cat"])


def test_cli_import_coco(tmp_path, capsys):
    from darktune.cli import main

    write_image(tmp_path / "imgs" / "a.jpg", 40, 30)
    (tmp_path / "ann.json").write_text(json.dumps(_coco_doc()))
    before = _tree_hash(tmp_path)
    rc = main(["data", "import", "--format", "coco", str(tmp_path / "ann.json"), "--images", str(tmp_path / "imgs"),
               "--out", str(tmp_path / "out"), "--classes", "window", "--val-fraction", "0", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == ["window"] and doc["n_boxes"] == 1 and doc["n_train"] == 1
    assert read_yolo(doc["obj_data"]).n_boxes == 1
    assert {k: v for k, v in _tree_hash(tmp_path).items() if not k.startswith("out/")} == before
    rc = main(["data", "import", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out2")])
    assert rc == 2 and "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize("text, what", [
    (json.dumps(_coco_doc()).replace('"id": 7', '"id": NaN'), "'id' must be"),
    (json.dumps(_coco_doc()).replace('"id": 7', '"id": 1e999'), "'id' must be"),
    (json.dumps(_coco_doc()).replace('"id": 7', '"id": 7.5'), "'id' must be"),
    (json.dumps(_coco_doc()).replace('"name": "door"', '"name": "do\\nor"'), "line break"),
    ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (json.dumps(_coco_doc()).replace('"id": 7', '"id": ' + "7" * 5000), "bad JSON"),
])
def test_coco_hostile_values_are_errors_naming_the_file(tmp_path, text, what):
    write_image(tmp_path / "a.jpg", 40, 30)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DarktuneError, match=what) as err:
        read_coco(path)
    assert str(err.value).startswith(f"{path}:")


def test_voc_unknown_encoding_and_line_break_in_a_name_are_named(tmp_path):
    write_image(tmp_path / "a.jpg", 40, 30)
    (tmp_path / "a.xml").write_text('<?xml version="1.0" encoding="klingon"?>' + VOC_OK)
    with pytest.raises(DarktuneError, match="bad XML: unknown encoding") as err:
        read_voc(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "a.xml"))
    (tmp_path / "a.xml").write_text(VOC_OK.replace("<name>window</name>", "<name>win\ndow</name>"))
    with pytest.raises(DarktuneError, match="line break") as err:
        read_voc(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "a.xml"))


def test_openimages_non_utf8_header_and_line_break_in_a_name_are_named(tmp_path):
    good = "000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,1,1,0,-1"
    b, d, i = _oi_files(tmp_path, [good])
    b.write_bytes(b"ImageID,Source\xe9,LabelName\n")
    with pytest.raises(DarktuneError, match="bad CSV") as err:
        read_openimages(b, d, i)
    assert str(err.value).startswith(f"{b}:")
    b, d, i = _oi_files(tmp_path, [good], desc='/m/0d4v4,"Win\ndow"\n')
    with pytest.raises(DarktuneError, match="line break") as err:
        read_openimages(b, d, i)
    assert str(err.value).startswith(f"{d}:")


def test_import_with_every_record_skipped_writes_nothing(tmp_path, capsys):
    from darktune.cli import main

    b, d, i = _oi_files(tmp_path, ["000a,x,/m/0d4v4,1,0.1,abc,0.2,0.6,0,0,0,0,0"])
    argv = ["data", "import", str(b), "--format", "openimages", "--descriptions", str(d), "--images", str(i),
            "--skip-bad", "--out"]
    assert main(argv + [str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no images left after skipping 1 bad record" in err and f"{b}:2:" in err  # the skipped line too
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty_out").mkdir()
    assert main(argv + [str(tmp_path / "empty_out")]) == 2 and not any((tmp_path / "empty_out").iterdir())
    with pytest.raises(DarktuneError, match="nothing to write"):
        write_darknet(Dataset(["window"], []), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_openimages_cli_takes_descriptions_and_images_from_beside_the_csv(tmp_path, capsys):
    """`data import boxes.csv` finds class-descriptions.csv and images/ beside the CSV (as Open Images
    downloads and `data synth domain` lay them out), says so, and names the CSV when either is missing."""
    from darktune.cli import main

    b, d, i = _oi_files(tmp_path, ["000a,x,/m/0d4v4,1,0.1,0.5,0.2,0.6,0,0,0,0,0"])
    argv = ["data", "import", str(b), "--out"]
    assert main(argv + [str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert str(b) in err and "--descriptions" in err and "class-descriptions.csv" in err
    d.rename(tmp_path / "class-descriptions.csv")
    assert main(argv + [str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert str(b) in err and "no images/ folder beside it" in err
    i.rename(tmp_path / "images")
    assert main(argv + [str(tmp_path / "o3")]) == 0
    err = capsys.readouterr().err
    assert f"class descriptions from {tmp_path / 'class-descriptions.csv'}" in err
    assert f"images from {tmp_path / 'images'}" in err
    assert read_obj_data(tmp_path / "o3" / "obj.data").names == ["Window"]
    (tmp_path / "class-descriptions-boxable.csv").write_text("/m/0d4v4,Window\n")  # two candidates: ambiguous
    assert main(argv + [str(tmp_path / "o4")]) == 2
    assert "several of" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o4").exists()
