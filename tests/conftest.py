"""Shared fixtures: the official COCO yolov3-tiny files (fetched once into $DARKTUNE_HOME, verified)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def coco():
    """FetchResult with .cfg, .weights, .names of the official COCO yolov3-tiny (sha256-verified)."""
    from darktune import zoo

    return zoo.fetch("yolov3-tiny", progress=False)


@pytest.fixture(scope="session")
def coco_spec(coco):
    from darktune.cfg import parse_cfg

    return parse_cfg(coco.cfg)


@pytest.fixture(scope="session")
def coco_model(coco, coco_spec):
    from darktune.model import Darknet
    from darktune.weights import load_weights

    model = Darknet(coco_spec).eval()
    load_weights(model, coco.weights)
    return model


@pytest.fixture(scope="session")
def photo_path():
    """A real photograph shipped with matplotlib (Grace Hopper: a person wearing a tie)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert path.is_file()
    return path
