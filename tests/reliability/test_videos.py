"""Videos and other frame sources through `darktune detect`: the rules of image files hold for every source.

A truncated or damaged video that gives fewer frames than its header says is reported with its name and the
count (exit 1), never taken for a short clip; a FIFO, a device or a folder named like a video is refused
without being opened (a FIFO would block the decoder forever, and every source after it would never run); a
video whose frames pass the 100 MP guard of images is refused before a frame is decoded. All the cases run in
one `darktune detect` (a subprocess with a deadline, so a hang is counted, not waited for), followed by a good
image that must still be detected.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from corpus import datasets
from corpus.harness import changed, snapshot
from reliability_table import tally  # noqa: F401 (fixture)

FRAMES = 24
W, H = 64, 48


def _clip(path: Path, fourcc: str = "MJPG", frames: int = FRAMES) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
    for i in range(frames):
        writer.write(datasets.box_image(i, H, W)[0])
    writer.release()
    return path.read_bytes()


def _big_header(avi: bytes, width: int, height: int) -> bytes:
    """An MJPEG AVI whose headers (avih, strf) and every frame's SOF say width x height."""
    b = bytearray(avi)
    i = b.find(b"avih")
    struct.pack_into("<II", b, i + 8 + 32, width, height)
    i = b.find(b"strf")
    struct.pack_into("<ii", b, i + 8 + 4, width, height)
    i = 0
    while (i := b.find(b"\xff\xc0", i + 1)) >= 0:
        struct.pack_into(">HH", b, i + 5, height, width)
    return bytes(b)


def _damaged_middle(avi: bytes) -> bytes:
    """The frames' chunks after the first third overwritten by zeros (the index kept): frames the header
    counts that no decoder can give."""
    b = bytearray(avi)
    start, end = len(b) // 3, b.rfind(b"idx1")
    b[start:end] = bytes(end - start)
    return bytes(b)


def _cases(root: Path) -> dict[str, Path]:
    """case name -> the source path given to detect; each is a bad source that must be refused or reported."""
    folder = root / "sources"
    folder.mkdir()
    avi = _clip(root / "good.avi")
    mp4 = _clip(root / "good.mp4", "mp4v")
    made = {}
    for pct in (30, 60, 90):
        made[f"mjpeg-cut-{pct}pct"] = (folder / f"cut{pct}.avi", avi[: len(avi) * pct // 100])
    made["mp4-cut-70pct"] = (folder / "cut70.mp4", mp4[: len(mp4) * 70 // 100])
    made["mjpeg-zeroed-middle"] = (folder / "zeroed.avi", _damaged_middle(avi))
    made["mjpeg-16000x16000"] = (folder / "bomb.avi", _big_header(avi, 16000, 16000))
    made["mjpeg-12000x9000"] = (folder / "bomb2.avi", _big_header(avi, 12000, 9000))
    made["empty-mp4"] = (folder / "empty.mp4", b"")
    made["random-bytes-mkv"] = (folder / "noise.mkv", np.random.default_rng(0).bytes(5000))
    out = {}
    for name, (path, data) in made.items():
        path.write_bytes(data)
        out[name] = path
    os.mkfifo(folder / "fifo.mp4")
    out["fifo-as-video"] = folder / "fifo.mp4"
    os.mkfifo(folder / "pipe.dat")
    out["fifo-no-suffix"] = folder / "pipe.dat"
    (folder / "zero.avi").symlink_to("/dev/zero")
    out["dev-zero-link-as-video"] = folder / "zero.avi"
    (folder / "dir.mp4").mkdir()
    out["folder-named-mp4"] = folder / "dir.mp4"
    return out


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    """Every case, then a good image, in one `darktune detect --json` with a deadline; and the folder holding
    a FIFO, a folder and a truncated clip given as a folder source."""
    root = tmp_path_factory.mktemp("videos")
    cases = _cases(root)
    cfg = datasets.write_tiny_cfg(root / "tiny.cfg")
    weights = datasets.random_weights(cfg, root / "tiny.weights")
    photo = root / "photo.jpg"
    cv2.imwrite(str(photo), datasets.box_image(99)[0])
    scan = root / "scan"
    scan.mkdir()
    os.mkfifo(scan / "live.mp4")
    (scan / "cut.avi").write_bytes(cases["mjpeg-cut-60pct"].read_bytes())
    (scan / "still.jpg").write_bytes(photo.read_bytes())
    before = snapshot(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DARKTUNE_BACKEND": "torch"}
    base = [sys.executable, "-m", "darktune", "detect", "--cfg", str(cfg), "--weights", str(weights), "--json",
            "--workers", "1"]
    runs = {}
    for key, sources in (("files", [*map(str, cases.values()), str(photo)]), ("folder", [str(scan)])):
        try:
            proc = subprocess.run(base + ["--", *sources], capture_output=True, text=True, timeout=120, env=env)
            runs[key] = (proc.returncode, proc.stdout, proc.stderr)
        except subprocess.TimeoutExpired:
            runs[key] = (None, "", "")
    return cases, photo, runs, changed(before, snapshot(root)), scan


def _outcome(rc, stdout: str, stderr: str, path: Path) -> tuple[str, str]:
    if rc is None:
        return "crash", "hang: detect did not end in 120 s"
    if "Traceback" in stderr:
        return "crash", stderr.strip().splitlines()[-1][:120]
    named = [line for line in stderr.splitlines() if line.startswith("darktune: error:") and str(path) in line]
    if rc == 1 and named:
        return "handled", ""
    frames = sum(1 for r in json.loads(stdout or "[]") if r.get("video") == str(path))
    return "silent", f"exit {rc}, {frames} frames, no error naming it"


def test_every_bad_source_is_refused_or_its_shortfall_reported(detect_run, tally):
    cases, photo, runs, modified, _ = detect_run
    t = tally("videos")
    rc, out, err = runs["files"]
    for name, path in cases.items():
        t.case(f"detect:{name}", *_outcome(rc, out, err, path))
    t.modified += modified
    records = json.loads(out or "[]")
    assert any(r.get("image") == str(photo) for r in records), "the image after the bad sources was not detected"
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases
    assert not t.modified


def test_a_folder_source_counts_its_fifo_and_its_truncated_clip(detect_run, tally):
    _, _, runs, _, scan = detect_run
    t = tally("videos")
    rc, out, err = runs["folder"]
    t.case("detect-folder:fifo-in-folder", *_outcome(rc, out, err, scan / "live.mp4"))
    t.case("detect-folder:cut-clip-in-folder", *_outcome(rc, out, err, scan / "cut.avi"))
    assert any(r.get("image") == str(scan / "still.jpg") for r in json.loads(out or "[]"))
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


def test_shortfall_counts_the_frames_the_header_promised(tmp_path):
    """The library's view of a cut clip: the frames it gave, the header's count, the shortfall; a clip read to
    its end has none, and one stopped early by the caller (--max-frames) has none either."""
    from itertools import islice

    from darktune.deploy.video import open_source

    folder = tmp_path
    avi = _clip(folder / "good.avi")
    (folder / "cut.avi").write_bytes(avi[: len(avi) // 2])
    good = open_source(str(folder / "good.avi"))
    assert sum(1 for _ in good) == FRAMES and good.shortfall == 0
    cut = open_source(str(folder / "cut.avi"))
    n = sum(1 for _ in cut)
    assert cut.frame_count == FRAMES and 0 < n < FRAMES and cut.shortfall == FRAMES - n
    early = open_source(str(folder / "cut.avi"))
    assert len(list(islice(early, 2))) == 2 and early.shortfall == 0
