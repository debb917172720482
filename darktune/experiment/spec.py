"""Experiment specs: read a YAML grid (yaml.safe_load only), validate every key, and expand it into run plans.

Owns: `ExperimentSpec` / `StageSpec` / `GridSpec` (validated, paths resolved against the spec file's folder),
`load_spec(path)`, `spec_from_dict(data, path)`, and `plan_runs(spec) -> list[RunPlan]` (stages first, in
dependency order, then the grid: starts x frozen layers x training images x seeds).

`model` names a known model (darktune.darknet.transfer; default yolov3-tiny): its cfg, its COCO weights and
what its named starting points mean. Starting points: `scratch` (random init), `backbone` (the first layers of a
weights file: 13 for yolov3-tiny, 27 for yolov4-tiny; another count with `weights.backbone_layers`), the COCO
partial start (`coco15` = darknet's `partial ... 15` for yolov3-tiny, `coco29` for yolov4-tiny), `coco` (every
COCO layer that fits), the name of a stage (its last weights), or a path to any `.weights` file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darktune.errors import DarktuneError
from darktune.darknet.transfer import ALL_BUILTIN_STARTS, DEFAULT_MODEL, MODELS, builtin_starts
from darktune.experiment.spec_file import read_spec_yaml, short
from darktune.numbers import Domain
from darktune.train.config import OPTIONS, SPEC_OPTIONS

TRAIN_OPTIONS = SPEC_OPTIONS  # passed through to every training run (TrainConfig fields whose Option says spec)
# The spec's own numeric keys take the domain of the training option they become (one rule for flag and key).
FREEZE, ITERATIONS, IMAGES = OPTIONS["freeze"].domain, OPTIONS["iterations"].domain, OPTIONS["max_images"].domain
SEED, EVAL_AT, LAYERS = OPTIONS["seed"].domain, OPTIONS["eval_at"].domain, OPTIONS["upto"].domain
TOP_KEYS = ("model", "cfg", "weights", "train", "stages", "grid", "notes")
WEIGHT_NAMES = ("coco", "backbone")
WEIGHT_KEYS = WEIGHT_NAMES + ("backbone_layers",)
PROTOCOLS = ("darknet", "voc07", "coco101", "coco")  # darktune.eval.metrics; repeated so a spec loads without torch
STAGE_KEYS = ("data", "weights", "freeze", "iterations", "images", "seed", "eval_at") + TRAIN_OPTIONS
GRID_KEYS = ("data", "starts", "freeze", "images", "seeds", "iterations", "eval_at", "per_start") + TRAIN_OPTIONS
PER_START_KEYS = ("iterations", "eval_at") + TRAIN_OPTIONS
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StageSpec:
    """A pretraining stage: one training run whose last weights are a starting point for later runs."""

    name: str
    data: str
    weights: str  # a starting point: builtin name, earlier stage, or path
    freeze: int = 0
    iterations: int = 100
    images: int | None = None  # None: all training images
    seed: int = 0
    eval_at: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GridSpec:
    """The grid over the target set: starts x frozen layers x number of training images x seeds."""

    data: str
    starts: tuple[str, ...]
    freeze: tuple[int, ...] = (0,)
    images: tuple[int | None, ...] = (None,)
    seeds: tuple[int, ...] = (0,)
    iterations: int = 100
    eval_at: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)
    per_start: dict = field(default_factory=dict)  # start -> {iterations, eval_at, options...}


@dataclass(frozen=True)
class ExperimentSpec:
    cfg: str  # a cfg path, or a zoo model name ("yolov3-tiny")
    grid: GridSpec
    model: str = DEFAULT_MODEL  # a key of MODELS: the COCO weights and the named starts' layers
    stages: dict = field(default_factory=dict)  # name -> StageSpec, in dependency order
    weights: dict = field(default_factory=dict)  # "coco"/"backbone" -> path (default: the zoo's COCO weights)
    backbone_layers: int = MODELS[DEFAULT_MODEL].backbone_layers  # the backbone file's layers 0..N-1 are loaded
    options: dict = field(default_factory=dict)  # train options for every run
    notes: str = ""
    path: str | None = None
    lines: dict = field(default_factory=dict, compare=False, repr=False)  # key path -> line, for later errors
    model_named: bool = field(default=False, compare=False)  # the spec said `model:` (else the default or cfg's)


@dataclass(frozen=True)
class RunPlan:
    """One training run of the experiment, everything that decides its result (paths resolved later)."""

    name: str  # folder name under stages/ or runs/
    group: str  # "stage" | "grid"
    start: str  # starting point name (builtin, stage name, or path)
    start_label: str
    data: str
    freeze: int
    images: int | None
    seed: int
    iterations: int
    eval_at: tuple[int, ...]
    options: dict
    model: str = DEFAULT_MODEL  # part of the identity: a yolov3-tiny run is never reused for yolov4-tiny

    @property
    def folder(self) -> str:
        return f"{'stages' if self.group == 'stage' else 'runs'}/{self.name}"

    def identity(self) -> dict:
        """What makes two runs the same run (stored in run.json; a finished run is reused only if it matches).
        Not in it: `workers` (speed only) and `target_map` unless `stop_at_target` is set (without it the target
        only decides how the report reads the curves)."""
        return {"model": self.model, "start": self.start, "data": self.data, "freeze": self.freeze,
                "images": self.images, "seed": self.seed, "iterations": self.iterations,
                "eval_at": list(self.eval_at), "options": identity_options(self.options)}

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "folder": self.folder, "start_label": self.start_label,
                **self.identity(), "options": dict(sorted(self.options.items()))}


def identity_options(options: dict) -> dict:
    """The train options that decide a run's result (see RunPlan.identity). Left out: the loader's thread count,
    how often a checkpoint is written (a resume from any checkpoint is exact, tested), the frozen-prefix feature
    cache (bit-identical weights, tested; a run turns it off itself on any difference), and target_map unless the
    run stops at it (otherwise it only decides how the report reads the curves): TrainConfig's Options say which
    (`identity`, `identity_with`). Keys that are not train options (an older run.json's) are kept."""
    report_only = {k for k in TRAIN_OPTIONS if not OPTIONS[k].identity
                   or (OPTIONS[k].identity_with and not options.get(OPTIONS[k].identity_with))}
    return {k: options[k] for k in sorted(options) if k not in report_only}


def _err(path: str | None, message: str, line: int | None = None) -> DarktuneError:
    return DarktuneError(message, path=path, line=line)


def spec_error(spec: ExperimentSpec, where: tuple, message: str) -> DarktuneError:
    """An error found after loading (data sets, the cfg's layers), naming the spec file, line and key."""
    return _Checker(spec.path, spec.lines).error(where, message)


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment spec (YAML, safe loader: tags such as !!python/object are refused)."""
    data, lines = read_spec_yaml(path)
    return spec_from_dict(data, str(path), lines)


class _Checker:
    """Validation helpers that name the spec file and the line of the offending key."""

    def __init__(self, path: str | None, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def error(self, where: tuple, message: str) -> DarktuneError:
        line = None
        for n in range(len(where), 0, -1):
            line = self.lines.get(where[:n])
            if line:
                break
        return _err(self.path, f"{'.'.join(where) or 'spec'}: {message}", line)

    def mapping(self, value: Any, where: tuple, known: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in known:
                raise self.error(where + (str(key),), f"unknown key {short(key)} (known: {', '.join(known)})")
        return value

    def number(self, value: Any, where: tuple, domain: Domain) -> Any:
        """`value` if it lies in `domain` (darktune.numbers: the option's one declaration), else an error naming the
        file, line and key."""
        problem = domain.problem(value)
        if problem:
            raise self.error(where, f"{problem}, got {short(value)}")
        return value if domain.integer else float(value)

    def numbers(self, value: Any, where: tuple, domain: Domain) -> tuple:
        values = value if isinstance(value, list) else [value]
        return tuple(self.number(v, where, domain) for v in values)

    def images(self, value: Any, where: tuple) -> int | None:
        if value in (None, "all"):
            return None
        return self.number(value, where, IMAGES)

    def path_(self, value: Any, where: tuple) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(where, f"must be a path, got {short(value)}")
        base = Path(self.path).parent if self.path else Path.cwd()
        return str((base / value).resolve()) if not Path(value).is_absolute() else value

    def options(self, raw: dict, where: tuple) -> dict:
        out = {}
        for key in TRAIN_OPTIONS:
            if key in raw:
                out[key] = self._option(key, raw[key], where + (key,))
        return out

    def _option(self, key: str, value: Any, where: tuple) -> Any:
        option = OPTIONS[key]
        if option.kind in ("int", "float"):  # the Option's domain: the rule `darktune train`'s flag is checked by
            return self.number(value, where, option.domain)
        if option.kind in ("int-list", "float-list", "layer-list"):
            return list(self.numbers(value, where, option.domain))
        if key in ("stop_at_target", "augment", "multi_scale", "gpu_augment", "continue_schedule", "feature_cache"):
            if not isinstance(value, bool):
                raise self.error(where, f"must be true or false, got {short(value)}")
            return value
        if value not in PROTOCOLS:
            raise self.error(where, f"must be one of {', '.join(PROTOCOLS)}, got {short(value)}")
        return value


def spec_from_dict(data: Any, path: str | None = None, lines: dict[tuple, int] | None = None) -> ExperimentSpec:
    """Validate a parsed spec; errors name the file, the line and the key."""
    check = _Checker(path, lines or {})
    top = check.mapping(data, (), TOP_KEYS)
    if "grid" not in top:
        raise check.error((), "missing 'grid' (the runs over the target set)")
    model, cfg = _model_and_cfg(check, top)
    weights_raw = check.mapping(top.get("weights"), ("weights",), WEIGHT_KEYS)
    weights = {k: check.path_(v, ("weights", k)) for k, v in weights_raw.items() if k in WEIGHT_NAMES}
    backbone_layers = check.number(weights_raw.get("backbone_layers", MODELS[model].backbone_layers),
                                   ("weights", "backbone_layers"), LAYERS)
    options = check.options(check.mapping(top.get("train"), ("train",), TRAIN_OPTIONS), ("train",))
    stages = _stages(check, top.get("stages"), model)
    grid = _grid(check, top["grid"], stages, model)
    notes = top.get("notes", "")
    if not isinstance(notes, str):
        raise check.error(("notes",), "must be text")
    _check_evals(check, stages, grid)
    return ExperimentSpec(cfg=cfg, model=model, grid=grid, stages=stages, weights=weights,
                          backbone_layers=backbone_layers, options=options, notes=notes, path=path, lines=check.lines,
                          model_named=top.get("model") is not None)


def _model_and_cfg(check: _Checker, top: dict) -> tuple[str, str]:
    """(model, cfg): model defaults to the cfg when that names a known model, else yolov3-tiny; cfg to the model."""
    model = top.get("model")
    if model is not None and (not isinstance(model, str) or model not in MODELS):
        raise check.error(("model",), f"unknown model {short(model)} (known: {', '.join(MODELS)})")
    cfg = top.get("cfg", model or DEFAULT_MODEL)
    if not isinstance(cfg, str) or not cfg:
        raise check.error(("cfg",), f"must be a cfg path or a zoo model name, got {short(cfg)}")
    if cfg.endswith(".cfg"):
        return model or DEFAULT_MODEL, check.path_(cfg, ("cfg",))
    if model is not None and cfg != model:
        raise check.error(("cfg",), f"names the model {short(cfg)}, but model is {short(model)}")
    return model or (cfg if cfg in MODELS else DEFAULT_MODEL), cfg


def _check_evals(check: _Checker, stages: dict[str, StageSpec], grid: GridSpec) -> None:
    """No evaluation point may lie past the end of its run. The error points at the key that was set for the
    runs concerned: a per_start `iterations` below the grid's eval_at points at that per_start key."""
    for name, stage in stages.items():
        late = [i for i in stage.eval_at if i > stage.iterations]
        if late:
            raise check.error(("stages", name, "eval_at"), f"{late} lies past the run's {stage.iterations} "
                                                           "iterations")
    for start in grid.starts:
        over = grid.per_start.get(start, {})
        eval_at, iterations = over.get("eval_at", grid.eval_at), over.get("iterations", grid.iterations)
        late = [i for i in eval_at if i > iterations]
        if not late:
            continue
        key = over.get("key", start)
        if "eval_at" in over:
            raise check.error(("grid", "per_start", key, "eval_at"),
                              f"{late} lies past the '{key}' runs' {iterations} iterations")
        if "iterations" in over:
            raise check.error(("grid", "per_start", key, "iterations"),
                              f"the '{key}' runs end at iteration {iterations}, before grid.eval_at's {late}: give "
                              f"grid.per_start.{key}.eval_at too, or more iterations")
        raise check.error(("grid", "eval_at"), f"{late} lies past the run's {iterations} iterations")


def check_frozen(spec: ExperimentSpec, n_layers: int, weighted: list[int], cfg_name: str) -> None:
    """Frozen layers (grid.freeze, stage freeze, freeze_layers at any level) must exist in the cfg and leave a
    layer with weights to train; checked before anything trains (else each such run fails: "nothing to
    train"). `weighted`: the indices of the cfg's layers with weights (convolutional)."""
    last = max(weighted)
    counts = [(("stages", n, "freeze"), (s.freeze,)) for n, s in spec.stages.items()]
    for where, values in counts + [(("grid", "freeze"), spec.grid.freeze)]:
        for n in values:
            if n > last:
                raise spec_error(spec, where, f"{n} frozen layers leave nothing to train: {cfg_name} has "
                                 f"{n_layers} layers and the last with weights is layer {last} (freeze at most {last})")
    lists = [(("train",), spec.options)] + [(("stages", n), s.options) for n, s in spec.stages.items()]
    lists += [(("grid",), spec.grid.options)]
    lists += [(("grid", "per_start", o.get("key", s)), o["options"]) for s, o in spec.grid.per_start.items()]
    for where, options in lists:
        layers = options.get("freeze_layers")
        if not layers:
            continue
        missing = [i for i in layers if i >= n_layers]
        if missing:
            raise spec_error(spec, where + ("freeze_layers",), f"layer {missing[0]} does not exist: {cfg_name} "
                             f"has layers 0..{n_layers - 1}")
        if set(weighted) <= set(layers):
            raise spec_error(spec, where + ("freeze_layers",), f"freezes every layer with weights of {cfg_name}: "
                             "nothing would train")
    for plan in plan_runs(spec):
        if plan.freeze and plan.options.get("freeze_layers"):
            where = ("stages", plan.name, "freeze") if plan.group == "stage" else ("grid", "freeze")
            raise spec_error(spec, where, f"run {plan.folder} would freeze {plan.freeze} layers and also "
                             f"freeze_layers {plan.options['freeze_layers']}: give one of them")


def _start(check: _Checker, value: Any, where: tuple, stage_names: set[str], model: str) -> str:
    if not isinstance(value, str) or not value:
        raise check.error(where, f"a starting point must be a name or a path, got {short(value)}")
    if value in builtin_starts(model) or value in stage_names:
        return value
    if value in ALL_BUILTIN_STARTS:
        owner = next(m for m in MODELS if value in builtin_starts(m))
        raise check.error(where, f"{value} is a {owner} start; the model is {model}, whose COCO partial start is "
                                 f"{MODELS[model].partial}")
    resolved = check.path_(value, where)
    if not Path(resolved).is_file():
        known = ", ".join(builtin_starts(model) + tuple(sorted(stage_names)))
        raise check.error(where, f"{short(value)} is neither a starting point ({known}) nor an existing weights file")
    return resolved


def _stages(check: _Checker, raw: Any, model: str) -> dict[str, StageSpec]:
    stages_raw = check.mapping(raw, ("stages",), tuple(raw) if isinstance(raw, dict) else ())
    names = set()
    for name in stages_raw:
        if not isinstance(name, str) or _SAFE.search(name) or name in ALL_BUILTIN_STARTS:
            raise check.error(("stages", str(name)), "a stage name must be letters, digits, '.', '_' or '-' and "
                              f"not one of {', '.join(ALL_BUILTIN_STARTS)}")
        names.add(name)
    stages = {}
    for name, body in stages_raw.items():
        where = ("stages", name)
        body = check.mapping(body, where, STAGE_KEYS)
        for key in ("data", "weights"):
            if key not in body:
                raise check.error(where, f"missing '{key}'")
        stages[name] = StageSpec(
            name=name, data=check.path_(body["data"], where + ("data",)),
            weights=_start(check, body["weights"], where + ("weights",), names - {name}, model),
            freeze=check.number(body.get("freeze", 0), where + ("freeze",), FREEZE),
            iterations=check.number(body.get("iterations", 100), where + ("iterations",), ITERATIONS),
            images=check.images(body.get("images"), where + ("images",)),
            seed=check.number(body.get("seed", 0), where + ("seed",), SEED),
            eval_at=check.numbers(body.get("eval_at", []), where + ("eval_at",), EVAL_AT),
            options=check.options(body, where))
    return _dependency_order(check, stages)


def _dependency_order(check: _Checker, stages: dict[str, StageSpec]) -> dict[str, StageSpec]:
    ordered: dict[str, StageSpec] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise check.error(("stages", name), f"stages depend on each other in a cycle: {cycle}")
        visiting.append(name)
        if stages[name].weights in stages:
            visit(stages[name].weights)
        visiting.pop()
        ordered[name] = stages[name]

    for name in stages:
        visit(name)
    return ordered


def _grid(check: _Checker, raw: Any, stages: dict[str, StageSpec], model: str) -> GridSpec:
    where = ("grid",)
    body = check.mapping(raw, where, GRID_KEYS)
    for key in ("data", "starts"):
        if key not in body:
            raise check.error(where, f"missing '{key}'")
    starts_raw = body["starts"] if isinstance(body["starts"], list) else [body["starts"]]
    starts = tuple(_start(check, s, where + ("starts",), set(stages), model) for s in starts_raw)
    if len(set(starts)) != len(starts):
        raise check.error(where + ("starts",), "lists a starting point twice")
    images_raw = body.get("images", ["all"])
    images = tuple(check.images(v, where + ("images",)) for v in (images_raw if isinstance(images_raw, list)
                                                                    else [images_raw]))
    per_start = {}
    raw_per = check.mapping(body.get("per_start"), where + ("per_start",), tuple(starts_raw))
    for name, over in raw_per.items():
        w = where + ("per_start", name)
        over = check.mapping(over, w, PER_START_KEYS)
        entry: dict[str, Any] = {"key": name, "options": check.options(over, w)}
        if "iterations" in over:
            entry["iterations"] = check.number(over["iterations"], w + ("iterations",), ITERATIONS)
        if "eval_at" in over:
            entry["eval_at"] = check.numbers(over["eval_at"], w + ("eval_at",), EVAL_AT)
        per_start[starts[starts_raw.index(name)]] = entry
    return GridSpec(
        data=check.path_(body["data"], where + ("data",)), starts=starts,
        freeze=check.numbers(body.get("freeze", [0]), where + ("freeze",), FREEZE), images=images,
        seeds=check.numbers(body.get("seeds", [0]), where + ("seeds",), SEED),
        iterations=check.number(body.get("iterations", 100), where + ("iterations",), ITERATIONS),
        eval_at=check.numbers(body.get("eval_at", []), where + ("eval_at",), EVAL_AT),
        options=check.options(body, where), per_start=per_start)


def start_label(start: str) -> str:
    """A folder-safe label for a starting point (a path becomes its file stem)."""
    if "/" in start or "\\" in start or start.endswith(".weights"):
        return "w-" + _SAFE.sub("_", Path(start).name.removesuffix(".weights"))
    return start


def plan_runs(spec: ExperimentSpec) -> list[RunPlan]:
    """Every run of the experiment: the stages (dependency order), then the grid in a stable order. Evaluation
    iterations are sorted and always hold the last iteration (validated by _check_evals)."""
    def _evals(eval_at: tuple[int, ...], iterations: int) -> tuple[int, ...]:
        return tuple(sorted(set(eval_at) | {iterations}))

    plans = []
    for st in spec.stages.values():
        plans.append(RunPlan(name=st.name, group="stage", start=st.weights, start_label=start_label(st.weights),
                             data=st.data, freeze=st.freeze, images=st.images, seed=st.seed,
                             iterations=st.iterations, eval_at=_evals(st.eval_at, st.iterations),
                             options={**spec.options, **st.options}, model=spec.model))
    g = spec.grid
    for start in g.starts:
        over = g.per_start.get(start, {})
        iterations = over.get("iterations", g.iterations)
        eval_at = _evals(over.get("eval_at", g.eval_at), iterations)
        options = {**spec.options, **g.options, **over.get("options", {})}
        label = start_label(start)
        for freeze in g.freeze:
            for images in g.images:
                for seed in g.seeds:
                    name = f"{label}-f{freeze}-n{images or 'all'}-s{seed}"
                    plans.append(RunPlan(name=name, group="grid", start=start, start_label=label, data=g.data,
                                         freeze=freeze, images=images, seed=seed, iterations=iterations,
                                         eval_at=eval_at, options=options, model=spec.model))
    return plans
