"""Run an experiment: prepare the starting weights, run the pretraining stages, then the grid.

Owns: `run_experiment(spec, out_dir, ...) -> ExperimentResult`, the starting-point weights (`resolve_starts`),
the checks made before anything trains (data, devices, frozen layers), and the order runs execute in. The
per-run folder contract (run.json identity, reuse and resume rules, finished runs' checkpoints) and the lock on
DIR live in darktune/experiment_runs.py.

Layout of an experiment folder:
    DIR/experiment.json          the plan of every run (the report reads it), the starting points, the cfg
    DIR/weights/                 derived starting weights (conv.15 extract)
    DIR/stages/<stage>/          one train() run folder per pretraining stage
    DIR/runs/<start>-f<N>-n<images>-s<seed>/   one train() run folder per grid point

Resume: a run whose summary.json says "finished" or "stopped_at_target" is not repeated; a run with a
checkpoint resumes from it. run.json records what decides a run's result: its plan (target_map only with
stop_at_target), its start weights' path and sha256, a sha256 over its data set's obj.data and the names /
train / valid lists it names (not the images), and the cfg's sha256. Before anything trains, every run folder
is checked against the spec (`check_reuse`): a folder whose run.json differs, lacks the digests (made by an
older darktune), or starts from a stage that is to be retrained, is refused, never silently reused; the error
lists the folders and what changed, and `rerun_changed` deletes and retrains exactly those. A finished run's
checkpoint.pt (only needed to resume) is deleted unless `keep_checkpoints`. One process at a time works in
DIR (an flock on DIR/.lock; a killed process releases it). Runs execute in this process, one after another, or
as Ray tasks (`ray`, or `jobs` > 1: a local Ray instance; darktune/experiment/ray_executor), each wave's runs
starting as resources free up.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from darktune.errors import DarktuneError
from darktune.files import folder_lock
from darktune.experiment.runs import (
    DONE,
    RunInputs,
    RunOutcome,
    StartWeights,
    check_reuse,
    file_sha256,
    make_out_dir,
    read_json,
    write_json,
)
from darktune.experiment.spec import (
    ExperimentSpec,
    RunPlan,
    check_frozen,
    plan_runs,
    spec_error,
)
from darktune.darknet import zoo
from darktune.darknet.cfg import ConvSpec, NetworkSpec, parse_cfg
from darktune.darknet.transfer import MODELS, built_model
from darktune.darknet.weights import partial
from darktune.devices import resolve_device
from darktune.experiment.executors import execute
from darktune.experiment.progress import GridProgress
from darktune.experiment.ray_executor import RayOptions, RayPool, require_ray
from darktune.experiment.task import TrainFn
from darktune.train.config import TrainConfig
from darktune.train.loop import train

BACKBONE_LAYERS = MODELS["yolov3-tiny"].backbone_layers
COCO15_LAYERS = MODELS["yolov3-tiny"].partial_layers


@dataclass
class ExperimentResult:
    out_dir: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status not in DONE]


def resolve_cfg(spec: ExperimentSpec) -> str:
    """The cfg path: the spec's file, or the zoo model's cfg when the spec names a model."""
    if Path(spec.cfg).suffix == ".cfg":
        if not Path(spec.cfg).is_file():
            raise DarktuneError("cfg file not found", path=spec.cfg)
        return spec.cfg

    return str(zoo.fetch(spec.cfg).cfg)


def _coco_weights(spec: ExperimentSpec) -> tuple[str, str]:
    if "coco" in spec.weights:
        return spec.weights["coco"], spec.weights["coco"]

    fetched = zoo.fetch(spec.model)
    return str(fetched.weights), f"the official COCO {spec.model}.weights (zoo)"


def resolve_starts(spec: ExperimentSpec, cfg: str, out_dir: Path, plans: list[RunPlan],
                   digest: Callable[[str], str | None] | None = None) -> dict[str, StartWeights]:
    """Weights for every starting point the plans use; derives the model's COCO partial start (conv.15,
    conv.29) under DIR/weights/ once per source (a sidecar coco.conv.N.json records the source's and the cfg's
    sha256; another source derives it again)."""
    digest = digest or file_sha256
    used = {p.start for p in plans}
    model = MODELS[spec.model]
    partial_start, upto = model.partial, model.partial_layers
    starts: dict[str, StartWeights] = {}
    if "scratch" in used:
        starts["scratch"] = StartWeights(None, None, "random initialisation")
    if used & {"coco", partial_start} or ("backbone" in used and "backbone" not in spec.weights):
        coco, coco_name = _coco_weights(spec)
        if "coco" in used:
            starts["coco"] = StartWeights(coco, None, f"every layer of {coco_name} that fits the cfg")
        if partial_start in used:
            out = out_dir / "weights" / f"coco.conv.{upto}"
            source = {"from_sha256": digest(coco), "cfg_sha256": digest(cfg), "upto": upto}
            sidecar = out.with_name(out.name + ".json")
            if not out.is_file() or read_json(sidecar) != source:
                partial(cfg, coco, out, upto)
                write_json(sidecar, source)
            starts[partial_start] = StartWeights(str(out), upto, f"layers 0..{upto - 1} of {coco_name} (darknet "
                                                                 f"`partial ... {upto}`, {out.name})")
        if "backbone" in used and "backbone" not in spec.weights:
            starts["backbone"] = StartWeights(coco, spec.backbone_layers, backbone_stand_in(
                coco_name, spec.backbone_layers, model.backbone_layers))
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


def backbone_stand_in(coco_name: str, layers: int, backbone: int = BACKBONE_LAYERS) -> str:
    """How a backbone start made from the COCO weights is described (the report keys on 'STAND-IN');
    `backbone`: the model's backbone layers (13 for yolov3-tiny, 27 for yolov4-tiny)."""
    text = (f"layers 0..{layers - 1} of {coco_name}: a STAND-IN for darknet's ImageNet classification backbone "
            "(the study's Table I), which cannot be downloaded here")
    if layers < backbone:
        text += (f"; layers {layers}..{backbone - 1} of the backbone stay random, because COCO's deeper "
                 "layers are detection features, which an ImageNet classifier does not have")
    return text + "; pass weights.backbone in the spec (reproduce --backbone) to use your own darknet.weights"


def default_train(kwargs: dict, progress: bool) -> object:
    """The real trainer: darktune.train.config.train(TrainConfig(**kwargs))."""
    return train(TrainConfig(**kwargs), progress=progress)


def run_experiment(spec: ExperimentSpec, out_dir: str | Path, *, device: str | None = None, jobs: int = 1,
                   ray: RayOptions | None = None, train_fn: TrainFn | None = None, progress: bool = True,
                   rerun_changed: bool = False, keep_checkpoints: bool = False) -> ExperimentResult:
    """Run the stages (in order) and then the grid; finished runs are reused, interrupted ones resumed.
    `device`: where runs train in this process; `ray`: run them as Ray tasks instead (`jobs` > 1 without `ray`:
    a local Ray instance with at most `jobs` runs at a time, each with an equal share of this machine's CPUs);
    `rerun_changed`: delete and retrain the run folders the spec no longer matches (else they are an error);
    `keep_checkpoints`: keep finished runs' checkpoint.pt."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_data(spec)
    if device:  # a device that is not here fails every run; say so once, before any
        resolve_device(device, "--device")
    jobs = min(jobs, max(1, len(plan_runs(spec))))  # more at a time than there are runs: no more can run
    if ray is None and jobs > 1:
        ray = local_ray(jobs)
    if ray is not None:
        require_ray()  # missing: one line, before the folder is made
    cfg = resolve_cfg(spec)
    _check_layers(spec, cfg)
    make_out_dir(out_dir)
    with folder_lock(out_dir):
        plans = plan_runs(spec)
        inputs = RunInputs(out_dir, cfg, set(spec.stages))
        inputs.starts = resolve_starts(spec, cfg, out_dir, plans, inputs.digest)
        check_reuse(plans, inputs, rerun_changed)
        write_json(out_dir / "experiment.json", experiment_record(spec, cfg, inputs.starts, plans))
        result = _run_waves(spec, plans, inputs, train_fn or default_train, device or _default_device(), ray,
                            progress, keep_checkpoints)
    order = {p.folder: i for i, p in enumerate(plans)}
    result.outcomes.sort(key=lambda o: order[o.plan.folder])
    result.wall_s = time.perf_counter() - started
    return result


def local_ray(jobs: int) -> RayOptions:
    """`jobs` runs at a time on this machine, through a local Ray instance: each run gets an equal share of the
    CPU cores (its torch threads) and, on a GPU, 1/jobs of it."""
    cores = os.cpu_count() or 1
    cpus = max(1, cores // jobs)
    return RayOptions(jobs=jobs, cpus_per_run=cpus, num_cpus=max(cores, jobs * cpus))  # more jobs than cores: as asked


def _run_waves(spec: ExperimentSpec, plans: list[RunPlan], inputs: RunInputs, train_fn: TrainFn, device: str,
               ray: RayOptions | None, progress: bool, keep_checkpoints: bool) -> ExperimentResult:
    result = ExperimentResult(inputs.out_dir)
    with RayPool(ray, inputs.out_dir) if ray is not None else contextlib.nullcontext() as pool:
        bar = GridProgress(inputs.out_dir, plans, enabled=progress)  # after Ray's checks: a refusal is one line
        try:
            for wave, _ in waves(spec, plans):
                result.outcomes += execute(wave, inputs, train_fn, device, bar, pool, keep_checkpoints)
                for o in result.outcomes:
                    if o.plan.group == "stage" and o.status not in DONE:
                        raise DarktuneError(f"stage '{o.plan.name}' did not finish ({o.error}); the runs that "
                                            "start from it cannot run", path=str(o.run_dir))
        finally:
            bar.close()
    return result


def _check_data(spec: ExperimentSpec) -> None:
    """Every data set the spec names exists, before any run trains (a missing grid set used to show only after
    the stages had trained, as one failure per grid run)."""
    named = [(("stages", name, "data"), st.data) for name, st in spec.stages.items()] + [(("grid", "data"),
                                                                                            spec.grid.data)]
    for where, path in named:
        if not Path(path).exists():
            raise spec_error(spec, where, f"{path} not found (relative paths are read from the spec's folder)")


def _check_model(spec: ExperimentSpec, net: NetworkSpec, cfg_name: str) -> None:
    """The model the spec names (or defaults to) is the network its cfg builds (`net`, the parsed cfg): else the
    runs would train one network while the starts, the study's cuts and the report speak of another."""
    built = built_model(net)
    if built == spec.model or (built is None and not spec.model_named):
        return  # a network of its own without `model:`: nothing names it otherwise
    if spec.model_named:
        what = f"builds {built}'s layers" if built else f"builds neither {' nor '.join(MODELS)}"
        raise spec_error(spec, ("model",), f"is {spec.model}, but {cfg_name} {what}: the runs would train that "
                         f"network while the starts and the report speak of {spec.model}; name the model the cfg "
                         "builds, or give its cfg")
    raise spec_error(spec, ("cfg",), f"{cfg_name} builds {built}'s layers, but the spec's model is {spec.model} "
                     f"(the default): add model: {built}")


def _check_layers(spec: ExperimentSpec, cfg: str) -> None:
    """Frozen layer counts and lists against the cfg's layers, before anything trains."""
    net = parse_cfg(cfg)
    _check_model(spec, net, Path(cfg).name)
    weighted = [i for i, layer in enumerate(net.layers) if isinstance(layer, ConvSpec)]
    if weighted:
        check_frozen(spec, len(net.layers), weighted, Path(cfg).name)


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
    return {"spec": spec.path, "model": spec.model, "cfg": cfg, "notes": spec.notes, "target_map": target,
            "protocol": next((p.options["protocol"] for p in plans if "protocol" in p.options), None),
            "starts": {k: {"path": v.path, "upto": v.upto, "description": v.description} for k, v in starts.items()},
            "runs": [p.to_dict() for p in plans]}
