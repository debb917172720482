"""`darktune recipe`: a small search whose winner is known by construction (a fake trainer whose curves and speeds
are formulas), an interrupted search continued without training any iteration twice, the budget, the refusal of
a folder made with other settings, and the command with --json. Nothing here trains a network."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from darktune.errors import DarktuneError
from darktune.experiment import recipe as recipe_mod
from darktune.experiment.recipe import run_recipe
from darktune.experiment.recipe_space import RecipeSettings, candidates

TAU = {"scratch": 400.0, "backbone": 80.0, "coco15": 60.0, "coco": 40.0}  # iterations to 63% of the cap
CAP = {0: 0.95, 8: 0.93, 13: 0.9, 15: 0.83, 20: 0.5}  # the mAP a frozen count levels off at
CALLS: list[tuple[str, int, int]] = []  # (trial, first iteration trained, last) of every fake training


def kind(kwargs: dict) -> str:
    if kwargs["weights"] is None:
        return "scratch"
    if "domain" in Path(kwargs["weights"]).name:
        return "domain"
    return {8: "backbone", 15: "coco15"}.get(kwargs.get("upto"), "coco")


def spi(freeze: int) -> float:
    """Training seconds per iteration: frozen layers cost less."""
    return 0.01 * (1 - freeze / 25)


def fake_map(start: str, freeze: int, lr: float, iteration: int, seed: int) -> float:
    tau = (15.0 if start == "domain" else TAU[start]) * math.sqrt(0.001 / lr)
    return round(CAP[freeze] * (1 - math.exp(-iteration / tau)) + 0.002 * seed, 6)


def recipe_train(kwargs: dict, progress: bool) -> dict:
    """TrainConfig kwargs -> a run folder as the trainer writes it; resumes (and extends) from checkpoint.pt, stops
    at the target; DARKTUNE_FAKE_FAIL_AFTER=N raises KeyboardInterrupt after N iterations of one call."""
    out = Path(kwargs["out"])
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if kwargs.get("resume") and (out / "checkpoint.pt").is_file():
        start = json.loads((out / "checkpoint.pt").read_text())["iteration"]
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    args = (kind(kwargs), kwargs["freeze"], kwargs["lr"])
    fail_after = int(os.environ.get("DARKTUNE_FAKE_FAIL_AFTER", "0"))
    status, it = "finished", start
    with open(out / "metrics.jsonl", "a") as f:
        if start == 0:
            f.write(json.dumps({"iteration": 0, "map": fake_map(*args, 0, kwargs["seed"]), "train_s": 0.0}) + "\n")
        for it in range(start + 1, kwargs["iterations"] + 1):
            s = round(it * spi(kwargs["freeze"]), 6)
            f.write(json.dumps({"iteration": it, "loss": 1.0, "train_s": s}) + "\n")
            if it % kwargs["eval_every"] == 0:
                m = fake_map(*args, it, kwargs["seed"])
                f.write(json.dumps({"iteration": it, "map": m, "train_s": s}) + "\n")
                if kwargs["stop_at_target"] and m >= kwargs["target_map"]:
                    status = "stopped_at_target"
                    break
            if fail_after and it == start + fail_after:  # a checkpoint at it, then Ctrl-C
                f.flush()
                (out / "checkpoint.pt").write_text(json.dumps({"iteration": it}))
                CALLS.append((out.name, start + 1, it))
                raise KeyboardInterrupt
    (out / "checkpoint.pt").write_text(json.dumps({"iteration": it}))
    CALLS.append((out.name, start + 1, it))
    (out / "weights").mkdir(exist_ok=True)
    (out / "weights" / "last.weights").write_bytes(b"fake")
    summary = {"status": status, "iterations": it, "train_seconds": it * spi(kwargs["freeze"])}
    (out / "summary.json").write_text(json.dumps(summary))
    return summary


def brute_force(settings: RecipeSettings) -> tuple[str, float]:
    """The fastest candidate to the target as the full grid would find it (seed 0, every evaluation)."""
    best = None
    for c in candidates(settings):
        for it in range(0, settings.max_iterations + 1, settings.eval_every):
            if fake_map(c.start, c.freeze, c.lr, it, 0) >= settings.target_map:
                t = it * spi(c.freeze)
                best = min(best or (math.inf, ""), (t, c.name))
                break
    return best[1], best[0]


def grid_iterations(settings: RecipeSettings) -> int:
    """Iterations the full grid trains (each candidate to the target or to max_iterations)."""
    total = 0
    for c in candidates(settings):
        its = [it for it in range(settings.eval_every, settings.max_iterations + 1, settings.eval_every)
               if fake_map(c.start, c.freeze, c.lr, it, 0) >= settings.target_map]
        total += its[0] if its else settings.max_iterations
    return total


@pytest.fixture
def setup(tmp_path, coco):
    data = tmp_path / "obj.data"
    data.write_text("classes = 1\n")
    domain = tmp_path / "my-domain.weights"
    domain.write_bytes(Path(coco.weights).read_bytes()[:4096])
    settings = RecipeSettings(data=str(data), target_map=0.8, cfg=str(coco.cfg), domain=str(domain),
                              starts=("scratch", "backbone", "coco15", "coco", "domain"), lrs=(0.001, 0.002),
                              first_rung=20, eval_every=10, max_iterations=400, seeds=3, finalists=2,
                              train={"batch": 2, "size": 64})
    CALLS.clear()
    return settings, tmp_path / "search"


def test_search_finds_the_known_winner_for_a_fraction_of_the_grid(setup, monkeypatch):
    settings, out = setup
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    result = run_recipe(settings, out, progress=False)
    name, seconds = brute_force(settings)
    assert result["reached"] and result["winner"]["name"] == name
    assert result["winner"]["seconds"] == pytest.approx(seconds)
    assert result["search"]["iterations"] < 0.6 * grid_iterations(settings) + 2 * 3 * 200
    assert len(result["candidates"]) == len(candidates(settings)) == 34
    stopped = [r for r in result["candidates"] if r["time_to_target_s"] is None]
    assert stopped and all(r["why"] for r in stopped)  # every candidate stopped early says why
    assert result["winner"]["seeds"] == [0, 1, 2] and None not in result["winner"]["seed_seconds"]
    line = result["winner"]["train_command"]
    assert line.startswith("darktune train --cfg ") and "--stop-at-target" in line and "--freeze" in line
    assert str(settings.domain) in line if result["winner"]["start"] == "domain" else True
    state = json.loads((out / "recipe.json").read_text())
    assert state["result"]["winner"]["name"] == name
    assert not list(out.glob("runs/*/checkpoint.pt"))  # finished: checkpoints go, weights stay
    assert (out / "runs" / f"{name}-s0" / "weights" / "last.weights").is_file()


def test_no_iteration_trained_twice_and_rerun_trains_nothing(setup, monkeypatch):
    settings, out = setup
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    first = run_recipe(settings, out, progress=False, keep_checkpoints=True)
    for trial in {c[0] for c in CALLS}:
        spans = sorted((a, b) for t, a, b in CALLS if t == trial)
        assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1)), (trial, spans)
    CALLS.clear()
    again = run_recipe(settings, out, progress=False)
    assert CALLS == [] and again["winner"] == first["winner"]


def test_interrupted_search_resumes_without_retraining_finished_trials(setup, monkeypatch):
    settings, out = setup
    settings = RecipeSettings(**{**settings.__dict__, "lrs": (0.002,)})
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    reference = run_recipe(settings, setup[1].parent / "reference", progress=False)
    CALLS.clear()
    monkeypatch.setenv("DARKTUNE_FAKE_FAIL_AFTER", "15")
    calls = 0

    def flaky(kwargs, progress):  # the 9th training is interrupted (Ctrl-C) after 15 iterations
        nonlocal calls
        calls += 1
        if calls < 9:
            monkeypatch.delenv("DARKTUNE_FAKE_FAIL_AFTER", raising=False)
        else:
            monkeypatch.setenv("DARKTUNE_FAKE_FAIL_AFTER", "15")
        return recipe_train(kwargs, progress)

    monkeypatch.setattr(recipe_mod.runner, "default_train", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(settings, out, progress=False)
    before = list(CALLS)
    finished = {t for t, _, _ in before[:-1]}
    monkeypatch.delenv("DARKTUNE_FAKE_FAIL_AFTER")
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    CALLS.clear()
    result = run_recipe(settings, out, progress=False)
    assert not finished & {t for t, a, _ in CALLS if a == 1}  # no finished trial started again
    interrupted, _, stopped_at = before[-1]
    assert any(t == interrupted and a == stopped_at + 1 for t, a, _ in CALLS)  # resumed where it stopped
    assert result["winner"]["name"] == reference["winner"]["name"]
    assert result["winner"]["seed_seconds"] == reference["winner"]["seed_seconds"]


def test_budget_stops_the_search_and_names_the_closest(setup, monkeypatch):
    settings, out = setup
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    small = RecipeSettings(**{**settings.__dict__, "starts": ("scratch",), "target_map": 0.9, "lrs": (0.001,)})
    result = run_recipe(small, out, progress=False, budget_s=1e-6)
    assert not result["reached"] and result["winner"] is None
    assert result["closest"]["name"].startswith("scratch") and any("--budget" in a for a in result["advice"])
    assert (out / "runs" / "scratch-f0-lr0.001-b20-s0" / "checkpoint.pt").is_file()  # continued by a larger budget
    CALLS.clear()
    more = run_recipe(small, out, progress=False, budget_s=3600)
    assert CALLS and all(a > 1 for _, a, _ in CALLS[:1])  # the budget-stopped trial went on from its checkpoint
    assert more["search"]["budget_s"] == 3600


def test_other_settings_are_refused(setup, monkeypatch):
    settings, out = setup
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    run_recipe(RecipeSettings(**{**settings.__dict__, "starts": ("coco15",), "lrs": (0.001,)}), out, progress=False)
    with pytest.raises(DarktuneError, match="other settings .*target_map: 0.8 -> 0.7"):
        run_recipe(RecipeSettings(**{**settings.__dict__, "starts": ("coco15",), "lrs": (0.001,),
                                     "target_map": 0.7}), out, progress=False)


@pytest.mark.parametrize("changes, message", [
    ({"target_map": 1.5}, "--target-map is a fraction"),
    ({"starts": ("imagenet",)}, "unknown start 'imagenet'"),
    ({"starts": ("domain",), "domain": None}, "needs --domain FILE"),
    ({"first_rung": 5}, "--first-rung"),
    ({"sizes": (100,)}, "multiples of 32"),
    ({"train": {"batch": 0}}, "--batch must be >= 1"),
])
def test_bad_settings_are_one_line_errors(setup, changes, message):
    settings, _ = setup
    with pytest.raises(DarktuneError, match=message):
        RecipeSettings(**{**settings.__dict__, **changes})


def test_frozen_counts_only_where_the_start_loads_the_layers(setup):
    settings, _ = setup
    by_start: dict[str, set[int]] = {}
    for c in candidates(settings):
        by_start.setdefault(c.start, set()).add(c.freeze)
    assert by_start == {"scratch": {0}, "backbone": {0, 8}, "coco15": {0, 8, 13, 15}, "coco": {0, 8, 13, 15, 20},
                        "domain": {0, 8, 13, 15, 20}}


def test_cli_json(setup, monkeypatch, capsys):
    from darktune.cli import main

    settings, out = setup
    monkeypatch.setattr(recipe_mod.runner, "default_train", recipe_train)
    argv = ["recipe", settings.data, "--target-map", "0.8", "--cfg", settings.cfg, "--starts", "coco15,domain",
            "--domain", settings.domain, "--first-rung", "20", "--eval-every", "10", "--max-iterations", "400",
            "--batch", "2", "--size", "64", "--out", str(out), "--no-progress", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["reached"] and payload["winner"]["start"] == "domain"
    assert Path(payload["report_md"]).is_file() and Path(payload["report_html"]).is_file()
    assert main(argv[:-1] + ["--no-report"]) == 0  # the same search again: trains nothing, prints the result
    text = capsys.readouterr().out
    assert "darktune train" in text and "domain" in text
    assert main(["recipe", settings.data, "--target-map", "80", "--out", str(out)]) == 2
    assert "--target-map" in capsys.readouterr().err


def test_coco_keep_start_trains_the_whole_coco_model_with_keep_classes(setup, monkeypatch, coco):
    settings, out = setup
    seen = []

    def spy(kwargs, progress):
        seen.append(kwargs)
        return recipe_train(kwargs, progress)

    monkeypatch.setattr(recipe_mod.runner, "default_train", spy)
    result = run_recipe(RecipeSettings(**{**settings.__dict__, "starts": ("coco-keep",), "freeze": (0,),
                                          "lrs": (0.001,), "seeds": 1}), out, progress=False)
    assert {k["keep_classes"] for k in seen} == {True} and {k["upto"] for k in seen} == {None}
    assert {Path(k["weights"]).name for k in seen} == {Path(coco.weights).name}
    assert result["winner"]["start"] == "coco-keep" and "--keep-classes" in result["winner"]["train_command"]


@pytest.fixture(scope="module")
def ended_search(tmp_path_factory, coco) -> Path:
    """A small ended search (coco15 and domain starts, the fake trainer), its report not written; made once, each
    test takes a copy (`search_copy`)."""
    root = tmp_path_factory.mktemp("ended")
    data = root / "obj.data"
    data.write_text("classes = 1\n")
    domain = root / "my-domain.weights"
    domain.write_bytes(Path(coco.weights).read_bytes()[:4096])
    settings = RecipeSettings(data=str(data), target_map=0.8, cfg=str(coco.cfg), domain=str(domain),
                              starts=("coco15", "domain"), first_rung=20, eval_every=10, max_iterations=400,
                              train={"batch": 2, "size": 64})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe_mod.runner, "default_train", recipe_train)
        run_recipe(settings, root / "search", progress=False)
    assert not (root / "search" / "report.md").exists()
    return root / "search"


@pytest.fixture
def search_copy(ended_search, tmp_path) -> Path:
    """The ended search less its weights (the report reads none)."""
    return Path(shutil.copytree(ended_search, tmp_path / "search", ignore=shutil.ignore_patterns("*.weights")))


def test_report_command_rewrites_a_search_folders_report(search_copy, capsys):
    from darktune.cli import main

    out = search_copy
    winner = json.loads((out / "recipe.json").read_text())["result"]["winner"]["name"]
    assert main(["report", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record == {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
                      "figures": [str(out / "report_files" / "recipe_curves.png")], "damaged_runs": []}
    assert f"**Fastest recipe to 80.0 mAP: {winner}**" in (out / "report.md").read_text()
    assert captured.err == "" and (out / "report_files" / "recipe_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out == f"report: {out / 'report.md'} and {out / 'report.html'}\n"


@pytest.mark.parametrize("edit, message", [
    (lambda s: "{", "recipe.json is damaged: Expecting property name"),
    (lambda s: "[1, 2]", "recipe.json is damaged: a JSON object expected, got list"),
    (lambda s: json.dumps({**s, "result": None}), "the search has not ended yet"),
    (lambda s: json.dumps({**s, "result": {**s["result"], "search": None}}), "result: 'search' must not be null"),
    (lambda s: json.dumps({**s, "result": {**s["result"], "candidates": [
        {**s["result"]["candidates"][0], "best_map": 7}]}}), r"result.candidates\[0\]: 'best_map' must be in \[0, 1\]"),
    (lambda s: json.dumps({**s, "result": {**s["result"], "winner": {
        **s["result"]["winner"], "seed_seconds": ["fast"]}}}), "'seed_seconds' must hold seconds or null"),
    (lambda s: json.dumps({**s, "rungs": [{"iterations": {}}]}), r"rungs\[0\]: 'iterations' must map"),
])
def test_report_command_refuses_a_damaged_or_unfinished_recipe_json_in_one_line(search_copy, capsys, edit, message):
    from darktune.cli import main

    out = search_copy
    path = out / "recipe.json"
    path.write_text(edit(json.loads(path.read_text())))
    assert main(["report", str(out), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"darktune: error: {path}: ")
    assert re.search(message, captured.err), captured.err
    assert not (out / "report.md").exists()


def test_report_command_names_a_trials_damaged_metrics_and_exits_1(search_copy, capsys):
    from darktune.cli import main

    out = search_copy
    trial = sorted((out / "runs").iterdir())[0]
    (trial / "metrics.jsonl").write_text('{"iteration": 10, "map": 1.5, "train_s": 1.0}\n')
    assert main(["report", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    damaged = json.loads(captured.out)["damaged_runs"]
    assert len(damaged) == 1 and damaged[0].startswith(f"{trial / 'metrics.jsonl'}:1: ")
    assert captured.err == f"darktune: error: {damaged[0]} (the trial's curve is left out of the figure)\n"
    assert (out / "report.md").is_file()  # the table, from recipe.json, still lists its candidate
    assert f"| {trial.name.rpartition('-s')[0]} |" in (out / "report.md").read_text()
