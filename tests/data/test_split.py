"""`data import --split-by`: the user's lists, a folder per split, whole sequences, the last frames (never a
video's neighbouring frames on both sides), and renamed images kept traceable in image_sources.tsv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus.datasets import write_image

from darktune.cli import main
from darktune.data.dataset import Dataset, ImageRecord
from darktune.data.split import SplitRule, split_dataset
from darktune.errors import DarktuneError


def _frames(tmp_path: Path, layout: dict[str, int]) -> Dataset:
    """A Dataset of `n` frames per folder (frame_1.jpg, ..., frame_n.jpg: natural order differs from text order)."""
    records = []
    for folder, n in layout.items():
        for k in range(1, n + 1):
            path = tmp_path / folder / f"frame_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            records.append(ImageRecord(path))
    return Dataset(["a"], records)


def _names(ds, idx):
    return [str(Path(ds.images[i].path).relative_to(Path(ds.images[0].path).parent.parent)) for i in idx]


def test_sequence_keeps_each_sequence_on_one_side(tmp_path):
    ds = _frames(tmp_path, {"s1": 10, "s2": 10, "s3": 10, "s4": 10})
    split = split_dataset(ds, SplitRule("sequence", 0.25, seed=3))
    sides = {}
    for side, idx in (("train", split.train), ("valid", split.valid)):
        for i in idx:
            sides.setdefault(Path(ds.images[i].path).parent.name, set()).add(side)
    assert all(len(s) == 1 for s in sides.values()) and len(split.valid) == 10 and len(split.train) == 30
    assert split_dataset(ds, SplitRule("sequence", 0.25, seed=3)).valid == split.valid  # seeded
    with pytest.raises(DarktuneError, match="one: use --split-by last"):
        split_dataset(_frames(tmp_path / "one", {"s": 5}), SplitRule("sequence"))


def test_last_takes_the_last_frames_of_each_sequence_in_frame_order(tmp_path):
    ds = _frames(tmp_path, {"s1": 12, "s2": 3})
    split = split_dataset(ds, SplitRule("last", 0.25))
    assert _names(ds, split.valid) == ["s1/frame_10.jpg", "s1/frame_11.jpg", "s1/frame_12.jpg", "s2/frame_3.jpg"]
    split = split_dataset(ds, SplitRule("last", val_count=5))
    assert len(split.valid) == 5 + 2 and "s2/frame_1.jpg" in _names(ds, split.train)  # never a whole sequence


def test_folders(tmp_path):
    ds = _frames(tmp_path, {"data/train/a": 3, "data/valid": 2, "data/val/x": 1})
    split = split_dataset(ds, SplitRule("folders"))
    assert (len(split.train), len(split.valid)) == (3, 3)
    bad = _frames(tmp_path / "b", {"train": 1, "other": 1})
    with pytest.raises(DarktuneError, match="other/frame_1.jpg: not under a folder named train/training"):
        split_dataset(bad, SplitRule("folders"))


def test_lists_by_path_and_by_name(tmp_path):
    ds = _frames(tmp_path, {"s1": 3, "s2": 3})
    (tmp_path / "valid.txt").write_text("s1/frame_3.jpg\n# a comment\n\n" + str(tmp_path / "s2" / "frame_3.jpg") + "\n")
    split = split_dataset(ds, SplitRule("lists", valid_list=str(tmp_path / "valid.txt")))
    assert _names(ds, split.valid) == ["s1/frame_3.jpg", "s2/frame_3.jpg"] and len(split.train) == 4
    (tmp_path / "train.txt").write_text("s1/frame_1.jpg\ns2/frame_1.jpg\n")
    split = split_dataset(ds, SplitRule("lists", valid_list=str(tmp_path / "valid.txt"),
                                        train_list=str(tmp_path / "train.txt")))
    assert len(split.train) == 2 and len(split.left_out) == 2
    (tmp_path / "bad.txt").write_text("s1/frame_1.jpg\nframe_2.jpg\n")
    with pytest.raises(DarktuneError, match=r"bad.txt:2: 'frame_2.jpg' names 2 images"):
        split_dataset(ds, SplitRule("lists", valid_list=str(tmp_path / "bad.txt")))
    (tmp_path / "bad.txt").write_text("nothing.jpg\n")
    with pytest.raises(DarktuneError, match=r"bad.txt:1: 'nothing.jpg' is not an image of this data set"):
        split_dataset(ds, SplitRule("lists", valid_list=str(tmp_path / "bad.txt")))
    with pytest.raises(DarktuneError, match="in both lists"):
        split_dataset(ds, SplitRule("lists", valid_list=str(tmp_path / "train.txt"),
                                    train_list=str(tmp_path / "train.txt")))


@pytest.mark.parametrize("rule, match", [
    (dict(mode="lists"), "needs --valid-list"),
    (dict(mode="random", valid_list="v.txt"), "go with --split-by lists"),
    (dict(mode="random", val_count=3), "goes with --split-by last"),
    (dict(mode="shuffle"), "--split-by must be one of"),
])
def test_rule_is_checked(rule, match):
    with pytest.raises(DarktuneError, match=match):
        SplitRule(**rule)


def _yolo_folders(tmp_path: Path) -> list[str]:
    """Two labelled folders whose images share file names (as two cameras' frame_1.jpg ...)."""
    srcs = []
    for cam in ("cam_a", "cam_b"):
        folder = tmp_path / cam
        for k in (1, 2, 3):
            write_image(folder / f"frame_{k}.jpg", 64, 48)
            (folder / f"frame_{k}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (folder / "obj.names").write_text("dot\n")
        srcs.append(str(folder))
    return srcs


def test_import_renames_with_a_mapping_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "import", *_yolo_folders(tmp_path), "--out", str(out), "--split-by", "sequence",
                 "--val-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "3 images renamed (the same file name in several folders" in printed
    assert f"every image's source: {out / 'image_sources.tsv'}" in printed and "split by sequence" in printed
    rows = [line.split("\t") for line in (out / "image_sources.tsv").read_text().splitlines()]
    assert rows[0] == ["image", "source"] and len(rows) == 7
    mapping = dict(rows[1:])
    assert mapping["images/frame_1_1.jpg"] == str(tmp_path / "cam_b" / "frame_1.jpg")
    for image, source in mapping.items():  # the written image is its source, byte for byte
        assert (out / image).read_bytes() == Path(source).read_bytes()


def test_import_with_lists_leaves_out_what_neither_names(tmp_path, capsys):
    srcs = _yolo_folders(tmp_path)
    (tmp_path / "v.txt").write_text(str(tmp_path / "cam_a" / "frame_3.jpg") + "\n")
    (tmp_path / "t.txt").write_text(str(tmp_path / "cam_a" / "frame_1.jpg") + "\n"
                                    + str(tmp_path / "cam_b" / "frame_1.jpg") + "\n")
    assert main(["data", "import", *srcs, "--out", str(tmp_path / "out"), "--split-by", "lists",
                 "--valid-list", str(tmp_path / "v.txt"), "--train-list", str(tmp_path / "t.txt"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n_train"], summary["n_valid"], summary["n_left_out_by_lists"]) == (2, 1, 3)
    assert len((tmp_path / "out" / "image_sources.tsv").read_text().splitlines()) == 4
    assert main(["data", "import", *srcs, "--out", str(tmp_path / "out2"), "--valid-list", "v.txt"]) == 2
    assert "go with --split-by lists" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
