"""`darktune report DIR` on tampered or damaged result files: experiment.json, each run's summary.json and
metrics.jsonl, and a `--model both` folder with one half missing.

A result that was not measured must never look like one. experiment.json that does not fit its schema is
refused in one line naming it; a run whose summary or metrics do not (wrong types, an mAP that is NaN,
infinite or outside [0, 1], text that is not UTF-8, a FIFO) is loaded as damaged and not measured (no status,
no evaluation), named on stderr and in the report, and `darktune report` exits 1; a model whose runs are
missing is "not measured", never "not reached".
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from fake_train import fake_train

from reliability_table import tally  # noqa: F401 (fixture)

SPEC = """\
cfg: {cfg}
weights:
  coco: {weights}
train:
  batch: 4
  size: 64
grid:
  data: {data}
  starts: [scratch, coco15]
  freeze: [0]
  iterations: 40
  eval_at: [20, 40]
  eval_every: 20
  target_map: 0.5
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, coco):
    from darktune.experiment.runner import run_experiment
    from darktune.experiment.spec import load_spec

    root = tmp_path_factory.mktemp("report-inputs")
    (root / "obj.data").write_text("classes = 1\n")
    (root / "spec.yaml").write_text(SPEC.format(cfg=coco.cfg, weights=coco.weights, data=root / "obj.data"))
    run_experiment(load_spec(root / "spec.yaml"), root / "exp", train_fn=fake_train, progress=False)
    return root / "exp"


def _record_edit(fn):
    def edit(folder: Path) -> Path:
        path = folder / "experiment.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps(fn(record)))
        return path
    return edit


def _first_run(record: dict, **changes) -> dict:
    record["runs"][0].update(changes)
    return record


def _raw(name: str, data):
    def edit(folder: Path) -> Path:
        path = folder / name
        path.unlink()
        if data == "fifo":
            os.mkfifo(path)
        elif data == "folder":
            path.mkdir()
        else:
            path.write_bytes(data)
        return path
    return edit


EXPERIMENT_EDITS = {
    "record-is-a-list": _record_edit(lambda r: []),
    "runs-is-text": _record_edit(lambda r: {**r, "runs": "x"}),
    "target-map-text": _record_edit(lambda r: {**r, "target_map": "0.9"}),
    "target-map-nan": _record_edit(lambda r: {**r, "target_map": float("nan")}),
    "target-map-7": _record_edit(lambda r: {**r, "target_map": 7}),
    "run-entry-is-a-list": _record_edit(lambda r: {**r, "runs": [[]] + r["runs"][1:]}),
    "run-folder-escapes": _record_edit(lambda r: _first_run(r, folder="../../elsewhere")),
    "run-freeze-text": _record_edit(lambda r: _first_run(r, freeze="a")),
    "run-iterations-zero": _record_edit(lambda r: _first_run(r, iterations=0)),
    "run-seed-float": _record_edit(lambda r: _first_run(r, seed=0.5)),
    "record-not-utf8": _raw("experiment.json", b'{"runs": [], "notes": "\xff\xfe"}'),
    "record-is-a-fifo": _raw("experiment.json", "fifo"),
    "record-is-a-folder": _raw("experiment.json", "folder"),
}


def _metrics_edit(transform):
    def edit(run: Path) -> Path:
        path = run / "metrics.jsonl"
        lines = [json.loads(s) for s in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(rec) + "\n" for rec in transform(lines)))
        return path
    return edit


def _set_eval(**changes):
    def transform(lines: list[dict]) -> list[dict]:
        first = next(rec for rec in lines if "map" in rec)
        first.update(changes)
        return lines
    return transform


def _summary_edit(**changes):
    def edit(run: Path) -> Path:
        path = run / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return path
    return edit


RUN_EDITS = {
    "map-infinity": _metrics_edit(_set_eval(map=float("inf"))),
    "map-nan": _metrics_edit(_set_eval(map=float("nan"))),
    "map-negative": _metrics_edit(_set_eval(map=-3)),
    "map-7.5": _metrics_edit(_set_eval(map=7.5)),
    "map-text": _metrics_edit(_set_eval(map="0.9")),
    "eval-iteration-negative": _metrics_edit(_set_eval(iteration=-1)),
    "eval-iteration-float": _metrics_edit(_set_eval(iteration=20.5)),
    "train-seconds-negative": _metrics_edit(_set_eval(train_s=-40.0)),
    "metrics-line-is-a-list": _metrics_edit(lambda lines: [[1, 2]] + lines),
    "metrics-not-utf8": _raw("metrics.jsonl", b'{"iteration": 20, "map": 0.5}\n\xff\xfe\n'),
    "metrics-is-a-fifo": _raw("metrics.jsonl", "fifo"),
    "summary-status-unknown": _summary_edit(status="won"),
    "summary-best-map-2": _summary_edit(best_map=2.0),
    "summary-speed-nan": _summary_edit(images_per_s=float("nan")),
    "summary-train-seconds-text": _summary_edit(train_seconds="fast"),
    "summary-is-a-list": _raw("summary.json", b"[]"),
    "summary-is-a-fifo": _raw("summary.json", "fifo"),
}


def _with_deadline(fn, fifo: Path | None, seconds: float = 30.0):
    """fn() in a thread: ("ok", value), ("error", exception) or ("hang", None) (a blocked FIFO reader is let go)."""
    box: dict = {}

    def go():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported
            box["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None and fifo.is_fifo():
            os.close(os.open(fifo, os.O_WRONLY))
            thread.join(5)
        return "hang", None
    return ("error", box["error"]) if "error" in box else ("ok", box["value"])


def test_experiment_records_that_do_not_fit_are_refused(experiment, tmp_path, tally):
    from darktune.errors import DarktuneError
    from darktune.report.data import load_experiment

    t = tally("report_inputs")
    for name, edit in EXPERIMENT_EDITS.items():
        folder = tmp_path / name
        shutil.copytree(experiment, folder)
        path = edit(folder)
        state, value = _with_deadline(lambda: load_experiment(folder), path)
        if state == "hang":
            outcome = ("crash", "hang")
        elif state == "error":
            named = isinstance(value, DarktuneError) and str(path) in str(value) and len(str(value).splitlines()) == 1
            outcome = ("handled", "") if named else ("crash", f"{type(value).__name__}: {str(value)[:80]}")
        else:
            outcome = ("silent", "loaded")
        t.case(f"report:{name}", *outcome)
    assert all(v[0] == "handled" for v in t.cases.values()), {k: v for k, v in t.cases.items() if v[0] != "handled"}


def test_damaged_run_files_are_never_reported_as_measured(experiment, tmp_path, tally):
    from darktune.report.data import load_experiment

    t = tally("report_inputs")
    for name, edit in RUN_EDITS.items():
        folder = tmp_path / name
        shutil.copytree(experiment, folder)
        record = json.loads((folder / "experiment.json").read_text())
        path = edit(folder / record["runs"][0]["folder"])
        state, value = _with_deadline(lambda: load_experiment(folder), path)
        if state != "ok":
            outcome = ("crash", "hang" if state == "hang" else f"{type(value).__name__}: {str(value)[:80]}")
        else:
            run = value.runs[0]
            problem = getattr(run, "problem", None)
            unmeasured = run.status is None and not run.evals
            outcome = (("handled", "") if problem and str(path) in problem and unmeasured
                       else ("silent", f"status {run.status}, {len(run.evals)} evaluations"))
        t.case(f"report:{name}", *outcome)
    assert all(v[0] == "handled" for v in t.cases.values()), {k: v for k, v in t.cases.items() if v[0] != "handled"}


def test_cli_report_names_the_damaged_file_and_exits_1(experiment, tmp_path, tally, capsys):
    from darktune.cli import main

    t = tally("report_inputs")
    folder = tmp_path / "exp"
    shutil.copytree(experiment, folder)
    record = json.loads((folder / "experiment.json").read_text())
    path = RUN_EDITS["map-7.5"](folder / record["runs"][0]["folder"])
    rc = main(["report", str(folder)])
    err = capsys.readouterr().err
    md = (folder / "report.md").read_text()
    ok = rc == 1 and str(path) in err and "damaged, not measured" in md and "750.0" not in md
    t.case("cli-report:map-7.5", "handled" if ok else "silent", "" if ok else f"exit {rc}")
    assert ok, (rc, err)


def test_both_folder_with_one_half_missing_says_not_measured(experiment, tmp_path, tally):
    """A `reproduce --model both` folder whose second model's runs are gone: that model is not measured; the
    comparison never shows its rows as 'not reached'."""
    from darktune.report.compare import write_reports

    t = tally("report_inputs")
    both = tmp_path / "both"
    shutil.copytree(experiment, both / "yolov3-tiny")
    shutil.copytree(experiment, both / "yolov4-tiny")
    shutil.rmtree(both / "yolov4-tiny" / "runs")
    try:
        write_reports(both)
        md = (both / "report.md").read_text()
        v4_cells = [line for line in md.splitlines()  # the time-to-target rows: frozen | start | v3 | v4 | sooner
                    if line.startswith("| N=0 / N=0 | scratch |") or line.startswith("| N=0 / N=0 | coco partial |")]
        ok = bool(v4_cells) and all("not measured" in line.split("|")[4] for line in v4_cells)
        outcome = ("handled", "") if ok else ("silent", "a missing half reads as measured")
    except Exception as exc:  # noqa: BLE001 - counted
        outcome = ("crash", f"{type(exc).__name__}: {str(exc)[:80]}")
    t.case("report:both-one-half-missing", *outcome)
    assert outcome[0] == "handled", outcome
