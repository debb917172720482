"""Files darktune wrote and reads back, tampered with: the runtime-probe cache of `detect --backend auto`
($DARKTUNE_HOME/backend-probe.json) and a run folder's checkpoint.pt and metrics.jsonl (`darktune train --resume`).

A cache is a hint: a bad one (NaN or negative timings, text, a FIFO, a device, a folder) costs a probe, never a
wrong choice nor a hang, and a home that cannot be written costs an export, never a traceback. A run file is
a record: a bad one (wrong types, impossible ranges, non-finite figures, RNG states that are not darktune's,
a cfg edited since the run started, metrics that are not UTF-8) is refused in one line naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from corpus import datasets
from corpus.harness import exception_outcome
from reliability_table import tally  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = {"torch": 2.5, "opencv": 1.5}


def _cache(medians) -> str:
    return json.dumps({"version": 1, "entries": {"k" * 32: {"medians_ms": medians, "date": "2026-12-07"}}})


# name -> file content (str or bytes); every one is a cache whose entry must not be used
CACHE_TEXTS = {
    "nan-timing": _cache({"torch": float("nan"), "opencv": 1.5}).replace("NaN", "NaN"),
    "infinity-timing": _cache({"torch": float("inf"), "opencv": 1.5}),
    "overflowing-timing": _cache(GOOD).replace("2.5", "1e400"),
    "negative-timing": _cache({"torch": -3.0, "opencv": 1.5}),
    "zero-timing": _cache({"torch": 0, "opencv": 1.5}),
    "text-timing": _cache({"torch": "2.5 ms", "opencv": 1.5}),
    "bool-timing": _cache({"torch": True, "opencv": 1.5}),
    "unknown-runtime": _cache({"tensorrt": 0.1}),
    "no-timings": _cache({}),
    "timings-as-list": _cache([2.5, 1.5]),
    "entries-as-list": json.dumps({"version": 1, "entries": [GOOD]}),
    "version-as-text": _cache(GOOD).replace('"version": 1', '"version": "1"'),
    "top-level-list": json.dumps([GOOD]),
    "not-utf8": _cache(GOOD).encode()[:-2] + b"\xff\xfe}}",
}


def _read_with_deadline(path: Path, seconds: float = 20.0):
    """read_cache(path) in a thread: ("ok", entries) or ("hang", None) or ("error", exception)."""
    from darktune.deploy.backend_choice import read_cache

    box: dict = {}

    def go():
        try:
            box["entries"] = read_cache(path)
        except BaseException as exc:  # noqa: BLE001 - reported
            box["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if path.is_fifo():  # let the blocked reader go: a writer opens and closes the pipe
            os.close(os.open(path, os.O_WRONLY))
            thread.join(5)
        return "hang", None
    if "error" in box:
        return "error", box["error"]
    return "ok", box["entries"]


def _cache_outcome(state, value, path: Path) -> tuple[str, str]:
    if state == "hang":
        return "crash", "hang: the read blocked"
    if state == "error":
        return exception_outcome(value, str(path))
    return ("handled", "") if value == {} else ("silent", f"entry used: {value}"[:100])


def test_probe_cache_bad_entries_cost_a_probe(tmp_path, tally):
    t = tally("caches")
    for name, text in CACHE_TEXTS.items():
        path = tmp_path / name / "backend-probe.json"
        path.parent.mkdir()
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        t.case(f"read:{name}", *_cache_outcome(*_read_with_deadline(path), path))
    good = tmp_path / "good.json"
    good.write_text(_cache(GOOD))
    assert _read_with_deadline(good)[1] == {"k" * 32: {"medians_ms": GOOD, "date": "2026-12-07"}}
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


def test_probe_cache_that_is_not_a_file_is_never_opened(tmp_path, tally):
    t = tally("caches")
    specials = {"fifo": lambda p: os.mkfifo(p), "dev-zero-link": lambda p: p.symlink_to("/dev/zero"),
                "folder": lambda p: p.mkdir(), "dangling-link": lambda p: p.symlink_to(p.parent / "gone")}
    for name, make in specials.items():
        path = tmp_path / name / "backend-probe.json"
        path.parent.mkdir()
        make(path)
        t.case(f"read:{name}", *_cache_outcome(*_read_with_deadline(path), path))
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


@pytest.mark.parametrize("home", ["home-is-a-file", "home-under-proc"])
def test_unwritable_home_costs_a_probe_not_a_traceback(home, tmp_path, tally, monkeypatch):
    """`--backend auto` with a $DARKTUNE_HOME that cannot be made: the runtimes are timed (and the ONNX export
    made) in a temporary place; the detector is built."""
    from darktune.deploy.backend_choice import choose

    t = tally("caches")
    cfg = datasets.write_tiny_cfg(tmp_path / "tiny.cfg")
    weights = datasets.random_weights(cfg, tmp_path / "tiny.weights")
    path = tmp_path / "home"
    if home == "home-is-a-file":
        path.write_text("not a folder\n")
    else:
        path = Path("/proc/self/darktune-home")
    monkeypatch.setenv("DARKTUNE_HOME", str(path))
    monkeypatch.delenv("DARKTUNE_BACKEND", raising=False)
    try:
        backend, choice = choose(str(cfg), str(weights))
        outcome = ("handled", "") if backend is not None and choice.backend else ("silent", "no backend")
    except Exception as exc:  # noqa: BLE001 - counted
        outcome = ("crash", f"{type(exc).__name__}: {exc}"[:120])
    t.case(f"detect-auto:{home}", *outcome)
    assert outcome[0] == "handled", outcome


# ---------------------------------------------------------------------------------------------- run files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cfg, obj.data, run folder) of a finished 2-iteration run with its checkpoint.pt."""
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    root = tmp_path_factory.mktemp("runfiles")
    cfg, obj = datasets.make_tiny(root)
    torch.set_num_threads(1)
    result = train(TrainConfig(cfg=str(cfg), data=str(obj), iterations=2, batch=2, out=str(root / "run"),
                               eval_at=[2]), progress=False)
    assert result.status == "finished" and (root / "run" / "checkpoint.pt").is_file()
    return cfg, obj, root / "run"


def _set(key_path: tuple, value):
    def edit(ck: dict) -> None:
        d = ck
        for k in key_path[:-1]:
            d = d[k]
        d[key_path[-1]] = value
    return edit


def _first_tensor_to_list(ck: dict) -> None:
    key = next(iter(ck["model"]))
    ck["model"][key] = [1.0, 2.0]


CHECKPOINT_EDITS = {
    "best-map-text": _set(("state", "best_map"), "x"),
    "best-map-7.5": _set(("state", "best_map"), 7.5),
    "final-map-nan": _set(("state", "final_map"), float("nan")),
    "config-text": _set(("config",), "abc"),
    "step-1e9": _set(("step",), 10**9),
    "step-negative": _set(("step",), -1),
    "step-float": _set(("step",), 1.5),
    "step-past-iterations": _set(("step",), 3),
    "maps-out-of-range": _set(("state", "maps"), [[2, 3.0]]),
    "maps-not-pairs": _set(("state", "maps"), ["x"]),
    "train-seconds-nan": _set(("state", "train_seconds"), float("nan")),
    "train-seconds-negative": _set(("state", "train_seconds"), -5.0),
    "skipped-steps-text": _set(("state", "skipped_steps"), "many"),
    "loader-text": _set(("loader",), "x"),
    "loader-epoch-negative": _set(("loader", "epoch"), -4),
    "rng-python-text": _set(("rng", "python"), "x"),
    "rng-numpy-short": _set(("rng", "numpy"), ["MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0]),
    "rng-torch-float": _set(("rng", "torch"), torch.zeros(8)),
    "model-tensor-as-list": _first_tensor_to_list,
    "optimizer-text": _set(("optimizer",), {"state": "x", "param_groups": "y"}),
    "time-to-target-text": _set(("state", "time_to_target"), "soon"),
}


def _resume(cfg, obj, run, capsys) -> tuple[int | None, str, BaseException | None]:
    from darktune.cli import main

    try:
        rc = main(["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(run), "--resume", "--iterations",
                   "2", "--batch", "2", "--no-progress"])
        return rc, capsys.readouterr().err, None
    except Exception as exc:  # noqa: BLE001 - counted
        capsys.readouterr()
        return None, "", exc


def _resume_outcome(rc, err, exc, named: Path) -> tuple[str, str]:
    if exc is not None:
        return "crash", f"{type(exc).__name__}: {str(exc)[:80]}"
    errors = [line for line in err.splitlines() if line.startswith("darktune: error:")]
    if rc == 2 and errors and str(named) in errors[0] and len(errors) == 1:
        return "handled", ""
    return "silent", f"exit {rc}: {err.strip().splitlines()[-1][:100] if err.strip() else ''}"


def test_tampered_checkpoints_are_refused_in_one_line(trained, tmp_path, tally, capsys):
    cfg, obj, run = trained
    t = tally("run_files")
    for name, edit in CHECKPOINT_EDITS.items():
        copy = tmp_path / name
        shutil.copytree(run, copy)
        ck = torch.load(copy / "checkpoint.pt", map_location="cpu", weights_only=True)
        edit(ck)
        torch.save(ck, copy / "checkpoint.pt")
        t.case(f"resume:{name}", *_resume_outcome(*_resume(cfg, obj, copy, capsys), copy / "checkpoint.pt"))
    copy = tmp_path / "untouched"
    shutil.copytree(run, copy)
    rc, err, exc = _resume(cfg, obj, copy, capsys)
    assert exc is None and rc == 0, err  # the same checkpoint, not tampered with, resumes
    assert all(v[0] == "handled" for v in t.cases.values()), {k: v for k, v in t.cases.items() if v[0] != "handled"}


def test_cfg_edited_before_resume_and_damaged_metrics_are_one_line(trained, tmp_path, tally, capsys):
    cfg, obj, run = trained
    t = tally("run_files")
    edits = {"cfg-filters-changed": ("filters=16", "filters=24"),
             "cfg-wider-layer-before-a-route": ("filters=64", "filters=96")}
    text = Path(cfg).read_text()
    for name, (old, new) in edits.items():
        assert old in text, old
        copy = tmp_path / name
        shutil.copytree(run, copy)
        edited = tmp_path / f"{name}.cfg"
        edited.write_text(text.replace(old, new, 1))
        ck = torch.load(copy / "checkpoint.pt", map_location="cpu", weights_only=True)
        ck["config"]["cfg"] = str(edited)  # the run's own cfg file, edited since it started
        torch.save(ck, copy / "checkpoint.pt")
        t.case(f"resume:{name}", *_resume_outcome(*_resume(edited, obj, copy, capsys), copy / "checkpoint.pt"))
    for name, data in {"metrics-not-utf8": b'{"iteration": 1, "loss": 2.0}\n\xff\xfe\n',
                       "metrics-map-nan": b'{"iteration": 1, "map": NaN}\n'}.items():
        copy = tmp_path / name
        shutil.copytree(run, copy)
        (copy / "metrics.jsonl").write_bytes(data)
        t.case(f"resume:{name}", *_resume_outcome(*_resume(cfg, obj, copy, capsys), copy / "metrics.jsonl"))
    assert all(v[0] == "handled" for v in t.cases.values()), {k: v for k, v in t.cases.items() if v[0] != "handled"}


def test_run_files_read_by_the_grid_bar_and_export_never_block(trained, tmp_path, tally):
    """The grid's progress bar reads each run's metrics tail, `export darknet RUN` its summary for the class
    names: a FIFO there is skipped (never opened blocking), a summary whose dataset is not a path is a note."""
    from darktune.deploy.darknet_export import resolve_run
    from darktune.experiment.progress import last_iteration

    _, _, run = trained
    t = tally("run_files")
    cases = {}
    copy = tmp_path / "fifo-metrics"
    shutil.copytree(run, copy)
    (copy / "metrics.jsonl").unlink()
    os.mkfifo(copy / "metrics.jsonl")
    cases["progress:metrics-fifo"] = (lambda c=copy: last_iteration(c) == 0, copy / "metrics.jsonl")
    for name, make in {"summary-fifo": lambda p: os.mkfifo(p),
                       "summary-data-number": lambda p: p.write_text('{"config": {"data": 5}}')}.items():
        copy = tmp_path / name
        shutil.copytree(run, copy)
        (copy / "obj.names").unlink()
        (copy / "summary.json").unlink()
        make(copy / "summary.json")
        cases[f"export-darknet:{name}"] = (lambda c=copy: resolve_run(c).names is None, copy / "summary.json")
    for name, (check, path) in cases.items():
        box = {}
        thread = threading.Thread(target=lambda: box.update(ok=check()), daemon=True)
        thread.start()
        thread.join(20)
        if thread.is_alive():
            os.close(os.open(path, os.O_WRONLY))
            thread.join(5)
            t.case(name, "crash", "hang")
        else:
            t.case(name, "handled" if box.get("ok") else "crash", "" if box.get("ok") else "raised or wrong")
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases
