"""Shared fixtures: the official COCO yolov3-tiny files (fetched once into $DARKTUNE_HOME, verified)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Collects the reliability tests' counts and keeps docs/reliability.md's table equal to what the suite measured.
pytest_plugins = ["reliability_plugin"]


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny models train fastest so, and more threads oversubscribe a busy machine.
    Test modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    """Fetch the official weights once into the user's cache, then give the tests a private $DARKTUNE_HOME
    (check caches, runs) in which the model folder is a link to that cache: tests never write the user's cache."""
    from darktune.darknet import zoo

    result = zoo.fetch("yolov3-tiny", progress=False)
    home = Path(tempfile.mkdtemp(prefix="darktune-test-home-"))
    (home / "yolov3-tiny").symlink_to(result.weights.parent, target_is_directory=True)
    os.environ["DARKTUNE_HOME"] = str(home)
    # detect's default (--backend auto) would time every runtime once per machine and model shape; the suite
    # runs many small models, so it names the runtime (tests/deploy/test_backend_choice.py covers auto itself)
    os.environ.setdefault("DARKTUNE_BACKEND", "torch")
    config._darktune_home = home
    if hasattr(config, "workerinput"):  # xdist worker: one torch thread each, so workers do not oversubscribe
        import torch

        torch.set_num_threads(1)


def pytest_unconfigure(config):
    import shutil

    home = getattr(config, "_darktune_home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def coco():
    """FetchResult with .cfg, .weights, .names of the official COCO yolov3-tiny (sha256-verified)."""
    from darktune.darknet import zoo

    return zoo.fetch("yolov3-tiny", progress=False)


@pytest.fixture(scope="session")
def coco_spec(coco):
    from darktune.darknet.cfg import parse_cfg

    return parse_cfg(coco.cfg)


@pytest.fixture(scope="session")
def coco_model(coco, coco_spec):
    from darktune.darknet.model import Darknet
    from darktune.darknet.weights import load_weights

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
