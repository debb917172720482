"""benchmarks/real_sets.py: the rules that turn the packages' annotations into the real-data sets (a box kept in a
crop when half of it is inside, clipped; MOT's pedestrians with the considered flag, 1-based and clipped)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("real_sets", REPO / "benchmarks" / "real_sets.py")
real_sets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real_sets)


def test_a_box_stays_in_a_crop_when_half_of_it_is_inside():
    boxes = [(10, 10, 30, 30), (400, 10, 440, 30), (405, 10, 440, 30), (500, 500, 510, 510)]
    # the second box has 16/40 of its width inside the 416 px crop at (0, 0): dropped; the first whole; the
    # third 11/35 inside: dropped; the fourth outside
    assert real_sets._crop_boxes(boxes, 0, 0, 416, 416) == [(10, 10, 30, 30)]
    # the crop to the right holds 24/40 of the second box: kept, clipped, in the crop's coordinates
    assert real_sets._crop_boxes(boxes, 416, 0, 416, 416) == [(0, 10, 24, 30), (0, 10, 24, 30)]


def test_mot_pedestrians_considered_only_one_based_and_clipped(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,11,21,100,200,1,1,1.0\n"        # pedestrian, considered: kept, 1-based -> 0-based
                  "1,2,1,1,50,50,0,1,1.0\n"            # not considered
                  "1,3,1,1,50,50,1,7,1.0\n"            # static person (class 7)
                  "1,4,1900,1000,100,200,1,1,1.0\n"    # past the frame's corner: clipped
                  "2,1,11,21,100,200,1,1,1.0\n")       # another frame
    assert real_sets._mot_boxes(gt, 1, 1920, 1080) == [(10.0, 20.0, 110.0, 220.0), (1899.0, 999.0, 1920.0, 1080.0)]
