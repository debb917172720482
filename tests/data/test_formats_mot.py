"""MOT tracking ground truth read by `data import` (`darktune.data.formats.mot`): the real MOT17 frames of
tests/data/mot17_mini (ignore flag and classes honoured, boxes clipped at the frame edge, 1-based pixels), and
bad rows named by gt.txt and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from corpus.datasets import write_image

from darktune.cli import main
from darktune.data.formats.mot import MOT_CLASSES, parse_gt_row, read_mot
from darktune.errors import DarktuneError

MOT = Path(__file__).parent / "mot17_mini"


def test_real_mot17_frames():
    ds = read_mot(MOT)
    rows = [line.split(",") for seq in sorted(MOT.iterdir()) if seq.is_dir()
            for line in (seq / "gt" / "gt.txt").read_text().splitlines()]
    considered = sum(r[6] == "1" for r in rows)
    assert ds.classes == ["pedestrian"] and len(ds.images) == 8
    assert [p.parent.parent.name + "/" + p.name for p in (r.path for r in ds.images)][:5] == [
        "MOT17-02-FRCNN/000001.jpg", "MOT17-02-FRCNN/000002.jpg", "MOT17-02-FRCNN/000003.jpg",
        "MOT17-02-FRCNN/000004.jpg", "MOT17-04-FRCNN/000001.jpg"]
    ignored = sum(int(p.reason.split()[0]) for p in ds.notes if "not considered" in p.reason)
    dropped = sum("mostly outside" in p.reason for p in ds.notes)
    assert ignored == len(rows) - considered == 296
    assert ds.n_boxes == considered - dropped and dropped == 4
    assert all((r.width, r.height) == (640, 360) for r in ds.images)


def _sequence(tmp_path: Path, rows: str, *, seqinfo: bool = True, gt_beside: bool = False) -> Path:
    seq = tmp_path / "SEQ-01"
    for frame in (1, 2):
        write_image(seq / "img1" / f"{frame:06d}.jpg", 100, 50)
    gt = seq / "gt.txt" if gt_beside else seq / "gt" / "gt.txt"
    gt.parent.mkdir(parents=True, exist_ok=True)
    gt.write_text(rows)
    if seqinfo:
        (seq / "seqinfo.ini").write_text("[Sequence]\nname=SEQ-01\nimDir=img1\nimExt=.jpg\nimWidth=100\n"
                                         "imHeight=50\n")
    return seq


def test_columns_one_based_pixels_classes_and_ignore_flag(tmp_path):
    seq = _sequence(tmp_path, "1,1,11,6,20,10,1,1,1.0\n1,2,31,6,20,10,0,7,0.5\n2,1,51,21,10,10,1,3,0.25\n")
    ds = read_mot(seq)
    assert ds.classes == ["pedestrian", "car"]
    box = ds.images[0].boxes[0]
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((0.10, 0.10, 0.30, 0.30))  # left 11 -> pixel 10
    assert [b.class_name for b in ds.images[1].boxes] == ["car"]
    assert [p.reason for p in ds.notes] == ["1 row flagged not considered (MOT's ignore flag, column 7 = 0) not "
                                            "imported"]


def test_gt_beside_img1_no_seqinfo_and_short_rows(tmp_path):
    seq = _sequence(tmp_path, "1,1,11,6,20,10\n2,1,11,6,20,10,1,2\n", seqinfo=False, gt_beside=True)
    ds = read_mot(tmp_path)  # a folder of sequences
    assert ds.classes == ["pedestrian", "person_on_vehicle"] and (ds.images[0].width, ds.images[0].height) == (100, 50)
    assert len(list(seq.rglob("*.jpg"))) == 2


def test_rows_of_frames_without_an_image_are_counted(tmp_path):
    ds = read_mot(_sequence(tmp_path, "1,1,11,6,20,10,1,1,1\n7,1,11,6,20,10,1,1,1\n7,2,11,6,20,10,1,1,1\n"))
    assert len(ds.images) == 2 and any("2 rows of 1 frame with no image" in p.reason for p in ds.notes)


@pytest.mark.parametrize("row, match", [
    ("1,1,11,6,20", "expected 9 comma-separated fields"),
    ("0,1,11,6,20,10,1,1,1", "frame 0 is below 1"),
    ("x,1,11,6,20,10,1,1,1", "frame 'x' is not a number"),
    ("1.5,1,11,6,20,10,1,1,1", "frame '1.5' is not a whole number"),
    ("1,1,11,6,-20,10,1,1,1", "width and height must be positive"),
    ("1,1,11,nan,20,10,1,1,1", "top 'nan' is not a finite number"),
    ("1,1,11,6,20,10,2,1,1", "considered flag must be 0 or 1"),
    ("1,1,11,6,20,10,1,14,1", "class 14 is not a MOT class"),
    ("1,1,11,6,20,10,1,1,1.5", r"visibility 1.5 not in \[0, 1\]"),
    ("1,1,500,6,20,10,1,1,1", "outside the image, not only past its edge"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, row, match):
    seq = _sequence(tmp_path, f"1,1,11,6,20,10,1,1,1\n\n{row}\n")
    with pytest.raises(DarktuneError, match=rf"gt.txt:3: .*{match}"):
        read_mot(seq)
    ds = read_mot(seq, skip_bad=True)  # the bad row's frame is skipped and counted
    assert [p.line for p in ds.dropped] == [3] and len(ds.images) == (2 if row.startswith(("x", "1.5", "0,")) else 1)


def test_parse_row_defaults_and_mot15():
    assert parse_gt_row("3,1,1,2,3,4") == (3, True, "pedestrian", (1, 2, 3, 4))
    assert parse_gt_row("3,1,1,2,3,4,1,-1,-1,-1")[1:3] == (True, "pedestrian")  # MOT15: conf, x, y, z
    assert parse_gt_row("3,1,1,2,3,4,0,12,0.0")[1:3] == (False, "reflection")
    assert set(MOT_CLASSES) == set(range(1, 14))


def test_not_a_sequence_and_bad_seqinfo(tmp_path):
    with pytest.raises(DarktuneError, match="no MOT sequence here"):
        read_mot(tmp_path)
    seq = _sequence(tmp_path, "1,1,11,6,20,10,1,1,1\n")
    (seq / "seqinfo.ini").write_text("imWidth=100\n")
    with pytest.raises(DarktuneError, match="seqinfo.ini: not a valid seqinfo.ini"):
        read_mot(seq)


def test_import_guesses_mot_and_splits_by_sequence(tmp_path, capsys):
    shutil.copytree(MOT, tmp_path / "mot")
    assert main(["data", "import", str(tmp_path / "mot"), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"].startswith("by sequence") and (summary["n_train"], summary["n_valid"]) == (4, 4)
    valid = (tmp_path / "out" / "valid.txt").read_text().split()
    sources = dict(line.split("\t") for line in (tmp_path / "out" / "image_sources.tsv").read_text().splitlines()[1:])
    seqs = {Path(sources["images/" + Path(v).name]).parent.parent.name for v in valid}
    assert len(seqs) == 1  # one whole sequence in valid: no neighbouring frames on both sides
    assert summary["n_renamed"] == 4 and summary["n_boxes_dropped_at_edge"] == 4
