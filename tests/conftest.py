"""Shared fixtures: a private $DARKTUNE_HOME; the official COCO yolov3-tiny and yolov4-tiny files (lazy, verified)."""

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


def _user_home() -> Path:
    """The user's darktune cache, as it was before the suite replaced $DARKTUNE_HOME."""
    return Path(os.environ.get("DARKTUNE_HOME") or Path.home() / ".cache" / "darktune")


def pytest_configure(config):
    """Give the tests a private $DARKTUNE_HOME (check caches, runs, fetched models). Models the user has already
    fetched are linked into it, file by file (no download here: the COCO weights are lazy fixtures, `coco` and
    `coco_v4`); tests never write the user's cache."""
    user = _user_home()
    home = Path(tempfile.mkdtemp(prefix="darktune-test-home-"))
    for name in ("yolov3-tiny", "yolov4-tiny"):
        if (user / name).is_dir():  # file by file: an upgrade of the cache replaces a link, never its target
            (home / name).mkdir()
            for entry in (user / name).iterdir():
                if entry.is_file() and not entry.name.startswith("."):
                    (home / name / entry.name).symlink_to(entry.resolve())
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


def fetch_model(name: str):
    """The official files of a known model in the suite's private $DARKTUNE_HOME, sha256-verified: the user's
    cached copy through the link made at configure, else downloaded into the private home (the link, if the
    user's copy does not verify, is replaced by a private folder: the user's cache is never written)."""
    from darktune.darknet import zoo

    found = zoo.cached(name)
    if found is not None:
        return found
    folder = Path(os.environ["DARKTUNE_HOME"]) / name
    if folder.is_symlink():
        folder.unlink()
    return zoo.fetch(name, progress=False)


@pytest.fixture(scope="session")
def coco():
    """FetchResult with .cfg, .weights, .names of the official COCO yolov3-tiny (sha256-verified)."""
    return fetch_model("yolov3-tiny")


@pytest.fixture(scope="session")
def coco_v4():
    """FetchResult with .cfg, .weights, .names of the official COCO yolov4-tiny (sha256-verified)."""
    return fetch_model("yolov4-tiny")


@pytest.fixture(scope="session")
def coco_v4_model(coco_v4):
    from darktune.darknet.load import load_darknet

    return load_darknet(coco_v4.cfg, coco_v4.weights)[0].eval()


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
