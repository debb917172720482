"""Faults: SIGKILL while a checkpoint is written (at every step of the write and at random times), SIGKILL
during an experiment grid, disk full during every writer, a non-finite loss, CUDA out of memory.

After a kill the previous (or the new) checkpoint loads and the grid resumes with finished runs kept; a full
disk is a DarktuneError that names the file, with the old file intact; a NaN loss skips the update, is
counted, and stops the run after K in a row; out of memory says to lower the batch or raise subdivisions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus import datasets
from corpus.faults import KILL_POINTS, RANDOM_KILLS, DiskFull
from corpus.harness import exception_outcome
from reliability_table import tally  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return (*datasets.make_tiny(root), root)


# ------------------------------------------------------------------------------- SIGKILL during checkpoint

@pytest.mark.slow
def test_sigkill_while_writing_checkpoints_never_loses_the_previous_one(tmp_path, tally):
    out = tmp_path / "kills.json"
    code = ("import sys; sys.path.insert(0, sys.argv[4]); from corpus import faults; "
            "faults.kill_driver(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(out), "8", str(Path(__file__).parents[1])],
                          capture_output=True, text=True, timeout=300)
    assert out.is_file(), proc.stderr[-3000:]
    results = json.loads(out.read_text())
    t = tally("ckpt_kills")
    for r in results:
        t.kill(r["ok"], r["detail"])
    assert len(results) == len(KILL_POINTS) + RANDOM_KILLS
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]


# ------------------------------------------------------------------------------------ SIGKILL during a grid


def test_sigkill_during_a_grid_then_rerun_keeps_finished_runs(tiny, tmp_path, tally):
    """`darktune experiment` (real training, 2 runs) killed with SIGKILL while the second run trains; the
    rerun keeps the finished run untouched and resumes the other from its checkpoint to the end."""
    cfg, _, _ = tiny
    obj = datasets.make_dataset(tmp_path / "data", [f"im{i}.jpg" for i in range(4)], n_valid=0)  # no mAP: faster
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"cfg: {cfg}\ntrain: {{batch: 2, size: 64, checkpoint_every: 2}}\n"
                    f"grid:\n  data: {obj}\n  starts: [scratch]\n  seeds: [0, 1]\n  iterations: 8\n")
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "darktune", "experiment", str(spec), "--out", str(out), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first, second = out / "runs" / "scratch-f0-nall-s0", out / "runs" / "scratch-f0-nall-s1"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (second / "checkpoint.pt").is_file() and not (second / "summary.json").is_file():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t = tally("grid_kills")
    assert (first / "summary.json").is_file() and not (second / "summary.json").is_file(), "kill came too late"
    kept = {p.name: p.read_bytes() for p in [first / "summary.json", first / "metrics.jsonl",
                                            first / "weights" / "last.weights"]}
    rerun = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads(rerun.stdout)
    runs = {r["run"]: r for r in summary["runs"]}
    iterations = [json.loads(line)["iteration"] for line in (second / "metrics.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)]
    ok = (rerun.returncode == 0 and runs["runs/scratch-f0-nall-s0"]["reused"]
          and runs["runs/scratch-f0-nall-s1"]["status"] == "finished"
          and all((first / name if name != "last.weights" else first / "weights" / name).read_bytes() == data
                  for name, data in kept.items())
          and iterations == list(range(1, 9)))
    t.kill(ok, "" if ok else f"rerun {rerun.returncode}, iterations {iterations}")
    assert ok, (rerun.stderr[-2000:], runs, iterations)


# ------------------------------------------------------------------------------------------------ disk full


def _old_files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def _disk_full_outcome(run, folder: Path, path_named: str | None) -> tuple[str, str]:
    """Run `run` on a full disk: handled = DarktuneError naming the file (or CLI exit 2 with one line), the
    old files byte-identical and no temp file left."""
    old = _old_files(folder)
    try:
        result = run()
        outcome = ("handled", "") if result == 2 else ("silent", f"returned {result!r}")
    except Exception as exc:  # noqa: BLE001
        outcome = exception_outcome(exc, path_named)
    now = {k: v for k, v in _old_files(folder).items() if k in old}
    if outcome[0] == "handled" and (now != old or _leftovers(folder)):
        outcome = ("silent", "old files changed" if now != old else f"temp files left {_leftovers(folder)}")
    return outcome


DISK_FULL_BUGS = {
}
DISK_FULL_CASES = ["save_weights", "save_checkpoint", "partial", "export-darknet", "data-import", "train"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c, marks=[pytest.mark.xfail(reason=DISK_FULL_BUGS[c],
                                                                                  strict=True)]
                                               if c in DISK_FULL_BUGS else []) for c in DISK_FULL_CASES])
def test_disk_full_is_a_clear_error_and_old_files_stay(case, tiny, tmp_path, monkeypatch, tally, capsys):
    from darktune.train.checkpoint import save_checkpoint
    from darktune.darknet.cfg import parse_cfg
    from darktune.cli import main
    from darktune.darknet.model import Darknet
    from darktune.darknet.weights import save_weights

    cfg, obj, _ = tiny
    folder = tmp_path / "out"
    folder.mkdir()
    model = Darknet(parse_cfg(cfg))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = save_weights(model, folder / "w.weights")  # the "old" files the user has
    save_checkpoint(folder / "checkpoint.pt", model=model, optimizer=opt, step=1, config={}, loader={}, state={})
    other = datasets.random_weights(cfg, tmp_path / "other.weights", seed=1)
    assert main(["export", "darknet", "--cfg", str(cfg), "--weights", str(other), "--out", str(folder / "export"),
                 "--size", "96"]) == 0  # an earlier export: another size and other weights
    capsys.readouterr()
    runs = {
        "save_weights": (lambda: save_weights(model, folder / "w.weights"), str(folder / "w.weights")),
        "save_checkpoint": (lambda: save_checkpoint(folder / "checkpoint.pt", model=model, optimizer=opt, step=2,
                                                    config={}, loader={}, state={}), str(folder / "checkpoint.pt")),
        "partial": (lambda: main(["partial", str(cfg), str(weights), str(folder / "w.weights"), "9"]), None),
        "export-darknet": (lambda: main(["export", "darknet", "--cfg", str(cfg), "--weights", str(weights),
                                         "--out", str(folder / "export"), "--overwrite"]), None),
        "data-import": (lambda: main(["data", "import", str(obj), "--out", str(folder / "imported")]), None),
        "train": (lambda: main(["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(folder / "run"),
                                "--iterations", "2", "--batch", "2", "--no-progress"]), None),
    }
    run, named = runs[case]
    # export: room for the small cfg, not for the weights after it; import: not even for the first image copy
    disk = DiskFull(monkeypatch, left={"export-darknet": 5000, "data-import": 600}.get(case, 0))
    outcome = _disk_full_outcome(run, folder, named)
    monkeypatch.undo()
    err = capsys.readouterr().err
    if outcome[0] == "handled" and named is None:  # a command: one line naming a file under the folder
        lines = [x for x in err.splitlines() if x.startswith("darktune: error:")]
        if not (len(lines) == 1 and str(folder) in lines[0] and "space" in lines[0].lower()):
            outcome = ("silent", f"message: {lines}")
    assert disk.left == 0, "the write never reached the full disk"
    assert tally("disk_full").case(f"enospc:{case}", *outcome) == "handled", (outcome, err[-500:])


def test_detect_out_on_a_full_disk_is_reported(tiny, tmp_path, tally, capsys, monkeypatch):
    """`darktune detect --out DIR` when the disk fills while the annotated image is written (ENOSPC on the
    write; the output is written to a temp file and renamed, never through a link, so /dev/full behind a link
    in DIR would only be replaced): one line naming the output, no temp file left."""
    from darktune.cli import main

    cfg, obj, _ = tiny
    weights = datasets.random_weights(cfg, tmp_path / "w.weights")
    image = obj.parent / "images" / "im0.jpg"
    out = tmp_path / "drawn"
    out.mkdir()
    DiskFull(monkeypatch, left=0)
    rc = main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--out", str(out), str(image)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    left = [p.name for p in out.iterdir()]
    outcome = (("handled", "") if rc != 0 and str(out / "im0.jpg") in err and "space" in err.lower() and not left
               else ("silent", f"exit {rc}, left {left}"))
    assert tally("disk_full").case("enospc:detect-out", *outcome) == "handled", (outcome, err[-300:])


# ------------------------------------------------------------------------------------------------ NaN loss


def _nan_loss(monkeypatch, bad_iterations: set[int] | None):
    """Make the loss NaN on the given (1-based) iterations (all when None); count optimizer steps."""
    from darktune.train import loss as loss_mod

    real = loss_mod.YoloLoss.__call__
    calls = {"n": 0, "steps": 0}

    def nan_call(self, heads, targets, net_hw):
        calls["n"] += 1
        total, parts = real(self, heads, targets, net_hw)
        if bad_iterations is None or calls["n"] in bad_iterations:
            total = total * float("nan")
        return total, parts

    from darktune.train import init as train_setup
    from darktune.train import loop as train_loop
    from darktune.train import steps as train_steps

    real_build = train_setup.build_optimizer

    def counting_build(*a, **k):
        opt = real_build(*a, **k)
        real_step = opt.step

        def step(*sa, **sk):
            calls["steps"] += 1
            return real_step(*sa, **sk)

        opt.step = step
        return opt

    monkeypatch.setattr(loss_mod.YoloLoss, "__call__", nan_call)
    for user in (train_loop, train_steps):  # the modules that call it (bound at import)
        monkeypatch.setattr(user, "build_optimizer", counting_build)
    return calls


def test_nan_loss_steps_are_skipped_and_counted(tiny, tmp_path, monkeypatch, tally):
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train
    from darktune.darknet.weights import read_weights_file

    cfg, obj, _ = tiny
    calls = _nan_loss(monkeypatch, {2, 4})
    result = train(TrainConfig(cfg=str(cfg), data=str(obj), iterations=6, batch=2, subdivisions=1,
                               out=str(tmp_path / "run"), max_bad_steps=2), progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    flagged = [r["iteration"] for r in records if r.get("nonfinite")]
    finite = np.isfinite(read_weights_file(tmp_path / "run" / "weights" / "last.weights").floats).all()
    ok = (result.status == "finished" and result.skipped_steps == 2 and flagged == [2, 4] and calls["steps"] == 4
          and finite)
    t = tally("nan_loss")
    t.case("train:nan-at-2-and-4", "handled" if ok else "silent",
           "" if ok else f"{result.status} skipped {result.skipped_steps} steps {calls['steps']}")
    assert ok


def test_nan_loss_k_in_a_row_stops_the_run(tiny, tmp_path, monkeypatch, tally, capsys):
    from darktune.cli import main

    cfg, obj, _ = tiny
    calls = _nan_loss(monkeypatch, None)
    rc = main(["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(tmp_path / "run"), "--iterations", "20",
               "--batch", "2", "--max-bad-steps", "3", "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out)
    ok = (rc == 1 and summary["status"] == "failed" and summary["iterations"] == 3 and summary["skipped_steps"] == 3
          and calls["steps"] == 0 and "not finite" in summary["message"])
    assert tally("nan_loss").case("train:nan-always-K=3", "handled" if ok else "silent") == "handled", summary


# -------------------------------------------------------------------------------------------- out of memory

OOM_BUGS = {
}


def _oom(*a, **k):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


@pytest.mark.parametrize("where", [pytest.param(w, id=w, marks=[pytest.mark.xfail(reason=OOM_BUGS[w], strict=True)]
                                                if w in OOM_BUGS else []) for w in ("train-step", "train-eval",
                                                                                     "map", "detect")])
def test_cuda_out_of_memory_gives_advice(where, tiny, tmp_path, monkeypatch, tally, capsys):
    from darktune.eval import evaluate
    from darktune.train import steps as train_steps
    from darktune.cli import main

    cfg, obj, _ = tiny
    weights = datasets.random_weights(cfg, tmp_path / "w.weights")
    image = obj.parent / "images" / "im0.jpg"
    train = ["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(tmp_path / "run"), "--iterations", "2",
             "--batch", "2", "--no-progress"]
    if where == "train-step":
        monkeypatch.setattr(train_steps, "train_step", _oom)
        argv, advice = train, ("--batch", "--subdivisions")
    elif where == "train-eval":
        monkeypatch.setattr(train_steps, "evaluate_model", _oom)
        argv, advice = train + ["--eval-at", "1"], ("--batch",)
    elif where == "map":
        monkeypatch.setattr(evaluate, "evaluate_model", _oom)
        argv, advice = ["map", "--cfg", str(cfg), "--weights", str(weights), "--data", str(obj)], ("--batch",)
    else:
        monkeypatch.setattr(torch.nn.Module, "__call__", _oom)
        argv, advice = ["detect", "--cfg", str(cfg), "--weights", str(weights), str(image)], ("--size",)
    try:
        rc = main(argv)
        errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("darktune: error:")]
        good = rc == 2 and len(errors) == 1 and "out of memory" in errors[0] and all(a in errors[0] for a in advice)
        outcome = ("handled", "") if good else ("silent", f"exit {rc}: {errors}")
    except Exception as exc:  # noqa: BLE001
        outcome = exception_outcome(exc)
    assert tally("oom").case(f"oom:{where}", *outcome) == "handled", outcome


# ------------------------------------------------------------------------------------ two runs, one folder


def test_two_trainings_into_one_out_one_fails_at_once(tiny, tmp_path, tally):
    """`darktune train` twice into the same --out, started 0.3 s apart: one trains, the other exits 2 at once
    with one line naming the folder and the pid holding it; metrics.jsonl counts one run's iterations once."""
    cfg, _, _ = tiny
    obj = datasets.make_dataset(tmp_path / "data", [f"im{i}.jpg" for i in range(4)], n_valid=0)  # no mAP: faster
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "darktune", "train", "--cfg", str(cfg), "--data", str(obj), "--out", str(out),
           "--iterations", "6", "--batch", "2", "--size", "64", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    (_, err1), (_, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
    results = sorted([(first.returncode, err1, first.pid), (second.returncode, err2, second.pid)])
    (ok_rc, _, winner), (fail_rc, fail_err, _) = results
    lines = [x for x in fail_err.splitlines() if x.strip()]
    iterations = [json.loads(x).get("iteration") for x in (out / "metrics.jsonl").read_text().splitlines()
                  if x.strip()] if (out / "metrics.jsonl").is_file() else []
    refused = (ok_rc, fail_rc) == (0, 2) and len(lines) == 1 and str(out) in lines[0] and f"pid {winner}" in lines[0]
    in_order = iterations == sorted(set(iterations))
    outcome = ("handled", "") if refused and in_order else ("silent", f"exits {ok_rc}, {fail_rc}: {lines[-1:]}")
    assert tally("run_folders").case("train-twice-0.3s-apart:same_out", *outcome) == "handled", (outcome, iterations)


# ------------------------------------------------------------------------------ the table of docs/reliability.md


def test_readme_reliability_section_is_the_measured_table():
    """docs/reliability.md ends with the Reliability section, one row per kind (its figures are checked against
    the session's own measurements by tests/reliability_plugin.py at the end of a full run)."""
    import reliability_table as rt

    section = rt.readme_section(rt.DOC.read_text(encoding="utf-8"))
    assert section is not None, "no Reliability section: run `python -m tests.reliability_table --update-readme`"
    rows = [line.split(" | ")[0][2:] for line in section.splitlines() if line.startswith("| ") and " | " in line]
    assert rows[:2] == ["kind", "---"] and rows[2:-1] == list(rt.KINDS.values()) and rows[-1] == "**all**"
    # The figures themselves are compared with this session's own measurements by tests/reliability_plugin.py
    # at the end of a full run (a table left in build/ by an earlier run may be stale, so it is not used here).
