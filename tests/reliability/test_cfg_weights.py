"""Damaged model files: mutated cfgs (tests/darknet/test_cfg.py's 41 and the corpus's) and damaged `.weights` (cut at
10 points, extra bytes, bad headers, NaN) through every loader: the cfg parser and `darktune summary`;
load_weights, the trainer's init_model, `darktune partial` and `darktune detect`.

A bad file is one DarktuneError naming the file (and the line, where the cfg text has one): never a crash,
never a model built from garbage, never an attempt to allocate gigabytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from corpus import datasets
from corpus.files import cfg_mutations, weights_cases
from corpus.harness import exception_outcome
from reliability_table import tally  # noqa: F401 (fixture)
from darknet.test_cfg import MUTATIONS
from darknet.test_weights import CUTS

TINY = datasets.tiny_cfg_text()
TINY_MUTATIONS = cfg_mutations(TINY)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_weights_size() -> int:
    from darktune.darknet.cfg import parse_cfg_text
    from darktune.darknet.weights import expected_floats

    return 20 + 4 * expected_floats(parse_cfg_text(TINY))


WEIGHTS_CASE_NAMES = [c.name for c in weights_cases(b"\x00" * _tiny_weights_size())]


def _cfg_outcome(path: Path, expect: str, capsys) -> tuple[str, str]:
    """Parse + build (library) and `darktune summary` (command line); the worse of the two outcomes."""
    from darktune.darknet.cfg import parse_cfg
    from darktune.cli import main
    from darktune.errors import DarktuneError
    from darktune.darknet.model import Darknet

    start = time.perf_counter()
    try:
        Darknet(parse_cfg(path))
        lib = "handled" if expect == "ok" else "silent"
    except DarktuneError as exc:
        lib = "handled" if expect == "reject" and exc.path == str(path) else "silent"
    except Exception as exc:  # noqa: BLE001 - any other failure is a crash
        return exception_outcome(exc)
    if time.perf_counter() - start > 10:
        return "crash", "took more than 10 s"
    rc = main(["summary", str(path)])
    err = capsys.readouterr().err.strip()
    cli = "handled" if (rc == 0) == (expect == "ok") and (rc == 0 or (err.count("\n") == 0 and str(path) in err)) \
        else "silent"
    return ("handled", "") if lib == cli == "handled" else ("silent", f"library {lib}, command {cli}")


@pytest.mark.parametrize("name", [m[0] for m in MUTATIONS])
def test_test_cfg_mutations_through_parser_and_summary(coco, name, tmp_path, tally, capsys):
    mutate = next(m[1] for m in MUTATIONS if m[0] == name)
    path = tmp_path / "mutated.cfg"
    path.write_text(mutate(coco.cfg.read_text()))
    outcome = _cfg_outcome(path, "reject", capsys)
    assert tally("cfg").case(f"coco-cfg:{name}", *outcome) == "handled", outcome


@pytest.mark.parametrize("name", [c.name for c in TINY_MUTATIONS])
def test_corpus_cfg_mutations_through_parser_and_summary(name, tmp_path, tally, capsys):
    case = next(c for c in TINY_MUTATIONS if c.name == name)
    path = tmp_path / "mutated.cfg"
    path.write_bytes(TINY.encode("utf-16") if name == "utf16" else case.text.encode("utf-8"))
    outcome = _cfg_outcome(path, case.expect, capsys)
    assert tally("cfg").case(f"tiny-cfg:{name}", *outcome) == "handled", outcome


# -------------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cfg = datasets.write_tiny_cfg(root / "tiny.cfg")
    weights = datasets.random_weights(cfg, root / "tiny.weights")
    return cfg, weights


def _weights_paths(cfg: Path, path: Path, tmp_path: Path, capsys, prefix_ok: bool) -> dict[str, tuple[str, str]]:
    """Outcome of each loader for a damaged weights file: every one refuses it, naming the file (`partial`,
    which reads only the first N layers as darknet's does, may accept a file with floats to spare)."""
    from darktune.darknet.cfg import parse_cfg
    from darktune.cli import main
    from darktune.darknet.model import Darknet
    from darktune.train.init import init_model
    from darktune.darknet.weights import load_weights

    spec = parse_cfg(cfg)
    loaders = {
        "load_weights": lambda: load_weights(Darknet(spec), path),
        "train-init": lambda: init_model(Darknet(spec), path, None, 0),
        "partial": lambda: main(["partial", str(cfg), str(path), str(tmp_path / "p.weights"), "20"]),
        "detect": lambda: main(["detect", "--cfg", str(cfg), "--weights", str(path), str(tmp_path / "x.jpg")]),
    }
    out = {}
    for name, load in loaders.items():
        try:
            result = load()
        except Exception as exc:  # noqa: BLE001
            out[name] = exception_outcome(exc, str(path))
            continue
        if name in ("partial", "detect"):
            err = capsys.readouterr().err
            refused = result == 2 and f"{path}:" in err
            accepted_prefix = name == "partial" and prefix_ok and result == 0
            out[name] = ("handled", "") if refused or accepted_prefix else ("silent", f"exit {result}")
        else:
            out[name] = ("silent", "loaded")
    return out


@pytest.mark.parametrize("name", WEIGHTS_CASE_NAMES)
def test_damaged_tiny_weights_are_refused_everywhere(name, tiny_files, tmp_path, tally, capsys):
    from darktune.cli import main

    cfg, good = tiny_files
    case = next(c for c in weights_cases(good.read_bytes()) if c.name == name)
    path = tmp_path / "damaged.weights"
    path.write_bytes(case.data)
    t = tally("weights")
    outcomes = _weights_paths(cfg, path, tmp_path, capsys, case.prefix_ok)
    for loader, outcome in outcomes.items():
        t.case(f"{loader}:{name}", *outcome)
    if case.floats_expected is not None:  # the message counts the floats
        main(["detect", "--cfg", str(cfg), "--weights", str(path), str(tmp_path / "x.jpg")])
        err = capsys.readouterr().err
        assert f"the file has {case.floats_expected:,}" in err, err
    assert all(o[0] == "handled" for o in outcomes.values()), outcomes


def test_largest_seen_with_continue_schedule_trains_and_writes(tiny_files, tmp_path, tally, capsys):
    """A header at the limit (2^48 images seen) with --continue-schedule: training continues the schedule and
    writes weights whose `seen` loads again (held at the limit, never past what the uint64 field holds); one
    past the limit, and 2^64-1, are refused before training, naming the file."""
    from darktune.cli import main
    from darktune.darknet.weights import MAX_SEEN, read_weights_file

    cfg, good = tiny_files
    obj = datasets.make_tiny(tmp_path / "data")[1]
    body = good.read_bytes()[20:]
    t = tally("weights")
    for name, seen in (("at_limit", MAX_SEEN), ("past_limit", MAX_SEEN + 1), ("uint64_max", 2**64 - 1)):
        path = tmp_path / f"{name}.weights"
        path.write_bytes(np.array([0, 2, 0], "<i4").tobytes() + np.array([seen], "<u8").tobytes() + body)
        out = tmp_path / f"run-{name}"
        try:
            rc = main(["train", "--cfg", str(cfg), "--data", str(obj), "--weights", str(path), "--continue-schedule",
                       "--iterations", "2", "--batch", "2", "--no-progress", "--out", str(out)])
        except Exception as exc:  # noqa: BLE001
            t.case(f"train-continue-schedule:seen_{name}", "crash", type(exc).__name__)
            continue
        err = capsys.readouterr().err
        if name == "at_limit":
            written = out / "weights" / "last.weights"
            ok = rc == 0 and written.is_file() and read_weights_file(written).header.seen == MAX_SEEN
        else:
            ok = rc == 2 and f"{path}:" in err and len(err.strip().splitlines()) == 1
        t.case(f"train-continue-schedule:seen_{name}", "handled" if ok else "silent", "" if ok else f"exit {rc}")
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


@pytest.mark.parametrize("cut", CUTS)
def test_official_weights_cut_are_refused_by_partial(coco, cut, tmp_path, tally, capsys):
    """tests/darknet/test_weights.py's 10 cut points of the official file, through `darktune partial` (its own test
    covers load_weights)."""
    from darktune.cli import main

    path = tmp_path / "cut.weights"
    with open(coco.weights, "rb") as f:
        path.write_bytes(f.read(cut))
    rc = main(["partial", str(coco.cfg), str(path), str(tmp_path / "out.weights"), "24"])
    err = capsys.readouterr().err
    ok = rc == 2 and f"{path}:" in err and not (tmp_path / "out.weights").exists()
    assert tally("weights").case(f"partial-coco:cut_{cut}", "handled" if ok else "silent") == "handled", err


def test_weights_that_end_on_a_layer_boundary_are_said_to_be_partial(tiny_files, tmp_path):
    """Not a damage case but its twin: a file holding exactly layers 0..N-1 is a partial file (conv.15), and
    the trainer says so (mode and loaded layers in init.json) instead of treating it as complete."""
    from darktune.darknet.cfg import parse_cfg
    from darktune.darknet.model import Darknet
    from darktune.train.init import init_model
    from darktune.darknet.weights import partial

    cfg, good = tiny_files
    out, _ = partial(cfg, good, tmp_path / "tiny.conv.9", 9)
    report = init_model(Darknet(parse_cfg(cfg)), out, None, 0)
    assert report["mode"].startswith("partial") and report["loaded_layers"] == [0, 2, 4, 6, 8]
