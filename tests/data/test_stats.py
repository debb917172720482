"""Dataset statistics and k-means anchors (darknet calc_anchors: IoU distance, mean best IoU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.stats import dataset_stats, format_stats, kmeans_anchors, plot_stats, wh_iou
from darktune.errors import DarktuneError


def test_kmeans_finds_well_separated_shapes():
    rng = np.random.default_rng(0)
    truth = np.array([[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], float)
    wh = np.concatenate([t * rng.uniform(0.95, 1.05, (200, 2)) for t in truth])
    anchors, mean_iou = kmeans_anchors(wh, 6, seed=1)
    assert anchors.shape == (6, 2)
    np.testing.assert_allclose(anchors, truth, rtol=0.03)
    assert 0.9 < mean_iou <= 1.0
    areas = anchors[:, 0] * anchors[:, 1]
    assert np.all(np.diff(areas) > 0)  # sorted by area
    assert mean_iou == pytest.approx(wh_iou(wh, anchors).max(1).mean())


def test_kmeans_is_seeded_and_exact_when_k_equals_distinct_shapes():
    rng = np.random.default_rng(3)
    wh = rng.uniform(5, 100, (300, 2))
    a1, m1 = kmeans_anchors(wh, 5, seed=7)
    a2, m2 = kmeans_anchors(wh, 5, seed=7)
    np.testing.assert_array_equal(a1, a2)
    assert m1 == m2 and 0 < m1 < 1
    shapes = np.array([[1, 2], [3, 3], [5, 1]], float)
    anchors, mean_iou = kmeans_anchors(np.repeat(shapes, 4, axis=0), 3)
    assert mean_iou == pytest.approx(1.0)
    np.testing.assert_allclose(anchors, shapes[[0, 2, 1]])  # areas 2, 5, 9


def test_more_anchors_never_lower_mean_iou_much():
    wh = np.random.default_rng(5).lognormal(3, 0.6, (500, 2))
    ious = [kmeans_anchors(wh, k, seed=0)[1] for k in (1, 3, 6, 9)]
    assert ious == sorted(ious)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.full((5, 2), np.nan), np.ones((5, 3))])
def test_kmeans_refuses_bad_input(bad):
    with pytest.raises(DarktuneError):
        kmeans_anchors(bad, 2)


def test_kmeans_needs_enough_distinct_shapes():
    with pytest.raises(DarktuneError, match="distinct"):
        kmeans_anchors(np.ones((10, 2)), 2)


def _dataset():
    recs = [ImageRecord(Path(f"{i}.jpg"), 640, 480, [Box("window", 0.1, 0.1, 0.1 + 0.05 * (i + 1), 0.3),
                                                     Box("door", 0.5, 0.5, 0.6, 0.9)]) for i in range(6)]
    recs.append(ImageRecord(Path("empty.jpg"), 640, 480, []))
    return Dataset(["window", "door"], recs)


def test_dataset_stats_counts_and_anchor_line():
    stats = dataset_stats(_dataset(), anchors_k=3, size=(416, 416), check_files=False)
    assert (stats.n_images, stats.n_empty_images, stats.n_boxes) == (7, 1, 12)
    assert stats.class_counts == {"window": 6, "door": 6}
    assert stats.boxes_per_image["max"] == 2 and stats.boxes_per_image["min"] == 0
    assert stats.height["max"] == pytest.approx(0.4)
    assert len(stats.anchors) == 3 and 0 < stats.anchors_mean_iou <= 1
    assert len(stats.anchors_cfg().split(",")) == 6
    text = format_stats(stats)
    assert "window" in text and "anchors at 416x416" in text
    json.dumps(stats.to_dict())


def test_plot_writes_a_png(tmp_path):
    ds = _dataset()
    out = plot_stats(ds, dataset_stats(ds, anchors_k=2, check_files=False), tmp_path / "s.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_cli_stats(tmp_path, capsys):
    import cv2

    from darktune.cli import main

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "obj.names").write_text("window\n")
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.zeros((50, 80, 3), np.uint8))
        (folder / f"{i}.txt").write_text(f"0 0.5 0.5 {0.1 * (i + 1):.2f} 0.2\n")
    rc = main(["data", "stats", str(folder), "--json", "--anchors", "2", "--size", "320", "320",
               "--png", str(tmp_path / "s.png")])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_boxes"] == 4 and doc["size"] == [320, 320] and len(doc["anchors"]) == 2
    assert (tmp_path / "s.png").is_file()


def test_stats_of_a_small_set_print_the_figures_and_say_why_there_are_no_anchors(tmp_path, capsys):
    """QA3: `data stats` on 3 box shapes failed outright ("cannot make 6 anchors from 3 distinct box shapes")."""
    from darktune.cli import main

    folder = _folder(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.2\n", "b.png": "0 0.5 0.5 0.2 0.2\n",
                                "c.png": "0 0.5 0.5 0.3 0.2\n0 0.5 0.5 0.1 0.2\n"})
    assert main(["data", "stats", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 images (0 without boxes), 4 boxes") and "width" in out
    assert (f"anchors not computed for {folder}: cannot make 6 anchors from 3 distinct box shapes (ask for 3 or "
            "fewer)") in out
    assert main(["data", "stats", str(folder), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["anchors"] == [] and doc["anchors_not_computed"].startswith("cannot make 6 anchors")
    assert doc["n_boxes"] == 4 and doc["source"] == str(folder)
    stats = dataset_stats(Dataset(["w"], [ImageRecord(Path("x.jpg"))]), check_files=False)
    assert stats.anchors_not_computed == "cannot make 6 anchors from 0 distinct box shapes (no boxes)"
    assert "anchors not computed: cannot make 6" in format_stats(stats)


def _folder(tmp_path: Path, labels: dict[str, str | None], names: str = "window\n") -> Path:
    import cv2

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "obj.names").write_text(names)
    for name, label in labels.items():
        cv2.imwrite(str(folder / name), np.zeros((50, 80, 3), np.uint8))
        if label is not None:
            (folder / name).with_suffix(".txt").write_text(label)
    return folder


def test_stats_leave_out_images_not_on_disk_and_show_skipped_records(tmp_path, capsys):
    """QA3: an obj.data listing missing.jpg counted it as an image without boxes; skipped records were never
    shown (text or --json)."""
    from darktune.cli import main

    folder = _folder(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.2\n", "b.png": None, "bad.png": "0 0.5 0.5 2 0.2\n"})
    (folder / "train.txt").write_text("a.png\nb.png\nbad.png\nmissing.jpg\n")
    (folder / "obj.data").write_text("classes=1\ntrain=train.txt\nnames=obj.names\n")
    assert main(["data", "stats", str(folder / "obj.data"), "--anchors", "1", "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    head = out.splitlines()[0]
    assert head == ("2 images (1 without boxes), 1 box; 1 image not found on disk (left out of these figures); "
                    "1 record skipped (see the 'skipped:' lines)")
    assert f"not found: {folder / 'missing.jpg'}" in out and "bad.txt:1" in err
    assert main(["data", "stats", str(folder / "obj.data"), "--anchors", "1", "--skip-bad", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["n_images"], doc["n_empty_images"], doc["n_missing_images"], doc["n_skipped_records"]) == (2, 1, 1, 1)
    assert doc["missing_images"] == [str(folder / "missing.jpg")] and doc["skipped"][0]["line"] == 1
    assert doc["boxes_per_image"]["mean"] == 0.5  # missing.jpg is not an image without boxes


def test_stats_png_leaves_out_missing_images(tmp_path):
    ds = Dataset(["w"], [ImageRecord(tmp_path / "gone.jpg", boxes=[Box("w", 0.1, 0.1, 0.2, 0.2)])])
    stats = dataset_stats(ds, anchors_k=0)
    assert stats.n_images == 0 and stats.n_missing_images == 1 and stats.n_boxes == 0
    assert plot_stats(ds, stats, tmp_path / "s.png").is_file()
