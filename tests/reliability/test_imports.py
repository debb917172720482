"""Hostile or careless datasets through `darktune data import` and `data check` (issue 20): images that are links
to nothing, to themselves, to a device or to a folder; COCO file_name and VOC <filename> leading out of the
images folder; class names with control characters in every format; a label file of many bad lines; CSV cells
a spreadsheet would run. Each is refused naming the file (and line where there is one) or is a counted, named
skip; user files are never modified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from corpus import datasets
from corpus.harness import changed, snapshot
from reliability_table import tally  # noqa: F401 (fixture)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from darktune.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# -------------------------------------------------------------------------------------------- link images


LINKS = {"dangling": "/nonexistent/target.jpg", "loop": None, "dev_zero": "/dev/zero", "folder": "sub"}


def test_import_names_every_labelled_image_it_does_not_take(tmp_path, tally, capsys):
    """A YOLO folder with a good image and four links named like images, each with a label: import takes the
    good one and names and counts the four (dangling link, link loop, link to /dev/zero, link to a folder)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "obj.names").write_text("window\n")
    datasets.write_image(src / "good.jpg", 64, 48)
    (src / "good.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    for name, target in LINKS.items():
        link = src / f"{name}.jpg"
        os.symlink(target if target != "sub" else src / "sub", link) if target else os.symlink(link, link)
        (src / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    before = snapshot(src)
    rc, out, err = _run(["data", "import", str(src), "--out", str(tmp_path / "out"), "--json"], capsys)
    t = tally("import_skips")
    summary = json.loads(out) if rc == 0 else {}
    for name in LINKS:
        named = any(f"{name}.jpg" in line and "skipped" in line for line in err.splitlines())
        t.case(f"import:link_{name}", "handled" if rc == 0 and named else "silent", "" if named else "not named")
    t.modified += changed(before, snapshot(src))
    assert rc == 0 and summary["n_images"] == 1 and summary["n_skipped"] == len(LINKS), (rc, out, err)
    assert all(v[0] == "handled" for v in t.cases.values()) and not t.modified, t.cases


# ---------------------------------------------------------------------------------- paths outside the folder


def _outside_sets(tmp_path: Path) -> dict[str, Path]:
    """A COCO file and a VOC folder, each naming one image inside and one at ../../outside/secret.jpg."""
    datasets.write_image(tmp_path / "outside" / "secret.jpg", 64, 48)
    coco = tmp_path / "coco" / "deep" / "set"
    datasets.write_image(coco / "in.jpg", 64, 48)
    doc = {"images": [{"id": 1, "file_name": "in.jpg", "width": 64, "height": 48},
                      {"id": 2, "file_name": "../../../outside/secret.jpg", "width": 64, "height": 48}],
           "categories": [{"id": 1, "name": "window"}],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20]} for i in (1, 2)]}
    (coco / "annotations.json").write_text(json.dumps(doc))
    voc = tmp_path / "voc" / "deep" / "set"
    datasets.write_image(voc / "in.jpg", 64, 48)
    for stem, name in (("in", "in.jpg"), ("out", "../../../outside/secret.jpg")):
        (voc / f"{stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>64</width><height>48</height></size>"
            "<object><name>window</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>30</xmax><ymax>30</ymax>"
            "</bndbox></object></annotation>")
    return {"coco": coco / "annotations.json", "voc": voc}


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_annotation_paths_outside_the_dataset_need_an_explicit_flag(fmt, tmp_path, tally, capsys):
    """Without --allow-outside-images the outside image is a counted skip naming the entry and is not copied;
    with it, it is imported and a note counts the images read from outside."""
    src = _outside_sets(tmp_path)[fmt]
    before = snapshot(tmp_path / "outside")
    t = tally("import_skips")
    rc, out, err = _run(["data", "import", str(src), "--format", fmt, "--out", str(tmp_path / "no"), "--json"],
                        capsys)
    summary = json.loads(out) if rc == 0 else {}
    copied = [p.name for p in (tmp_path / "no").rglob("*secret*")]
    named = any("outside the images folder" in line and "secret.jpg" in line for line in err.splitlines())
    ok = rc == 0 and summary.get("n_images") == 1 and summary.get("n_skipped") == 1 and named and not copied
    t.case(f"import-{fmt}:file_name_outside", "handled" if ok else "silent", "" if ok else f"copied {copied}")
    rc, out, err = _run(["data", "import", str(src), "--format", fmt, "--out", str(tmp_path / "yes"),
                         "--allow-outside-images", "--json"], capsys)
    summary = json.loads(out) if rc == 0 else {}
    noted = "1 image read from outside the images folder" in err
    ok = rc == 0 and summary.get("n_images") == 2 and noted
    t.case(f"import-{fmt}:file_name_outside_allowed", "handled" if ok else "silent", "" if ok else "no note")
    t.modified += changed(before, snapshot(tmp_path / "outside"))
    assert all(v[0] == "handled" for v in t.cases.values()) and not t.modified, (t.cases, err)


# --------------------------------------------------------------------------------------------- class names


CONTROL_NAMES = {"nul": "car\x00evil", "esc": "car\x1b[2J\x1b[31mred", "csi8": "car\x9b31mred", "bel": "car\x07",
                 "tab": "car\tcat"}


def _names_source(kind: str, name: str, root: Path) -> tuple[list[str], str, int | None]:
    """(import arguments, file the refusal must name, its line or None) of a dataset whose class is `name`."""
    root.mkdir(parents=True)
    datasets.write_image(root / "a.jpg", 64, 48)
    if kind == "names_file":
        (root / "obj.names").write_text(f"window\n{name}\n", encoding="utf-8")
        (root / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        return [str(root)], str(root / "obj.names"), 2
    if kind == "coco":
        doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
               "categories": [{"id": 1, "name": name}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}]}
        (root / "a.json").write_text(json.dumps(doc))
        return [str(root / "a.json"), "--format", "coco"], str(root / "a.json"), None
    if kind == "voc":
        xml = ("<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size><object>"
               f"<name>{name}</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>"
               "</object></annotation>")
        (root / "a.xml").write_text(xml, encoding="utf-8")
        return [str(root / "a.xml"), "--format", "voc"], str(root / "a.xml"), None
    (root / "images").mkdir()
    os.replace(root / "a.jpg", root / "images" / "a.jpg")
    (root / "class-descriptions.csv").write_text(f"/m/1,window\n/m/2,\"{name}\"\n", encoding="utf-8")
    (root / "boxes.csv").write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
                                    "IsGroupOf,IsDepiction,IsInside\na,x,/m/2,1,0.1,0.5,0.1,0.5,0,0,0,0,0\n")
    return ([str(root / "boxes.csv"), "--format", "openimages", "--descriptions",
             str(root / "class-descriptions.csv"), "--images", str(root / "images")],
            str(root / "class-descriptions.csv"), 2)


@pytest.mark.parametrize("kind", ["names_file", "coco", "voc", "openimages"])
def test_class_names_with_control_characters_are_refused(kind, tmp_path, tally, capsys):
    """Each control name in each format: `data import` exits 2 with one line naming the file (and the line of
    names files and description CSVs); nothing is written. XML cannot hold NUL, ESC or BEL at all: its parser
    refuses those files, naming them, which counts the same."""
    t = tally("class_names")
    for label, name in CONTROL_NAMES.items():
        args, where, line = _names_source(kind, name, tmp_path / label)
        out = tmp_path / f"out-{label}"
        rc, _, err = _run(["data", "import", *args, "--out", str(out)], capsys)
        lines = [x for x in err.splitlines() if x.strip()]
        prefix = f"{where}:{line}:" if line else f"{where}:"
        ok = rc == 2 and len(lines) == 1 and prefix in lines[0] and not (out / "obj.names").exists()
        t.case(f"import-{kind}:{label}", "handled" if ok else "silent", "" if ok else f"exit {rc}: {lines[-1:]}")
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


# ------------------------------------------------------------------------------------------------- outputs


def test_check_listing_is_capped_per_file_and_json_is_complete(tmp_path, tally, capsys):
    """A label file of 200,000 bad lines: the text listing shows its first 20 problems and one line counting
    the rest; --json lists every one."""
    src = tmp_path / "set"
    src.mkdir()
    (src / "obj.names").write_text("window\n")
    datasets.write_image(src / "a.jpg", 64, 48)
    n = 200_000
    (src / "a.txt").write_text("bad line\n" * n)
    rc, out, _ = _run(["data", "check", str(src), "--no-cache"], capsys)
    text_lines = out.splitlines()
    rc_json, out_json, _ = _run(["data", "check", str(src), "--no-cache", "--json"], capsys)
    listed = sum(1 for r in json.loads(out_json) for p in r["problems"] if p["path"].endswith("a.txt"))
    counted = any(f"and {n - 20:,} more problems" in x for x in text_lines)
    ok = rc == rc_json == 1 and len(text_lines) < 40 and counted and listed == n
    outcome = ("handled", "") if ok else ("silent", f"{len(text_lines)} text lines, {listed} in JSON")
    assert tally("outputs").case("check:label_file_200k_bad_lines", *outcome) == "handled", outcome


FORMULAS = {"equals": "=cmd|' /C calc'!A0", "plus": "+1+1", "minus": "-2+3", "at": "@SUM(1)", "tab": "\t=1",
            "cr": "\r=1"}


@pytest.mark.parametrize("where", ["class_name", "label_name"])
def test_csv_cells_a_spreadsheet_would_run_are_refused(where, tmp_path, tally):
    """write_openimages (`data filter`/`import` to Open Images) refuses a class name or LabelName that a
    spreadsheet would run as a formula, naming the file; nothing is left in the output folder."""
    from darktune.data.dataset import Box, Dataset, ImageRecord
    from darktune.data.formats.openimages import write_openimages
    from darktune.errors import DarktuneError

    t = tally("outputs")
    image = datasets.write_image(tmp_path / "a.jpg", 64, 48)
    for label, cell in FORMULAS.items():
        name = cell if where == "class_name" else "window"
        if where == "class_name" and any(c in cell for c in "\t\r"):
            continue  # control characters: refused as class names already (test above)
        ds = Dataset([name], [ImageRecord(image, 64, 48, [Box(name, 0.1, 0.1, 0.5, 0.5)])], [])
        out = tmp_path / f"out-{where}-{label}"
        try:
            write_openimages(ds, out, label_names={name: cell} if where == "label_name" else None)
            outcome = ("silent", "written")
        except DarktuneError as exc:
            outcome = ("handled", "") if str(out) in str(exc) and "formula" in str(exc) else ("silent", str(exc))
        except Exception as exc:  # noqa: BLE001
            outcome = ("crash", type(exc).__name__)
        if out.exists() and any(out.rglob("*.csv")):
            outcome = ("silent", "a CSV was left behind")
        t.case(f"write_openimages-{where}:{label}", *outcome)
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases
