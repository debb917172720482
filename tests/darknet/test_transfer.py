"""benchmarks/bench_transfer.py: the two starts get identical training arguments except the start weights (and
the scratch freeze when asked), cfg overrides reach the written cfg, and the table reports time to target."""

import importlib.util
import sys
from pathlib import Path

import pytest

from darktune.darknet.cfg import parse_cfg

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_transfer", REPO / "benchmarks" / "bench_transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_transfer"] = module
    spec.loader.exec_module(module)
    return module


def test_starts_differ_only_in_weights(bench, tmp_path):
    args = bench.get_args(["--freeze", "13", "--freeze-scratch", "0", "--seeds", "3", "--no-multi-scale"])
    cfg, data, w = tmp_path / "c.cfg", tmp_path / "obj.data", tmp_path / "conv.15"
    a = bench.train_args(args, cfg, data, "conv15", w, 3, tmp_path / "a")
    b = bench.train_args(args, cfg, data, "scratch", w, 3, tmp_path / "b")
    assert a[a.index("--weights") + 1] == str(w) and a[a.index("--upto") + 1] == "15"
    assert b[b.index("--weights") + 1] == "none" and "--upto" not in b
    assert a[a.index("--freeze") + 1] == "13" and b[b.index("--freeze") + 1] == "0"
    strip = {"--weights", "--upto", "--freeze", "--out"}

    def rest(cmd):
        out, skip = [], False
        for tok in cmd:
            if skip:
                skip = False
            elif tok in strip:
                skip = True
            else:
                out.append(tok)
        return [t for t in out if t != "15"]

    assert rest(a) == rest(b)
    assert "--no-multi-scale" in a and a[a.index("--seed") + 1] == "3"


def test_cfg_overrides_are_written(bench, tmp_path):
    from darktune.darknet.zoo import cached

    if not cached("yolov3-tiny"):
        pytest.skip("yolov3-tiny not in the cache (no download in tests)")
    (tmp_path / "yolov3-tiny.conv.15").write_bytes(b"")  # present: prepare() does not run `partial`
    args = bench.get_args(["--root", str(tmp_path), "--images", "4", "--image-size", "64", "--hue", "0",
                           "--iou-thresh", "0.213"])
    data, cfg, _ = bench.prepare(args)
    spec = parse_cfg(cfg)
    assert spec.net.hue == 0.0 and all(spec.layers[i].iou_thresh == 0.213 for i in spec.yolo_indices)
    assert spec.net.saturation == 1.5 and data.exists() and cfg.name == "yolov3-tiny_hue0_iou_thresh0.213.cfg"


def test_table_reports_time_to_target(bench):
    results = [{"start": "conv15", "seed": 0, "evals": [{"iteration": 100, "map": 0.5}, {"iteration": 200,
                                                                                     "map": 0.93}],
                "time_to_target": {"iteration": 200, "seconds": 321.4}},
               {"start": "scratch", "seed": 0, "evals": [{"iteration": 100, "map": 0.1}, {"iteration": 200,
                                                                                      "map": 0.6}],
                "time_to_target": None}]
    lines = bench.table(results, 0.9)
    assert "200" in lines[0] and "0.930" in lines[2] and "it 200, 321 s" in lines[2]
    assert "not reached" in lines[3] and "0.600" in lines[3]
