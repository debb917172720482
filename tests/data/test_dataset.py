"""The in-memory dataset and its CLI loading (darktune/data/dataset.py, cli/data.load_sources): --classes matches
names exactly (Cat, cat and CAT are three classes) and counts what it removes; records of one image file, from
several sources or listed twice in one, become one image with the union of their boxes, so the train/valid split
cannot put one picture in both; a YAML data file where obj.data is expected is named as Ultralytics data.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from corpus.datasets import write_image

from darktune.data.dataset import Box, Dataset, image_identity, ImageRecord
from darktune.data.formats.yolo import read_obj_data, write_darknet
from darktune.data.formats.yolo import read_yolo
from darktune.data.merge import merge_datasets
from darktune.errors import DarktuneError


@pytest.fixture(autouse=True)
def darktune_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DARKTUNE_HOME", str(tmp_path / "home"))


def labels_of(obj_data: Path) -> dict[str, list[str]]:
    """Image file name -> label lines of a written darknet dataset."""
    return {p.with_suffix(p.suffix).name: p.with_suffix(".txt").read_text().splitlines()
            for p in (obj_data.parent / "images").iterdir() if p.suffix != ".txt"}


# ------------------------------------------------------------------------------------------- --classes


def _case_classes() -> Dataset:
    boxes = [Box("Cat", 0.1, 0.1, 0.3, 0.3), Box("cat", 0.4, 0.5, 0.6, 0.75), Box("CAT", 0.05, 0.6, 0.2, 0.9)]
    return Dataset(["Cat", "cat", "CAT"], [ImageRecord(Path("v1.jpg"), 100, 80, boxes)])


def test_select_classes_matches_exactly():
    ds = _case_classes()
    only = ds.select_classes(["cat"])
    assert only.classes == ["cat"] and only.images[0].boxes == [ds.images[0].boxes[1]]
    assert ds.select_classes(["CAT"]).images[0].boxes == [ds.images[0].boxes[2]]
    assert ds.select_classes(["CAT", "Cat"]).n_boxes == 2


def test_select_classes_suggests_the_exact_spellings_of_a_name_in_another_case():
    with pytest.raises(DarktuneError, match=r"class 'cAt' not found \(class names are matched exactly, case "
                                            r"included\); did you mean 'Cat', 'cat' or 'CAT'\?"):
        _case_classes().select_classes(["cAt"])
    ds = Dataset(["Window", "Door"], [])
    with pytest.raises(DarktuneError, match="did you mean 'Window'"):
        ds.select_classes(["window"])
    with pytest.raises(DarktuneError, match="class 'cat' not found; the dataset has 'Window', 'Door'"):
        ds.select_classes(["cat"])


VOC_CASES = ("<annotation><filename>v1.jpg</filename><size><width>100</width><height>80</height></size>"
             + "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                       f"<ymax>{b[3]}</ymax></bndbox></object>"
                       for n, b in (("Cat", (10, 10, 30, 30)), ("cat", (40, 40, 60, 60)), ("CAT", (5, 50, 20, 70))))
             + "</annotation>")


def test_cli_classes_keeps_the_exact_case_box_and_counts_the_removed_boxes(tmp_path, capsys):
    """QA3: `--classes cat` over Cat/cat/CAT kept the CAT box and silently dropped the cat one."""
    from darktune.cli import main

    src = tmp_path / "voc"
    write_image(src / "v1.jpg", 100, 80)
    (src / "v1.xml").write_text(VOC_CASES)
    rc = main(["data", "import", str(src), "--format", "voc", "--classes", "cat", "--out", str(tmp_path / "o1"),
               "--val-fraction", "0", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_boxes"] == 1 and doc["n_boxes_removed_by_classes"] == 2 and doc["n_images_removed_by_classes"] == 0
    # the box of `cat`, x 40..60 of 100 and y 40..60 of 80 (to a pixel: the VOC reader owns the convention);
    # Cat is at x 10..30, CAT at x 5..20
    (line,) = labels_of(Path(doc["obj_data"]))["v1.jpg"]
    cls, cx, cy, _, _ = (float(v) for v in line.split())
    assert cls == 0 and cx == pytest.approx(0.5, abs=0.02) and cy == pytest.approx(0.625, abs=0.02)
    rc = main(["data", "import", str(src), "--format", "voc", "--classes", "Cat", "--out", str(tmp_path / "o2")])
    assert rc == 0 and "--classes removed 2 boxes of other classes" in capsys.readouterr().out
    rc = main(["data", "import", str(src), "--format", "voc", "--classes", "cAt", "--out", str(tmp_path / "o3")])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean 'Cat', 'cat' or 'CAT'?" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o3").exists()


# ----------------------------------------------------------------------------------- merging one image


def _coco_part(folder: Path, name: str, cat: str, boxes: dict[str, list[float]], sizes: dict[str, tuple]) -> Path:
    files = list(boxes)
    doc = {"images": [{"id": i + 1, "file_name": f, "width": sizes[f][0], "height": sizes[f][1]}
                      for i, f in enumerate(files)],
           "categories": [{"id": 1, "name": cat}],
           "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": boxes[f]}
                           for i, f in enumerate(files)]}
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def test_cli_import_merges_two_sources_over_the_same_images(tmp_path, capsys):
    """QA3: part0.json labels the cats, part1.json the dogs of the same two images: 4 copies were written, each
    with an unlabelled object, and copies of one picture could land in train and in valid."""
    from darktune.cli import main

    imgs = tmp_path / "imgs"
    sizes = {"neg.jpg": (64, 48), "sub/a.jpg": (64, 64)}
    for f, (w, h) in sizes.items():
        write_image(imgs / f, w, h)
    p0 = _coco_part(tmp_path, "part0.json", "cat", {"neg.jpg": [1, 2, 10, 10], "sub/a.jpg": [1, 2, 10, 10]}, sizes)
    p1 = _coco_part(tmp_path, "part1.json", "dog", {"neg.jpg": [20, 20, 10, 10], "sub/a.jpg": [20, 20, 10, 10]},
                    sizes)
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        rc = main(["data", "import", str(p0), str(p1), "--images", str(imgs), "--out", str(out),
                   "--val-fraction", "0.5", "--seed", str(seed)])
        assert rc == 0
        text = capsys.readouterr().out
        assert "2 images listed more than once were merged (4 records -> 2" in text
        assert "2 images (1 train, 1 valid), 4 boxes" in text
        train = (out / "train.txt").read_text().split()
        valid = (out / "valid.txt").read_text().split()
        assert sorted(Path(p).name for p in train + valid) == ["a.jpg", "neg.jpg"]  # one copy of each picture
        assert {len(lines) for lines in labels_of(out / "obj.data").values()} == {2}  # a cat and a dog each
    rc = main(["data", "import", str(p0), str(p1), "--images", str(imgs), "--out", str(tmp_path / "j"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert (doc["n_images_merged"], doc["n_records_merged"], doc["n_duplicate_boxes_dropped"]) == (2, 2, 0)


def test_one_source_listing_a_file_twice_is_one_image_and_identical_boxes_count_once(tmp_path, capsys):
    from darktune.cli import main

    write_image(tmp_path / "neg.jpg", 64, 48)
    doc = {"images": [{"id": 1, "file_name": "neg.jpg", "width": 64, "height": 48},
                      {"id": 2, "file_name": "./neg.jpg", "width": 64, "height": 48}],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]},
                           {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 2, 10, 10]},
                           {"id": 3, "image_id": 2, "category_id": 1, "bbox": [30, 20, 10, 10]}]}
    (tmp_path / "twice.json").write_text(json.dumps(doc))
    rc = main(["data", "import", str(tmp_path / "twice.json"), "--out", str(tmp_path / "out"), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_images"] == 1 and doc["n_boxes"] == 2 and doc["n_duplicate_boxes_dropped"] == 1
    assert doc["n_images_merged"] == 1 and doc["n_train"] + doc["n_valid"] == 1


def test_merge_datasets_by_file_not_by_spelling(tmp_path):
    a = write_image(tmp_path / "a.jpg", 40, 30)
    os.symlink(a, tmp_path / "link.jpg")
    (tmp_path / "sub").mkdir()
    cat, dog = Box("cat", 0.1, 0.1, 0.2, 0.2), Box("dog", 0.5, 0.5, 0.7, 0.7)
    parts = [Dataset(["cat"], [ImageRecord(a, 40, 30, [cat])]),
             Dataset(["dog"], [ImageRecord(tmp_path / "link.jpg", None, None, [dog]),  # a symlink to a.jpg
                               ImageRecord(tmp_path / "sub" / ".." / "a.jpg", 40, 30, [cat])])]
    merged, counts = merge_datasets(parts)
    assert merged.classes == ["cat", "dog"] and len(merged.images) == 1
    assert [b.class_name for b in merged.images[0].boxes] == ["cat", "dog"] and merged.images[0].width == 40
    assert (counts.images, counts.records, counts.boxes) == (1, 2, 1)
    assert counts.message() == ("1 image listed more than once was merged (3 records -> 1, each with the union of "
                                "its boxes; 1 identical box dropped)")
    assert parts[0].images[0].boxes == [Box("cat", 0.1, 0.1, 0.2, 0.2)]  # the inputs are not changed
    assert image_identity(tmp_path / "missing.jpg") == image_identity(tmp_path / "sub" / ".." / "missing.jpg")


def test_merge_refuses_copies_of_one_image_with_different_sizes(tmp_path):
    a = write_image(tmp_path / "a.jpg", 40, 30)
    parts = [Dataset(["cat"], [ImageRecord(a, 40, 30, [Box("cat", 0.1, 0.1, 0.2, 0.2)])]),
             Dataset(["cat"], [ImageRecord(a, 80, 60, [Box("cat", 0.3, 0.1, 0.4, 0.2)])])]
    with pytest.raises(DarktuneError, match=r"a.jpg: listed more than once with different sizes \(40x30 and 80x60\)"):
        merge_datasets(parts)
    merged, counts = merge_datasets(parts, skip_bad=True)
    assert merged.images == [] and len(merged.skipped) == 1 and "image skipped" in merged.skipped[0].reason
    assert counts.images == 0


def test_write_darknet_refuses_one_picture_listed_twice(tmp_path):
    """The split works on records: two records of one file could put one picture in train and in valid."""
    a = write_image(tmp_path / "a.jpg", 40, 30)
    b = write_image(tmp_path / "b.jpg", 40, 30)
    ds = Dataset(["cat"], [ImageRecord(a, boxes=[Box("cat", 0.1, 0.1, 0.2, 0.2)]), ImageRecord(b),
                           ImageRecord(tmp_path / "." / "a.jpg", boxes=[Box("cat", 0.5, 0.5, 0.6, 0.6)])])
    with pytest.raises(DarktuneError, match="a.jpg: image listed more than once"):
        write_darknet(ds, tmp_path / "out", val_fraction=0.5)
    assert not (tmp_path / "out").exists()
    merged, _ = merge_datasets([ds])
    obj = write_darknet(merged, tmp_path / "out", val_fraction=0.5)
    back = read_yolo(obj)
    assert len(back.images) == 2 and back.n_boxes == 2


# ---------------------------------------------------------------------------------------- messages


def test_ultralytics_data_yaml_is_named_not_misread(tmp_path, capsys):
    from darktune.cli import main

    (tmp_path / "data.yaml").write_text("# from ultralytics\npath: ../ds\ntrain: images/train\nnames:\n  0: a\n")
    with pytest.raises(DarktuneError, match=r"data.yaml:2: 'path: ../ds' looks like an Ultralytics data.yaml, "
                                            r"which is not supported.*darktune data import"):
        read_obj_data(tmp_path / "data.yaml")
    for cmd in (["check"], ["stats"], ["import", "--out", str(tmp_path / "o")]):
        assert main(["data", cmd[0], str(tmp_path / "data.yaml"), *cmd[1:]]) == 2
        err = capsys.readouterr().err
        assert "Ultralytics data.yaml" in err and "expected 'key = value'" not in err
        assert len(err.strip().splitlines()) == 1
    (tmp_path / "bad.data").write_text("classes 2\n")
    with pytest.raises(DarktuneError, match="expected 'key = value'"):
        read_obj_data(tmp_path / "bad.data")


def test_import_with_one_record_skipped_says_record_in_the_singular(tmp_path, capsys):
    from darktune.cli import main

    src = tmp_path / "src"
    write_image(src / "a.jpg", 40, 30)
    (src / "a.txt").write_text("0 0.5 0.5 2 0.1\n")
    (src / "obj.names").write_text("cat\n")
    assert main(["data", "import", str(src), "--skip-bad", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no images left after skipping 1 bad record; nothing written" in err
    assert not (tmp_path / "out").exists()
