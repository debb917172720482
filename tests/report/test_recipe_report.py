"""The report of a recipe search, from a search folder written by hand (recipe.json and the trials' metrics): the
winner and its `darktune train` line, every candidate (stopped ones included) in the table and the figure, the
not-reached case with what to try, and one-line errors for a folder that holds no ended search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darktune.errors import DarktuneError
from darktune.report.recipe import recipe_blocks, trial_curves, write_recipe_report


def _row(name: str, start: str, freeze: int, best: float, ttt: float | None, why: str | None) -> dict:
    return {"name": name, "start": start, "freeze": freeze, "size": 128, "lr": 0.001, "burn_in": 20, "rung": 1,
            "why": why, "iterations": 60, "train_s": 12.5, "best_map": best, "time_to_target_s": ttt,
            "iteration_at_target": 50 if ttt else None, "failed": False}


def _folder(tmp_path: Path, reached: bool = True) -> Path:
    out = tmp_path / "search"
    rows = [_row("domain-f13-128-lr0.001-b20", "domain", 13, 0.93 if reached else 0.85, 8.2 if reached else None,
                 "reached the target" if reached else "the budget ran out"),
            _row("scratch-f0-128-lr0.001-b20", "scratch", 0, 0.05, None, "mAP 5.0 at 3.0 s, below the best 1 of 2 "
                                                                          "at equal seconds")]
    for i, row in enumerate(rows):
        run = out / "runs" / f"{row['name']}-s0"
        run.mkdir(parents=True)
        lines = [{"iteration": it, "map": row["best_map"] * it / 60, "train_s": it * 0.2} for it in (0, 30, 60)]
        run.joinpath("metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    search = {"wall_s": 100.0, "train_s": 25.0, "iterations": 120, "trials": 2, "candidates": 2, "rungs": 2,
              "budget_s": 600}
    result = {"target_map": 0.9, "model": "yolov3-tiny", "data": "obj.data", "search": search, "candidates": rows,
              "reached": reached, "winner": None, "sure": False, "verdict": None, "closest": None, "advice": []}
    if reached:
        result.update(winner={**{k: rows[0][k] for k in ("name", "start", "freeze", "size", "lr", "burn_in")},
                              "trial": "runs/domain-f13-128-lr0.001-b20-s0", "seconds": 8.2, "iteration": 50,
                              "seed_seconds": [8.2, 9.0, None], "seeds": [0, 1, 2], "median_s": 9.0,
                              "weights": "runs/x/weights/last.weights",
                              "train_command": "darktune train --cfg y.cfg --freeze 13 --stop-at-target"},
                      sure=False, verdict="its seeds overlap those of the runner-up",
                      finalists={rows[0]["name"]: [8.2, 9.0, None]})
    else:
        result.update(closest=rows[0], advice=["more training images", "more time (--budget)"])
    state = {"settings": {"eta": 3}, "rungs": [{"iterations": {r["name"]: 30 for r in rows}, "horizon_s": 6.0,
                                                "go_on": {rows[0]["name"]: 60}, "stopped": {rows[1]["name"]: "x"}},
                                               {"iterations": {rows[0]["name"]: 60}, "stopped": {}}],
             "result": result}
    out.joinpath("recipe.json").write_text(json.dumps(state))
    return out


def test_report_names_the_winner_its_command_and_every_candidate(tmp_path):
    out = _folder(tmp_path)
    paths = write_recipe_report(out)
    md = paths.markdown.read_text()
    assert "**Fastest recipe to 90.0 mAP: domain-f13-128-lr0.001-b20**" in md
    assert "`darktune train --cfg y.cfg --freeze 13 --stop-at-target`" in md
    assert "8.20 s, 9.00 s, not reached" in md and "How sure: not sure" in md
    assert "| scratch-f0-128-lr0.001-b20 | scratch | 0 |" in md and "below the best 1 of 2" in md
    assert "The search took 100 s of a 600 s budget" in md
    assert paths.figures[0].read_bytes()[:4] == b"\x89PNG" and paths.html.read_text().count("<tr>") >= 5


def test_figure_holds_every_trial_stopped_ones_included(tmp_path):
    out = _folder(tmp_path)
    curves = trial_curves(out)
    assert set(curves) == {"domain-f13-128-lr0.001-b20-s0", "scratch-f0-128-lr0.001-b20-s0"}
    assert curves["scratch-f0-128-lr0.001-b20-s0"][-1] == (12.0, 0.05)


def test_not_reached_names_the_closest_and_what_to_try(tmp_path):
    out = _folder(tmp_path, reached=False)
    blocks = recipe_blocks(json.loads((out / "recipe.json").read_text()), trial_curves(out))
    text = "\n".join(b.text for b in blocks) + "\n".join(str(b.items) for b in blocks)
    assert "No candidate reached 90.0 mAP" in text and "Closest: domain-f13-128-lr0.001-b20, 85.0" in text
    assert "more time (--budget)" in text


@pytest.mark.parametrize("content, message", [(None, "recipe.json missing"), ("{", "damaged"),
                                              ('{"rungs": []}', "has not ended yet")])
def test_folder_without_an_ended_search_is_a_one_line_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "recipe.json").write_text(content)
    with pytest.raises(DarktuneError, match=message) as info:
        write_recipe_report(tmp_path)
    assert "\n" not in str(info.value)
