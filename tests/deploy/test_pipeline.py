"""deploy/pipeline.py and `detect --workers`: sources in order, images side by side, the same detections."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from darktune.cli import main
from darktune.deploy.pipeline import PerThread, in_order, threads_each, threads_for_each, worker_count
from darktune.deploy.pipeline import ordered_map as pipeline_ordered_map


def test_in_order_keeps_the_order_and_raises_in_turn():
    """Jobs that finish in any order come back in the sources' order; an exception surfaces in its turn."""
    def job(source):
        time.sleep(0.02 * (source % 3))
        if source == 4:
            raise ValueError("four")
        return source * 10

    got = []
    with pytest.raises(ValueError, match="four"):
        for source, result in in_order(list(range(7)), job, ahead=3, inline=lambda s: False):
            got.append((source, result))
    assert got == [(0, 0), (1, 10), (2, 20), (3, 30)]


def test_in_order_runs_at_most_ahead_jobs_at_once_and_cameras_in_turn():
    """`ahead` bounds the jobs in flight; a camera is opened on the caller's thread when its turn comes, and
    nothing after it starts before then."""
    lock, running, most, log = threading.Lock(), [0], [0], []

    def job(source):
        on_caller = threading.current_thread() is threading.main_thread()
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            log.append(("start", source, on_caller))
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return source

    sources = ["a.jpg", "b.jpg", "c.jpg", "0", "d.jpg", "e.jpg"]
    seen = []
    for source, result in in_order(sources, job, ahead=2):
        assert source == result
        seen.append(source)
        if source == "c.jpg":
            assert "0" not in [s for _, s, _ in log]  # the camera waits for its turn
    assert seen == sources and most[0] <= 2
    assert [s for _, s, caller in log if caller] == ["0"]  # only the camera ran on the caller's thread
    assert [s for _, s, _ in log].index("d.jpg") > [s for _, s, _ in log].index("0")


def test_worker_count(tmp_path, monkeypatch):
    import darktune.deploy.pipeline as pipeline

    monkeypatch.setattr(pipeline, "cpu_count", lambda: 4)
    images = [f"{tmp_path}/p{i}.jpg" for i in range(6)]
    assert worker_count(images, "cpu") == 4
    assert worker_count(images[:3], "cpu") == 3  # no more workers than images
    assert worker_count(images[:1], "cpu") == 1
    assert worker_count(["clip.mp4"], "cpu") == 4  # a video's frames side by side
    assert worker_count(images + ["0"], "cpu") == 1  # a camera: each frame's result at once
    assert worker_count(images, "cuda") == 1
    assert worker_count(images, "cpu", requested=2) == 2
    assert worker_count(images[:2], "cpu", requested=8) == 2
    assert worker_count(["clip.mp4"], "cpu", requested=8) == 8
    monkeypatch.setattr(pipeline, "cpu_count", lambda: 1)
    assert worker_count(images, "cpu") == 1


def test_ordered_map_keeps_the_order_and_bounds_the_calls_in_flight():
    from concurrent.futures import ThreadPoolExecutor

    lock, running, most, drawn = threading.Lock(), [0], [0], []

    def fn(item):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01 * (3 - item % 3))
        with lock:
            running[0] -= 1
        return item * item

    def items():
        for i in range(8):
            drawn.append((i, threading.current_thread() is threading.main_thread()))
            yield i

    with ThreadPoolExecutor(3) as pool:
        assert list(pipeline_ordered_map(fn, items(), 2, pool)) == [i * i for i in range(8)]
    assert most[0] <= 2 and all(on_caller for _, on_caller in drawn)  # drawn on the caller's thread


def test_per_thread_shares_a_backend_that_allows_it_and_copies_one_that_does_not():
    class Shared:
        def for_worker(self):
            return self

    class Single:
        copies = 0

        def for_worker(self):
            Single.copies += 1
            return Single()

    for backend in (Shared(), Single()):
        runner = PerThread(backend)
        mine = runner.get()
        assert mine is backend and runner.get() is mine  # the first thread gets the backend itself
        other = []
        thread = threading.Thread(target=lambda: other.append(runner.get()))
        thread.start()
        thread.join()
        assert (other[0] is backend) == isinstance(backend, Shared)
    assert Single.copies == 1


def test_threads_are_shared_out_and_restored(monkeypatch):
    import torch

    import darktune.deploy.pipeline as pipeline

    monkeypatch.setattr(pipeline, "cpu_count", lambda: 32)
    assert [threads_each(w) for w in (1, 2, 3, 32, 64)] == [32, 16, 10, 1, 1]
    before = torch.get_num_threads(), cv2.getNumThreads()
    with threads_for_each(1):
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
    with threads_for_each(None):  # one image at a time: left as they are
        assert (torch.get_num_threads(), cv2.getNumThreads()) == before


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_path):
    """Six JPEGs of the photograph at different sizes, and a damaged one in the middle."""
    folder = tmp_path_factory.mktemp("photos")
    image = cv2.imread(str(photo_path))
    for i, (w, h) in enumerate([(512, 600), (320, 240), (640, 480), (200, 300), (416, 416), (300, 200)]):
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.resize(image, (w, h)))
    (folder / "p3b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


@pytest.mark.parametrize("backend", ["torch", "opencv"])
def test_detect_workers_give_the_records_of_one_at_a_time(coco, photos, capsys, backend):
    """Images side by side (OpenCV: a second net for the second thread) give the records of one image at a
    time, in the same order, the damaged file reported in its place; OpenCV's bits are equal, torch's
    convolutions on one thread round up to 1e-5 differently."""
    runs = {}
    for workers in ("1", "2"):
        rc = main(["detect", str(photos), "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--json",
                   "--thresh", "0.1", "--backend", backend, "--workers", workers])
        captured = capsys.readouterr()
        assert rc == 1 and "p3b.jpg" in captured.err and "Traceback" not in captured.err
        assert ("7 sources, 2 images side by side" in captured.err) == (workers == "2")
        runs[workers] = json.loads(captured.out)
    one, two = runs["1"], runs["2"]
    assert [r["image"] for r in one] == [r["image"] for r in two] == [str(photos / f"p{i}.jpg") for i in
                                                                      (0, 1, 2, 3, 4, 5)]
    assert sum(len(r["detections"]) for r in one) >= 6
    if backend == "opencv":
        assert one == two
        return
    for a, b in zip(one, two):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        for d, e in zip(a["detections"], b["detections"]):
            assert abs(d["score"] - e["score"]) <= 1e-5
            np.testing.assert_allclose(d["box"], e["box"], atol=0.02)


@pytest.mark.parametrize("workers", ["0", "-3", "100000"])
def test_detect_workers_must_be_a_sensible_count(coco, photo_path, capsys, workers):
    """0 or fewer would run nothing; a huge count would hold that many frames of a video in memory."""
    assert main(["detect", str(photo_path), "--cfg", str(coco.cfg), "--weights", str(coco.weights),
                 "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert "--workers must be between 1 and " in err and f"got {workers}" in err and "Traceback" not in err


def test_detect_video_frames_side_by_side_give_the_records_of_one_at_a_time(coco, photo_path, tmp_path, capsys):
    """A video's frames detected two at a time (OpenCV: bit-equal runtimes) give the records, frame numbers
    and annotated video of one frame at a time."""
    image = cv2.resize(cv2.imread(str(photo_path)), (320, 240))
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    for i in range(7):
        writer.write(np.roll(image, 7 * i, axis=1))
    writer.release()
    runs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert main(["detect", str(clip), "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--json",
                     "--thresh", "0.1", "--backend", "opencv", "--workers", workers, "--max-frames", "6",
                     "--out", str(out)]) == 0
        runs[workers] = json.loads(capsys.readouterr().out)
        written = cv2.VideoCapture(str(out / "clip.mp4"))
        assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
        written.release()
    assert [r["frame"] for r in runs["2"]] == list(range(6))
    assert runs["1"] == runs["2"] and sum(len(r["detections"]) for r in runs["1"]) >= 6
