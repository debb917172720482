"""The report of a `darktune recipe` search, from its files only: DIR/recipe.json (settings, rungs, result) and each
trial's metrics.jsonl.

Owns: `write_recipe_report(out_dir) -> ReportPaths` (report.md, report.html, report_files/recipe_curves.png; what
`darktune recipe` and `darktune report DIR` write), `is_recipe_folder`, `load_state` (recipe.json read as a regular
file and checked against the schema of what the report reads: a damaged or unfinished one is refused in one line
naming it), `recipe_blocks` and `curves_figure` (every candidate's mAP against training seconds, the stopped ones
included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes
from darktune.records import Field, check_record, read_text
from darktune.report.data import read_metrics_file
from darktune.report.machine import machine_lines
from darktune.report.plots import png_bytes
from darktune.report.render import Block, ReportPaths, pct, render_html, render_markdown

STATE = "recipe.json"
MAX_STATE_BYTES = 64 << 20

# what the report reads of recipe.json (darktune/experiment/recipe.py writes it); keys it does not read are free


def _must(kind: type, low: float | None = None, high: float | None = None) -> Field:
    return Field(kind, low, high, required=True, nullable=False)


RESULT = {"target_map": _must(float, 0, 1), "search": _must(dict), "candidates": _must(list), "winner": Field(dict),
          "sure": Field(bool), "verdict": Field(str), "closest": Field(dict), "advice": Field(list),
          "finalists": Field(dict)}
SEARCH = {"wall_s": _must(float, 0), "train_s": _must(float, 0), "iterations": _must(int, 0),
          "trials": _must(int, 0), "candidates": _must(int, 0), "rungs": _must(int, 0), "budget_s": Field(float, 0)}
CANDIDATE = {"name": _must(str), "start": _must(str), "freeze": _must(int, 0), "size": Field(int, 1, required=True),
             "lr": _must(float, 0), "burn_in": _must(int, 0), "rung": Field(int, 0, required=True),
             "iterations": _must(int, 0), "train_s": _must(float, 0), "best_map": _must(float, 0, 1),
             "time_to_target_s": Field(float, 0, required=True), "why": Field(str, required=True)}
WINNER = {**{k: CANDIDATE[k] for k in ("name", "start", "freeze", "size", "lr", "burn_in")},
          "seconds": _must(float, 0), "iteration": _must(int, 0), "seed_seconds": _must(list), "seeds": _must(list),
          "weights": _must(str), "train_command": _must(str)}
CLOSEST = {k: CANDIDATE[k] for k in ("name", "best_map", "iterations", "train_s")}
RUNG = {"iterations": _must(dict), "horizon_s": Field(float, 0), "go_on": Field(dict), "stopped": Field(dict)}

def is_recipe_folder(out_dir: str | Path) -> bool:
    """True for a `darktune recipe` search folder: DIR/recipe.json there (whatever it holds), no experiment.json."""
    out_dir = Path(out_dir)
    return os.path.lexists(out_dir / STATE) and not os.path.lexists(out_dir / "experiment.json")


def load_state(out_dir: Path) -> dict:
    """DIR/recipe.json of an ended search, checked; DarktuneError naming it when it is missing, not a regular UTF-8
    JSON file, unfinished (no result yet) or does not hold what the report reads."""
    path = Path(out_dir) / STATE
    if not os.path.lexists(path):
        raise DarktuneError("no recipe search here (recipe.json missing); run `darktune recipe` first",
                            path=str(out_dir))
    try:
        state = json.loads(read_text(path, "recipe.json", MAX_STATE_BYTES))
    except ValueError as exc:
        raise DarktuneError(f"recipe.json is damaged: {exc}", path=str(path)) from None
    if not isinstance(state, dict):
        raise DarktuneError(f"recipe.json is damaged: a JSON object expected, got {type(state).__name__}",
                            path=str(path))
    if state.get("result") is None:
        raise DarktuneError("the search has not ended yet (recipe.json has no result): run `darktune recipe` "
                            "again to continue it", path=str(path))
    check_state(state, path)
    return state


def check_state(state: dict, path: Path) -> None:
    """Every value of recipe.json that the report reads, checked (a DarktuneError naming the file and the part)."""
    what = "recipe.json is damaged"
    result = check_record(state["result"], RESULT, path, f"{what}: result")
    check_record(result["search"], SEARCH, path, f"{what}: result.search")
    check_record(state.get("settings"), {"eta": _must(int, 2)}, path, f"{what}: settings")
    for i, row in enumerate(result["candidates"]):
        check_record(row, CANDIDATE, path, f"{what}: result.candidates[{i}]")
    if result.get("winner") is not None:
        w = check_record(result["winner"], WINNER, path, f"{what}: result.winner")
        if not all(t is None or (_number(t) and t >= 0) for t in w["seed_seconds"]):
            raise DarktuneError(f"{what}: result.winner: 'seed_seconds' must hold seconds or null", path=str(path))
        check_record(result, {"sure": _must(bool), "verdict": _must(str)}, path, f"{what}: result")
    else:
        if result.get("closest") is not None:
            check_record(result["closest"], CLOSEST, path, f"{what}: result.closest")
        if not all(isinstance(a, str) for a in result.get("advice") or []):
            raise DarktuneError(f"{what}: result: 'advice' must be a list of strings", path=str(path))
    rungs = state.get("rungs", [])
    if not isinstance(rungs, list):
        raise DarktuneError(f"{what}: 'rungs' must be a list", path=str(path))
    for k, rung in enumerate(rungs):
        check_record(rung, RUNG, path, f"{what}: rungs[{k}]")
        if not rung["iterations"] or not all(isinstance(n, int) and not isinstance(n, bool)
                                             for n in rung["iterations"].values()):
            raise DarktuneError(f"{what}: rungs[{k}]: 'iterations' must map candidates to iteration counts",
                                path=str(path))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_trials(out_dir: Path) -> tuple[dict[str, list[tuple[float, float]]], tuple[str, ...]]:
    """(trial folder name -> [(training seconds, mAP)] of its evaluations, one line per trial whose metrics.jsonl
    was refused, naming the file): a refused trial is left out of the figure; the table, from recipe.json, still
    lists its candidate."""
    out, damaged = {}, []
    for run_dir in sorted((Path(out_dir) / "runs").glob("*")):
        if not run_dir.is_dir():
            continue
        try:
            _, evals = read_metrics_file(run_dir / "metrics.jsonl")
        except DarktuneError as exc:
            damaged.append(str(exc))
            continue
        points = sorted((float(e.get("train_s") or 0.0), float(e["map"])) for e in evals)
        if points:
            out[run_dir.name] = points
    return out, tuple(damaged)


def trial_curves(out_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Trial folder name -> [(training seconds, mAP)] of its evaluations (a trial whose metrics cannot be read is
    left out of the figure; the table still lists its candidate)."""
    return read_trials(out_dir)[0]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(curves: dict[str, list[tuple[float, float]]], result: dict) -> bytes:
    """mAP (%) against training seconds of every trial: the winner bold, the finalists solid, the candidates the
    search stopped thin and dashed, the finalists' other seeds dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    winner = (result.get("winner") or {}).get("name")
    finalists = list(result.get("finalists") or {})
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate([winner] + [f for f in finalists if f != winner])}
    for folder, points in sorted(curves.items()):
        name, _, seed = folder.rpartition("-s")
        xs, ys = [p[0] for p in points], [100 * p[1] for p in points]
        if name in colours:
            bold = name == winner and seed == "0"
            ax.plot(xs, ys, "-" if seed == "0" else ":", color=colours[name], linewidth=2.4 if bold else 1.2,
                    marker="." if seed == "0" else None, label=f"{name} (seed {seed})" + (": winner" * bold))
        else:
            ax.plot(xs, ys, "--", color="grey", linewidth=0.7, alpha=0.6)
    ax.plot([], [], "--", color="grey", linewidth=0.7, label="the other candidates")
    ax.axhline(100 * result["target_map"], color="black", linewidth=0.8, linestyle="--", label="target")
    ax.set_xlabel("training seconds (evaluations and checkpoints not counted)")
    ax.set_ylabel("mAP %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Every candidate's mAP against training seconds")
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def _headline(result: dict) -> list[Block]:
    target = pct(result["target_map"])
    w = result.get("winner")
    if w is None:
        c = result.get("closest")
        text = f"**No candidate reached {target} mAP.**"
        if c:
            text += (f" Closest: {c['name']}, {pct(c['best_map'])} mAP after {c['iterations']} iterations "
                     f"({_seconds(c['train_s'])} of training).")
        return [Block("p", text), Block("p", "What to try:"), Block("list", items=tuple(result.get("advice") or ()))]
    seeds = ", ".join(_seconds(t) if t is not None else "not reached" for t in w["seed_seconds"])
    return [Block("p", f"**Fastest recipe to {target} mAP: {w['name']}** (start {w['start']}, {w['freeze']} frozen "
                       f"layers, size {w['size'] or 'of the cfg'}, lr {w['lr']:g}, burn-in {w['burn_in']}): "
                       f"{_seconds(w['seconds'])} of training, iteration {w['iteration']} (seeds {w['seeds']}: "
                       f"{seeds})."),
            Block("p", f"How sure: {'sure' if result['sure'] else 'not sure'}, {result['verdict']}."),
            Block("p", f"To repeat it: `{w['train_command']}`"),
            Block("p", f"Its trained weights (seed 0, at the target): `{w['weights']}`")]


def recipe_blocks(state: dict, curves: dict[str, list[tuple[float, float]]]) -> list[Block]:
    result = state["result"]
    s = result["search"]
    budget = f" of a {s['budget_s']:.0f} s budget" if s.get("budget_s") else ""
    blocks = [Block("h2", "Result")] + _headline(result)
    blocks.append(Block("p", f"The search took {s['wall_s']:.0f} s{budget} (wall clock): {s['train_s']:.1f} s of "
                             f"training, {s['iterations']} iterations in {s['trials']} trials of {s['candidates']} "
                             f"candidates over {s['rungs']} rungs (successive halving, eta "
                             f"{state['settings']['eta']})."))
    blocks.append(Block("image", "mAP against training seconds, every trial", image=curves_figure(curves, result),
                        filename="recipe_curves.png"))
    rows = []
    for r in sorted(result["candidates"], key=lambda r: (r["time_to_target_s"] is None, r["time_to_target_s"] or 0,
                                                          -r["best_map"])):
        rows.append((r["name"], r["start"], str(r["freeze"]), str(r["size"] or "cfg"), f"{r['lr']:g}",
                     str(r["burn_in"]), "–" if r["rung"] is None else str(r["rung"]), str(r["iterations"]),
                     _seconds(r["train_s"]), pct(r["best_map"]), _seconds(r["time_to_target_s"]), r["why"] or "–"))
    blocks += [Block("h2", "Every candidate"),
               Block("table", items=tuple(rows), header=("candidate", "start", "frozen", "size", "lr", "burn-in",
                                                         "last rung", "iterations", "training", "best mAP",
                                                         "to target", "stopped because"))]
    rung_rows = []
    for k, rung in enumerate(state.get("rungs", [])):
        rung_rows.append((str(k), str(len(rung["iterations"])), str(max(rung["iterations"].values())),
                          _seconds(rung.get("horizon_s")), str(len(rung.get("go_on") or {})),
                          str(len(rung.get("stopped") or {}))))
    blocks += [Block("h2", "Rungs"),
               Block("table", items=tuple(rung_rows), header=("rung", "trials", "most iterations",
                                                              "equal-seconds point", "went on", "stopped"))]
    blocks += [Block("h2", "Machine"), Block("list", items=tuple(machine_lines()))]
    return blocks


def write_recipe_report(out_dir: str | Path) -> ReportPaths:
    """report.md, report.html and report_files/recipe_curves.png of a search folder (atomically); `damaged`: the
    trials whose metrics were refused (left out of the figure)."""
    out_dir = Path(out_dir)
    state = load_state(out_dir)
    curves, damaged = read_trials(out_dir)
    blocks = recipe_blocks(state, curves)
    title = f"darktune recipe: {out_dir.resolve().name}"
    figures = [atomic_write_bytes(out_dir / "report_files" / b.filename, b.image) for b in blocks if b.kind == "image"]
    md = atomic_write_bytes(out_dir / "report.md", render_markdown(blocks, title).encode())
    page = atomic_write_bytes(out_dir / "report.html", render_html(blocks, title).encode())
    return ReportPaths(md, page, tuple(figures), damaged)
