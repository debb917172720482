"""`darktune detect` and `summary` on the official weights and a real photograph."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darktune.cli import main


def test_detect_finds_tie_and_person(coco, photo_path, tmp_path, capsys):
    rc = main(["detect", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--names", str(coco.names),
               str(photo_path), "--json", "--thresh", "0.1", "--out", str(tmp_path / "out")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "frames" not in captured.err  # no frame counter for a single image
    records = json.loads(captured.out)
    found = {}
    for d in sorted(records[0]["detections"], key=lambda d: d["score"]):
        found[d["name"]] = d  # the best-scoring detection of each class
    assert found["tie"]["score"] > 0.8
    x1, y1, x2, y2 = found["tie"]["box"]
    assert 180 < x1 < 250 and 380 < y1 < 450 and 260 < x2 < 330 and 500 < y2 < 580  # pixels of the 512x600 photo
    assert "person" in found
    assert (tmp_path / "out" / "grace_hopper.jpg").stat().st_size > 0


def test_detect_bad_image_others_still_processed(coco, photo_path, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    rc = main(["detect", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--names", str(coco.names),
               str(broken), str(photo_path), "--json"])
    captured = capsys.readouterr()
    assert rc != 0
    assert "broken.jpg" in captured.err and "Traceback" not in captured.err
    assert "2 images" in captured.err and "frames" not in captured.err  # several images: an image counter runs
    assert len(json.loads(captured.out)) == 1


def test_detect_images_printed_on_a_terminal_have_no_counter_between_their_lines(coco, photo_path, tmp_path,
                                                                                  capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    rc = main(["detect", "--cfg", str(coco.cfg), "--weights", str(coco.weights), str(photo_path), str(photo_path)])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.count("grace_hopper.jpg: ") == 2
    assert "images [" not in captured.err


def test_summary_json(coco, capsys):
    assert main(["summary", str(coco.cfg), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert round(s["bflops"], 3) == 5.565 and s["params"] == 8_852_366 and len(s["layers"]) == 24
    assert main(["summary", str(coco.cfg), "--classes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 8_669_876


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=416\n[convolutional]\nfilters=x\n")
    assert main(["summary", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"darktune: error: {bad}:4: bad value for 'filters' in [convolutional]: 'x' is not an integer"


def test_torch_detector_runs_the_fused_model(coco_model, photo_path):
    """TorchDetector runs the inference copy (BN folded in float64) and finds the same boxes as the training
    model; the model it was given is left as it was."""
    from test_runtimes import assert_same_boxes

    from darktune.data.formats.image import read_image
    from darktune.deploy.detect import TorchDetector

    detector = TorchDetector(coco_model)
    assert detector.model is coco_model and coco_model.layers[0].bn is not None
    assert all(getattr(b, "bn", None) is None for b in detector.net.layers)
    image = read_image(photo_path)
    fused = detector.detect([image], 0.1, 0.45)
    assert len(fused[0]) >= 2
    assert_same_boxes(fused, TorchDetector(coco_model, fuse=False).detect([image], 0.1, 0.45))


def test_summary_blames_a_bad_size_or_class_count_not_the_cfg(coco, capsys):
    for argv, message in ((["--size", "100"], "--size must be a positive multiple of 32, got 100"),
                          (["--size", "0"], "--size must be a positive multiple of 32, got 0"),
                          (["--classes", "0"], "--classes must be >= 1, got 0"),
                          (["--classes", "-3"], "--classes must be >= 1, got -3")):
        assert main(["summary", str(coco.cfg), *argv]) == 2
        assert capsys.readouterr().err == f"darktune: error: {message}\n"
    assert main(["summary", str(coco.cfg), "--size", "320", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["input"] == [3, 320, 320]


def test_detect_one_image_without_an_image_suffix_has_no_frame_counter(coco, photo_path, tmp_path, capsys):
    plain = tmp_path / "hopper"  # an image all the same: read as one
    plain.write_bytes(photo_path.read_bytes())
    assert main(["detect", "--cfg", str(coco.cfg), "--weights", str(coco.weights), str(plain)]) == 0
    captured = capsys.readouterr()
    assert "frames" not in captured.err and captured.out.startswith(f"{plain}: ")


def test_detect_names_default_to_class_n_or_the_names_beside_the_cfg(coco, photo_path, tmp_path, capsys):
    """No --names: a names file beside the cfg (`export darknet`'s model.cfg + model.names, a run folder's
    obj.names, the zoo's coco.names) when it has one name per class, else class_0, class_1, ..."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    cfg = deploy / "model.cfg"
    cfg.write_bytes(coco.cfg.read_bytes())
    argv = ["detect", "--cfg", str(cfg), "--weights", str(coco.weights), str(photo_path), "--json"]

    def names() -> set[str]:
        return {d["name"] for d in json.loads(capsys.readouterr().out)[0]["detections"]}

    assert main(argv) == 0 and names() == {"class_27"}
    (deploy / "model.names").write_text("person\nbicycle\n")  # not one name per class: not used, and said so
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "model.names holds 2 names for a model with 80 classes" in captured.err
    assert {d["name"] for d in json.loads(captured.out)[0]["detections"]} == {"class_27"}
    (deploy / "model.names").write_bytes(coco.names.read_bytes())
    assert main(argv) == 0 and names() == {"tie"}
    assert main([*argv, "--names", str(tmp_path / "missing.names")]) == 2  # --names wins, and must exist
    assert "missing.names" in capsys.readouterr().err
    assert main(["detect", "--cfg", str(coco.cfg), "--weights", str(coco.weights), str(photo_path), "--json"]) == 0
    assert names() == {"tie"}  # the zoo folder: yolov3-tiny.cfg beside coco.names


def test_detect_letterbox_follows_the_cfg_unless_told(coco, photo_path, tmp_path, capsys):
    lb = tmp_path / "lb.cfg"
    lb.write_text(coco.cfg.read_text().replace("[net]", "[net]\nletter_box=1", 1))
    runs = {}
    for key, cfg, extra in [("cfg", lb, []), ("on", coco.cfg, ["--letterbox"]), ("off", lb, ["--no-letterbox"]),
                            ("plain", coco.cfg, [])]:
        capsys.readouterr()
        assert main(["detect", str(photo_path), "--cfg", str(cfg), "--weights", str(coco.weights), "--size", "128",
                     "--names", str(coco.names),
                     "--thresh", "0.05", "--json", *extra]) == 0
        captured = capsys.readouterr()
        runs[key] = json.loads(captured.out)[0]["detections"]
        assert ("letter_box=1" in captured.err) == (key == "cfg")
    assert runs["cfg"] == runs["on"] and runs["off"] == runs["plain"] and runs["cfg"] != runs["plain"]


def test_detect_boxes_clipped_to_the_image_with_its_size_in_the_record(coco, photo_path, capsys):
    from darktune.data.formats.image import read_image
    from darktune.deploy.detect import clip_boxes

    dets = np.array([[-5.5, -2, 700, 40, 0.9, 3], [10, 20, 30, 900, 0.5, 0]], np.float32)
    np.testing.assert_array_equal(clip_boxes(dets, 640, 480),
                                  [[0, 0, 640, 40, dets[0, 4], 3], [10, 20, 30, 480, 0.5, 0]])
    assert clip_boxes(np.zeros((0, 6)), 10, 10).shape == (0, 6)
    h, w = read_image(photo_path).shape[:2]
    assert main(["detect", str(photo_path), "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--size", "128",
                 "--thresh", "0.01", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert (record["width"], record["height"]) == (w, h) and len(record["detections"]) > 10
    boxes = np.array([d["box"] for d in record["detections"]])
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= w and boxes[:, [1, 3]].max() <= h
    assert (boxes[:, 3] == h).any()  # a low-score box reached past the bottom edge (y2 616 at this size)


@pytest.mark.parametrize("option,value", [("--thresh", "-1"), ("--thresh", "1.5"), ("--nms", "2"), ("--nms", "nan")])
def test_detect_thresholds_must_be_between_0_and_1(coco, photo_path, capsys, option, value):
    assert main(["detect", str(photo_path), "--cfg", str(coco.cfg), "--weights", str(coco.weights),
                 option, value]) != 0
    err = capsys.readouterr().err
    assert f"{option} must be between 0 and 1, got {value}" in err and "Traceback" not in err
