"""What an experiment's report says, computed only from files on disk: experiment.json and each run's
metrics.jsonl / summary.json. No figure is typed in; the study's numbers come from darktune.report.study.

Owns: `load_experiment(out_dir) -> ExperimentData` (`RunData` per run: its evaluation curve and status),
`main_images` (the image count the per-start tables use), `cell_map`, and `time_to_target` per run.
The findings (agrees / DISAGREES) live in report_findings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from darktune.errors import DarktuneError
from darktune.darknet.transfer import DEFAULT_MODEL, MODELS, ModelStudy
from darktune.files import is_outside
from darktune.records import Field, read_record, record_problem
from darktune.train.files import MAX_ITERATION, read_metrics, read_summary


@dataclass(frozen=True)
class EvalPoint:
    iteration: int
    map: float  # a fraction in [0, 1]
    protocol: str
    seconds: float | None  # training seconds at this evaluation


@dataclass
class RunData:
    """One run as recorded: its plan (from experiment.json), status, evaluations and timing."""

    plan: dict
    run_dir: Path
    status: str | None
    evals: list[EvalPoint] = field(default_factory=list)
    train_s: float | None = None
    images_per_s: float | None = None
    summary: dict = field(default_factory=dict)
    problem: str | None = None  # its summary.json or metrics.jsonl was refused (one line naming the file)

    @property
    def name(self) -> str:
        return self.plan["name"]

    @property
    def start(self) -> str:
        return self.plan["start"]

    @property
    def start_label(self) -> str:
        return self.plan["start_label"]

    @property
    def freeze(self) -> int:
        return int(self.plan["freeze"])

    @property
    def images(self) -> int | None:
        return self.plan["images"]

    @property
    def seed(self) -> int:
        return int(self.plan["seed"])

    def map_at(self, iteration: int) -> float | None:
        """The mAP evaluated at exactly this iteration (the last such line, after a resume), or None."""
        found = [e.map for e in self.evals if e.iteration == iteration]
        return found[-1] if found else None

    def final_map(self) -> float | None:
        """mAP at the run's last planned iteration (None if it was never evaluated there)."""
        return self.map_at(int(self.plan["iterations"]))

    @property
    def complete(self) -> bool:
        """The run ended as planned (or at its target); False for failed, interrupted and never-started runs,
        whose curves say nothing of what they would have reached."""
        return self.status in ("finished", "stopped_at_target")

    def reached(self, target: float) -> EvalPoint | None:
        """The first evaluation with mAP >= target, or None."""
        for e in sorted(self.evals, key=lambda e: e.iteration):
            if e.map >= target:
                return e
        return None


@dataclass
class ExperimentData:
    out_dir: Path
    record: dict
    runs: list[RunData]

    @property
    def target_map(self) -> float | None:
        return self.record.get("target_map")

    @property
    def model(self) -> str:
        """The known model the experiment trained (`model:` in its spec; yolov3-tiny when unnamed)."""
        return self.record.get("model") or DEFAULT_MODEL

    @property
    def study(self) -> ModelStudy:
        """The model's transfer starts and the study's cuts in its layers (yolov3-tiny's for a model darktune
        does not know: the study's own names)."""
        return MODELS.get(self.model, MODELS[DEFAULT_MODEL])

    @property
    def partial(self) -> str:
        """The model's COCO partial start, the study's coco15 (coco15 on yolov3-tiny, coco29 on yolov4-tiny)."""
        return self.study.partial

    @property
    def grid(self) -> list[RunData]:
        return [r for r in self.runs if r.plan["group"] == "grid"]

    @property
    def stages(self) -> list[RunData]:
        return [r for r in self.runs if r.plan["group"] == "stage"]

    def starts(self) -> list[str]:
        seen: list[str] = []
        for r in self.grid:
            if r.start_label not in seen:
                seen.append(r.start_label)
        return seen

    def freezes(self) -> list[int]:
        return sorted({r.freeze for r in self.grid})

    def domain_start(self) -> str | None:
        """The start that plays the study's domain path: `domain`, or else the grid's only start that is a
        pretraining stage of this experiment (a user's stage may have any name)."""
        if "domain" in self.starts():
            return "domain"
        stage_names = {r.name for r in self.stages}
        from_stages = [s for s in self.starts() if any(r.start in stage_names for r in self.select(s))]
        return from_stages[0] if len(from_stages) == 1 else None

    def protocols(self) -> list[str]:
        return sorted({e.protocol for r in self.runs for e in r.evals})

    def select(self, start: str | None = None, freeze: int | None = None, images: object = "any") -> list[RunData]:
        """Grid runs matching the given start label / frozen layers / image count (all seeds)."""
        return [r for r in self.grid if (start is None or r.start_label == start)
                and (freeze is None or r.freeze == freeze) and (images == "any" or r.images == images)]


EXPERIMENT = {"runs": Field(list, required=True, nullable=False), "target_map": Field(float, 0, 1),
              "model": Field(str), "protocol": Field(str), "spec": Field(str), "cfg": Field(str),
              "starts": Field(dict)}
PLAN = {"name": Field(str, required=True, nullable=False), "folder": Field(str, required=True, nullable=False),
        "group": Field(str, required=True, nullable=False, choices=("grid", "stage")),
        "start": Field(str, required=True, nullable=False), "start_label": Field(str, required=True, nullable=False),
        "freeze": Field(int, 0, 10_000, required=True, nullable=False), "images": Field(int, 1, required=True),
        "seed": Field(int, required=True, nullable=False),
        "iterations": Field(int, 1, MAX_ITERATION, required=True, nullable=False)}


def read_metrics_file(path: Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of a metrics.jsonl, every line checked (`darktune.train.files.METRICS_LINE`:
    an mAP outside [0, 1], NaN or infinite, a line that is not JSON, text that is not UTF-8 is one line naming the
    file and line); ([], []) for a missing file."""
    train, evals = [], []
    for rec in read_metrics(path):
        (evals if rec.get("map") is not None else train).append(rec)
    return train, evals


def _seconds(record: dict) -> float | None:
    """The training clock of a metrics line: training seconds (evaluation and checkpoints excluded) when the
    trainer logs them, else the elapsed seconds."""
    for key in ("train_s", "elapsed_s"):
        if isinstance(record.get(key), (int, float)):
            return float(record[key])
    return None


def _load_run(out_dir: Path, plan: dict) -> RunData:
    """One run from its files; a run whose summary or metrics fail their check loads as not measured (no
    status, no evaluations) with the refusal in `problem`: the report shows it as damaged, never as a result."""
    run_dir = out_dir / plan["folder"]
    try:
        summary = read_summary(run_dir / "summary.json") or {}
        train, evals = read_metrics_file(run_dir / "metrics.jsonl")
    except DarktuneError as exc:
        return RunData(plan=plan, run_dir=run_dir, status=None, problem=str(exc))
    points = [EvalPoint(int(e["iteration"]), float(e["map"]), str(e.get("protocol", "?")), _seconds(e))
              for e in evals]
    clock = [s for s in (_seconds(t) for t in train) if s is not None]
    speeds = [float(t["images_per_s"]) for t in train if isinstance(t.get("images_per_s"), (int, float))]
    train_s = summary.get("train_seconds")
    return RunData(plan=plan, run_dir=run_dir, status=summary.get("status"), evals=points,
                   train_s=float(train_s) if isinstance(train_s, (int, float)) else (max(clock) if clock else None),
                   images_per_s=float(summary["images_per_s"]) if isinstance(summary.get("images_per_s"), (int, float))
                   else (sorted(speeds)[len(speeds) // 2] if speeds else None),
                   summary=summary)


def load_experiment(out_dir: str | Path) -> ExperimentData:
    """Read DIR/experiment.json and every run it lists (missing or unfinished runs are loaded as they are);
    every file is checked against its schema (`darktune.records`) and refused in one line naming it."""
    out_dir = Path(out_dir)
    path = out_dir / "experiment.json"
    if not os.path.lexists(path):
        raise DarktuneError("no experiment here (experiment.json missing); run `darktune experiment` first",
                            path=str(out_dir))
    record = read_record(path, EXPERIMENT, "experiment record")
    for i, plan in enumerate(record["runs"]):
        problem = record_problem(plan, PLAN)
        if problem is None and (is_outside(out_dir, out_dir / plan["folder"]) or not plan["folder"].strip()):
            problem = f"'folder' {plan['folder']!r} is not a folder inside the experiment"
        if problem:
            raise DarktuneError(f"experiment record: run {i + 1}: {problem}", path=str(path))
    runs = [_load_run(out_dir, plan) for plan in record["runs"]]
    return ExperimentData(out_dir, record, runs)


def main_images(data: ExperimentData) -> int | None:
    """The image count of the per-start tables: all images if the grid has it, else the largest count."""
    counts = {r.images for r in data.grid}
    if None in counts or not counts:
        return None
    return max(counts)


def mean_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def spread(values: list[float]) -> float | None:
    """Sample standard deviation (None for fewer than two values)."""
    if len(values) < 2:
        return None
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def seed_means(data: ExperimentData, start: str, freeze: int, images: int | None,
               iterations: list[int]) -> list[float]:
    """One number per seed: that seed's mean mAP over `iterations` (the evaluations it has of them)."""
    out = []
    for r in data.select(start, freeze, images):
        values = [v for i in iterations for v in [r.map_at(i)] if v is not None]
        if values:
            out.append(mean(values))
    return out


def cell_map(data: ExperimentData, start: str, freeze: int, iteration: int, images: int | None) -> float | None:
    """mAP at (start, frozen layers, iteration) over the seeds of the main image count (mean)."""
    return mean_or_none([r.map_at(iteration) for r in data.select(start, freeze, images)])


def eval_iterations(data: ExperimentData, start: str) -> list[int]:
    """The planned evaluation iterations of a start's runs (the table rows)."""
    its: set[int] = set()
    for r in data.select(start):
        its.update(int(i) for i in r.plan["eval_at"])
    return sorted(its)


@dataclass(frozen=True)
class TimeToTarget:
    """Iterations and seconds a group of runs (one start and frozen count, mean over seeds) needed."""

    start: str
    freeze: int
    iterations: float | None  # None: not reached by every seed
    seconds: float | None
    max_iterations: int
    reached_seeds: int
    seeds: int
    unfinished: int = 0  # runs that neither reached the target nor ended as planned: their outcome is unknown


def time_to_target(data: ExperimentData, start: str, freeze: int, images: int | None,
                   target: float | None = None) -> TimeToTarget | None:
    """Iterations (and seconds) to `target` (default: the spec's target_map), mean over seeds."""
    target = data.target_map if target is None else target
    runs = data.select(start, freeze, images)
    if target is None or not runs:
        return None
    hits = [r.reached(target) for r in runs]
    reached = [h for h in hits if h is not None]
    its = mean(h.iteration for h in reached) if len(reached) == len(runs) else None
    # an evaluation of the start weights (iteration 0) took no training time, whatever its line says
    secs = [0.0 if h.iteration == 0 else h.seconds for h in reached]
    seconds = mean(secs) if its is not None and all(s is not None for s in secs) else None
    unfinished = sum(1 for r, h in zip(runs, hits) if h is None and not r.complete)
    return TimeToTarget(start, freeze, its, seconds, max(int(r.plan["iterations"]) for r in runs),
                        len(reached), len(runs), unfinished)


@dataclass(frozen=True)
class Decrease:
    """The fewest iterations to target of a transfer path against the COCO partial start's (the study's
    coco15), at one frozen count."""

    freeze: int
    best: str
    best_iterations: float
    partial_iterations: float | None  # None: the partial start never reached the target
    partial_max: int
    fraction: float  # 1 - best / partial (a lower bound when the partial start did not reach the target)
    lower_bound: bool
    seconds_fraction: float | None = None  # the same in training seconds, when both reached the target


def transfer_excluded(data: ExperimentData) -> tuple[str, ...]:
    """The starts that are not transfer paths: scratch, backbone and the COCO partial start."""
    return ("scratch", "backbone", data.partial)


def best_transfer_decrease(data: ExperimentData, freeze: int, images: int | None,
                           target: float | None = None) -> Decrease | None:
    """Percent decrease in iterations to target of the best transfer path (a start other than scratch,
    backbone and the COCO partial start: a stage, coco, another weights file) against the COCO partial start
    (coco15, coco29): the study's 83% figure."""
    base = time_to_target(data, data.partial, freeze, images, target)
    if base is None:
        return None
    paths = [t for s in data.starts() if s not in transfer_excluded(data)
             for t in [time_to_target(data, s, freeze, images, target)] if t is not None and t.iterations is not None]
    if not paths:
        return None
    best = min(paths, key=lambda t: t.iterations)
    if base.iterations is None and base.unfinished:  # partial runs that failed say nothing of its time to target
        return None
    if base.iterations == 0:  # the partial start's weights already meet the target: nothing to cut
        return Decrease(freeze, best.start, best.iterations, 0.0, base.max_iterations, 0.0, False,
                        0.0 if best.seconds == 0 else None)
    if base.iterations is not None:
        secs = (1.0 - best.seconds / base.seconds if best.seconds is not None and base.seconds else None)
        return Decrease(freeze, best.start, best.iterations, base.iterations, base.max_iterations,
                        1.0 - best.iterations / base.iterations, False, secs)
    return Decrease(freeze, best.start, best.iterations, None, base.max_iterations,
                    1.0 - best.iterations / base.max_iterations, True)


def its_text(iterations: float) -> str:
    """Iterations as printed: whole numbers plain, a mean over seeds to one decimal."""
    return f"{iterations:.0f}" if float(iterations).is_integer() else f"{iterations:.1f}"


def start_map(data: ExperimentData, start: str, freeze: int, images: int | None) -> float | None:
    """Mean over seeds of the start weights' mAP (the evaluation at iteration 0), None when not evaluated."""
    return mean_or_none([r.map_at(0) for r in data.select(start, freeze, images)])


def table_levels(data: ExperimentData, lowest: float = 0.5, step: float = 0.1) -> list[float]:
    """The targets of the sensitivity table: every multiple of `step` from `lowest` below 1, and the spec's."""
    if data.target_map is None:
        return []
    k = int(round(lowest / step, 6))
    levels = {round(j * step, 6) for j in range(k, int(round(1 / step, 6)))}
    return sorted(levels | {data.target_map})


def target_levels(data: ExperimentData, step: float = 0.1) -> list[float]:
    """The spec's target and every higher multiple of `step` below 1 (the targets of the sensitivity table)."""
    if data.target_map is None:
        return []
    levels = [data.target_map]
    k = int(round(data.target_map / step, 6)) + 1
    while k * step < 1.0 - 1e-9:
        levels.append(round(k * step, 6))
        k += 1
    return levels
