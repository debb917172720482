"""Experiment specs (validation with file and line), the grid expansion, and the runner's resume / reuse /
parallel rules (more than one run at a time: tests/experiment/test_ray.py), with a fake trainer (tests/fake_train.py)
so nothing here trains a network."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fake_train import fake_train

from darktune.errors import DarktuneError
from darktune.experiment.runner import run_experiment
from darktune.experiment.spec import load_spec, plan_runs

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
    ("grid:\n  data: x\n  starts: [scratch]\n  freeze: [-1]\n", "must be between 0 and 10000", 4),
    ("grid:\n  data: x\n  starts: [scratch]\n  iterations: 10\n  eval_at: [20]\n", "past the run", 5),
    ("grid:\n  data: x\n  starts: [scratch]\n  target_map: 90\n", "must be between 0 and 1", 4),
    ("grid:\n  data: x\n  starts: [scratch]\n  images: [all, 0]\n", "must be >= 1", 4),
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
    with pytest.raises(DarktuneError) as err:
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    text = str(err.value)
    assert text.startswith(f"{out}: 9 run folders were made with other inputs") and "\n" not in text
    assert "runs/scratch-f0-nall-s0, runs/scratch-f13-nall-s0" in text and "runs/domain" not in text
    assert "(iterations: 200 -> 300; eval_at: [100, 150, 180, 200] -> [100, 300])" in text
    assert "--rerun-changed" in text


def test_changed_iterations_name_only_iterations_and_rerun_changed_retrains(spec_file, tmp_path):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    spec_file.write_text(spec_file.read_text().replace("iterations: 200", "iterations: 300"))
    with pytest.raises(DarktuneError, match=r"9 run folders .*\(iterations: 200 -> 300\)\. Delete them") as err:
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    assert "eval_at" not in str(err.value)  # it moved with iterations only
    counting = Counting()
    result = run_experiment(load_spec(spec_file), out, train_fn=counting, progress=False, rerun_changed=True)
    assert len(counting.calls) == 9 and not result.failed
    assert {Path(c["out"]).name.split("-")[0] for c in counting.calls} == {"scratch", "backbone", "coco15"}
    assert all(c["resume"] is False for c in counting.calls)  # retrained from the start, not resumed


def test_report_only_target_change_reuses_every_run(spec_file, tmp_path):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    spec_file.write_text(spec_file.read_text().replace("target_map: 0.8", "target_map: 0.6"))
    again = Counting()
    result = run_experiment(load_spec(spec_file), out, train_fn=again, progress=False)
    assert again.calls == [] and all(o.reused for o in result.outcomes)
    assert json.loads((out / "experiment.json").read_text())["target_map"] == 0.6  # the report reads the new one
    # with stop_at_target the target decides where a run ends: then it is part of the run
    spec_file.write_text(spec_file.read_text().replace("target_map: 0.6", "target_map: 0.6\n  stop_at_target: true"))
    with pytest.raises(DarktuneError, match=r"stop_at_target: unset -> true; target_map: unset -> 0.6"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_result_neutral_options_reuse_every_run(spec_file, tmp_path):
    """How often checkpoints are written and the frozen-prefix feature cache do not change a run's weights
    (tests in test_train / test_eval_cache): changing them reuses the runs; a result option does not."""
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    text = spec_file.read_text()
    spec_file.write_text(text.replace("  size: 64\n", "  size: 64\n  checkpoint_every: 7\n  feature_cache: false\n"))
    again = Counting()
    result = run_experiment(load_spec(spec_file), out, train_fn=again, progress=False)
    assert again.calls == [] and all(o.reused for o in result.outcomes)
    spec_file.write_text(text.replace("  size: 64\n", "  size: 64\n  lr: 0.002\n"))
    with pytest.raises(DarktuneError, match=r"lr: unset -> 0.002"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_retrained_stage_refuses_the_runs_that_started_from_it(spec_file, tmp_path):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    first_stage = (out / "stages/domain/weights/last.weights").read_bytes()
    spec_file.write_text(spec_file.read_text().replace("coco15\n    iterations: 20\n", "coco15\n    iterations: 30\n"))
    with pytest.raises(DarktuneError) as err:
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    text = str(err.value)
    assert "4 run folders" in text and "stages/domain (iterations: 20 -> 30)" in text
    assert ("runs/domain-f0-nall-s0, runs/domain-f13-nall-s0, runs/domain-f20-nall-s0 (its start weights will "
            "change (stage 'domain' is to be retrained))") in text
    import shutil

    shutil.rmtree(out / "stages/domain")  # what the old message said to do: the grid runs were then reused
    with pytest.raises(DarktuneError, match=r"3 run folders.*stage 'domain' is to be retrained"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    assert not (out / "stages/domain").exists()  # refused before anything trained
    counting = Counting()
    run_experiment(load_spec(spec_file), out, train_fn=counting, progress=False, rerun_changed=True)
    assert sorted(Path(c["out"]).name for c in counting.calls) == ["domain", "domain-f0-nall-s0",
                                                                    "domain-f13-nall-s0", "domain-f20-nall-s0"]
    run = json.loads((out / "runs/domain-f0-nall-s0/run.json").read_text())
    assert run["start_weights"]["sha256"] == hashlib.sha256(first_stage).hexdigest()  # fake stages write b"fake"
    # weights of a finished stage that differ from what its runs started from (replaced by hand)
    (out / "stages/domain/weights/last.weights").write_bytes(b"other")
    with pytest.raises(DarktuneError, match=r"3 run folders.*its start weights changed \(stage 'domain' was "
                                            r"retrained\)"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_changed_data_lists_are_noticed(spec_file, tmp_path):
    data = tmp_path / "obj.data"
    data.write_text("classes = 1\ntrain = train.txt\nvalid = lists/valid.txt\nnames = missing.names\n")
    (tmp_path / "train.txt").write_text("".join(f"img/{i}.jpg\n" for i in range(10)))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/valid.txt").write_text("img/10.jpg\n")
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    assert all(o.reused for o in run_experiment(load_spec(spec_file), out, train_fn=fake_train,
                                                progress=False).outcomes)
    (tmp_path / "lists/valid.txt").write_text("img/9.jpg\n")  # the same obj.data, another valid list
    with pytest.raises(DarktuneError, match=r"13 run folders.*its data set's files changed"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_run_folder_without_digests_is_refused_as_unknown(spec_file, tmp_path):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    path = out / "runs/coco15-f0-nall-s0/run.json"
    old = json.loads(path.read_text())  # as darktune wrote it before the digests (target_map among the options)
    del old["data_sha256"], old["cfg_sha256"], old["start_weights"]["sha256"]
    old["options"]["target_map"] = 0.8
    path.write_text(json.dumps(old))
    with pytest.raises(DarktuneError, match=r"1 run folder was made .*: runs/coco15-f0-nall-s0 \(made by an older "
                                            r"darktune that did not record the content of its start weights, data "
                                            r"set, cfg, so it cannot be checked\)\. Delete it"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_finished_runs_lose_their_checkpoints(spec_file, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    monkeypatch.setenv("DARKTUNE_FAKE_FAIL_AFTER", "7")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    assert (out / "stages/domain/checkpoint.pt").is_file()  # unfinished: it resumes from it
    monkeypatch.delenv("DARKTUNE_FAKE_FAIL_AFTER")
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    assert not list(out.glob("*/*/checkpoint.pt")) and len(list(out.glob("*/*/summary.json"))) == 13
    kept = tmp_path / "kept"
    run_experiment(load_spec(spec_file), kept, train_fn=fake_train, progress=False, keep_checkpoints=True)
    assert len(list(kept.glob("*/*/checkpoint.pt"))) == 13


def test_cli_flags_rerun_changed_and_keep_checkpoints(spec_file, tmp_path, monkeypatch, capsys):
    from darktune.experiment import runner as experiment
    from darktune.cli import main

    monkeypatch.setattr(experiment, "default_train", fake_train)
    out = tmp_path / "exp"
    assert main(["experiment", str(spec_file), "--out", str(out), "--no-report", "--no-progress",
                 "--keep-checkpoints"]) == 0
    assert len(list(out.glob("*/*/checkpoint.pt"))) == 13
    spec_file.write_text(spec_file.read_text().replace("eval_every: 10\n", "eval_every: 20\n"))
    assert main(["experiment", str(spec_file), "--out", str(out), "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "9 run folders" in err and "(eval_every: 10 -> 20)" in err
    assert main(["experiment", str(spec_file), "--out", str(out), "--no-report", "--no-progress",
                 "--rerun-changed"]) == 0
    assert "13/13 runs done (4 reused)" in capsys.readouterr().out
    assert len(list(out.glob("*/*/checkpoint.pt"))) == 4  # the reused ones kept theirs: nothing else touched


@pytest.mark.parametrize("sub", ["", "sub"])
def test_out_that_is_a_file_is_a_one_line_error(spec_file, tmp_path, capsys, sub):
    from darktune.cli import main

    afile = tmp_path / "afile"
    afile.write_text("mine")
    out = afile / sub if sub else afile
    assert main(["experiment", str(spec_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"darktune: error: {out}: the experiment folder ")
    assert ("exists and is not a folder" if not sub else f"{afile} is a file, not a folder") in err
    assert afile.read_text() == "mine"


LOCK_HOLDER = """\
import sys, time
from pathlib import Path
from darktune.files import folder_lock

with folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_experiment_in_the_same_folder_fails_at_once(spec_file, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "exp"
    out.mkdir()
    script = tmp_path / "hold.py"
    script.write_text(LOCK_HOLDER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        counting = Counting()
        with pytest.raises(DarktuneError, match=rf"another darktune experiment is running in {out} \(pid "
                                                rf"{proc.pid}\)"):
            run_experiment(load_spec(spec_file), out, train_fn=counting, progress=False)
        assert counting.calls == [] and not (out / "experiment.json").exists()
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup at all: the kernel releases the lock
        proc.wait()
    result = run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    assert not result.failed


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
    text = spec_file.read_text().replace("grid:\n  data: " + str(tmp_path / "obj.data"),
                                         "grid:\n  data: nowhere/obj.data")
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
    with pytest.raises(DarktuneError, match=r"backbone-f0-nall-s0.*start weights: .*yolov3-tiny.weights \(layers 13\) "
                                            r"-> .*darknet.weights \(layers 13\)"):
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)


def test_conv15_extract_follows_its_source(spec_file, tmp_path, coco):
    out = tmp_path / "exp"
    run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    other = bytearray(Path(coco.weights).read_bytes())
    other[100] ^= 0xFF  # one byte of layer 0, which conv.15 keeps
    (tmp_path / "other.weights").write_bytes(bytes(other))
    spec_file.write_text(spec_file.read_text().replace(f"coco: {coco.weights}", f"coco: {tmp_path / 'other.weights'}"))
    with pytest.raises(DarktuneError) as err:
        run_experiment(load_spec(spec_file), out, train_fn=fake_train, progress=False)
    text = str(err.value)
    assert ("stages/domain, runs/coco15-f0-nall-s0, runs/coco15-f13-nall-s0, runs/coco15-f20-nall-s0 (its start "
            "weights changed (weights/coco.conv.15 holds other weights now))") in text
    assert "runs/domain-f0-nall-s0" in text and "runs/scratch" not in text


DOC = Path(__file__).resolve().parents[2] / "docs" / "experiment_spec.md"


def test_spec_doc_names_every_key_and_its_example_runs(tmp_path):
    import re

    from darktune.experiment.spec import GRID_KEYS, STAGE_KEYS, TOP_KEYS, WEIGHT_KEYS

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
