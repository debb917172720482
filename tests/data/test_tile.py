"""darktune/data/tile.py: the tile grid, box clipping by hand-worked cases, and tiling of a small real image.

The fixture tests/data/trees_crop/yell_crop.jpg is a 520x400 crop (x 600..1120, y 800..1200) of deepforest
2.1.0's orthophoto 2019_YELL_2_528000_4978000_image_crop2.png, its 27 tree-crown boxes from the package's VOC
file (boxes at least half inside the crop, clipped to it), in YOLO format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from darktune.cli import main
from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.formats.yolo import read_yolo
from darktune.data.tile import TileOptions, clip_to_tile, tile_dataset, tile_grid, tile_stride
from darktune.errors import DarktuneError

TREES = Path(__file__).parent / "trees_crop"


def test_grid_by_hand():
    # 1000 px, tiles of 416, overlap 0.2: stride 416 - int(83.2) = 333; starts 0, 333, then the last is moved
    # back to end at the edge: 1000 - 416 = 584 (666 would overshoot)
    assert tile_stride(416, 0.2) == 333
    assert [t[0] for t in tile_grid(1000, 300, 416, 0.2)] == [0, 333, 584]
    assert tile_grid(1000, 300, 416, 0.2)[0] == (0, 0, 416, 300)  # a short axis: one tile, as long as the image
    assert tile_grid(416, 416, 416, 0.5) == [(0, 0, 416, 416)]  # exactly one tile
    assert tile_grid(417, 100, 416, 0.0) == [(0, 0, 416, 100), (1, 0, 417, 100)]
    grid = tile_grid(2299, 2472, 416, 0.2)
    assert len(grid) == 7 * 8 and all(x2 - x1 == 416 and y2 - y1 == 416 for x1, y1, x2, y2 in grid)
    assert max(t[2] for t in grid) == 2299 and max(t[3] for t in grid) == 2472


def test_clip_by_hand():
    tile = (100, 100, 200, 200)
    boxes = np.array([[120, 120, 140, 150],   # inside: kept as it is, shifted by the offset
                      [180, 110, 220, 130],   # half inside (x 180..200 of 180..220): kept at min_visible 0.5
                      [190, 110, 230, 130],   # a quarter inside: dropped
                      [300, 300, 310, 310],   # elsewhere: neither kept nor dropped
                      [90, 90, 210, 210]])    # larger than the tile: 100/144 of its area inside, clipped to it
    out, kept, dropped = clip_to_tile(boxes, tile, 0.5)
    assert kept.tolist() == [0, 1, 4]
    np.testing.assert_allclose(out, [[20, 20, 40, 50], [80, 10, 100, 30], [0, 0, 100, 100]])
    assert dropped.tolist() == [False, False, True, False, False]
    _, kept, dropped = clip_to_tile(boxes, tile, 0.25)  # a quarter is enough now
    assert kept.tolist() == [0, 1, 2, 4] and not dropped.any()


def test_options_refused_with_the_flag():
    for kwargs, flag in (({"size": 16}, "--size"), ({"overlap": 1.0}, "--overlap"), ({"min_visible": 0}, "--min"),
                         ({"negatives": 2}, "--negatives"), ({"overlap": float("nan")}, "--overlap")):
        with pytest.raises(DarktuneError, match=flag):
            TileOptions(**kwargs)


def test_tiles_of_a_real_image_map_back_to_its_boxes(tmp_path):
    source = read_yolo(TREES)
    (rec,) = source.images
    obj_data, counts = tile_dataset(source, tmp_path / "tiled", TileOptions(256, 0.25, negatives=1.0))
    # 520 x 400 with 256 px tiles, stride 192: x at 0, 192, 264; y at 0, 144
    assert counts.n_tiles == 6 and counts.n_sources_tiled == 1 and counts.n_boxes_in == 27
    assert counts.n_boxes_lost == 0  # every tree is at least half inside some tile
    manifest = json.loads((tmp_path / "tiled" / "tiles.json").read_text())
    assert [(t["x"], t["y"]) for t in manifest["tiles"]] == [(0, 0), (192, 0), (264, 0), (0, 144), (192, 144),
                                                             (264, 144)]
    truth = np.array([[b.x1 * 520, b.y1 * 400, b.x2 * 520, b.y2 * 400] for b in rec.boxes])
    tiled = read_yolo(obj_data)
    by_path = {str(r.path): r for r in tiled.images}
    import cv2

    whole = cv2.imread(str(TREES / "yell_crop.jpg"))
    for t in manifest["tiles"]:
        tile = by_path[str(tmp_path / "tiled" / t["tile"])]
        pixels = cv2.imread(str(tile.path))
        assert pixels.shape == (256, 256, 3)
        assert np.abs(pixels.astype(int) - whole[t["y"]:t["y"] + 256, t["x"]:t["x"] + 256]).mean() < 3  # JPEG again
        want, _, _ = clip_to_tile(truth, (t["x"], t["y"], t["x"] + 256, t["y"] + 256), 0.5)
        got = np.array([[b.x1 * 256, b.y1 * 256, b.x2 * 256, b.y2 * 256] for b in tile.boxes]).reshape(-1, 4)
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert t["source"] == str((TREES / "yell_crop.jpg").resolve())


def test_small_images_pass_unchanged_and_negatives_are_seeded(tmp_path):
    import cv2

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    cv2.imwrite(str(big), np.zeros((100, 300, 3), np.uint8))
    cv2.imwrite(str(small), np.full((60, 64, 3), 7, np.uint8))
    ds = Dataset(["a"], [ImageRecord(big, 300, 100, [Box("a", 0.0, 0.0, 0.1, 0.5)]),
                         ImageRecord(small, 64, 60, [Box("a", 0.5, 0.5, 0.75, 0.75)])])
    before = big.read_bytes(), small.read_bytes()
    _, counts = tile_dataset(ds, tmp_path / "t", TileOptions(64, 0.0, negatives=0.5, seed=3))
    # 300 x 100 in tiles of 64: x at 0, 64, 128, 192, 236; y at 0, 36. The box (0..30, 0..50 px) lies wholly in
    # the tiles at y 0 and to 14/50 in the one at (0, 36): dropped there
    assert counts.n_sources_unchanged == 1 and counts.n_tiles == 10 and counts.n_empty_tiles == 9
    assert counts.n_box_cuts_dropped == 1 and counts.n_boxes_out == 2
    _, again = tile_dataset(ds, tmp_path / "t2", TileOptions(64, 0.0, negatives=0.5, seed=3))
    assert again.n_negatives_kept == counts.n_negatives_kept  # seeded
    copied = tmp_path / "t" / "images" / "small.png"
    assert copied.read_bytes() == small.read_bytes()
    assert copied.with_suffix(".txt").read_text().split() == ["0", "0.62500000", "0.62500000", "0.25000000",
                                                              "0.25000000"]
    assert (big.read_bytes(), small.read_bytes()) == before  # user files never modified


def test_data_tile_command(tmp_path, capsys):
    out = tmp_path / "tiled"
    assert main(["data", "tile", str(TREES), "--size", "256", "--overlap", "0.25", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tiles"] == 6 and summary["n_boxes_in"] == 27 and Path(summary["obj_data"]).is_file()
    assert main(["data", "tile", str(TREES), "--size", "256", "--out", str(out)]) != 0  # never into a full folder
    assert "not empty" in capsys.readouterr().err
