"""Experiment specs (validation with file and line), the grid expansion, and the runner's resume / reuse /
parallel rules, with a fake trainer (tests/fake_train.py) so nothing here trains a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_train import fake_train

from darktune.errors import DarktuneError
from darktune.experiment import run_experiment
from darktune.experiment_spec import load_spec, plan_runs

SPEC = """\
cfg: {cfg}
weights:
  coco: {weights}
train:
  batch: 4
  size: 64
stages:
  domain:
    data: {data}
    weights: coco15
    iterations: 20
grid:
  data: {data}
  starts: [scratch, backbone, coco15, domain]
  freeze: [0, 13, 20]
  iterations: 200
  eval_at: [100, 150, 180, 200]
  eval_every: 10
  target_map: 0.8
  per_start:
    domain:
      iterations: 40
      eval_at: [10, 20, 30, 40]
      eval_every: 2
"""


@pytest.fixture
def spec_file(tmp_path, coco):
    data = tmp_path / "obj.data"
    data.write_text("classes = 1\n")
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(cfg=coco.cfg, weights=coco.weights, data=data))
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_per_start_options_reach_the_runs(tmp_path):
    path = _write(tmp_path, "grid:\n  data: x\n  starts: [scratch, coco15]\n  feature_cache: false\n"
                            "  per_start:\n    coco15: {continue_schedule: true}\n")
    plans = {p.start: p for p in plan_runs(load_spec(path))}
    assert plans["coco15"].options["continue_schedule"] is True and "continue_schedule" not in plans["scratch"].options
    assert plans["scratch"].options["feature_cache"] is False


def test_spec_expands_to_stage_then_grid(spec_file):
    plans = plan_runs(load_spec(spec_file))
    assert [p.name for p in plans[:2]] == ["domain", "scratch-f0-nall-s0"]
    assert len(plans) == 1 + 4 * 3
    dom = [p for p in plans if p.start == "domain"]
    assert {p.iterations for p in dom} == {40} and dom[0].eval_at == (10, 20, 30, 40)
    assert dom[0].options["eval_every"] == 2 and dom[0].options["batch"] == 4
    scratch = plans[1]
    assert scratch.eval_at == (100, 150, 180, 200) and scratch.options["target_map"] == 0.8


@pytest.mark.parametrize("text, message, line", [
    ("grid:\n  data: x\n  starts: [scratch]\n  bogus: 1\n", "unknown key 'bogus'", 4),
    ("cfg: a.cfg\nfoo: 1\ngrid: {}\n", "unknown key 'foo'", 2),
    ("grid:\n  data: x\n  starts: [nowhere]\n", "neither a starting point", 3),
    ("grid:\n  data: x\n  starts: [scratch]\n  freeze: [-1]\n", "integer >= 0", 4),
    ("grid:\n  data: x\n  starts: [scratch]\n  iterations: 10\n  eval_at: [20]\n", "past the run", 5),
    ("grid:\n  data: x\n  starts: [scratch]\n  target_map: 90\n", "fraction", 4),
    ("grid:\n  data: x\n  starts: [scratch]\n  images: [all, 0]\n", "integer >= 1", 4),
    ("stages:\n  a: {data: x, weights: b}\n  b: {data: x, weights: a}\ngrid: {data: x, starts: [a]}\n", "cycle", 2),
    ("grid: !!python/object/apply:os.system ['echo hi']\n", "refused", 1),
    ("grid: [unclosed\n", "not a valid experiment spec", None),
    ("stages:\n  coco: {data: x, weights: scratch}\ngrid: {data: x, starts: [scratch]}\n", "stage name", 2),
    ("cfg: a.cfg\n", "missing 'grid'", None),
    ("grid:\n  data: x\n  starts: [scratch]\n  continue_schedule: yes please\n", "true or false", 4),
])
def test_bad_specs_name_file_line_and_key(tmp_path, text, message, line):
    path = _write(tmp_path, text)
    with pytest.raises(DarktuneError) as err:
        load_spec(path)
    text = str(err.value)
    assert message in text and str(path) in text
    if line is not None:
        assert f"{path}:{line}:" in text


def test_python_tag_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path, f"grid: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DarktuneError, match="refused"):
        load_spec(path)
    assert not marker.exists()


class Counting:
    def __init__(self):
        self.calls = []

    def __call__(self, kwargs, progress):
        self.calls.append(kwargs)
        return fake_train(kwargs, progress)


def test_grid_runs_then_reuses_finished_runs(spec_file, tmp_path):
    out = tmp_path / "exp"
    counting = Counting()
    result = run_experiment(load_spec(spec_file), out, train_fn=counting, progress=False)
    assert not result.failed and len(result.outcomes) == 13
    # stage first; the domain runs start from the stage's last weights; coco15 from the conv.15 extract
    assert counting.calls[0]["out"].endswith("stages/domain")
    by_name = {Path(c["out"]).name: c for c in counting.calls}
    assert by_name["domain-f13-nall-s0"]["weights"] == str(out / "stages/domain/weights/last.weights")
    assert by_name["coco15-f0-nall-s0"]["upto"] == 15 and Path(by_name["coco15-f0-nall-s0"]["weights"]).is_file()
    assert by_name["backbone-f20-nall-s0"]["upto"] == 13 and by_name["scratch-f0-nall-s0"]["weights"] is None
    assert by_name["scratch-f0-nall-s0"]["resume"] is False and by_name["scratch-f0-nall-s0"]["freeze"] == 0
    record = json.loads((out / "experiment.json").read_text())
    assert len(record["runs"]) == 13 and "STAND-IN" in record["starts"]["backbone"]["description"]
    again = Counting()
    result = run_experiment(load_spec(spec_file), out, train_fn=again, progress=False)
    assert again.calls == [] and all(o.reused for o in result.outcomes)


def test_changed_spec_does_not_reuse_a_run_silently(spec_file, tmp_path):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    spec_file.write_text(spec_file.read_text().replace("iterations: 200", "iterations: 300")
                         .replace("eval_at: [100, 150, 180, 200]", "eval_at: [100, 300]"))
    with pytest.raises(DarktuneError, match="different spec.*iterations"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_interrupted_grid_resumes_to_the_same_metrics(spec_file, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    run_experiment(load_spec(spec_file), clean, train_fn=fake_train, progress=False)
    out = tmp_path / "interrupted"
    monkeypatch.setenv("DARKTUNE_FAKE_FAIL_AFTER", "7")
    for _ in range(3):  # three interruptions: in the stage, then in the grid
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    monkeypatch.delenv("DARKTUNE_FAKE_FAIL_AFTER")
    resumed = Counting()
    run_experiment(load_spec(spec_file), out, train_fn=resumed, progress=False)
    assert resumed.calls[0]["resume"] is True  # the interrupted run continues from its checkpoint
    for run in sorted((clean / "runs").iterdir()):
        a = (run / "metrics.jsonl").read_text()
        assert a == (out / "runs" / run.name / "metrics.jsonl").read_text(), run.name


def test_missing_data_set_is_an_error_before_any_run(spec_file, tmp_path):
    text = spec_file.read_text().replace("grid:\n  data: " + str(tmp_path / "obj.data"), "grid:\n  data: nowhere/obj.data")
    spec_file.write_text(text)
    calls = []
    with pytest.raises(DarktuneError, match=r"grid.data: .*nowhere/obj.data not found") as err:
        run_experiment(load_spec(spec_file), tmp_path / "out", train_fn=lambda **kw: calls.append(kw),
                       progress=False)
    assert calls == [] and err.value.path == str(spec_file) and not (tmp_path / "out").exists()


def test_failed_run_is_reported_and_others_go_on(spec_file, tmp_path):
    def flaky(kwargs, progress):
        if Path(kwargs["out"]).name == "backbone-f13-nall-s0":
            raise DarktuneError("broken image", path="x.jpg")
        return fake_train(kwargs, progress)

    result = run_experiment(load_spec(spec_file), tmp_path / "exp", train_fn=flaky, progress=False)
    assert [o.plan.name for o in result.failed] == ["backbone-f13-nall-s0"]
    assert "broken image" in result.failed[0].error
    assert sum(o.status == "finished" for o in result.outcomes) == 12


@pytest.mark.slow
def test_parallel_workers_share_the_queue(spec_file, tmp_path):
    out = tmp_path / "exp"
    result = run_experiment(load_spec(spec_file), out, jobs=2, devices=["cpu"], train_fn=fake_train,
                            progress=False)
    assert not result.failed and len(result.outcomes) == 13
    serial = tmp_path / "serial"
    run_experiment(load_spec(spec_file), serial, train_fn=fake_train, progress=False)
    for run in (serial / "runs").iterdir():
        assert (run / "metrics.jsonl").read_text() == (out / "runs" / run.name / "metrics.jsonl").read_text()


def test_cli_reports_bad_spec_in_one_line(tmp_path, capsys):
    from darktune.cli import main

    path = _write(tmp_path, "grid:\n  data: x\n  starts: [scratch]\n  frozen: [0]\n")
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}:4:" in err and "unknown key 'frozen'" in err


def test_help_example_spec_is_valid(tmp_path):
    from darktune.cli.experiment import SPEC_EXAMPLE

    text = SPEC_EXAMPLE.split("\n", 1)[1]
    (tmp_path / "other.weights").write_bytes(b"")
    spec = load_spec(_write(tmp_path, "\n".join(line[2:] for line in text.splitlines())))
    plans = plan_runs(spec)
    assert len(plans) == 1 + 6 * 3 * 2 and plans[-1].name == "w-other-f20-n50-s0"
    assert spec.weights["backbone"] == str(tmp_path / "darknet.weights")


def test_other_start_weights_are_not_reused_silently(spec_file, tmp_path, coco):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    other = tmp_path / "darknet.weights"
    other.write_bytes(Path(coco.weights).read_bytes())
    spec_file.write_text(spec_file.read_text().replace("weights:\n  coco:", f"weights:\n  backbone: {other}\n  coco:"))
    with pytest.raises(DarktuneError, match="backbone-f0-nall-s0.*start_weights"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


ORPHAN = """\
import multiprocessing as mp, os, sys, time
from darktune.experiment_workers import _die_with_parent

def child(parent):
    _die_with_parent(parent)
    time.sleep(60)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child, args=(os.getpid(),), daemon=True)
    p.start()
    time.sleep(1.5)  # let the child arm its parent-death signal
    print(p.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="parent-death signal: Linux only")
def test_killed_experiment_leaves_no_worker_running(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # no cleanup in the parent at all
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and Path(f"/proc/{child}").exists():
        state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}/stat").exists() else "X"
        if state == "Z":  # ended, waiting to be reaped by init
            break
        time.sleep(0.1)
    alive = Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the worker kept running after its parent was killed"


DOC = Path(__file__).resolve().parents[1] / "docs" / "experiment_spec.md"


def test_spec_doc_names_every_key_and_its_example_runs(tmp_path):
    import re

    from darktune.experiment_spec import GRID_KEYS, STAGE_KEYS, TOP_KEYS, WEIGHT_KEYS

    text = DOC.read_text()
    for key in set(TOP_KEYS + WEIGHT_KEYS + STAGE_KEYS + GRID_KEYS):
        assert f"| `{key}` |" in text, f"docs/experiment_spec.md does not describe '{key}'"
    example = re.search(r"`demo/spec.yaml`:\n\n```yaml\n(.*?)```", text, re.DOTALL).group(1)
    for name in ("target", "domain"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "obj.data").write_text("classes = 1\n")
    spec = load_spec(_write(tmp_path, example))
    assert spec.grid.starts == ("scratch", "backbone", "coco15", "domain") and spec.backbone_layers == 13
    result = run_experiment(spec, tmp_path / "exp", train_fn=fake_train, progress=False)
    assert not result.failed and len(result.outcomes) == 13
