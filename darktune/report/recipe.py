"""The report of a `darktune recipe` search, from its files only: DIR/recipe.json (settings, rungs, result) and each
trial's metrics.jsonl.

Owns: `write_recipe_report(out_dir) -> ReportPaths` (report.md, report.html, report_files/recipe_curves.png),
`recipe_blocks` and `curves_figure` (every candidate's mAP against training seconds, the stopped ones included).
"""

from __future__ import annotations

import json
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes
from darktune.report.data import read_metrics_file
from darktune.report.machine import machine_lines
from darktune.report.plots import png_bytes
from darktune.report.render import Block, ReportPaths, pct, render_html, render_markdown


def load_state(out_dir: Path) -> dict:
    path = Path(out_dir) / "recipe.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise DarktuneError("no recipe search here (recipe.json missing); run `darktune recipe` first",
                            path=str(out_dir)) from None
    except ValueError as exc:
        raise DarktuneError(f"recipe.json is damaged: {exc}", path=str(path)) from None
    if not isinstance(state, dict) or not isinstance(state.get("result"), dict):
        raise DarktuneError("the search has not ended yet (recipe.json has no result): run `darktune recipe` "
                            "again to continue it", path=str(path))
    return state


def trial_curves(out_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Trial folder name -> [(training seconds, mAP)] of its evaluations (a trial whose metrics cannot be read is
    left out of the figure; the table still lists its candidate)."""
    out = {}
    for run_dir in sorted((Path(out_dir) / "runs").glob("*")):
        try:
            _, evals = read_metrics_file(run_dir / "metrics.jsonl")
        except DarktuneError:
            continue
        points = sorted((float(e.get("train_s") or 0.0), float(e["map"])) for e in evals)
        if points:
            out[run_dir.name] = points
    return out


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
        return [Block("p", text), Block("p", "What to try:"), Block("list", items=tuple(result["advice"]))]
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
    """report.md, report.html and report_files/recipe_curves.png of a search folder (atomically)."""
    out_dir = Path(out_dir)
    state = load_state(out_dir)
    blocks = recipe_blocks(state, trial_curves(out_dir))
    title = f"darktune recipe: {out_dir.resolve().name}"
    figures = [atomic_write_bytes(out_dir / "report_files" / b.filename, b.image) for b in blocks if b.kind == "image"]
    md = atomic_write_bytes(out_dir / "report.md", render_markdown(blocks, title).encode())
    page = atomic_write_bytes(out_dir / "report.html", render_html(blocks, title).encode())
    return ReportPaths(md, page, tuple(figures))
