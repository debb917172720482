"""`darktune detect` with backends and sources: videos (a synthetic mp4 written here), images, camera indices,
annotated outputs, errors per source."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_runtimes import synthetic_scene

from darktune.cli import main
from darktune.data.formats.image import read_image
from darktune.errors import DarktuneError
from darktune.deploy.video import VideoSink, open_source

FRAMES = 10


@pytest.fixture(scope="module")
def video(photo_path, tmp_path_factory):
    """A 10-frame 320x240 mp4v video: the synthetic scene panning right, 5 px per frame."""
    scene = cv2.resize(synthetic_scene(read_image(photo_path)), (320, 240), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(np.roll(scene, 5 * i, axis=1))
    writer.release()
    return path


def _model_args(coco) -> list[str]:
    return ["--cfg", str(coco.cfg), "--weights", str(coco.weights), "--names", str(coco.names)]


@pytest.mark.parametrize("backend", ["torch", "opencv"])
def test_detect_video_writes_annotated_mp4(coco, video, tmp_path, capsys, backend):
    out = tmp_path / "out"
    rc = main(["detect", str(video), *_model_args(coco), "--backend", backend, "--thresh", "0.2", "--json",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    records = json.loads(captured.out)
    assert [r["frame"] for r in records] == list(range(FRAMES)) and all(r["video"] == str(video) for r in records)
    assert all((r["width"], r["height"]) == (320, 240) for r in records)
    assert sum(len(r["detections"]) for r in records) >= FRAMES  # the scene holds people in every frame
    assert "person" in {d["name"] for r in records for d in r["detections"]}
    assert "frames" in captured.err  # progress with frames per second on stderr
    written = cv2.VideoCapture(str(out / "clip.mp4"))
    assert written.isOpened() and int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    ok, frame = written.read()
    written.release()
    assert ok and frame.shape == (240, 320, 3)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_detect_backends_agree_on_images(coco, photo_path, tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "onnx", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--out",
                 str(onnx_path), "--names", str(coco.names)]) == 0
    scene = tmp_path / "scene.png"
    cv2.imwrite(str(scene), synthetic_scene(read_image(photo_path)))
    runs = {}
    for key, backend, extra in [("torch", "torch", _model_args(coco)), ("opencv", "opencv", _model_args(coco)),
                                ("opencv-direct", "opencv", [*_model_args(coco), "--no-winograd"]),
                                ("onnxruntime", "onnxruntime", ["--onnx", str(onnx_path)])]:  # names from the model
        capsys.readouterr()
        assert main(["detect", str(photo_path), str(scene), "--backend", backend, *extra, "--json",
                     "--thresh", "0.1"]) == 0
        runs[key] = json.loads(capsys.readouterr().out)
    for records in runs.values():
        assert [r["image"] for r in records] == [str(photo_path), str(scene)]
        assert "frame" not in records[0]
    ref = runs["torch"]
    assert sum(len(r["detections"]) for r in ref) >= 3
    for other in (runs["opencv"], runs["opencv-direct"], runs["onnxruntime"]):
        for a, b in zip(ref, other):
            key = (lambda d: (d["class_id"], -round(d["score"], 3), d["box"][0]))
            da, db = sorted(a["detections"], key=key), sorted(b["detections"], key=key)
            assert [d["name"] for d in da] == [d["name"] for d in db]
            assert all(abs(x - y) <= 0.02 for p, q in zip(da, db) for x, y in zip(p["box"], q["box"]))


def test_detect_bad_sources_reported_others_processed(coco, video, photo_path, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 1000)
    missing = tmp_path / "missing.avi"
    rc = main(["detect", str(broken), str(missing), "97", str(video), str(photo_path), *_model_args(coco),
               "--json", "--max-frames", "3"])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"{broken}: " in captured.err and f"{missing}: no such file" in captured.err
    assert "camera 97: cannot open camera" in captured.err and "Traceback" not in captured.err
    records = json.loads(captured.out)
    assert [r.get("frame") for r in records] == [0, 1, 2, None]  # --max-frames 3 of the video, then the photo


def test_open_source_kinds(video, photo_path, tmp_path):
    src = open_source(str(video))
    assert src.kind == "video" and src.frame_count == FRAMES and src.fps == pytest.approx(10.0)
    assert sum(1 for _ in src) == FRAMES
    photo = open_source(str(photo_path))
    assert photo.kind == "image" and len(list(photo)) == 1
    with pytest.raises(DarktuneError, match="folder"):
        open_source(str(tmp_path))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DarktuneError, match="notes.txt: not a readable image or video"):
        open_source(str(text))


def test_video_sink_is_atomic(tmp_path):
    sink = VideoSink(tmp_path / "v.mp4", 5.0, (64, 48))
    sink.write(np.zeros((48, 64, 3), np.uint8))
    sink.write(np.zeros((96, 128, 3), np.uint8))  # resized to the video's size
    assert not (tmp_path / "v.mp4").exists()
    assert sink.close() == tmp_path / "v.mp4" and sink.frames == 2
    aborted = VideoSink(tmp_path / "a.mp4", 5.0, (64, 48))
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_detect_no_winograd_is_only_for_opencv(coco, photo_path, capsys):
    assert main(["detect", str(photo_path), *_model_args(coco), "--backend", "torch", "--no-winograd"]) != 0
    err = capsys.readouterr().err
    assert "--no-winograd is for --backend opencv" in err and "Traceback" not in err


def test_detect_out_names_are_unique_and_never_overwritten(coco, video, photo_path, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    image = read_image(photo_path)
    for name in ("a/x.jpg", "b/x.jpg", "a/x.png", "a/x-2.jpg"):
        cv2.imwrite(str(tmp_path / name), image)
    avi = tmp_path / "clip.avi"
    avi.write_bytes(video.read_bytes())  # the same clip in a file named .avi: read by content
    out = tmp_path / "out"
    inputs = [tmp_path / n for n in ("a/x.jpg", "b/x.jpg", "a/x.png", "a/x-2.jpg")] + [avi, video]
    rc = main(["detect", *map(str, inputs), *_model_args(coco), "--size", "128", "--max-frames", "2",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.avi.mp4", "clip.mp4", "x-2-2.jpg", "x-2.jpg", "x.jpg",
                                                      "x.png"]
    assert f"{tmp_path / 'b/x.jpg'}: {out / 'x.jpg'} is another input's output in this run; writing " \
           f"{out / 'x-2.jpg'}" in err
    assert err.count("another input's output") == 2  # b/x.jpg and a/x-2.jpg, once each


def test_expand_source_folders_and_globs(tmp_path):
    from darktune.deploy.video import expand_source

    for name in ("b.jpg", "a.PNG", "c.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    assert expand_source(str(tmp_path)) == [str(tmp_path / n) for n in ("a.PNG", "b.jpg", "c.mp4")]
    assert expand_source(str(tmp_path / "*.jpg")) == [str(tmp_path / "b.jpg")]
    assert expand_source(str(tmp_path / "**" / "*.jpg")) == [str(tmp_path / "b.jpg"), str(tmp_path / "sub/d.jpg")]
    assert expand_source("0") == ["0"]
    assert expand_source(str(tmp_path / "missing.jpg")) == [str(tmp_path / "missing.jpg")]
    with pytest.raises(DarktuneError, match=r"\*\.gif: no file matches this pattern"):
        expand_source(str(tmp_path / "*.gif"))
    with pytest.raises(DarktuneError, match="sub2: folder holds no image or video file"):
        (tmp_path / "sub2").mkdir()
        expand_source(str(tmp_path / "sub2"))


def test_detect_takes_a_folder_and_a_quoted_glob(coco, photo_path, tmp_path, capsys):
    image = read_image(photo_path)
    for name in ("b.jpg", "a.png"):
        cv2.imwrite(str(tmp_path / name), image)
    rc = main(["detect", str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "*.bmp"), *_model_args(coco),
               "--size", "128", "--json"])
    captured = capsys.readouterr()
    assert rc == 1  # the pattern that matches nothing is a failed source; the others run
    assert [r["image"] for r in json.loads(captured.out)] == [str(tmp_path / n) for n in ("a.png", "b.jpg", "b.jpg")]
    assert f"{tmp_path / '*.bmp'}: no file matches this pattern" in captured.err and "Traceback" not in captured.err
