"""Tests of darktune/data/formats/files.py: only regular files are read (size-capped, a FIFO never blocks),
and a writer that fails leaves its output folder as it found it, with a DarktuneError naming the file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.formats.yolo import read_obj_data, write_darknet
from darktune.files import copy_file, open_regular, output_folder, read_regular
from darktune.errors import DarktuneError


@pytest.mark.parametrize("kind, reason", [
    ("fifo", "not a regular file"), ("zero", "not a regular file"), ("folder", "is a folder"),
    ("missing", "not found"), ("big", "larger than 10"),
])
def test_only_regular_files_are_read(tmp_path, kind, reason):
    path = tmp_path / "data.txt"
    {"fifo": lambda: os.mkfifo(path), "zero": lambda: path.symlink_to("/dev/zero"), "folder": path.mkdir,
     "missing": lambda: None, "big": lambda: path.write_bytes(b"x" * 11)}[kind]()
    with pytest.raises(DarktuneError, match=reason) as err:  # a FIFO without a writer would block a plain open
        read_regular(path, "list file", 10)
    assert str(err.value).startswith(f"{path}: list file")
    if kind != "big":  # no size cap: the same refusals, the file never opened for reading
        with pytest.raises(DarktuneError, match=reason):
            open_regular(path, "list file").close()


def test_regular_file_and_symlink_to_one_are_read(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    assert read_regular(tmp_path / "a.txt", "file", 3) == b"abc" == read_regular(tmp_path / "link.txt", "file", 3)


def test_obj_data_and_lists_that_are_devices_are_refused(tmp_path):
    (tmp_path / "obj.names").write_text("window\n")
    (tmp_path / "train.txt").symlink_to("/dev/zero")
    (tmp_path / "obj.data").write_text("classes=1\ntrain=train.txt\nnames=obj.names\n")
    with pytest.raises(DarktuneError, match="train.txt: image list is not a regular file"):
        read_obj_data(tmp_path / "obj.data")
    (tmp_path / "x.data").symlink_to("/dev/zero")
    with pytest.raises(DarktuneError, match="x.data: obj.data is not a regular file"):
        read_obj_data(tmp_path / "x.data")


def test_output_folder_removes_what_a_failed_writer_wrote(tmp_path):
    with pytest.raises(DarktuneError, match="no space left|No space left"):
        with output_folder(tmp_path / "new") as out:
            (out / "sub").mkdir()
            (out / "sub" / "a.txt").write_text("x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "sub" / "b.txt"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with output_folder(tmp_path / "empty") as out:
            (out / "a.txt").write_text("x")
            raise KeyboardInterrupt
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    (tmp_path / "empty" / "user.txt").write_text("mine")
    with pytest.raises(DarktuneError, match="not empty"):
        with output_folder(tmp_path / "empty"):
            pass
    assert (tmp_path / "empty" / "user.txt").read_text() == "mine"


def _dataset(tmp_path: Path, n: int = 3) -> Dataset:
    recs = []
    for i in range(n):
        path = tmp_path / "src" / f"im{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((20, 30, 3), 40 * i, np.uint8))
        recs.append(ImageRecord(path, None, None, [Box("window", 0.1, 0.1, 0.5, 0.6)]))
    return Dataset(["window"], recs)


def test_write_darknet_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "obj.names":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DarktuneError) as err:
        write_darknet(ds, tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith(str((tmp_path / "out" / "obj.names").resolve())) and "disk may be full" in msg
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    assert read_obj_data(write_darknet(ds, tmp_path / "out")).train  # the same call works with room


def test_copy_refuses_a_device_posing_as_an_image(tmp_path):
    (tmp_path / "a.jpg").symlink_to("/dev/zero")
    with pytest.raises(DarktuneError, match="a.jpg: image is not a regular file"):
        copy_file(tmp_path / "a.jpg", tmp_path / "b.jpg", link=True)
    assert not (tmp_path / "b.jpg").exists()
    ds = Dataset(["window"], [ImageRecord(tmp_path / "a.jpg", 10, 10, [])])
    with pytest.raises(DarktuneError, match="not a regular file"):
        write_darknet(ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()
