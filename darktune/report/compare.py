"""Two models' reproductions side by side (`darktune reproduce --model both`), from their run files only.

Owns: `compare_models(folders) -> Comparison` (per model and starting point: mean mAP at the table rows, time to
target in iterations and training seconds, images/s), `write_comparison(out_dir, folders)` (report.md,
report.html, report_files/models.png, comparison.json) and `write_reports(out_dir)` (`darktune report`: one
experiment's report, a recipe search's, or every model's and the comparison of a `--model both` folder). The
starting points are matched by their role in the study (scratch, backbone, the COCO partial start, the domain
path), the frozen counts by position (the study's 0/13/20 on yolov3-tiny are 0/27/35 on yolov4-tiny), so each row
compares like with like.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from darktune.darknet.transfer import MODELS
from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes
from darktune.records import read_text
from darktune.report.data import ExperimentData, cell_map, eval_iterations, its_text, load_experiment, \
    main_images, time_to_target
from darktune.report.machine import machine_lines
from darktune.report.plots import models_figure
from darktune.report.recipe import is_recipe_folder, write_recipe_report
from darktune.report.render import Block, ReportPaths, pct, render_html, render_markdown, write_report

ROLES = ("scratch", "backbone", "coco partial", "domain")


@dataclass
class StartRow:
    """One starting point of one model at one frozen count (means over seeds)."""

    role: str
    start: str  # the start's name in that model's grid (coco15 / coco29 ...)
    freeze: int
    map_at: dict[int, float | None]  # table row iteration -> mean mAP (fraction)
    iterations: float | None  # to target; None: not reached by every seed
    seconds: float | None  # training seconds to target
    reached: str  # "3/3 seeds"
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (iteration, seconds, mAP %) means
    unfinished: int = 0  # runs that neither reached the target nor ended as planned: not measured, never "not reached"

    def not_there(self) -> str:
        """What a cell says when the row has no time to target: not measured (runs missing or unfinished), or
        not reached by every seed."""
        if self.unfinished:
            runs = self.reached.split("/")[1].split()[0]  # "0/3 seeds": one run per seed
            return f"not measured: {self.unfinished} of {runs} runs did not finish"
        return f"not reached ({self.reached})"


@dataclass
class ModelResult:
    model: str
    folder: str
    target_map: float | None
    freezes: list[int]
    rows: list[StartRow]
    images_per_s: dict[int, float | None]  # frozen count -> median over the grid's runs
    stage_s: float | None  # the domain stage's training seconds (the domain path's price, paid once)

    def row(self, role: str, position: int) -> StartRow | None:
        freeze = self.freezes[position] if position < len(self.freezes) else None
        return next((r for r in self.rows if r.role == role and r.freeze == freeze), None)


@dataclass
class Comparison:
    models: list[ModelResult]
    faster: str | None  # the model whose fastest start reached the target in fewer training seconds (N=0), or "tie"
    verdict: str


def role_of(data: ExperimentData, start: str) -> str | None:
    if start in ("scratch", "backbone"):
        return start
    if start.startswith("coco") and start[4:].isdigit():
        return "coco partial"
    return "domain" if start == data.domain_start() else None


def _curve(data: ExperimentData, start: str, freeze: int, images: int | None) -> list[tuple[int, float, float]]:
    """(iteration, mean training seconds, mean mAP %) at every iteration that every seed evaluated."""
    runs = data.select(start, freeze, images)
    points: dict[int, list[tuple[float | None, float]]] = {}
    for r in runs:
        for e in {e.iteration: e for e in r.evals}.values():
            points.setdefault(e.iteration, []).append((0.0 if e.iteration == 0 else e.seconds, 100 * e.map))
    out = []
    for it in sorted(points):
        values = points[it]
        if len(values) == len(runs) and all(s is not None for s, _ in values):
            out.append((it, sum(s for s, _ in values) / len(values), sum(m for _, m in values) / len(values)))
    return out


def model_result(model: str, folder: Path) -> ModelResult:
    data = load_experiment(folder)
    images = main_images(data)
    rows = []
    for start in data.starts():
        role = role_of(data, start)
        if role is None:
            continue
        for freeze in data.freezes():
            if not data.select(start, freeze, images):
                continue
            t = time_to_target(data, start, freeze, images)
            rows.append(StartRow(
                role, start, freeze,
                {i: cell_map(data, start, freeze, i, images) for i in eval_iterations(data, start)},
                t.iterations if t else None, t.seconds if t else None,
                f"{t.reached_seeds}/{t.seeds} seeds" if t else "–", _curve(data, start, freeze, images),
                t.unfinished if t else 0))
    speeds = {f: [r.images_per_s for r in data.select(None, f, images) if r.images_per_s] for f in data.freezes()}
    stage = [r.train_s for r in data.stages if r.train_s is not None]
    return ModelResult(model, str(folder), data.target_map, data.freezes(), rows,
                       {f: median(v) if v else None for f, v in speeds.items()}, sum(stage) if stage else None)


def compare_models(folders: dict[str, Path]) -> Comparison:
    results = [model_result(m, Path(f)) for m, f in folders.items()]
    best = {}
    for res in results:
        hits = [r for r in res.rows if r.freeze == res.freezes[0] and r.seconds is not None]
        if hits:
            best[res.model] = min(hits, key=lambda r: r.seconds)
    target = next((r.target_map for r in results if r.target_map is not None), None)
    if not best:
        unmeasured = [r.model for r in results if any(row.unfinished for row in r.rows)]
        if unmeasured:
            return Comparison(results, None, f"not measured: runs of {' and '.join(unmeasured)} did not finish, "
                                             f"so no model can be said to reach {pct(target, 0)} mAP")
        return Comparison(results, None, f"no model reached the target {pct(target, 0)} mAP with every seed")
    faster = sooner({m: b.seconds for m, b in best.items()})
    parts = [f"{m}: {b.start} in {b.seconds:.0f} s ({its_text(b.iterations)} it.)" for m, b in best.items()]
    missing = [r for r in results if r.model not in best]
    for r in missing:
        unmeasured = sum(row.unfinished for row in r.rows if row.freeze == r.freezes[0])
        parts.append(f"{r.model}: not measured ({unmeasured} runs did not finish)" if unmeasured
                     else f"{r.model}: no start reached it with every seed")
    lead = (f"{faster} reaches {pct(target, 0)} mAP sooner" if faster != "tie"
            else f"both models reach {pct(target, 0)} mAP in the same time")
    return Comparison(results, faster, f"{lead} in training seconds, its fastest start against the other's fastest "
                                       "(no frozen layers): " + "; ".join(parts))


def sooner(seconds: dict[str, float]) -> str:
    """The model with the fewest seconds; "tie" when several share them, "neither" when none got there."""
    if not seconds:
        return "neither"
    best = min(seconds.values())
    first = [m for m, s in seconds.items() if s == best]
    return first[0] if len(first) == 1 else "tie"


def _freeze_label(results: list[ModelResult], position: int) -> str:
    return " / ".join(f"N={r.freezes[position]}" for r in results if position < len(r.freezes))


def _cell(row: StartRow | None, text) -> str:
    return "–" if row is None else text(row)


def blocks(cmp: Comparison) -> list[Block]:
    res = cmp.models
    names = [r.model for r in res]
    target = next((r.target_map for r in res if r.target_map is not None), None)
    out = [Block("p", "Each model's own report (its tables, Fig. 4, findings) is in its folder: "
                 + ", ".join(f"`{r.model}/report.md`" for r in res) + ". Starting points are matched by role "
                 "(the COCO partial start is coco15 on yolov3-tiny and coco29 on yolov4-tiny), frozen layers by "
                 "position (" + "; ".join(f"{r.model} {'/'.join(map(str, r.freezes))}" for r in res) + "). "
                 "Figures are means over the training seeds; mAP in darknet's protocol (all-point AP at IoU 0.5)."),
           Block("h2", "Which model gets there first"), Block("p", f"**{cmp.verdict}**."),
           Block("image", "mAP against iterations and against training seconds, no frozen layers", image=models_figure(
               {(r.model, row.role): row.curve for r in res for row in r.rows if row.freeze == r.freezes[0]},
               names, target), filename="models.png")]
    rows = []
    for position in range(max(len(r.freezes) for r in res)):
        for role in ROLES:
            cells = [r.row(role, position) for r in res]
            if all(c is None for c in cells):
                continue
            first = sooner({r.model: c.seconds for r, c in zip(res, cells) if c is not None and c.seconds is not None})
            rows.append((_freeze_label(res, position), role, *[_cell(c, lambda c: (
                f"{its_text(c.iterations)} it. / {c.seconds:.0f} s" if c.seconds is not None else
                c.not_there())) for c in cells], first))
    out += [Block("h2", f"Time to target ({pct(target, 0)} mAP): iterations / training seconds"),
            Block("table", items=tuple(rows), header=("frozen", "start", *names, "sooner")),
            Block("p", "Training seconds exclude evaluation and checkpoints. The domain path also paid for its "
                       "domain stage once: " + ", ".join(f"{r.model} {r.stage_s:.0f} s" for r in res
                                                         if r.stage_s is not None) + ".")]
    out += levels_blocks(res, names)
    out += [Block("h2", "mAP at the table rows (no frozen layers)")]
    table = []
    for role in ROLES:
        cells = [r.row(role, 0) for r in res]
        its = sorted({i for c in cells if c for i in c.map_at})
        for i in its:
            table.append((role, str(i), *[_cell(c, lambda c: pct(c.map_at.get(i))) for c in cells]))
    out.append(Block("table", items=tuple(table), header=("start", "iteration", *names)))
    speed = [(_freeze_label(res, p), *[("–" if p >= len(r.freezes) or r.images_per_s.get(r.freezes[p]) is None
                                        else f"{r.images_per_s[r.freezes[p]]:.1f}") for r in res])
             for p in range(max(len(r.freezes) for r in res))]
    out += [Block("h2", "Training speed: images/s (median over the runs)"),
            Block("table", items=tuple(speed), header=("frozen", *names)),
            Block("p", "Frozen layers cost no backward work (and with the frozen-prefix cache no forward work "
                       "either), so the speed depends on the frozen count. Both models' runs trained on this "
                       "machine; a run's images/s and seconds also follow what else the machine ran meanwhile."),
            Block("h2", "Machine"), Block("list", items=tuple(machine_lines()))]
    return out


def first_reached(row: StartRow, level: float) -> tuple[int, float] | None:
    """(iteration, seconds) of the first mean-curve point at or above `level` (a fraction)."""
    return next(((it, s) for it, s, m in row.curve if m >= 100 * level - 1e-9), None)


def levels_blocks(res: list[ModelResult], names: list[str], levels=(0.5, 0.6, 0.7, 0.8, 0.9)) -> list[Block]:
    """When the mean curve (no frozen layers) first reaches each level: the target read at other heights, so a
    start that stops short of the target still shows which model gets as far sooner."""
    rows = []
    for role in ROLES:
        cells = [r.row(role, 0) for r in res]
        if all(c is None for c in cells):
            continue
        for level in levels:
            hits = [None if c is None else first_reached(c, level) for c in cells]
            shown = ["–" if c is None else (("not measured" if c.unfinished else "not reached") if h is None
                                             else f"{h[0]} it. / {h[1]:.0f} s")
                     for c, h in zip(cells, hits)]
            rows.append((role, pct(level, 0), *shown, sooner({m: h[1] for m, h in zip(names, hits) if h is not None})))
    return [Block("h3", "Other targets: first iteration / training seconds at which the mean curve reaches a level "
                        "(no frozen layers)"),
            Block("table", items=tuple(rows), header=("start", "mAP", *names, "sooner"))] if rows else []


def write_comparison(out_dir: str | Path, folders: dict[str, Path], title: str) -> ReportPaths:
    """report.md, report.html, report_files/models.png and comparison.json in `out_dir` (atomically)."""
    out_dir = Path(out_dir)
    cmp = compare_models(folders)
    parts = blocks(cmp)
    figures = tuple(atomic_write_bytes(out_dir / "report_files" / b.filename, b.image) for b in parts
                    if b.kind == "image")
    record = {"faster": cmp.faster, "verdict": cmp.verdict, "models": [asdict(m) for m in cmp.models]}
    atomic_write_bytes(out_dir / "comparison.json", (json.dumps(record, indent=1) + "\n").encode())
    md = atomic_write_bytes(out_dir / "report.md", render_markdown(parts, title).encode())
    page = atomic_write_bytes(out_dir / "report.html", render_html(parts, title).encode())
    return ReportPaths(md, page, figures)


def model_folders(out_dir: str | Path) -> dict[str, Path] | None:
    """{model: its sub-folder} of a `darktune reproduce --model both` folder (no experiment of its own, an
    experiment in the sub-folder of at least two known models); None for any other folder."""
    out_dir = Path(out_dir)
    if (out_dir / "experiment.json").is_file():
        return None
    found = {m: out_dir / m for m in MODELS if (out_dir / m / "experiment.json").is_file()}
    return found if len(found) >= 2 else None


def write_reports(out_dir: str | Path) -> list[ReportPaths]:
    """The reports of a folder, from its run files: an experiment's report; a recipe search's (`darktune recipe`:
    DIR/recipe.json); for a `reproduce --model both` folder, each model's report and then the comparison (titled
    as `reproduce` titles it)."""
    if is_recipe_folder(out_dir):
        return [write_recipe_report(out_dir)]
    folders = model_folders(out_dir)
    if folders is None:
        return [write_report(out_dir)]
    made = [write_report(folder) for folder in folders.values()]
    try:
        profile = json.loads(read_text(next(iter(folders.values())) / "profile.json", "profile", 1 << 20))["name"]
    except (DarktuneError, ValueError, KeyError, TypeError):  # a FIFO or device is never opened
        profile = None
    title = (f"darktune reproduce --profile {profile} --model both" if isinstance(profile, str)
             else f"darktune: {' and '.join(folders)} side by side")
    return made + [write_comparison(out_dir, folders, title=title)]
