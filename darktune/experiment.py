"""Run an experiment: prepare the starting weights, run the pretraining stages, then the grid.

Owns: `run_experiment(spec, out_dir, ...) -> ExperimentResult`, the starting-point weights (`resolve_starts`),
the per-run folder contract (run.json identity, resume rules), and the whole-grid progress bar.

Layout of an experiment folder:
    DIR/experiment.json          the plan of every run (the report reads it), the starting points, the cfg
    DIR/weights/                 derived starting weights (conv.15 extract)
    DIR/stages/<stage>/          one train() run folder per pretraining stage
    DIR/runs/<start>-f<N>-n<images>-s<seed>/   one train() run folder per grid point

Resume: a run whose summary.json says "finished" or "stopped_at_target" is not repeated; a run with a
checkpoint resumes from it; run.json records what decides a run's result, and a folder whose run.json differs
from the spec is an error (never silently reused). Runs execute in this process (one job) or in one worker
process per device/job, fed from a work queue (experiment_workers).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from darktune.errors import DarktuneError
from darktune.experiment_spec import ExperimentSpec, RunPlan, plan_runs

DONE = ("finished", "stopped_at_target")
TrainFn = Callable[[dict, bool], object]  # (TrainConfig keyword arguments, progress) -> anything
BACKBONE_LAYERS = 13
COCO15_LAYERS = 15


@dataclass(frozen=True)
class StartWeights:
    """Where a starting point's weights come from: `path` (None: random init), read up to layer `upto`."""

    path: str | None
    upto: int | None
    description: str


@dataclass
class RunOutcome:
    plan: RunPlan
    run_dir: Path
    status: str  # a summary.json status, or "failed" with `error`
    reused: bool = False
    error: str | None = None


@dataclass
class ExperimentResult:
    out_dir: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status not in DONE]


def read_json(path: Path) -> dict | None:
    """A JSON object from disk, or None when missing or unreadable (a half-written file counts as missing)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict) -> None:
    from darktune.weights import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def run_status(run_dir: Path) -> str | None:
    summary = read_json(Path(run_dir) / "summary.json")
    return summary.get("status") if summary else None


def resolve_cfg(spec: ExperimentSpec) -> str:
    """The cfg path: the spec's file, or the zoo model's cfg when the spec names a model."""
    if Path(spec.cfg).suffix == ".cfg":
        if not Path(spec.cfg).is_file():
            raise DarktuneError("cfg file not found", path=spec.cfg)
        return spec.cfg
    from darktune import zoo

    return str(zoo.fetch(spec.cfg).cfg)


def _coco_weights(spec: ExperimentSpec) -> tuple[str, str]:
    if "coco" in spec.weights:
        return spec.weights["coco"], spec.weights["coco"]
    from darktune import zoo

    fetched = zoo.fetch("yolov3-tiny")
    return str(fetched.weights), "the official COCO yolov3-tiny.weights (zoo)"


def resolve_starts(spec: ExperimentSpec, cfg: str, out_dir: Path, plans: list[RunPlan]) -> dict[str, StartWeights]:
    """Weights for every starting point the plans use; derives conv.15 once under DIR/weights/."""
    from darktune.weights import partial

    used = {p.start for p in plans}
    starts: dict[str, StartWeights] = {}
    if "scratch" in used:
        starts["scratch"] = StartWeights(None, None, "random initialisation")
    if used & {"coco", "coco15"} or ("backbone" in used and "backbone" not in spec.weights):
        coco, coco_name = _coco_weights(spec)
        if "coco" in used:
            starts["coco"] = StartWeights(coco, None, f"every layer of {coco_name} that fits the cfg")
        if "coco15" in used:
            out = out_dir / "weights" / "coco.conv.15"
            if not out.is_file():
                partial(cfg, coco, out, COCO15_LAYERS)
            starts["coco15"] = StartWeights(str(out), COCO15_LAYERS,
                                            f"layers 0..14 of {coco_name} (darknet `partial ... 15`, {out.name})")
        if "backbone" in used and "backbone" not in spec.weights:
            starts["backbone"] = StartWeights(coco, spec.backbone_layers, backbone_stand_in(coco_name,
                                                                                            spec.backbone_layers))
    if "backbone" in used and "backbone" in spec.weights:
        n = spec.backbone_layers
        starts["backbone"] = StartWeights(spec.weights["backbone"], n,
                                          f"layers 0..{n - 1} of {spec.weights['backbone']}")
    for name, stage in spec.stages.items():
        if name in used:
            last = out_dir / "stages" / name / "weights" / "last.weights"
            starts[name] = StartWeights(str(last), None, f"the last weights of stage '{name}' "
                                        f"({stage.iterations} iterations on {stage.data}, from {stage.weights})")
    for start in used - set(starts):
        starts[start] = StartWeights(start, None, f"every layer of {start} that fits the cfg")
    return starts


def backbone_stand_in(coco_name: str, layers: int) -> str:
    """How a backbone start made from the COCO weights is described (the report keys on 'STAND-IN')."""
    text = (f"layers 0..{layers - 1} of {coco_name}: a STAND-IN for darknet's ImageNet classification backbone "
            "(the study's Table I), which cannot be downloaded here")
    if layers < BACKBONE_LAYERS:
        text += (f"; layers {layers}..{BACKBONE_LAYERS - 1} of the backbone stay random, because COCO's deeper "
                 "layers are detection features, which an ImageNet classifier does not have")
    return text + "; pass weights.backbone in the spec (reproduce --backbone) to use your own darknet.weights"


def train_config(plan: RunPlan, cfg: str, start: StartWeights, run_dir: Path, device: str) -> dict:
    """TrainConfig keyword arguments of one run (plain data: it crosses process boundaries)."""
    options = dict(plan.options)
    target = options.pop("target_map", None)
    stop = options.pop("stop_at_target", False)
    return {"cfg": cfg, "data": plan.data, "weights": start.path, "upto": start.upto, "freeze": plan.freeze,
            "iterations": plan.iterations, "eval_at": list(plan.eval_at), "target_map": target,
            "stop_at_target": bool(stop and target is not None), "seed": plan.seed, "max_images": plan.images,
            "out": str(run_dir), "device": device, **options}


def start_identity(start: StartWeights, out_dir: Path) -> dict:
    """Which weights a run starts from, as recorded in run.json (inside the folder: relative, so a moved
    experiment folder still resumes)."""
    path = start.path
    if path is not None:
        try:
            path = str(Path(path).resolve().relative_to(out_dir.resolve()))
        except ValueError:
            path = str(Path(path).resolve())
    return {"path": path, "upto": start.upto}


def prepare_run(plan: RunPlan, out_dir: Path, start: StartWeights) -> tuple[Path, bool, bool]:
    """(run dir, done already, resume): checks run.json against the plan and writes it for a new run."""
    run_dir = out_dir / plan.folder
    identity = {**plan.identity(), "start_weights": start_identity(start, out_dir)}
    recorded = read_json(run_dir / "run.json")
    if recorded is not None and recorded != identity:
        changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        raise DarktuneError(f"this run folder was made by a different spec ({', '.join(changed)} differ); "
                            "use another --out, or delete the folder to rerun it", path=str(run_dir))
    if run_status(run_dir) in DONE:
        return run_dir, True, False
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run.json", identity)
    return run_dir, False, (run_dir / "checkpoint.pt").is_file()


def default_train(kwargs: dict, progress: bool) -> object:
    """The real trainer: darktune.train.train(TrainConfig(**kwargs))."""
    from darktune.train import TrainConfig, train

    return train(TrainConfig(**kwargs), progress=progress)


def run_experiment(spec: ExperimentSpec, out_dir: str | Path, *, jobs: int = 1, devices: list[str] | None = None,
                   train_fn: TrainFn | None = None, progress: bool = True) -> ExperimentResult:
    """Run the stages (in order) and then the grid; finished runs are reused, interrupted ones resumed."""
    from darktune.experiment_workers import execute

    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_data(spec)
    if devices:
        from darktune.devices import resolve_device

        for device in devices:  # a device that is not here fails every run; say so once, before any
            resolve_device(device, "--devices")
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_runs(spec)
    cfg = resolve_cfg(spec)
    starts = resolve_starts(spec, cfg, out_dir, plans)
    write_json(out_dir / "experiment.json", experiment_record(spec, cfg, starts, plans))
    devices = devices or [_default_device()]
    train_fn = train_fn or default_train
    result = ExperimentResult(out_dir)
    bar = GridProgress(out_dir, plans, enabled=progress)
    try:
        for wave, is_stage in waves(spec, plans):
            result.outcomes += execute(wave, out_dir, cfg, starts, train_fn,
                                       devices if not is_stage else devices[:1], jobs if not is_stage else 1, bar)
            for o in result.outcomes:
                if o.plan.group == "stage" and o.status not in DONE:
                    raise DarktuneError(f"stage '{o.plan.name}' did not finish ({o.error}); the runs that start "
                                        "from it cannot run", path=str(o.run_dir))
    finally:
        bar.close()
    order = {p.folder: i for i, p in enumerate(plans)}
    result.outcomes.sort(key=lambda o: order[o.plan.folder])
    result.wall_s = time.perf_counter() - started
    return result


def _check_data(spec: ExperimentSpec) -> None:
    """Every data set the spec names exists, before any run trains (a missing grid set used to show only after
    the stages had trained, as one failure per grid run)."""
    named = [(f"stages.{name}.data", st.data) for name, st in spec.stages.items()] + [("grid.data", spec.grid.data)]
    for key, path in named:
        if not Path(path).exists():
            raise DarktuneError(f"{key}: {path} not found (relative paths are read from the spec's folder)",
                                path=spec.path)


def waves(spec: ExperimentSpec, plans: list[RunPlan]) -> list[tuple[list[RunPlan], bool]]:
    """The order runs execute in, as (runs, stage-only) waves. The first wave holds the stages that start from
    no other stage together with every grid run that needs no stage, so a stage trains beside those runs
    instead of leaving the other workers idle; the remaining stages follow one at a time (each may feed the
    next); the grid runs that start from a stage come last."""
    stage_names = set(spec.stages)
    stages = [p for p in plans if p.group == "stage"]
    grid = [p for p in plans if p.group == "grid"]
    roots = [p for p in stages if p.start not in stage_names]
    first = roots + [p for p in grid if p.start not in stage_names]
    out = [(first, False)] if first else []
    out += [([p], True) for p in stages if p.start in stage_names]
    dependent = [p for p in grid if p.start in stage_names]
    if dependent:
        out.append((dependent, False))
    return out


def _default_device() -> str:
    try:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def experiment_record(spec: ExperimentSpec, cfg: str, starts: dict[str, StartWeights], plans: list[RunPlan]) -> dict:
    target = None
    for p in plans:
        if p.group == "grid" and p.options.get("target_map") is not None:
            target = p.options["target_map"]
    return {"spec": spec.path, "cfg": cfg, "notes": spec.notes, "target_map": target,
            "protocol": next((p.options["protocol"] for p in plans if "protocol" in p.options), None),
            "starts": {k: {"path": v.path, "upto": v.upto, "description": v.description} for k, v in starts.items()},
            "runs": [p.to_dict() for p in plans]}


def last_iteration(run_dir: Path) -> int:
    """The last iteration logged in RUN/metrics.jsonl (0 when none): read from the file's tail only."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class GridProgress:
    """One tqdm bar (stderr) over the iterations of every run, polled from the runs' metrics files."""

    def __init__(self, out_dir: Path, plans: list[RunPlan], enabled: bool = True, interval_s: float = 1.0):
        self.out_dir, self.plans, self.interval_s = out_dir, plans, interval_s
        self.total = sum(p.iterations for p in plans)
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        if enabled:
            from tqdm import tqdm

            done = self.iterations_done()
            self._bar = tqdm(total=self.total, initial=done, desc="experiment", unit="it", dynamic_ncols=True)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def iterations_done(self) -> int:
        done = 0
        for p in self.plans:
            run_dir = self.out_dir / p.folder
            done += p.iterations if run_status(run_dir) in DONE else min(p.iterations, last_iteration(run_dir))
        return done

    def refresh(self, note: str | None = None) -> None:
        if self._bar is not None:
            self._bar.n = self.iterations_done()
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self.refresh()
            self._bar.close()
