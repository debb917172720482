"""The experiment report: tables, study numbers beside ours, time to target, findings with agrees/DISAGREES, all
read from the runs' metrics files (a fake trainer writes them; editing a file changes the report)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from fake_train import fake_train
from experiment.test_experiment import SPEC

from darktune.report import study
from darktune.experiment.runner import run_experiment
from darktune.experiment.spec import load_spec
from darktune.report.render import write_report
from darktune.report.data import load_experiment, time_to_target
from darktune.report.findings import findings


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, coco):
    root = tmp_path_factory.mktemp("report")
    data = root / "obj.data"
    data.write_text("classes = 1\n")
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(cfg=coco.cfg, weights=coco.weights, data=data)
                    .replace("freeze: [0, 13, 20]", "freeze: [0, 13, 20]\n  images: [all, 20]"))
    run_experiment(load_spec(spec), root / "exp", train_fn=fake_train, progress=False)
    return root / "exp"


@pytest.fixture
def copy(experiment, tmp_path):
    import shutil

    dst = tmp_path / "exp"
    shutil.copytree(experiment, dst)
    record = json.loads((dst / "experiment.json").read_text())
    (dst / "experiment.json").write_text(json.dumps(record))
    return dst


def _set_maps(run_dir: Path, fn) -> None:
    """Rewrite the mAP of every evaluation line of a run: map = fn(iteration, map)."""
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "map" in rec:
            rec["map"] = fn(rec["iteration"], rec["map"])
        lines.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _verdicts(out: Path) -> list[str]:
    return [f.verdict for f in findings(load_experiment(out))]


def test_findings_agree_on_study_like_curves(experiment):
    assert _verdicts(experiment) == ["agrees"] * 5


def test_time_to_target_is_the_first_evaluation_at_target(experiment):
    data = load_experiment(experiment)
    # fake curves: coco15 0.98 (1 - exp(-it/60)) >= 0.8 from it 101.7, evaluated every 10 -> 110
    coco15 = time_to_target(data, "coco15", 0, None)
    assert coco15.iterations == 110 and coco15.seconds == pytest.approx(1.1)
    domain = time_to_target(data, "domain", 0, None)  # tau 8 -> 13.6, evaluated every 2 -> 14
    assert domain.iterations == 14
    assert time_to_target(data, "scratch", 0, None).iterations is None


def test_report_files_tables_and_study_numbers(experiment):
    paths = write_report(experiment)
    md = paths.markdown.read_text()
    for start in ("scratch", "backbone", "coco15", "domain"):
        assert f"### Starting point `{start}`" in md
    # coco15 N=0 at 200 it. faces the study's 2000 it. (98); ours is the fake curve's value
    assert re.search(r"\| 0 \| 200 \| 94\.5 \| 2000 \| 98 \|", md)
    assert re.search(r"\| 20 \| 40 \| 29\.8 \| 400 \| 72\.8 \|", md)  # Table III, N=20
    assert "87% fewer iterations" in md and "STAND-IN" in md
    assert "| coco15 | 0 | 110 | 1.1 | 1/1 |" in md
    assert "| 20 images | all (40) images |" in md and "map_vs_images.png" in md
    for fig in paths.figures:
        assert fig.read_bytes().startswith(b"\x89PNG") and f"report_files/{fig.name}" in md
    page = paths.html.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "report_files/" not in page and "<b>agrees</b>" in page
    assert "Python" in md and "torch" in md and "darktune 0.1.0" in md


def test_numbers_come_from_the_metrics_files(copy):
    # coco15 frozen 20 as good as frozen 0: the first finding must now disagree, naming coco15
    _set_maps(copy / "runs" / "coco15-f20-nall-s0", lambda it, m: 0.98 * (1 - 2.718 ** (-it / 60)))
    # domain slow: reaches the target late, so the 80% finding disagrees
    _set_maps(copy / "runs" / "domain-f0-nall-s0", lambda it, m: 0.81 if it >= 36 else 0.1)
    verdicts = _verdicts(copy)
    assert verdicts[0] == "DISAGREES" and verdicts[3] == "DISAGREES"
    found = findings(load_experiment(copy))
    assert any("coco15" in e and "NOT clearly worse" in e for e in found[0].evidence)
    assert "67% fewer" in found[3].evidence[0]  # 1 - 36/110
    md = write_report(copy).markdown.read_text()
    assert "**DISAGREES** — Freezing 20 layers" in md


def test_lower_bound_when_coco15_never_reaches_the_target(copy):
    for n in (0, 13, 20):
        _set_maps(copy / "runs" / f"coco15-f{n}-nall-s0", lambda it, m: min(m, 0.5))
    found = findings(load_experiment(copy))
    assert found[3].verdict == "agrees"
    assert "did not reach" in found[3].evidence[0] and "at least 93% fewer" in found[3].evidence[0]  # 1 - 14/200


def test_missing_and_damaged_runs_are_shown_not_fatal(copy):
    (copy / "runs" / "scratch-f13-nall-s0" / "summary.json").unlink()
    (copy / "runs" / "scratch-f13-nall-s0" / "metrics.jsonl").write_text("{not json\n[1, 2]\n")
    made = write_report(copy)
    md = made.markdown.read_text()
    metrics = copy / "runs" / "scratch-f13-nall-s0" / "metrics.jsonl"
    assert f"| runs/scratch-f13-nall-s0 | grid | damaged, not measured ({metrics}:1: run metrics: not a JSON line) |" in md
    assert made.damaged == (f"{metrics}:1: run metrics: not a JSON line",)
    assert "| 13 | 200 | – |" in md


def test_not_measured_without_the_runs(copy):
    record = json.loads((copy / "experiment.json").read_text())
    record["runs"] = [r for r in record["runs"] if r["start"] in ("scratch", "backbone")]
    (copy / "experiment.json").write_text(json.dumps(record))
    verdicts = _verdicts(copy)
    assert verdicts[1:] == ["not measured"] * 4


def test_study_layout_matching():
    table = study.table_for("coco15")
    assert study.study_iteration(table, [100, 150, 180, 200], 180) == 1800
    assert study.study_iteration(table, [40, 60, 72, 80], 80) == 2000
    assert study.study_iteration(table, [50, 100, 150, 200], 150) is None  # other proportions
    assert study.study_iteration(table, [100, 200], 200) is None
    assert table.cell(20, 2000).text() == "27" and study.table_for("scratch") is None
    assert study.table_for("backbone").cell(20, 1800).text() == "<1"


def test_cli_report_json(experiment, capsys):
    from darktune.cli import main

    assert main(["report", str(experiment), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report_md"].endswith("report.md") and len(out["figures"]) == 2


def test_runs_that_learned_nothing_are_inconclusive_not_evidence(copy):
    for n in (0, 20):  # scratch learned nothing at all: it can show neither finding
        _set_maps(copy / "runs" / f"scratch-f{n}-nall-s0", lambda it, m: 0.0)
    _set_maps(copy / "runs" / "backbone-f20-nall-s0", lambda it, m: 0.0)
    _set_maps(copy / "runs" / "coco15-f20-nall-s0", lambda it, m: 0.005)
    found = findings(load_experiment(copy))
    assert found[0].verdict == "agrees" and "scratch" in found[0].evidence[0] and "inconclusive" in found[0].evidence[0]
    assert found[1].verdict == "agrees" and found[2].verdict == "agrees"
    assert "inconclusive" in found[1].evidence[2] and "inconclusive" in found[2].evidence[2]  # N=20
    # a start that stays under the 10-point margin has not learned the target either (flat at a few points,
    # as runs whose every box goes to a frozen head are); one that reaches it counts
    _set_maps(copy / "runs" / "scratch-f20-nall-s0", lambda it, m: 0.025)
    _set_maps(copy / "runs" / "coco15-f20-nall-s0", lambda it, m: 0.023)
    assert "inconclusive" in findings(load_experiment(copy))[2].evidence[2]
    _set_maps(copy / "runs" / "scratch-f20-nall-s0", lambda it, m: 0.15)
    found = findings(load_experiment(copy))[2]
    assert found.verdict == "DISAGREES" and "NOT beaten" in found.evidence[2]


def test_every_comparison_inconclusive_is_said_so(copy):
    """A finding whose runs are all there but tell nothing is "inconclusive", not "not measured"."""
    for start in ("coco15", "backbone"):
        for n in (0, 13, 20):
            _set_maps(copy / "runs" / f"{start}-f{n}-nall-s0", lambda it, m: 0.01)
    found = findings(load_experiment(copy))[1]
    assert found.verdict == "inconclusive" and all("inconclusive" in e for e in found.evidence[:3])


def _fail(run_dir: Path, below: float | None = None) -> None:
    """Mark a run failed (as the trainer does after non-finite losses, or the grid when it cannot start it); with
    `below`, its curve is cut where it would first reach that mAP."""
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    if below is not None:
        kept = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("map", 0.0) < below]
        (run_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")


def test_runs_that_failed_are_not_measured_never_disagreement(copy):
    """A run that failed before the target says nothing of its time to target: the finding is "not measured"
    and names the runs (once, the grid of a relative reproduce folder failed whole, and the report said domain
    DISAGREES because it 'did not reach 90')."""
    _fail(copy / "runs" / "domain-f0-nall-s0", below=copy_target(copy))
    found = findings(load_experiment(copy))
    assert found[3].verdict == "not measured" and "domain-f0-nall-s0" in found[3].evidence[0], found[3]
    assert "did not finish" in found[3].evidence[0]
    assert found[4].verdict == "not measured" and "domain-f0-nall-s0" in found[4].evidence[0]
    assert found[0].verdict == "agrees" and "not compared" in " ".join(found[0].evidence)
    # a failed coco15 run: no lower bound is drawn from it either
    copy2 = copy
    _fail(copy2 / "runs" / "coco15-f0-nall-s0", below=copy_target(copy2))
    t = time_to_target(load_experiment(copy2), "coco15", 0, None)
    assert t.iterations is None and t.unfinished == 1
    found = findings(load_experiment(copy2))
    assert found[1].verdict == "agrees" and any("N=0: not compared" in e for e in found[1].evidence)


def test_a_failed_run_that_had_reached_the_target_still_counts(copy):
    _fail(copy / "runs" / "domain-f0-nall-s0")  # failed later, after its curve reached the target
    found = findings(load_experiment(copy))
    assert found[3].verdict == "agrees" and found[4].verdict == "agrees"


def copy_target(out: Path) -> float:
    return load_experiment(out).target_map


def _prepend_start_eval(run_dir: Path, value: float, with_clock: bool = False) -> None:
    """Add an evaluation of the start weights (iteration 0) as the trainer may log it, with or without a clock."""
    rec = {"iteration": 0, "map": value, "protocol": "darknet"}
    if with_clock:
        rec.update(train_s=0.0, elapsed_s=0.4)
    text = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(json.dumps(rec) + "\n" + text)


def test_iteration_zero_row_gives_zero_time_to_target(copy):
    for run_dir in (copy / "runs").iterdir():
        _prepend_start_eval(run_dir, 0.85 if run_dir.name.startswith("domain") else 0.01)
    data = load_experiment(copy)
    domain = time_to_target(data, "domain", 0, None)
    assert domain.iterations == 0 and domain.seconds == 0.0  # no clock on the line: 0 s all the same
    assert time_to_target(data, "coco15", 0, None).iterations == 110  # a low start changes nothing
    found = findings(data)
    assert found[3].verdict == "agrees" and "100% fewer" in found[3].evidence[0]
    assert "before any training" in found[3].evidence[1]
    assert found[0].verdict == "agrees"  # iteration 0 is no table row: the freeze means are unchanged
    md = write_report(copy).markdown.read_text()
    assert re.search(r"\| 0 \| 0 \| 1\.0 \| 0 \(start weights\) \| – \|", md)  # coco15's start row
    assert re.search(r"\| 0 \| 200 \| 94\.5 \| 2000 \| 98 \|", md)  # the study rows still face the study
    assert "| domain | 0 | 0 | 0.0 | 1/1 |" in md


def test_coco15_at_target_before_training_is_not_a_decrease(copy):
    for run_dir in (copy / "runs").iterdir():
        _prepend_start_eval(run_dir, 0.9, with_clock=True)
    found = findings(load_experiment(copy))  # no division by zero; nothing to compare
    assert found[3].verdict == "not measured" and "too low" in found[3].evidence[0]
    assert found[4].verdict == "not measured"
    assert "Time to the target mAP" in write_report(copy).markdown.read_text()


@pytest.fixture
def seeded(tmp_path_factory, coco):
    """Two seeds per grid point, and the stand-in backbone with only layers 0..7 loaded."""
    root = tmp_path_factory.mktemp("seeded")
    data = root / "obj.data"
    data.write_text("classes = 1\n")
    spec = root / "spec.yaml"
    text = SPEC.format(cfg=coco.cfg, weights=coco.weights, data=data)
    text = text.replace("weights:\n  coco:", "weights:\n  backbone_layers: 8\n  coco:")
    spec.write_text(text.replace("freeze: [0, 13, 20]", "freeze: [0, 13, 20]\n  seeds: [0, 1]"))
    run_experiment(load_spec(spec), root / "exp", train_fn=fake_train, progress=False)
    return root / "exp"


def test_seeds_give_mean_and_spread(seeded):
    data = load_experiment(seeded)
    assert {r.seed for r in data.grid} == {0, 1} and len(data.grid) == 24
    # the fake curve adds 0.001 per seed: mean of the two seeds, sd 0.0007 (0.1 points)
    md = write_report(seeded).markdown.read_text()
    assert re.search(r"\| 0 \| 200 \| 94\.6 ± 0\.1 \(2 seeds\) \| 2000 \| 98 \|", md)
    assert "mean ± standard deviation over the 2 training seeds" in md
    found = findings(data)
    assert found[2].verdict == "agrees" and "mean ± sd over 2 seeds" in found[2].evidence[0]  # vs scratch
    assert "mean of 2 seeds" not in md  # (the legend is inside the PNG)


def test_weak_stand_in_backbone_is_said_so(seeded):
    record = json.loads((seeded / "experiment.json").read_text())
    backbone = record["starts"]["backbone"]
    assert backbone["upto"] == 8 and "layers 8..12" in backbone["description"]
    data = load_experiment(seeded)
    found = findings(data)[1]  # the fake trainer's curve for upto=8 is COCO's: faster than coco15
    assert all("by construction" not in e for e in found.evidence[:3])  # coco15 lost: nothing to explain away
    for n in (0, 13, 20):  # now coco15 wins everywhere: at N=13/20 that follows from the stand-in's build
        for seed in (0, 1):
            _set_maps(seeded / "runs" / f"backbone-f{n}-nall-s{seed}", lambda it, m: m / 2)
    found = findings(load_experiment(seeded))[1]
    by_freeze = {e.split(":")[0]: e for e in found.evidence}
    assert found.verdict == "agrees" and "by construction" not in by_freeze["N=0"]
    assert "by construction" in by_freeze["N=13"] and "by construction" in by_freeze["N=20"]
    assert "STAND-IN" in found.evidence[-1] and "random" in found.evidence[-1]
    assert "This start is a stand-in" in write_report(seeded).markdown.read_text()


def test_within_spread_is_flagged():
    from darktune.report.findings import SeedStat, _within_spread

    assert _within_spread(SeedStat(0.50, 0.05, 3), SeedStat(0.45, 0.03, 3))
    assert not _within_spread(SeedStat(0.60, 0.02, 3), SeedStat(0.45, 0.03, 3))
    assert not _within_spread(SeedStat(0.60, None, 1), SeedStat(0.59, None, 1))


def test_agreement_resting_on_start_weights_is_said_so(copy):
    """domain's start weights meet the spec's target (0.8) but fine-tuning is slow above it: the finding still
    agrees at 0.8 and says that it is not robust; the sensitivity table shows the higher targets."""
    _prepend_start_eval(copy / "runs" / "domain-f0-nall-s0", 0.85)
    _set_maps(copy / "runs" / "domain-f0-nall-s0", lambda it, m: 0.85 if it <= 32 else 0.95)
    data = load_experiment(copy)
    found = findings(data)
    assert found[3].verdict == "agrees" and "NOT robust to the target" in found[3].evidence[-1]
    # 0.9: domain at 34 (evaluated every 2), coco15 0.98 (1 - exp(-it/60)) >= 0.9 from 151.5, evaluated every
    # 10 -> 160: 79% fewer
    assert "at the next target level, 90.0, domain 34 it. vs coco15 160 it.: 79% fewer" in found[3].evidence[-1]
    assert "start weights, before any training" in found[4].evidence[-1]
    md = write_report(copy).markdown.read_text()
    assert "| 80.0 (target) | 110 | `domain` | 0 | 100% |" in md and "| 90.0 | 160 | `domain` | 34 | 79% |" in md
    assert re.search(r"\| 50\.0 \| \d+ \| `domain` \| 0 \| 100% \|", md)  # lower targets too, from 50
    assert "`domain` 85.0" in md  # the start weights' mAP


def test_freeze_20_disagreement_shows_first_and_last_rows(copy):
    _set_maps(copy / "runs" / "domain-f20-nall-s0", lambda it, m: 0.9 * (1 - 2.718 ** (-it / 8)))
    found = findings(load_experiment(copy))[0]
    line = next(e for e in found.evidence if e.startswith("domain"))
    assert found.verdict == "DISAGREES" and "NOT clearly worse" in line
    assert "at its last row (it. 40)" in line and "at its first (it. 10)" in line


def test_report_of_runs_without_evaluations_warns_nothing(copy):
    """Every run failed before its first evaluation (e.g. a device that is not there): the report is still
    written, its figures say there is nothing to draw, and matplotlib prints no warning about an empty legend."""
    import warnings

    for metrics in (copy / "runs").glob("*/metrics.jsonl"):
        metrics.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_report(copy)
    assert paths.markdown.is_file() and len(paths.figures) == 2


def _drop_evals(run_dir: Path, below: int) -> None:
    """Remove a run's evaluations at iterations 1..below-1 (as if it evaluated less often)."""
    kept = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if not ("map" in json.loads(line) and 0 < json.loads(line)["iteration"] < below)]
    (run_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")


def test_a_cut_the_evaluations_cannot_resolve_is_inconclusive(copy):
    """coco15 at the target by iteration 10 and the domain runs evaluated first at 10: an 80% cut could not
    show, whatever the starts do, so the finding is inconclusive and says why (not DISAGREES)."""
    target = copy_target(copy)
    for run in (copy / "runs").glob("coco15-f0-*"):
        _set_maps(run, lambda it, m: target if it >= 10 else 0.1)
    for run in (copy / "runs").glob("domain-f0-*"):
        _set_maps(run, lambda it, m: target if it >= 10 else 0.1)
        _drop_evals(run, 10)
    found = findings(load_experiment(copy))[3]
    assert found.verdict == "inconclusive" and "cannot show 80%" in found.evidence[0], found
    assert "first evaluation after the start is at iteration 10" in found.evidence[0]


def test_a_stage_of_any_name_is_the_domain_path(tmp_path, coco):
    """A user's grid whose pretraining stage is called 'pre': the time-to-target finding uses it."""
    data = tmp_path / "obj.data"
    data.write_text("classes = 1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(cfg=coco.cfg, weights=coco.weights, data=data).replace("domain", "pre"))
    run_experiment(load_spec(spec), tmp_path / "exp", train_fn=fake_train, progress=False)
    found = findings(load_experiment(tmp_path / "exp"))[3]
    assert found.verdict == "agrees" and found.claim.startswith("pre reaches") and "'pre'" in found.claim, found
    paths = write_report(tmp_path / "exp")
    md = paths.markdown.read_text()
    assert md.startswith("# darktune experiment: exp") and "An experiment grid run with darktune" in md


def test_time_table_says_unfinished_not_unreached(copy):
    _fail(copy / "runs" / "domain-f0-nall-s0", below=copy_target(copy))
    md = write_report(copy).markdown.read_text()
    assert "| domain | 0 | unknown: 1 of 1 runs did not finish |" in md
