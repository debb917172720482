"""benchmarks/darknet_curves.py without darknet: the cfg both tools train (the zoo's yolov3-tiny with one class and
the comparison's [net] keys, as darknet and darktune read it), darknet's printed losses read back, and the
mean/range over runs taken only where every run has a checkpoint."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from darktune.darknet.cfg import parse_cfg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
spec = importlib.util.spec_from_file_location("darknet_curves", REPO / "benchmarks" / "darknet_curves.py")
darknet_curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(darknet_curves)


def test_the_cfg_both_tools_train(coco, tmp_path):
    out = darknet_curves.net_cfg(coco.cfg, tmp_path / "net.cfg", size=320, batch=8, iterations=200, lr=0.001,
                                 burn_in=20, steps=(160, 180))
    net = parse_cfg(out)
    assert (net.net.batch, net.net.subdivisions, net.net.width, net.net.height) == (8, 1, 320, 320)
    assert (net.net.learning_rate, net.net.burn_in, net.net.max_batches, tuple(net.net.steps)) == (
        0.001, 20, 200, (160, 180))
    assert net.num_classes == 1 and [net.layers[i].filters for i in (15, 22)] == [18, 18]
    assert [tuple(net.layers[i].mask) for i in (16, 23)] == [(3, 4, 5), (1, 2, 3)]  # the zoo's fixed mask
    with pytest.raises(SystemExit, match="no \\[net\\] key"):
        broken = tmp_path / "broken.cfg"
        broken.write_text(coco.cfg.read_text().replace("burn_in", "burnin"))
        darknet_curves.net_cfg(broken, tmp_path / "x.cfg", size=320, batch=8, iterations=200, lr=0.001,
                               burn_in=20, steps=(160, 180))


def test_darknet_losses_and_the_mean_over_runs(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(" Resizing, random_coef = 1.40 \n"
                   " 1: 584.584412, 584.584412 avg loss, 0.000000 rate, 15.8 seconds, 8 images, -1.0 hours left\n"
                   " 2: -nan, 584.1 avg loss, 0.000000 rate, 11.5 seconds, 16 images, 0.04 hours left\n"
                   "v3 (mse loss, Normalizer: (iou: 0.75, obj: 1.00, cls: 1.00) Region 16 Avg (IOU: 0.0)\n")
    losses = darknet_curves.darknet_losses(log)
    assert losses[1] == pytest.approx(584.584412) and losses[2] != losses[2] and set(losses) == {1, 2}
    runs = [{20: {"darknet": 0.1}, 40: {"darknet": 0.3}}, {20: {"darknet": 0.3}}]
    assert darknet_curves.summarise(runs, "darknet") == {20: {"mean": pytest.approx(0.2), "min": 0.1, "max": 0.3}}
