"""`darktune reproduce`: profiles, the generated spec, data preparation (reused when run again), and end to end:
the smoke profile under 2 minutes, and an interrupted experiment that continues to the same tables."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from darktune.report import study
from darktune.errors import DarktuneError
from darktune.experiment.spec import plan_runs, spec_from_dict
from darktune.reproduce import (
    PROFILES,
    STAND_IN_BACKBONE_LAYERS,
    _check_profile_folder,
    build_spec,
    default_jobs,
    prepare_data,
)


def test_full_profile_is_the_study():
    full = PROFILES["full"]
    assert (full.size, full.batch) == (416, 64)
    assert full.iterations == 2000 and full.eval_at == (1000, 1500, 1800, 2000)
    assert full.domain_iterations == 400 and full.domain_eval_at == (100, 200, 300, 400)


@pytest.mark.parametrize("name", ["quick", "full"])
def test_profile_layout_faces_the_study_tables(name):
    p = PROFILES[name]
    coco15, domain = study.table_for("coco15"), study.table_for("domain")
    assert [study.study_iteration(coco15, p.eval_at, i) for i in p.eval_at] == list(coco15.iterations)
    assert [study.study_iteration(domain, p.domain_eval_at, i) for i in p.domain_eval_at] == list(domain.iterations)
    assert p.domain_iterations < p.iterations  # the domain path runs fewer iterations, as in the study


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return out, prepare_data(PROFILES["smoke"], out)


def test_prepare_data_filters_group_boxes_and_is_reused(smoke_data):
    out, data = smoke_data
    f = data["filter"]
    assert f["group_boxes"] > 0 and 0 < f["images_out"] < f["images_in"]
    domain = Path(data["domain"])
    for label in (domain.parent / "images").glob("*.txt"):  # every kept box is a single window
        assert label.read_text().strip()
    stamp = domain.stat().st_mtime_ns, Path(data["target"]).stat().st_mtime_ns
    again = prepare_data(PROFILES["smoke"], out)
    assert again == data and stamp == (domain.stat().st_mtime_ns, Path(data["target"]).stat().st_mtime_ns)


def test_spec_is_the_study_grid(smoke_data):
    _, data = smoke_data
    spec = spec_from_dict(build_spec(PROFILES["quick"], data), "generated.yaml")
    plans = plan_runs(spec)
    assert plans[0].group == "stage" and plans[0].start == "coco15"
    grid = [p for p in plans if p.group == "grid"]
    assert {(p.start, p.freeze) for p in grid} == {(s, n) for s in ("scratch", "backbone", "coco15", "domain")
                                                   for n in (0, 13, 20)}
    assert {p.iterations for p in grid if p.start == "domain"} == {PROFILES["quick"].domain_iterations}


def test_folder_of_another_profile_is_refused(tmp_path):
    _check_profile_folder(tmp_path, PROFILES["smoke"])
    _check_profile_folder(tmp_path, PROFILES["smoke"])  # same profile: continues
    with pytest.raises(DarktuneError, match="profile 'smoke'"):
        _check_profile_folder(tmp_path, PROFILES["quick"])


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have been waited for."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.mark.slow
def test_smoke_profile_end_to_end_under_two_minutes(tmp_path, capsys, monkeypatch):
    """The smoke profile's claim, "under 2 minutes on 2 CPU cores", measured as CPU time rather than wall time:
    wall time depends on what else the machine runs (14 s quiet, 140 s at load 8+), CPU time hardly does. The
    whole pipeline (both run workers included) must use less than 120 CPU seconds: even on ONE free core it
    would then finish within 2 minutes. Measured on the 2-core VM: 25.5 CPU s (wall 154 s at load 12; about
    14 s wall when the machine is quiet). The folder is given relative to the working directory, as `make demo`
    gives it (a relative --out once doubled the target set's path in the spec and every grid run failed)."""
    from darktune.cli import main

    monkeypatch.chdir(tmp_path)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    code = main(["reproduce", "--profile", "smoke", "--device", "cpu", "--out", "r", "--json"])
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["failed"] == 0 and len(out["runs"]) == 13, out
    load = os.getloadavg()[0]
    assert cpu < 120, f"smoke profile used {cpu:.0f} CPU s (wall {wall:.0f} s at load {load:.1f})"
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.count("### Starting point") == 4 and "Time to the target mAP" in md
    assert len(out["findings"]) == 5 and (tmp_path / "r" / "report.html").is_file()


TINY = """\
cfg: yolov3-tiny
train: {{batch: 2, size: 64, lr: 0.001, burn_in: 1, checkpoint_every: 1}}
stages:
  domain: {{data: {domain}, weights: coco15, iterations: 2}}
grid:
  data: {target}
  starts: [coco15, domain]
  freeze: [0]
  iterations: 6
  eval_at: [2, 4, 6]
  target_map: 0.5
"""


def _tables(md: str) -> list[str]:
    return re.findall(r"### Starting point.*?\n\n(?:\|.*\n)+", md)


@pytest.mark.slow
def test_interrupted_experiment_continues_to_the_same_tables(smoke_data, tmp_path):
    from darktune.experiment.runner import run_experiment
    from darktune.experiment.spec import load_spec
    from darktune.report.render import write_report

    _, data = smoke_data
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.format(domain=data["domain"], target=data["target"]))
    reference = tmp_path / "reference"
    run_experiment(load_spec(spec), reference, progress=False)
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "darktune", "experiment", str(spec), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "runs" / "coco15-f0-nall-s0" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and '"iteration": 2' in metrics.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # mid-run: the grid's first run has a checkpoint at iteration >= 2
    assert proc.wait(timeout=60) == 130
    summary = json.loads((out / "runs" / "coco15-f0-nall-s0" / "summary.json").read_text())
    assert summary["status"] == "failed"  # interrupted, not finished
    result = run_experiment(load_spec(spec), out, progress=False)
    assert result.outcomes[0].reused and not result.outcomes[1].reused and not result.failed
    a = _tables(write_report(reference).markdown.read_text())
    b = _tables(write_report(out).markdown.read_text())
    assert len(a) == 2 and a == b


def test_foreign_folder_is_refused_untouched(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DarktuneError, match="holds no reproduction"):
        _check_profile_folder(tmp_path, PROFILES["smoke"])
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_half_written_set_is_written_again(tmp_path):
    out = tmp_path / "r"
    data = prepare_data(PROFILES["smoke"], out)
    target = Path(data["target"]).parent
    (target / "synth.json").unlink()  # as if interrupted while writing images
    (target / "images" / "000000.jpg").write_bytes(b"half")
    again = prepare_data(PROFILES["smoke"], out)
    assert again == data and (target / "synth.json").is_file()
    assert (target / "images" / "000000.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_own_backbone_goes_into_the_spec(smoke_data, tmp_path):
    _, data = smoke_data
    mine = tmp_path / "darknet.weights"
    mine.write_bytes(b"")
    spec = spec_from_dict(build_spec(PROFILES["quick"], data, str(mine)), "generated.yaml")
    assert spec.weights == {"backbone": str(mine.resolve())} and spec.backbone_layers == 13  # the study's 13
    stand_in = spec_from_dict(build_spec(PROFILES["quick"], data), "generated.yaml")
    assert stand_in.weights == {} and stand_in.backbone_layers == STAND_IN_BACKBONE_LAYERS == 8


def test_quick_profile_has_several_seeds_and_runs_two_at_a_time_on_cpu(smoke_data):
    _, data = smoke_data
    spec = spec_from_dict(build_spec(PROFILES["quick"], data), "generated.yaml")
    grid = [p for p in plan_runs(spec) if p.group == "grid"]
    assert len(PROFILES["quick"].seeds) >= 2 and {p.seed for p in grid} == set(PROFILES["quick"].seeds)
    assert len(grid) == 12 * len(PROFILES["quick"].seeds)
    assert default_jobs("cpu") == min(4, os.cpu_count() or 1) and default_jobs("cuda:0") == 1


def test_profile_views_reach_the_target_set(tmp_path):
    close = replace(PROFILES["smoke"], target_window_scale=(0.2, 0.4))
    data = prepare_data(close, tmp_path)
    params = json.loads((Path(data["target"]).parent / "synth.json").read_text())["params"]
    assert params["window_scale"] == [0.2, 0.4]
    assert "window_scale" not in json.loads((Path(data["domain_raw"]).parent / "synth.json").read_text())["params"]
    assert PROFILES["quick"].target_window_scale is not None and PROFILES["full"].target_window_scale is None
    assert PROFILES["quick"].target_close_up and PROFILES["quick"].domain_close_up
    assert PROFILES["full"].target_close_up is None and PROFILES["full"].domain_close_up is None
    close_ups = replace(PROFILES["smoke"], target_close_up=(0.45, 0.75), domain_close_up=(0.2, 0.7))
    data = prepare_data(close_ups, tmp_path / "close")
    def params(path: str) -> dict:
        return json.loads((Path(path).parent / "synth.json").read_text())["params"]

    assert params(data["target"])["close_up"] == [0.45, 0.75] and params(data["domain_raw"])["close_up"] == [0.2, 0.7]


def test_quick_close_ups_put_the_target_boxes_on_the_head_freeze_20_freezes(tmp_path, coco_spec):
    """The quick profile's reason for close-ups: at 128 px its target windows go to the stride-32 head (layer 16),
    as large windows do in the study's 416 network, so freezing 20 layers freezes the head that learns them."""
    from darktune.report.heads import head_shares, training_box_sizes

    small = replace(PROFILES["quick"], target_images=40, domain_images=8)
    data = prepare_data(small, tmp_path)
    wh = training_box_sizes(data["target"])
    assert len(wh) >= 8
    shares = {h.layer: h.share for h in head_shares(coco_spec, wh, small.size)}
    assert shares[16] >= 0.9


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from darktune.cli import main

    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    for out in (afile, afile / "sub"):
        rc = main(["reproduce", "--profile", "smoke", "--device", "cpu", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert afile.read_text() == "mine\n"


def test_a_second_reproduction_in_the_same_folder_is_refused(tmp_path, capsys):
    from darktune.cli import main
    from darktune.files import folder_lock

    out = tmp_path / "r"
    out.mkdir()
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from darktune.files import folder_lock\n"
                               f"with folder_lock(Path({str(out)!r})):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["reproduce", "--profile", "smoke", "--device", "cpu", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and "another darktune experiment is running" in err, err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(out):  # released with the process
        pass


# --- --model: the study on Tiny YOLOv4, and on both models side by side -----------------------------------------

def test_v4_spec_is_the_study_grid_in_v4_numbering(smoke_data):
    from darktune.reproduce import STUDY_MODELS

    _, data = smoke_data
    raw = build_spec(PROFILES["quick"], data, model="yolov4-tiny")
    assert raw["model"] == "yolov4-tiny" and "cfg" not in raw
    spec = spec_from_dict(raw, "generated.yaml")
    plans = plan_runs(spec)
    assert plans[0].group == "stage" and plans[0].start == "coco29" and spec.backbone_layers == 18
    assert {(p.start, p.freeze) for p in plans if p.group == "grid"} == {
        (s, n) for s in ("scratch", "backbone", "coco29", "domain") for n in (0, 27, 35)}
    assert {p.model for p in plans} == {"yolov4-tiny"} and STUDY_MODELS["yolov3-tiny"].freeze == (0, 13, 20)
    assert build_spec(PROFILES["quick"], data)["cfg"] == "yolov3-tiny"  # the v3 spec as before


def test_folder_of_another_model_is_refused(tmp_path):
    _check_profile_folder(tmp_path, PROFILES["smoke"], "yolov4-tiny")
    _check_profile_folder(tmp_path, PROFILES["smoke"], "yolov4-tiny")
    with pytest.raises(DarktuneError, match="model 'yolov4-tiny'.*model 'yolov3-tiny'"):
        _check_profile_folder(tmp_path, PROFILES["smoke"])
    v3 = tmp_path / "v3"
    _check_profile_folder(v3, PROFILES["smoke"])  # a yolov3-tiny folder's marker is the profile alone
    assert json.loads((v3 / "profile.json").read_text()) == json.loads(json.dumps(
        __import__("dataclasses").asdict(PROFILES["smoke"])))


@pytest.mark.slow
def test_model_both_writes_each_study_and_the_comparison(tmp_path, monkeypatch):
    """--model both on the smoke profile with the fake trainer (the pipeline, not the training, is under test):
    one complete reproduction per model in OUT/<model>/, the comparison in OUT; run again, everything is reused."""
    from fake_train import fake_train

    from darktune.experiment import runner
    from darktune.reproduce import reproduce

    monkeypatch.setattr(runner, "default_train", fake_train)
    out = tmp_path / "both"
    outcome = reproduce("smoke", out, device="cpu", progress=False, jobs=1, model="both")
    assert set(outcome.models) == {"yolov3-tiny", "yolov4-tiny"}
    assert all(not o.result.failed for o in outcome.models.values()) and len(outcome.result.outcomes) == 26
    assert sorted(p.name for p in out.iterdir()) == [".lock", "comparison.json", "report.html", "report.md",
                                                     "report_files", "yolov3-tiny", "yolov4-tiny"]
    v4 = json.loads((out / "yolov4-tiny" / "experiment.json").read_text())
    assert v4["model"] == "yolov4-tiny" and v4["starts"]["coco29"]["upto"] == 29
    assert json.loads((out / "yolov4-tiny" / "runs" / "coco29-f35-nall-s0" / "run.json").read_text())["model"] \
        == "yolov4-tiny"
    assert (out / "yolov4-tiny" / "weights" / "coco.conv.29").is_file()
    assert (out / "yolov3-tiny" / "weights" / "coco.conv.15").is_file()
    md = (out / "report.md").read_text()
    assert "## Which model gets there first" in md and "| N=20 / N=35 | coco partial |" in md
    assert "## Training speed: images/s" in md and (out / "report_files" / "models.png").is_file()
    again = reproduce("smoke", out, device="cpu", progress=False, jobs=1, model="both")
    assert all(o.reused for m in again.models.values() for o in m.result.outcomes)
    with pytest.raises(DarktuneError, match="holds no reproduction"):  # a both folder is not one model's
        reproduce("smoke", out, device="cpu", progress=False, jobs=1, model="yolov4-tiny")
    single = tmp_path / "single"
    _check_profile_folder(single, PROFILES["smoke"])  # what a one-model reproduction writes first
    with pytest.raises(DarktuneError, match="which a --model both folder does not"):
        reproduce("smoke", single, device="cpu", progress=False, jobs=1, model="both")


def test_backbone_weights_are_for_yolov3_tiny_only(tmp_path):
    from darktune.reproduce import reproduce

    with pytest.raises(DarktuneError, match="--backbone is darknet's ImageNet"):
        reproduce("smoke", tmp_path / "r", backbone="darknet.weights", model="yolov4-tiny")
    assert not (tmp_path / "r").exists()
