"""The two models side by side (`reproduce --model both`): every figure of the comparison read from the runs'
files (the fake trainer writes them; editing a file changes the verdict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_train import fake_train
from experiment.test_experiment import SPEC

from darktune.experiment.runner import run_experiment
from darktune.experiment.spec import load_spec
from darktune.report.compare import compare_models, write_comparison


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, coco):
    from darktune.darknet import zoo

    zoo.fetch("yolov4-tiny", progress=False)
    root = tmp_path_factory.mktemp("compare")
    data = root / "obj.data"
    data.write_text("classes = 1\n")
    v3 = SPEC.format(cfg=coco.cfg, weights=coco.weights, data=data)
    v4 = (v3.replace(f"cfg: {coco.cfg}\nweights:\n  coco: {coco.weights}\n", "model: yolov4-tiny\n")
          .replace("coco15", "coco29").replace("freeze: [0, 13, 20]", "freeze: [0, 27, 35]"))
    for name, text in (("yolov3-tiny", v3), ("yolov4-tiny", v4)):
        (root / f"{name}.yaml").write_text(text)
        run_experiment(load_spec(root / f"{name}.yaml"), root / "both" / name, train_fn=fake_train, progress=False)
    return root / "both"


@pytest.fixture
def both(two_models, tmp_path):
    dst = tmp_path / "both"
    shutil.copytree(two_models, dst)
    return dst


def _folders(both: Path) -> dict[str, Path]:
    return {m: both / m for m in ("yolov3-tiny", "yolov4-tiny")}


def _scale_seconds(run_dir: Path, factor: float, speed: float | None = None) -> None:
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec["train_s"] = rec["train_s"] * factor
        if speed is not None and "images_per_s" in rec:
            rec["images_per_s"] = speed
        lines.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("images_per_s", None)
    summary.pop("train_seconds", None)
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_rows_match_the_starts_by_role_and_the_frozen_counts_by_position(both):
    cmp = compare_models(_folders(both))
    v3, v4 = cmp.models
    assert (v3.freezes, v4.freezes) == ([0, 13, 20], [0, 27, 35])
    assert v4.row("coco partial", 2).start == "coco29" and v4.row("coco partial", 2).freeze == 35
    assert v3.row("coco partial", 2).start == "coco15" and v3.row("domain", 0).start == "domain"
    domain = v3.row("domain", 0)
    assert domain.iterations == 14 and domain.seconds == pytest.approx(0.14) and domain.reached == "1/1 seeds"
    assert set(domain.map_at) == {10, 20, 30, 40} and domain.curve[0][:2] == (2, pytest.approx(0.02))
    assert v3.images_per_s == {0: 100.0, 13: 100.0, 20: 100.0} and v3.stage_s is not None


def test_the_model_with_fewer_training_seconds_to_target_is_named(both):
    for run_dir in (both / "yolov4-tiny" / "runs").iterdir():
        _scale_seconds(run_dir, 2.0, speed=50.0)  # v4 twice as slow per iteration
    cmp = compare_models(_folders(both))
    assert cmp.faster == "yolov3-tiny" and cmp.verdict.startswith("yolov3-tiny reaches 80 mAP sooner")
    assert "yolov4-tiny: domain in 0 s (14 it.)" in cmp.verdict and cmp.models[1].images_per_s[0] == 50.0
    for run_dir in (both / "yolov3-tiny" / "runs").iterdir():
        _scale_seconds(run_dir, 3.0)
    assert compare_models(_folders(both)).faster == "yolov4-tiny"


def test_report_puts_the_models_side_by_side(both):
    paths = write_comparison(both, _folders(both), title="both")
    md = paths.markdown.read_text()
    assert md.startswith("# both\n") and "![mAP against iterations and against training seconds" in md
    assert "| frozen | start | yolov3-tiny | yolov4-tiny | sooner |" in md
    assert "| N=0 / N=0 | domain | 14 it. / 0 s | 14 it. / 0 s | tie |" in md
    assert "| N=20 / N=35 | scratch | not reached (0/1 seeds) | not reached (0/1 seeds) | neither |" in md
    assert "| frozen | yolov3-tiny | yolov4-tiny |\n|---|---|---|\n| N=0 / N=0 | 100.0 | 100.0 |" in md
    assert "| domain | 40 |" in md and paths.figures[0].name == "models.png"
    assert "| domain | 90 | 22 it. / 0 s | 22 it. / 0 s |" in md
    assert "| scratch | 50 | not reached | not reached | neither |" in md
    assert paths.figures[0].read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64," in paths.html.read_text()
    record = json.loads((both / "comparison.json").read_text())
    assert record["models"][1]["model"] == "yolov4-tiny" and record["faster"] == "tie"
    assert record["verdict"].startswith("both models reach 80 mAP in the same time in training seconds")


def test_a_model_that_never_reaches_the_target_is_said_so(both):
    for run_dir in (both / "yolov4-tiny" / "runs").iterdir():
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({**r, "map": 0.1} if "map" in r else r) + "\n"
                                                       for r in lines))
    cmp = compare_models(_folders(both))
    assert cmp.faster == "yolov3-tiny" and "yolov4-tiny: no start reached it with every seed" in cmp.verdict


def test_the_study_findings_are_checked_on_each_model_in_its_own_names(two_models):
    """yolov4-tiny's grid is checked against the study's findings as yolov3-tiny's is: coco29 plays coco15, 35
    frozen layers play 20; the verdicts come from its runs, and its claims say which study name each plays."""
    from darktune.report.data import load_experiment
    from darktune.report.findings import findings

    v3 = findings(load_experiment(two_models / "yolov3-tiny"))
    v4 = findings(load_experiment(two_models / "yolov4-tiny"))
    assert [f.verdict for f in v4] == [f.verdict for f in v3] == ["agrees"] * 5
    assert v3[0].claim == "Freezing 20 layers is clearly worse than freezing none, for every starting point"
    assert v4[0].claim.startswith("Freezing 35 layers (the study's 20 layers) is clearly worse")
    assert v3[1].claim == "coco15 (COCO conv.15) beats backbone at equal iterations"
    assert v4[1].claim == "coco29 (COCO conv.29, the study's coco15) beats backbone at equal iterations"
    assert "than coco29 (the study's coco15)" in v4[3].claim
    assert v4[4].claim.endswith("against coco29 (the study's coco15)")
    assert any("N=0" in e and "N=35" in e for e in v4[0].evidence)
    assert any(e.startswith("N=27: coco29") for e in v4[1].evidence)
    assert "vs coco29" in v4[4].evidence[0]
    assert not any("coco15" in e or "N=20" in e for f in v4 for e in f.evidence)


def test_report_rebuilds_each_model_and_the_comparison_of_a_both_folder(both, capsys):
    """`darktune report DIR` on a `reproduce --model both` folder: each model's report and the comparison,
    rebuilt from the run files (a run edited since shows in the comparison)."""
    from darktune.cli import main

    (both / "yolov3-tiny" / "profile.json").write_text(json.dumps({"name": "quick"}))
    for run_dir in (both / "yolov4-tiny" / "runs").iterdir():
        _scale_seconds(run_dir, 2.0, speed=50.0)
    assert main(["report", str(both), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert [Path(r["report_md"]).parent for r in made] == [both / "yolov3-tiny", both / "yolov4-tiny", both]
    assert all(Path(r["report_html"]).is_file() for r in made)
    assert (both / "report.md").read_text().startswith("# darktune reproduce --profile quick --model both")
    assert json.loads((both / "comparison.json").read_text())["faster"] == "yolov3-tiny"
    assert main(["report", str(both / "yolov4-tiny"), "--json"]) == 0  # one experiment: one record, as before
    assert json.loads(capsys.readouterr().out)["report_md"] == str(both / "yolov4-tiny" / "report.md")
