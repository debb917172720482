"""Tests of the synthetic windows benchmark (darktune/data/synth*.py and `darktune data synth`)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from darktune.cli.synth_cmd import add_synth_parser
from darktune.data.synth.sets import (
    OPEN_IMAGES_HEADER,
    annotate_domain,
    make_domain_set,
    make_target_set,
    parse_size,
)
from darktune.data.synth.scene import WindowRecord, render_scene
from darktune.data.synth.style import TARGET_STYLE, distractor_style, is_target_design
from darktune.errors import DarktuneError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert tuple(header) == OPEN_IMAGES_HEADER
        return [dict(zip(header, row, strict=True)) for row in reader]


@pytest.fixture(scope="module")
def domain_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("domain")
    make_domain_set(out, 60, 96, seed=3)
    return out


def test_target_set_is_bit_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_target_set(a, 5, "96x80", seed=7)
    make_target_set(b, 5, "96x80", seed=7)
    make_target_set(c, 5, "96x80", seed=8)
    fa, fb = _files(a), _files(b)
    # list files and obj.data hold absolute paths: equal once the folder is taken out
    norm = {k: v.replace(str(a.resolve()).encode(), b"ROOT") for k, v in fa.items()}
    assert norm == {k: v.replace(str(b.resolve()).encode(), b"ROOT") for k, v in fb.items()}
    assert fa["images/000000.jpg"] != _files(c)["images/000000.jpg"]


def test_domain_set_is_bit_deterministic(tmp_path):
    make_domain_set(tmp_path / "a", 4, 80, seed=1)
    make_domain_set(tmp_path / "b", 4, 80, seed=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_image_depends_only_on_seed_and_index(tmp_path):
    make_target_set(tmp_path / "a", 3, 64, seed=2)
    make_target_set(tmp_path / "b", 6, 64, seed=2)
    assert (tmp_path / "a/images/000002.jpg").read_bytes() == (tmp_path / "b/images/000002.jpg").read_bytes()


def test_target_set_layout_and_labels(tmp_path):
    obj = make_target_set(tmp_path / "t", 20, 96, seed=0, val_fraction=0.25)
    assert obj == tmp_path / "t/obj.data"
    fields = dict(line.split(" = ") for line in obj.read_text().splitlines())
    assert fields["classes"] == "1" and fields["backup"] == "backup/"
    for key in ("train", "valid", "names"):
        assert Path(fields[key]).is_absolute() and Path(fields[key]).is_file()
    assert Path(fields["names"]).read_text() == "window\n"
    train = Path(fields["train"]).read_text().splitlines()
    valid = Path(fields["valid"]).read_text().splitlines()
    assert len(valid) == 5 and len(train) == 15 and not set(train) & set(valid)
    n_boxes = 0
    for image in train + valid:
        assert Path(image).is_file()
        for line in Path(image).with_suffix(".txt").read_text().splitlines():
            cls, *vals = line.split(" ")
            assert cls == "0" and all(len(v.split(".")[1]) == 6 for v in vals)
            cx, cy, w, h = map(float, vals)
            assert 0 < w <= 1 and 0 < h <= 1
            assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 - 1e-6 <= 1
            assert 0 <= cy - h / 2 + 1e-6 and cy + h / 2 - 1e-6 <= 1
            n_boxes += 1
    assert n_boxes >= 20  # most images show the target several times


def test_target_scenes_mix_target_and_distractors():
    n_target = n_other = with_target = 0
    for i in range(30):
        _, recs = render_scene(np.random.default_rng([5, i]), 96, 96, "target")
        t = sum(r.target for r in recs)
        n_target += t
        n_other += len(recs) - t
        with_target += t > 0
    assert with_target >= 20
    assert n_other >= 0.4 * n_target  # unlabelled distractors are common, not an exception


def test_distractors_are_never_the_target_design():
    rng = np.random.default_rng(0)
    styles = [distractor_style(rng) for _ in range(300)]
    assert not any(is_target_design(s) for s in styles)
    # some share the target's frame, pane grid or glass: the target is told apart by details
    assert sum(s.panes == TARGET_STYLE.panes for s in styles) > 10
    assert sum(s.glass_bgr == TARGET_STYLE.glass_bgr for s in styles) > 10


def test_domain_csv_parses_with_exact_header(domain_set):
    rows = _read_csv(domain_set / "boxes.csv")
    assert (domain_set / "class-descriptions.csv").read_text() == "/m/0d4v4,Window\n"
    ids = {p.stem for p in (domain_set / "images").glob("*.jpg")}
    assert len(ids) == 60 and {r["ImageID"] for r in rows} <= ids
    for r in rows:
        assert r["LabelName"] == "/m/0d4v4" and r["Confidence"] == "1"
        x0, x1, y0, y1 = (float(r[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert all(r[k] in ("0", "1") for k in OPEN_IMAGES_HEADER[8:])
    assert any(r["IsTruncated"] == "1" for r in rows) and any(r["IsTruncated"] == "0" for r in rows)


def test_domain_group_boxes_hold_no_single_boxes(domain_set):
    rows = _read_csv(domain_set / "boxes.csv")
    box = {id(r): np.array([float(r[k]) for k in ("XMin", "YMin", "XMax", "YMax")]) for r in rows}
    for g in (r for r in rows if r["IsGroupOf"] == "1"):
        gb = box[id(g)]
        for s in (r for r in rows if r["ImageID"] == g["ImageID"] and r["IsGroupOf"] == "0"):
            sb = box[id(s)]
            inter = np.prod(np.clip(np.minimum(gb[2:], sb[2:]) - np.maximum(gb[:2], sb[:2]), 0, None))
            assert inter < 0.9 * np.prod(sb[2:] - sb[:2]), "a group member kept its own box"


def test_domain_group_fraction_honoured(domain_set, tmp_path):
    rows = _read_csv(domain_set / "boxes.csv")
    share = sum(r["IsGroupOf"] == "1" for r in rows) / len(rows)
    assert abs(share - 0.2) < 0.02
    make_domain_set(tmp_path / "g", 30, 96, seed=4, group_fraction=0.4)
    rows = _read_csv(tmp_path / "g/boxes.csv")
    assert abs(sum(r["IsGroupOf"] == "1" for r in rows) / len(rows) - 0.4) < 0.03
    make_domain_set(tmp_path / "z", 10, 96, seed=4, group_fraction=0.0)
    assert all(r["IsGroupOf"] == "0" for r in _read_csv(tmp_path / "z/boxes.csv"))


def test_group_members_lose_their_own_boxes():
    for seed in range(10):
        recs = [WindowRecord((10.0 + 20 * c, 10.0, 25.0 + 20 * c, 30.0), False, c == 1, False, 0, 0, c)
                for c in range(3)]
        totals = [0, 0]
        boxes = annotate_domain(recs, np.random.default_rng(seed), 0.5, totals)
        groups = [b for b in boxes if b.group]
        singles = [b for b in boxes if not b.group]
        assert len(groups) == 1 and totals == [1, len(boxes)]
        gx0, _, gx1, _ = groups[0].box
        members = [r for r in recs if gx0 <= r.box[0] and r.box[2] <= gx1]
        assert len(members) >= 2 and len(members) + len(singles) == 3
        assert not any(gx0 <= s.box[0] and s.box[2] <= gx1 for s in singles)  # members have no own box
        assert groups[0].occluded  # the middle (occluded) window is in every group of this row


def test_existing_folder_rules(tmp_path):
    make_target_set(tmp_path / "t", 2, 64, seed=0)
    before = _files(tmp_path / "t")
    make_target_set(tmp_path / "t", 2, 64, seed=0)  # same set: reused, untouched
    assert _files(tmp_path / "t") == before
    with pytest.raises(DarktuneError, match="different synthetic set"):
        make_target_set(tmp_path / "t", 3, 64, seed=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("user file")
    with pytest.raises(DarktuneError, match="not an empty folder"):
        make_domain_set(tmp_path / "mine", 2, 64, seed=0)
    assert (tmp_path / "mine/notes.txt").read_text() == "user file"


@pytest.mark.parametrize("size,expected", [(160, (160, 160)), ("416", (416, 416)), ("320x240", (320, 240)),
                                           ((64, 48), (64, 48))])
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("bad", ["0", "big", "10x10", "416x320x2", 99999])
def test_parse_size_rejects(bad):
    with pytest.raises(DarktuneError):
        parse_size(bad)


def test_bad_arguments(tmp_path):
    with pytest.raises(DarktuneError):
        make_target_set(tmp_path / "x", 0, 64, seed=0)
    with pytest.raises(DarktuneError):
        make_domain_set(tmp_path / "x", 2, 64, seed=0, group_fraction=1.5)
    with pytest.raises(DarktuneError):
        make_target_set(tmp_path / "x", 2, 64, seed=-1)


def test_cli_synth_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "--kind", "target", "--n", "3", "--size", "64", "--out",
                              str(tmp_path / "cli"), "--seed", "1", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 3 and out["train"] + out["valid"] == 3
    assert Path(out["path"]).name == "obj.data"


def _norm(root: Path) -> dict[str, bytes]:
    """Files of a target set with its absolute folder taken out of the list files."""
    return {k: v.replace(str(root.resolve()).encode(), b"ROOT") for k, v in _files(root).items()}


def test_workers_write_the_same_bytes(tmp_path):
    make_target_set(tmp_path / "t1", 12, 80, seed=5, distractors=2)
    make_target_set(tmp_path / "t2", 12, 80, seed=5, distractors=2, workers=2)
    assert _norm(tmp_path / "t1") == _norm(tmp_path / "t2")
    # the domain set's group boxes are chosen in image order from each image's random stream after drawing
    make_domain_set(tmp_path / "d1", 12, 80, seed=5)
    make_domain_set(tmp_path / "d2", 12, 80, seed=5, workers=3)
    assert _files(tmp_path / "d1") == _files(tmp_path / "d2")
    with pytest.raises(DarktuneError, match="workers"):
        make_target_set(tmp_path / "t3", 2, 64, seed=0, workers=0)


def test_distractor_cap_per_image():
    free, capped = 0, 0
    for i in range(30):
        _, uncapped = render_scene(np.random.default_rng([4, 2, i]), 128, 128, "target")
        free += sum(not r.target for r in uncapped)
        for cap in (0, 2):
            _, recs = render_scene(np.random.default_rng([4, 2, i]), 128, 128, "target", max_distractors=cap,
                                   choice_rng=np.random.default_rng([4, 2, i, 1]))
            assert sum(not r.target for r in recs) <= cap
            capped += sum(not r.target for r in recs) if cap == 2 else 0
    assert free > capped > 0  # the cap bites, and leaves distractors where it allows them


def test_distractors_setting_is_seeded_and_recorded(tmp_path):
    make_target_set(tmp_path / "a", 10, 96, seed=2, distractors=1)
    make_target_set(tmp_path / "b", 10, 96, seed=2, distractors=1)
    make_target_set(tmp_path / "none", 10, 96, seed=2, distractors=0)
    make_target_set(tmp_path / "free", 10, 96, seed=2)
    assert _norm(tmp_path / "a") == _norm(tmp_path / "b")
    info = {k: json.loads((tmp_path / k / "synth.json").read_text()) for k in ("a", "none", "free")}
    assert info["none"]["stats"]["distractor_windows"] == 0 and info["none"]["stats"]["target_boxes"] > 0
    assert info["a"]["stats"]["distractor_windows"] <= 10
    assert info["free"]["stats"]["distractor_windows"] > info["a"]["stats"]["distractor_windows"]
    assert info["a"]["params"]["distractors"] == 1 and "distractors" not in info["free"]["params"]
    with pytest.raises(DarktuneError, match="different synthetic set"):  # another cap is another set
        make_target_set(tmp_path / "a", 10, 96, seed=2, distractors=3)
    with pytest.raises(DarktuneError, match="distractors"):
        make_target_set(tmp_path / "bad", 2, 64, seed=0, distractors=-1)


def test_cli_positional_kind_distractors_and_workers(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "target", "--n", "4", "--size", "64", "--out", str(tmp_path / "t"),
                              "--distractors", "0", "--workers", "2", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["distractor_windows"] == 0 and out["workers"] == 2 and out["images_per_s"] > 0
    bad = parser.parse_args(["synth", "domain", "--n", "2", "--out", str(tmp_path / "d"), "--distractors", "1"])
    with pytest.raises(DarktuneError, match="target set"):
        bad.func(bad)
    clash = parser.parse_args(["synth", "domain", "--kind", "target", "--n", "2", "--out", str(tmp_path / "c")])
    with pytest.raises(DarktuneError, match="disagree"):
        clash.func(clash)


def _mean_box_width(recs) -> float:
    return float(np.mean([r.box[2] - r.box[0] for r in recs])) if recs else 0.0


def test_window_scale_gives_closer_views_and_defaults_are_unchanged():
    near, far = [], []
    for i in range(20):
        rng = [3, 2, i]
        img_a, default = render_scene(np.random.default_rng(rng), 128, 128, "target")
        img_b, explicit = render_scene(np.random.default_rng(rng), 128, 128, "target", window_scale=(0.07, 0.32),
                                       near_miss=0.5)
        assert np.array_equal(img_a, img_b) and default == explicit  # the defaults are the named constants
        _, close = render_scene(np.random.default_rng(rng), 128, 128, "target", window_scale=(0.2, 0.4))
        near.append(_mean_box_width(close))
        far.append(_mean_box_width(default))
    assert np.mean(near) > 1.5 * np.mean(far)


def test_records_carry_each_window_design():
    from darktune.data.synth.style import is_target_design

    _, recs = render_scene(np.random.default_rng([5, 2, 0]), 128, 128, "target")
    assert recs and all(r.style is not None and is_target_design(r.style) == r.target for r in recs)


def test_near_miss_fraction_changes_the_distractors():
    from darktune.data.synth.style import TARGET_STYLE, distractor_style

    def near_misses(p: float) -> int:
        rng = np.random.default_rng(9)
        styles = [distractor_style(rng, p) for _ in range(400)]
        # a near miss keeps most of the target's details: count those with the target's frame or glass
        return sum(s.frame_bgr == TARGET_STYLE.frame_bgr or s.glass_bgr == TARGET_STYLE.glass_bgr for s in styles)

    assert near_misses(0.0) < near_misses(0.5) < near_misses(1.0)


def test_scene_options_are_recorded_and_checked(tmp_path, capsys):
    make_target_set(tmp_path / "c", 4, 64, seed=1, window_scale=(0.2, 0.4), near_miss=0.25)
    params = json.loads((tmp_path / "c" / "synth.json").read_text())["params"]
    assert params["window_scale"] == [0.2, 0.4] and params["near_miss"] == 0.25
    make_target_set(tmp_path / "d", 4, 64, seed=1)
    assert "window_scale" not in json.loads((tmp_path / "d" / "synth.json").read_text())["params"]
    with pytest.raises(DarktuneError, match="different synthetic set"):
        make_target_set(tmp_path / "c", 4, 64, seed=1, window_scale=(0.2, 0.5), near_miss=0.25)
    for bad in ((0.0, 0.3), (0.4, 0.2), (0.1, 1.5), "x"):
        with pytest.raises(DarktuneError, match="window scale"):
            make_target_set(tmp_path / "bad", 2, 64, seed=0, window_scale=bad)
    with pytest.raises(DarktuneError, match="near-miss"):
        make_target_set(tmp_path / "bad", 2, 64, seed=0, near_miss=1.5)
    make_domain_set(tmp_path / "dom", 3, 64, seed=1, window_scale=(0.2, 0.4))
    assert json.loads((tmp_path / "dom" / "synth.json").read_text())["params"]["window_scale"] == [0.2, 0.4]
    with pytest.raises(DarktuneError, match="window scale"):
        make_domain_set(tmp_path / "dom2", 3, 64, seed=1, window_scale=(0.5, 0.2))
    parser = argparse.ArgumentParser()
    add_synth_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "target", "--n", "2", "--size", "64", "--out", str(tmp_path / "cli"),
                              "--window-scale", "0.2,0.4", "--near-miss", "0", "--close-up", "0.5,0.7", "--json"])
    assert args.func(args) == 0
    params = json.loads((tmp_path / "cli" / "synth.json").read_text())["params"]
    assert params["window_scale"] == [0.2, 0.4] and params["near_miss"] == 0.0 and params["close_up"] == [0.5, 0.7]
    for flags, match in ((["--window-scale", "0.3"], "window scale"), (["--near-miss", "0.1"], "target set"),
                         (["--close-up", "0.9,0.2"], "close-up")):
        kind = "domain" if flags[0] == "--near-miss" else "target"
        bad = parser.parse_args(["synth", kind, "--n", "2", "--out", str(tmp_path / "e"), *flags])
        with pytest.raises(DarktuneError, match=match):
            bad.func(bad)


def test_close_ups_centre_one_large_window_and_keep_honest_records(tmp_path):
    from darktune.data.synth.scene import crop_close_up

    large = 0
    for i in range(12):
        img, recs = render_scene(np.random.default_rng([6, 2, i]), 384, 384, "target", window_scale=(0.14, 0.4))
        out, kept = crop_close_up(img, recs, np.random.default_rng([6, 2, i, 2]), (128, 128), (0.45, 0.75))
        assert out.shape == (128, 128, 3) and out.dtype == np.uint8
        for r in kept:
            x0, y0, x1, y1 = r.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        widths = [(r.box[2] - r.box[0]) / 128 for r in kept if not r.truncated]
        large += any(0.4 <= w <= 0.8 for w in widths)
    assert large >= 9  # nearly every close-up shows its window whole at the drawn size (a few scenes have none)
    make_target_set(tmp_path / "a", 6, 64, seed=3, close_up=(0.45, 0.75))
    make_target_set(tmp_path / "b", 6, 64, seed=3, close_up=(0.45, 0.75), workers=2)
    assert _norm(tmp_path / "a") == _norm(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "synth.json").read_text())["params"]["close_up"] == [0.45, 0.75]
    with pytest.raises(DarktuneError, match="close-up"):
        make_target_set(tmp_path / "c", 2, 64, seed=0, close_up=(0.8, 0.5))
    make_domain_set(tmp_path / "d", 4, 64, seed=3, close_up=(0.45, 0.75))
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["params"]["close_up"] == [0.45, 0.75]
