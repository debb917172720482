"""Annotation-noise filter: geometry (IoU properties), each rule on small hand-made images, the report, and the
headline: on a synthetic Open-Images-like facade set with ~20% group boxes, the shape rules alone (no IsGroupOf
flag) remove >= 95% of the group boxes and < 5% of the single-window boxes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktune.data.dataset import Box, Dataset, ImageRecord, clipped_box
from darktune.data.filter import (FilterRules, contained_counts, filter_dataset, pairwise_iou, reference_shapes,
                                  relative_size_outliers)
from darktune.data.stats import wh_iou
from darktune.errors import DarktuneError

# ------------------------------------------------------------------------------------ synthetic facades

SIZES = [(1024, 768), (768, 1024), (1024, 683), (800, 800)]


def _grid(rng, W, H):
    """Window rectangles (pixels) of one facade: a grid with gaps, perspective growth, jitter, and in a
    quarter of the images one row of a second window style (wide and low)."""
    rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 7))
    ww = rng.uniform(0.03, 0.10) * W
    wh = ww * rng.uniform(1.1, 1.8)
    gx, gy = ww * rng.uniform(0.4, 1.0), wh * rng.uniform(0.3, 0.8)
    scale = min(1.0, 0.9 * W / (cols * (ww + gx)), 0.9 * H / (rows * (wh + gy)))
    ww, wh, gx, gy = ww * scale, wh * scale, gx * scale, gy * scale
    x0, y0 = rng.uniform(0, W - cols * (ww + gx)), rng.uniform(0, H - rows * (wh + gy))
    persp = rng.uniform(0.0, 0.4)
    odd_row = int(rng.integers(rows)) if rng.random() < 0.25 else -1
    cells = {}
    for r in range(rows):
        for c in range(cols):
            s = 1 + persp * c / max(cols - 1, 1)
            bw, bh = (ww * 1.5, wh * 0.6) if r == odd_row else (ww, wh)
            j = rng.uniform(-0.05, 0.05, 4) * np.array([ww, wh, ww, wh])
            x1, y1 = x0 + c * (ww + gx) + j[0], y0 + r * (wh + gy) + j[1]
            cells[(r, c)] = (x1, y1, x1 + bw * s + j[2], y1 + bh * s + j[3])
    return rows, cols, cells


def _group_members(rng, rows, cols):
    kind = int(rng.integers(3))
    if kind == 0:  # a run of >= 2 windows in a row
        k = int(rng.integers(2, cols + 1))
        r, c0 = int(rng.integers(rows)), int(rng.integers(cols - k + 1))
        return [(r, c) for c in range(c0, c0 + k)]
    if kind == 1:  # a run of >= 2 windows in a column
        k = int(rng.integers(2, rows + 1))
        c, r0 = int(rng.integers(cols)), int(rng.integers(rows - k + 1))
        return [(r, c) for r in range(r0, r0 + k)]
    kr, kc = int(rng.integers(2, rows + 1)), int(rng.integers(2, cols + 1))
    r0, c0 = int(rng.integers(rows - kr + 1)), int(rng.integers(cols - kc + 1))
    return [(r, c) for r in range(r0, r0 + kr) for c in range(c0, c0 + kc)]


def facade_image(rng, n_groups: int) -> ImageRecord:
    """One image: single-window boxes (IsGroupOf=0) and up to n_groups group boxes (IsGroupOf=1) around
    disjoint runs/blocks of >= 2 windows. 60% of groups are 'lazy' (members get no box of their own)."""
    W, H = SIZES[int(rng.integers(len(SIZES)))]
    rows, cols, cells = _grid(rng, W, H)
    used, unlabelled, groups = set(), set(), []
    for _ in range(n_groups):
        members = _group_members(rng, rows, cols)
        if used & set(members):
            continue
        used |= set(members)
        pts = np.array([cells[m] for m in members])
        pad = rng.uniform(0, 4, 4)
        groups.append((pts[:, 0].min() - pad[0], pts[:, 1].min() - pad[1], pts[:, 2].max() + pad[2],
                       pts[:, 3].max() + pad[3]))
        if rng.random() < 0.6:
            unlabelled |= set(members)
    singles = [b for cell, b in cells.items() if cell not in unlabelled]

    def box(b, group):
        return clipped_box("Window", b[0] / W, b[1] / H, b[2] / W, b[3] / H, tol=0.05, is_group_of=group)

    return ImageRecord(Path("synthetic.jpg"), W, H, [box(b, False) for b in singles] + [box(b, True) for b in groups])


def facade_set(n: int, seed: int, group_rate: float) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(["Window"], [facade_image(rng, int(rng.poisson(group_rate))) for _ in range(n)])


def removal_rates(before: Dataset, after: Dataset) -> tuple[float, float]:
    kept = {id(b) for rec in after.images for b in rec.boxes}
    boxes = [b for rec in before.images for b in rec.boxes]
    groups = [b for b in boxes if b.is_group_of]
    singles = [b for b in boxes if not b.is_group_of]
    return (sum(id(b) not in kept for b in groups) / len(groups),
            sum(id(b) not in kept for b in singles) / len(singles))


@pytest.mark.parametrize("seed", [1, 2])
def test_shape_rules_remove_group_boxes_without_the_flag(seed):
    domain = facade_set(400, seed, group_rate=8.0)
    boxes = [b for rec in domain.images for b in rec.boxes]
    group_share = sum(b.is_group_of for b in boxes) / len(boxes)
    assert 0.17 <= group_share <= 0.25, group_share  # the premise: ~20% group boxes
    reference = facade_set(10, 1000 + seed, group_rate=0.0)  # a small target-like set of single windows
    rules = FilterRules(drop_containers=True, max_rel_size=3.5, like=reference_shapes(reference))  # like_iou 0.35
    assert not rules.drop_group_of
    filtered, report = filter_dataset(domain, rules)
    groups_removed, singles_removed = removal_rates(domain, filtered)
    assert groups_removed >= 0.95, (groups_removed, report.format_table())
    assert singles_removed < 0.05, (singles_removed, report.format_table())
    assert report.n_boxes_out == filtered.n_boxes and report.n_boxes_in == len(boxes)
    assert sum(r.removed for r in report.rules) == report.n_boxes_in - report.n_boxes_out


def test_group_flag_alone_removes_exactly_the_flagged_boxes():
    domain = facade_set(60, 3, group_rate=3.0)
    filtered, report = filter_dataset(domain, FilterRules(drop_group_of=True))
    assert removal_rates(domain, filtered) == (1.0, 0.0)
    assert report.rules[0].rule == "group_of"
    assert report.rules[0].removed == sum(b.is_group_of for r in domain.images for b in r.boxes)


# ------------------------------------------------------------------------------------------- geometry

coords = st.floats(0, 1, allow_nan=False)


@st.composite
def xyxy(draw):
    x1, x2 = sorted((draw(coords), draw(coords)))
    y1, y2 = sorted((draw(coords), draw(coords)))
    return [x1, y1, x2, y2]


@settings(max_examples=300, deadline=None)
@given(a=st.lists(xyxy(), min_size=1, max_size=6), b=st.lists(xyxy(), min_size=1, max_size=6))
def test_iou_symmetric_and_in_unit_interval(a, b):
    ab, ba = pairwise_iou(np.array(a), np.array(b)), pairwise_iou(np.array(b), np.array(a))
    assert np.all(np.isfinite(ab)) and np.all((ab >= 0) & (ab <= 1 + 1e-12))
    np.testing.assert_allclose(ab, ba.T, atol=1e-12)
    self_iou = np.diag(pairwise_iou(np.array(a), np.array(a)))
    area = (np.array(a)[:, 2] - np.array(a)[:, 0]) * (np.array(a)[:, 3] - np.array(a)[:, 1])
    np.testing.assert_allclose(self_iou[area > 1e-12], 1.0, atol=1e-9)


@settings(max_examples=300, deadline=None)
@given(a=st.lists(st.tuples(st.floats(1e-4, 1), st.floats(1e-4, 1)), min_size=1, max_size=6),
       b=st.lists(st.tuples(st.floats(1e-4, 1), st.floats(1e-4, 1)), min_size=1, max_size=6))
def test_shape_iou_symmetric_and_in_unit_interval(a, b):
    ab, ba = wh_iou(np.array(a), np.array(b)), wh_iou(np.array(b), np.array(a))
    assert np.all((ab > 0) & (ab <= 1 + 1e-12))
    np.testing.assert_allclose(ab, ba.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(wh_iou(np.array(a), np.array(a))), 1.0)


def test_iou_known_values():
    a = np.array([[0, 0, 0.2, 0.2]])
    assert pairwise_iou(a, np.array([[0.1, 0, 0.3, 0.2]]))[0, 0] == pytest.approx(1 / 3)
    assert pairwise_iou(a, np.array([[0.5, 0.5, 0.6, 0.6]]))[0, 0] == 0.0
    assert wh_iou([[2, 1]], [[1, 1]])[0, 0] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------- each rule


def _rec(boxes, w=1000, h=1000, **flags_per_box):
    out = []
    for i, b in enumerate(boxes):
        flags = {k: v[i] for k, v in flags_per_box.items()}
        out.append(Box("w", *b, **flags))
    return ImageRecord(Path("a.jpg"), w, h, out)


ROW = [(0.10, 0.10, 0.15, 0.20), (0.20, 0.10, 0.25, 0.20), (0.30, 0.10, 0.35, 0.20)]
GROUP = (0.09, 0.09, 0.36, 0.21)


def test_containers_rule():
    xyxy_ = np.array(ROW + [GROUP])
    assert contained_counts(xyxy_, ["w"] * 4).tolist() == [0, 0, 0, 3]
    assert contained_counts(xyxy_, ["w", "w", "door", "w"]).tolist() == [0, 0, 0, 2]  # same class only
    ds = Dataset(["w"], [_rec(ROW + [GROUP])])
    out, report = filter_dataset(ds, FilterRules(drop_containers=True))
    assert [b for b in out.images[0].boxes] == ds.images[0].boxes[:3]
    assert report.rules[0].rule == "containers" and report.rules[0].removed == 1
    _, report3 = filter_dataset(ds, FilterRules(drop_containers=True, container_min=4))
    assert report3.n_boxes_out == 4


def test_relative_size_rule_flags_long_and_large_boxes_only():
    row = np.array(ROW + [(0.40, 0.10, 0.45, 0.2), (0.5, 0.1, 0.55, 0.2)])
    assert not relative_size_outliers(row, ["w"] * 5, 2.0).any()
    two = np.vstack([row, [(0.1, 0.3, 0.25, 0.4)]])  # a box around two windows: 3x as wide
    assert relative_size_outliers(two, ["w"] * 6, 2.0).tolist() == [False] * 5 + [True]
    assert not relative_size_outliers(two[[0, 5]], ["w"] * 2, 2.0).any()  # needs >= 2 others


def test_area_aspect_and_max_boxes_rules():
    wide = (0.1, 0.5, 0.9, 0.6)  # 0.8 x 0.1 normalised
    ds = Dataset(["w"], [_rec(ROW + [wide], w=1000, h=500)])
    _, rep = filter_dataset(ds, FilterRules(area=(0.0, 0.05)))
    assert rep.n_boxes_out == 3
    # pixel aspect of ROW boxes: 50 px / 50 px = 1 at 1000x500; of `wide`: 800/50 = 16
    out, rep = filter_dataset(ds, FilterRules(aspect=(0.5, 2.0)))
    assert rep.n_boxes_out == 3 and wide not in [(b.x1, b.y1, b.x2, b.y2) for b in out.images[0].boxes]
    out, rep = filter_dataset(ds, FilterRules(max_boxes=3))
    assert out.images == [] and rep.images_removed["max_boxes"] == 1 and rep.rules[0].removed == 4


def test_flags_first_match_attribution_and_image_policies():
    rec = _rec(ROW + [GROUP], is_group_of=[False, False, False, True], is_occluded=[True, False, False, True])
    ds = Dataset(["w"], [rec, _rec([])])
    out, rep = filter_dataset(ds, FilterRules(drop_group_of=True, drop_occluded=True, drop_containers=True))
    by_rule = {r.rule: r for r in rep.rules}
    assert (by_rule["group_of"].removed, by_rule["occluded"].flagged, by_rule["occluded"].removed) == (1, 2, 1)
    assert by_rule["containers"].flagged == 1 and by_rule["containers"].removed == 0
    assert rep.n_boxes_out == 2 and len(out.images) == 2  # the empty image (a negative) is kept
    out, rep = filter_dataset(ds, FilterRules(drop_group_of=True, whole_images=True))
    assert len(out.images) == 1 and rep.images_removed["whole_image"] == 1
    out, rep = filter_dataset(Dataset(["w"], [_rec([GROUP], is_group_of=[True])]), FilterRules(drop_group_of=True))
    assert out.images == [] and rep.images_removed["emptied"] == 1


def test_like_rule_keeps_reference_shapes():
    reference = Dataset(["w"], [_rec(ROW)])
    ds = Dataset(["w"], [_rec([(0.5, 0.5, 0.55, 0.6), (0.1, 0.7, 0.9, 0.75)])])
    out, rep = filter_dataset(ds, FilterRules(like=reference_shapes(reference)))
    assert [(b.x1, b.y1) for b in out.images[0].boxes] == [(0.5, 0.5)]
    assert rep.rules[-1].rule == "like" and len(rep.like_centres) == 1  # k reduced to the distinct shapes


def test_filter_does_not_change_its_input():
    ds = facade_set(20, 5, 2.0)
    before = [list(r.boxes) for r in ds.images]
    filter_dataset(ds, FilterRules(drop_group_of=True, drop_containers=True, max_rel_size=3))
    assert [list(r.boxes) for r in ds.images] == before


def test_bad_rules_are_refused():
    for kwargs in ({"area": (0.5, 0.1)}, {"max_rel_size": 1.0}, {"max_boxes": 0}, {"like_iou": 0},
                   {"like": np.zeros((0, 2))}):
        with pytest.raises(DarktuneError):
            FilterRules(**kwargs)


def test_report_table_and_json():
    ds = Dataset(["w"], [_rec(ROW + [GROUP])])
    _, rep = filter_dataset(ds, FilterRules(drop_containers=True, max_boxes=10))
    table = rep.format_table()
    assert "containers" in table and "max_boxes" in table and "4 -> 3" in table
    doc = json.loads(json.dumps(rep.to_dict()))
    assert doc["n_boxes_out"] == 3 and {r["rule"] for r in doc["rules"]} == {"containers", "max_boxes"}


def test_whole_images_counts_each_dropped_image_once_and_table_agrees():
    """An image whose only box a rule removes is 'emptied' (as without --whole-images), not 'whole_image': the
    whole_image row's images column and the images-dropped line count the same images."""
    lone = _rec([GROUP], is_group_of=[True])  # every box removed by the rule itself
    mixed = _rec(ROW + [GROUP], is_group_of=[False, False, False, True])  # whole_image takes the 3 others
    clean = _rec(ROW, is_group_of=[False] * 3)
    out, rep = filter_dataset(Dataset(["w"], [lone, mixed, clean]), FilterRules(drop_group_of=True,
                                                                                whole_images=True))
    by_rule = {r.rule: r for r in rep.rules}
    assert rep.images_removed == {"max_boxes": 0, "emptied": 1, "whole_image": 1}
    assert by_rule["whole_image"].images == rep.images_removed["whole_image"] == 1
    assert (by_rule["whole_image"].flagged, by_rule["whole_image"].removed) == (3, 3)
    assert by_rule["group_of"].images == 2 and len(out.images) == 1
    assert sum(rep.images_removed.values()) == rep.n_images_in - rep.n_images_out
    assert sum(r.removed for r in rep.rules) == rep.n_boxes_in - rep.n_boxes_out
    table = rep.format_table()
    assert "images in which the rule removed a box" in table
    assert "images 3 -> 1 (images dropped: emptied 1, whole_image 1)" in table


def test_report_without_rules_or_without_hits_says_so():
    ds = Dataset(["w"], [_rec(ROW)])
    _, rep = filter_dataset(ds, FilterRules())
    assert rep.rules == [] and rep.format_table().splitlines() == [
        "no filter rule given, so no box was removed", "boxes 3 -> 3, images 1 -> 1"]
    _, rep = filter_dataset(ds, FilterRules(drop_group_of=True, area=(0.0, 1.0)))
    assert [r.rule for r in rep.rules] == ["group_of", "area"]
    assert "no rule flagged any box (active: group_of, area)" in rep.format_table()
    _, rep = filter_dataset(Dataset(["w"], []), FilterRules(drop_containers=True))
    assert [r.rule for r in rep.rules] == ["containers"]  # an active rule has a row even with no image


# ----------------------------------------------------------------------------------------------- CLI


def _tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _darknet_folder(tmp_path: Path, name: str, images: list[list[tuple]]) -> Path:
    import cv2

    folder = tmp_path / name
    folder.mkdir()
    (folder / "obj.names").write_text("window\n")
    for i, boxes in enumerate(images):
        cv2.imwrite(str(folder / f"{name}{i}.jpg"), np.full((100, 200, 3), 90, np.uint8))
        lines = [f"0 {(x1 + x2) / 2} {(y1 + y2) / 2} {x2 - x1} {y2 - y1}" for x1, y1, x2, y2 in boxes]
        (folder / f"{name}{i}.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_cli_filter_writes_a_new_dataset_and_leaves_the_source(tmp_path, capsys):
    from darktune.cli import main

    src = _darknet_folder(tmp_path, "src", [ROW + [GROUP], ROW, [GROUP]])
    ref = _darknet_folder(tmp_path, "ref", [ROW])
    before = _tree_hash(src)
    rc = main(["data", "filter", str(src), "--out", str(tmp_path / "out"), "--drop-containers",
               "--like", str(ref), "--like-iou", "0.5", "--json", "--val-fraction", "0"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_boxes_in"] == 8 and doc["n_boxes_out"] == 6 and doc["images_removed"]["emptied"] == 1
    assert _tree_hash(src) == before
    from darktune.data.formats.yolo import read_yolo

    assert read_yolo(tmp_path / "out").n_boxes == 6
    rc = main(["data", "filter", str(src), "--out", str(tmp_path / "out"), "--drop-containers"])
    assert rc == 2  # refuses a non-empty output folder


def test_cli_filter_without_rules_prints_a_line_not_an_empty_table(tmp_path, capsys):
    from darktune.cli import main

    src = _darknet_folder(tmp_path, "src", [ROW])
    assert main(["data", "filter", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "no filter rule given" in out and "flagged" not in out


# ----------------------------------------------------------------------------- VOC difficult, --classes


def test_drop_difficult_rule_removes_exactly_the_difficult_boxes():
    """darknet's voc_label.py leaves `<difficult>1</difficult>` objects out of training; --drop-difficult does."""
    ds = Dataset(["w"], [_rec(ROW, is_difficult=[False, True, False]), _rec([GROUP], is_difficult=[True])])
    out, rep = filter_dataset(ds, FilterRules(drop_difficult=True))
    assert [r.rule for r in rep.rules] == ["difficult"]
    assert (rep.rules[0].flagged, rep.rules[0].removed, rep.rules[0].images) == (2, 2, 2)
    assert rep.n_boxes_out == 2 and not any(b.is_difficult for r in out.images for b in r.boxes)
    assert rep.images_removed["emptied"] == 1
    assert filter_dataset(ds, FilterRules())[1].n_boxes_out == 4  # off by default


def test_cli_drop_difficult(tmp_path, capsys, monkeypatch):
    """The flag reaches the rule and is counted in the text and --json reports (sources are read by the format
    readers; here an in-memory one stands in, so the test does not depend on a reader)."""
    import cv2

    import darktune.cli.data as cli_data
    from darktune.cli import main

    with pytest.raises(SystemExit):
        main(["data", "filter", "--help"])
    assert "--drop-difficult" in capsys.readouterr().out
    images = []
    for i, flags in enumerate([[False, True, False], [False, False, False]]):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.full((100, 200, 3), 90, np.uint8))
        images.append(replace(_rec(ROW, is_difficult=flags), path=tmp_path / f"{i}.jpg"))
    notes = {"n_images_merged": 0, "n_records_merged": 0, "n_duplicate_boxes_dropped": 0,
             "n_boxes_removed_by_classes": 0, "n_images_removed_by_classes": 0}
    monkeypatch.setattr(cli_data, "load_sources", lambda args: (Dataset(["w"], list(images)), dict(notes)))
    assert main(["data", "filter", "src", "--out", str(tmp_path / "o1"), "--drop-difficult", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rules"] == [{"rule": "difficult", "flagged": 1, "removed": 1, "images": 1}]
    assert doc["n_boxes_in"] == 6 and doc["n_boxes_out"] == 5
    assert main(["data", "filter", "src", "--out", str(tmp_path / "o2"), "--drop-difficult"]) == 0
    assert "difficult" in capsys.readouterr().out


def test_cli_filter_reports_boxes_removed_by_classes(tmp_path, capsys):
    """Boxes removed by --classes were counted nowhere."""
    from darktune.cli import main

    src = _darknet_folder(tmp_path, "src", [ROW, ROW])
    (src / "obj.names").write_text("window\ndoor\n")
    (src / "src1.txt").write_text("1 0.5 0.5 0.1 0.1\n")  # the second image: one door, no window
    rc = main(["data", "filter", str(src), "--classes", "window", "--out", str(tmp_path / "o1"), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_boxes_removed_by_classes"] == 1 and doc["n_images_removed_by_classes"] == 1
    assert doc["n_boxes_in"] == 3
    assert main(["data", "filter", str(src), "--classes", "window", "--out", str(tmp_path / "o2")]) == 0
    assert ("--classes removed 1 box of other classes, and 1 image left without boxes (--keep-empty keeps such "
            "images as negatives)") in capsys.readouterr().out
    assert main(["data", "filter", str(src), "--classes", "Window", "--out", str(tmp_path / "o3")]) == 2
    assert "did you mean 'window'?" in capsys.readouterr().err


def test_cli_drop_difficult_on_a_voc_source(tmp_path, capsys):
    """End to end: the VOC reader's <difficult>1</difficult> reaches --drop-difficult."""
    import cv2

    from darktune.cli import main

    src = tmp_path / "voc"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.full((80, 100, 3), 90, np.uint8))
    objects = "".join(f"<object><name>cat</name><difficult>{d}</difficult><bndbox><xmin>{x}</xmin><ymin>10</ymin>"
                      f"<xmax>{x + 20}</xmax><ymax>30</ymax></bndbox></object>" for x, d in ((10, 0), (50, 1)))
    (src / "a.xml").write_text(f"<annotation><filename>a.jpg</filename><size><width>100</width><height>80</height>"
                               f"</size>{objects}</annotation>")
    assert main(["data", "filter", str(src), "--format", "voc", "--drop-difficult", "--out", str(tmp_path / "o"),
                 "--val-fraction", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rules"] == [{"rule": "difficult", "flagged": 1, "removed": 1, "images": 1}]
    assert doc["n_boxes_in"] == 2 and doc["n_boxes_out"] == 1
