"""darktune/data/tile_advice.py: the rule of thumb by hand-worked cases."""

from __future__ import annotations

from pathlib import Path

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.stats import dataset_stats, format_stats
from darktune.data.tile_advice import tiling_advice


def _one_image(w: int, h: int, box_px: list[tuple[float, float, float, float]]) -> Dataset:
    boxes = [Box("a", x1 / w, y1 / h, x2 / w, y2 / h) for x1, y1, x2, y2 in box_px]
    return Dataset(["a"], [ImageRecord(Path("x.png"), w, h, boxes)])


def test_small_trees_in_a_large_orthophoto_want_tiles():
    # 40x40 px crowns in a 2000x1000 image: 40 * 416 / 2000 = 8.3 network px with a plain resize (< 16);
    # the largest tile keeping them at 32 px: 40 * 416 / 32 = 520 -> 512 (a multiple of 32), 32.5 px there;
    # overlap: the largest side 40 px is 0.078 of 512 -> 0.1 (the floor)
    advice = tiling_advice(_one_image(2000, 1000, [(100, 100, 140, 140), (500, 600, 540, 640)]))
    assert advice["needed"] and advice["tile"] == 512 and advice["overlap"] == 0.1
    assert advice["median_object_net_px_resized"] == 8.3 and advice["median_object_net_px_tiled"] == 32.5
    assert "data tile --size 512 --overlap 0.1" in advice["advice"]


def test_large_objects_want_overlap_and_small_images_no_tiles():
    # 300 px objects of 3000 px frames: 300 * 416 / 3000 = 41.6 network px, no tiling needed
    assert not tiling_advice(_one_image(3000, 2000, [(0, 0, 300, 300)]))["needed"]
    # 10 px objects in a 400 px image: 10.4 px after resizing, but the image is no larger than the network
    small = tiling_advice(_one_image(400, 400, [(0, 0, 10, 10)]))
    assert not small["needed"] and "no tiling needed" in small["advice"]
    # long objects: the overlap grows to hold them (the 95th percentile of the larger side is 200 px, of a
    # 512 px tile 0.39 -> 0.4); the median object (40 px) still sets the tile
    advice = tiling_advice(_one_image(4000, 4000, [(0, 0, 40, 40)] * 16 + [(1000, 1000, 1200, 1040)] * 4))
    assert advice["tile"] == 512 and advice["overlap"] == 0.4


def test_stats_report_the_advice():
    stats = dataset_stats(_one_image(2000, 1000, [(100, 100, 140, 140)]), anchors_k=0, check_files=False)
    assert stats.tiling["tile"] == 512 and stats.to_dict()["tiling"]["needed"]
    assert "tiles of 512 px" in format_stats(stats)
    assert dataset_stats(Dataset(["a"], []), anchors_k=0, check_files=False).tiling is None
