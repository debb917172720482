"""Which [yolo] head learns each box (darknet's best-anchor rule), and the report's note built on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from darktune.report.heads import best_anchors, head_shares, training_box_sizes
from darktune.report.data import ExperimentData, RunData
from darktune.report.findings import _heads_note

ANCHORS = np.array([[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], dtype=np.float64)


def test_best_anchor_is_the_highest_centred_iou():
    wh = np.array([[10, 14], [30, 40], [100, 100], [400, 400], [12, 12]], dtype=np.float64)
    assert best_anchors(wh, ANCHORS).tolist() == [0, 2, 3, 5, 0]
    # a loop reference on random boxes
    rng = np.random.default_rng(0)
    boxes = rng.uniform(2, 400, (200, 2))
    for box, got in zip(boxes, best_anchors(boxes, ANCHORS)):
        ious = [min(box[0], a) * min(box[1], b) / (box[0] * box[1] + a * b - min(box[0], a) * min(box[1], b))
                for a, b in ANCHORS]
        assert got == int(np.argmax(ious))


def test_the_same_window_goes_to_another_head_at_another_size(coco_spec):
    third = np.array([[0.33, 0.46]])  # a window a third of the image wide
    at_128 = {h.layer: h.share for h in head_shares(coco_spec, third, 128)}
    at_416 = {h.layer: h.share for h in head_shares(coco_spec, third, 416)}
    assert at_128 == {16: 0.0, 23: 1.0} and at_416 == {16: 1.0, 23: 0.0}
    mixed = head_shares(coco_spec, np.array([[0.05, 0.07], [0.5, 0.5], [0.6, 0.7], [0.02, 0.03]]), 416)
    # the fetched cfg's 26x26 head has mask 1,2,3 (the weights' own): the smallest box's best anchor, 0, is in no
    # mask, so no head learns it
    assert [(h.layer, h.boxes) for h in mixed] == [(16, 2), (23, 1)] and sum(h.share for h in mixed) == 0.75
    assert [h.boxes for h in head_shares(coco_spec, np.zeros((0, 2)), 416)] == [0, 0]


def _darknet_set(root: Path, boxes: list[list[str]]) -> Path:
    root.mkdir(parents=True)
    paths = []
    for i, lines in enumerate(boxes):
        image = root / f"im{i}.jpg"
        image.write_bytes(b"")  # only the labels are read
        image.with_suffix(".txt").write_text("".join(line + "\n" for line in lines))
        paths.append(str(image))
    (root / "train.txt").write_text("".join(p + "\n" for p in paths))
    (root / "obj.names").write_text("window\n")
    (root / "obj.data").write_text(f"classes = 1\ntrain = {root / 'train.txt'}\nnames = {root / 'obj.names'}\n")
    return root / "obj.data"


def test_training_box_sizes_reads_the_train_labels(tmp_path):
    obj = _darknet_set(tmp_path / "d", [["0 0.5 0.5 0.3 0.4", "0 0.2 0.2 0.1 0.1"], [], ["0 0.5 0.5 2 2", "bad"]])
    wh = training_box_sizes(obj)
    assert np.allclose(wh, [[0.3, 0.4], [0.1, 0.1]])  # bad lines are left out, not fatal


def _experiment(tmp_path: Path, coco_cfg: Path, obj: Path, size: int) -> ExperimentData:
    run_dir = tmp_path / "runs" / "domain-f20"
    run_dir.mkdir(parents=True)
    shutil.copy(coco_cfg, run_dir / "model.cfg")
    plan = {"name": "domain-f20", "group": "grid", "start": "domain", "start_label": "domain", "freeze": 20,
            "images": None, "seed": 0, "iterations": 10, "eval_at": [10], "data": str(obj),
            "options": {"size": size}}
    return ExperimentData(tmp_path, {}, [RunData(plan=plan, run_dir=run_dir, status="finished")])


def test_report_note_names_the_frozen_head_and_the_study_size(tmp_path, coco):
    obj = _darknet_set(tmp_path / "d", [["0 0.5 0.5 0.3 0.4"], ["0 0.4 0.5 0.25 0.35"]])
    note = _heads_note(_experiment(tmp_path / "e128", coco.cfg, obj, 128), 20)
    assert "at 128 px layer 16 (frozen) 0%, layer 23 (trainable) 100%" in note
    assert "416 px network, the study's size: layer 16 (frozen) 100%, layer 23 (trainable) 0%" in note
    assert "likely reason" in note
    at_416 = _heads_note(_experiment(tmp_path / "e416", coco.cfg, obj, 416), 20)
    assert "at 416 px layer 16 (frozen) 100%" in at_416 and "study's size" not in at_416
    broken = _experiment(tmp_path / "gone", coco.cfg, tmp_path / "missing" / "obj.data", 128)
    assert _heads_note(broken, 20) is None  # a moved data set leaves the note out; the report is still written
