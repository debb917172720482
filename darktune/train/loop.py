"""The training loop behind `darktune.train.config.train`: set-up, one iteration, evaluation points, checkpoints,
the end of a run. Plain functions over one `Run` record (no trainer class hierarchy)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from darktune.errors import DarktuneError
from darktune.train.config import RESUMABLE_CHANGES, TrainConfig
from darktune.train.state import Dist, Run, RunState, TrainResult
from darktune.train.files import (
    names_text,
    open_run_log,
    remove_stale_temps,
    truncate_metrics,
    write_run_file,
)
from darktune.darknet.cfg import format_cfg, parse_cfg, YoloSpec
from darktune.darknet.memory import is_out_of_memory
from darktune.darknet.model import Darknet
from darktune.data.augment import AugmentConfig
from darktune.data.check import check_dataset
from darktune.data.formats.yolo import read_obj_data
from darktune.devices import resolve_device
from darktune.train.cfg_keys import refuse_unhonoured
from darktune.train.checkpoint import load_checkpoint, load_model_state, load_optimizer_state, set_rng_state
from darktune.train.device_inputs import check_run_memory, make_batches
from darktune.train.freeze import frozen_at, layer_digests, set_frozen
from darktune.train.init import (
    DEFAULT_OBJ_PRIOR, build_optimizer, burn_in_warning, check_against_network, init_model, set_objectness_prior,
    weights_class_names,
)
from darktune.train.inputs import multi_scale_note, subset
from darktune.train.loss import YoloLoss
from darktune.train.recovery import GuardState
from darktune.train import timed
from darktune.train.timed import provisional_iterations
from darktune.train.steps import finish, open_outputs, training_loop, wrap_model, write_summary


# ------------------------------------------------------------------------------------------------ set-up
def _dist_setup(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)  # a bad name or a missing GPU: one line naming --device and the value
    if world <= 1:
        return Dist(0, 1, dev)
    import torch.distributed as td

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":  # one GPU per process: LOCAL_RANK's
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not td.is_initialized():
        td.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def _resolve_spec(config: TrainConfig):
    spec = parse_cfg(config.cfg)
    od = read_obj_data(config.data)
    spec = spec.with_classes(len(od.names))
    if config.size:
        spec = spec.with_size(config.size, config.size)
    elif spec.net.width % 32 or spec.net.height % 32:
        raise DarktuneError(f"network size {spec.net.width}x{spec.net.height} is not a multiple of 32",
                            path=config.cfg)
    return spec, od


def _net_params(config: TrainConfig, spec):
    """[net] with the run's overrides applied (for the schedule)."""
    import dataclasses

    changes = {}
    if config.burn_in is not None:
        changes["burn_in"] = config.burn_in
    if config.steps is not None:
        scales = config.scales if config.scales is not None else [0.1] * len(config.steps)
        if len(scales) != len(config.steps):
            raise DarktuneError(f"--steps has {len(config.steps)} values but --scales {len(scales)}")
        changes.update(policy="steps", steps=tuple(config.steps), scales=tuple(scales))
    return dataclasses.replace(spec.net, **changes) if changes else spec.net


def _training_items(config: TrainConfig, log) -> list:
    report = check_dataset(config.data, "train", progress=False)
    if report.n_skipped_images:
        log(f"train list: {report.n_skipped_images} bad images skipped ({report.n_images} listed)")
    n_good = len(report.good)
    if config.max_images is not None and config.max_images > n_good:
        usable = f" ({report.n_images} listed, {report.n_skipped_images} unusable)" if report.n_skipped_images else ""
        raise DarktuneError(f"--max-images {config.max_images} is more than the {n_good} usable training images "
                            f"of the train list{usable}: give at most {n_good}, or leave it out for all of them",
                            path=config.data)
    items = subset(report.good, config.max_images, config.seed)
    if not items:
        raise DarktuneError("no usable training images", path=config.data)
    return items


def augment_config(spec, enabled: bool = True):
    """Darknet's augmentation from the cfg (jitter and resize of the last [yolo], as darknet's train_detector
    reads them; [net] hue, saturation, exposure, flip, mosaic, letter_box), or None when off."""
    if not enabled:
        return None

    yolos = [layer for layer in spec.layers if isinstance(layer, YoloSpec)]
    jitter = min(0.49, yolos[-1].jitter) if yolos else 0.0
    resize = yolos[-1].resize if yolos else 1.0
    n = spec.net
    return AugmentConfig(jitter=jitter, hue=min(0.5, n.hue), saturation=max(1.0, n.saturation),
                         exposure=max(1.0, n.exposure), flip=n.flip, mosaic=n.mosaic, letterbox=n.letter_box,
                         resize=resize)


def build_run(config: TrainConfig, progress: bool) -> Run:
    if config.threads:
        torch.set_num_threads(config.threads)  # e.g. 1 per process when several runs share 2 cores
    dist = _dist_setup(config.device)
    spec, od = _resolve_spec(config)
    config = timed.with_defaults(config, spec.net.batch, dist.device.type == "cuda")  # --time on a CPU
    batch = config.batch or spec.net.batch
    subdivisions = config.subdivisions or spec.net.subdivisions
    if batch % subdivisions:
        raise DarktuneError(f"batch {batch} is not divisible by subdivisions {subdivisions}")
    iterations = provisional_iterations(config) if config.time else config.iterations or spec.net.max_batches
    if iterations <= 0:
        raise DarktuneError("give --iterations (the cfg has no max_batches)", path=config.cfg)
    check_against_network(config, iterations, len(spec.layers))
    check_run_memory(config, spec, batch // subdivisions, dist.device)  # before the model, the batches, the cache
    cuda = dist.device.type == "cuda"
    torch.manual_seed(config.seed)
    model = Darknet(spec)
    run_dir = Path(config.out)
    frozen = frozen_at(config, 0, len(spec.layers))
    refuse_unhonoured(spec, frozen)  # mixup/cutmix/blur/gaussian_noise; stopbackward beyond the freeze
    set_frozen(model, frozen)
    model.to(dist.device)
    channels_last = True if config.channels_last is None else config.channels_last  # faster on CPU too (oneDNN)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = cuda if config.amp is None else config.amp
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    try:
        opt = build_optimizer(model, 0.0, spec.net.momentum, spec.net.decay)
    except DarktuneError as exc:  # nothing left to train: name the option that froze it all
        option = f"--freeze {config.freeze}" if config.freeze else f"--freeze-layers {_ranges(frozen)}"
        raise DarktuneError(f"{option}: {exc}") from None
    log_items = []
    items = _training_items(config, log_items.append)
    data = make_batches(config, spec, items, augment_config(spec, config.augment), batch, subdivisions, dist,
                        progress and dist.main)
    if getattr(data, "skipped", 0):
        log_items.append(f"image cache: {data.skipped} unreadable images skipped")
    points = set(config.eval_at) | set(range(config.eval_every, iterations + 1, config.eval_every or iterations + 1))
    points = {p for p in points if p <= iterations} | ({iterations} if od.valid else set())
    if config.time:  # the evaluation points follow the fitted length (darktune.train.timed)
        points = set()
    run = Run(config, dist, run_dir, spec, model, model, opt, data, YoloLoss([h.spec for h in model.heads]),
              iterations, batch, subdivisions, points if od.valid else set(), frozen, amp_dtype, scaler,
              channels_last, _net_params(config, spec), names=list(od.names))
    if not od.valid and (config.eval_every or config.eval_at or config.target_map is not None):
        log_items.append("no valid list in the data file: no mAP will be measured")
    run.notes = log_items
    run.budget_evaluates = bool(config.time and od.valid)
    return run


# ------------------------------------------------------------------------------------------------ start / resume
def _fresh_start(run: Run) -> None:
    c = run.config
    keep = (run.names, weights_class_names(c.weights, c.weights_names)) if c.keep_classes else None
    report = init_model(run.model, c.weights, c.upto, c.seed, keep)
    prior = DEFAULT_OBJ_PRIOR if c.obj_prior is None else c.obj_prior
    report["obj_prior"] = prior
    report["obj_prior_layers"] = set_objectness_prior(run.model, report["new_layers"], prior)
    set_frozen(run.model, run.frozen)  # init may have replaced tensors; make sure the flags hold
    report["frozen_layers"] = run.frozen
    # darknet without -clear: the schedule goes on at the iteration the file's `seen` counter says
    offset = report.get("seen", 0) // run.batch if c.continue_schedule else 0
    report["schedule_offset"] = offset
    run.state = RunState(schedule_offset=offset, init=report, input=run.data.input_path,
                         digests_before={str(k): v for k, v in layer_digests(run.model).items()})
    timed.start(run)
    if run.dist.main:
        try:
            (run.dir / "weights").mkdir(parents=True, exist_ok=True)
            # a fresh start (--overwrite) must not leave a previous run's results behind to be taken for its own
            for stale in ("summary.json", "freeze_proof.json", "checkpoint.pt", "weights/best.weights",
                          "weights/last.weights"):
                (run.dir / stale).unlink(missing_ok=True)
        except OSError as exc:
            raise DarktuneError(f"cannot prepare the run folder: {exc.strerror or exc}", path=str(run.dir)) from None
        write_run_file(run.dir / "init.json", json.dumps(report, indent=1) + "\n")
        write_run_file(run.dir / "model.cfg", format_cfg(run.spec))
        write_run_file(run.dir / "obj.names", names_text(run.names))
        write_run_file(run.dir / "metrics.jsonl", "")
        run.log_file = open_run_log(run.dir, append=False)  # a fresh run (also --overwrite): a new train.log
    loaded, new = report["loaded_layers"], report["new_layers"]
    run.log(f"init: {report['mode']} from {report['weights'] or 'scratch'}; loaded conv layers {_ranges(loaded)}; "
            f"new {_ranges(new)}; frozen layers {_ranges(run.frozen)}")
    for name, row in report.get("class_rows", {}).get("classes", {}).items():
        run.log(f"init: class {name}: " + (f"rows of the weights' class {row['model_class']} ({row['model_name']})"
                                           if row else "not among the weights' classes, new rows"))
    if c.continue_schedule:
        run.log(f"schedule: continues at iteration {offset} (the weights had seen {report.get('seen', 0):,} images, "
                f"batch {run.batch})")
    scales = multi_scale_note(run.data, run.iterations)
    if scales:
        run.log(scales)
    timed_burn_in = c.time is not None and c.burn_in is None  # --time fits the burn-in to the run
    warning = None if timed_burn_in else burn_in_warning(run.net_params, run.iterations, offset, c.burn_in is not None)
    if warning:
        run.log(warning)


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    out, start, prev = [], xs[0], xs[0]
    for x in list(xs[1:]) + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def _resume(run: Run) -> None:
    ck = load_checkpoint(run.dir / "checkpoint.pt")
    if run.dist.main:
        run.log_file = open_run_log(run.dir, append=True)  # the first start's lines (init: ...) stay
    saved, now = ck["config"], run.config.to_dict()
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise DarktuneError("cannot resume with different settings: " + ", ".join(
            f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff), path=str(run.dir / "checkpoint.pt"))
    saved_state = RunState.from_checkpoint(ck["state"])
    if saved_state.input not in (None, run.data.input_path):  # batches would differ
        raise DarktuneError(f"cannot resume: the run used the {saved_state.input} input path, not "
                            f"{run.data.input_path} (pass --{'no-' * (saved_state.input != 'gpu_augment')}"
                            "gpu-augment)", path=str(run.dir / "checkpoint.pt"))
    run.step = int(ck["step"])
    # the frozen set of the checkpoint's last iteration, which its optimizer state matches: a checkpoint at
    # K = --unfreeze-at is still frozen; the loop then unfreezes before iteration K+1 as an unbroken run does
    run.frozen = frozen_at(run.config, max(0, run.step - 1), len(run.spec.layers))
    set_frozen(run.model, run.frozen)
    load_model_state(run.model, ck["model"], run.dir / "checkpoint.pt")  # one line when the cfg was edited
    run.opt = build_optimizer(run.model, 0.0, run.spec.net.momentum, run.spec.net.decay)
    load_optimizer_state(run.opt, ck["optimizer"], run.dir / "checkpoint.pt")
    set_rng_state(ck["rng"])
    run.state = saved_state
    run.guard = GuardState.from_checkpoint(ck["state"].get("guard"), run.model, run.opt)
    timed.start(run, ck["state"].get("budget"))
    k = run.config.unfreeze_at
    if k is not None and run.step == k and run.state.digests_at_unfreeze is None:  # a checkpoint of older code
        run.state.digests_at_unfreeze = {str(i): v for i, v in layer_digests(run.model).items()}
    if run.scaler is not None and run.state.scaler is not None:
        run.scaler.load_state_dict(run.state.scaler)
    if run.dist.main:
        truncate_metrics(run.dir / "metrics.jsonl", run.step)
        (run.dir / "summary.json").unlink(missing_ok=True)
        if not (run.dir / "obj.names").exists():  # a run folder from before obj.names was written
            write_run_file(run.dir / "obj.names", names_text(run.names))
        stale = remove_stale_temps(run.dir)
        if stale:
            run.log(f"removed {stale} stale temp file{'s' * (stale != 1)} left by killed writes")
    run.log(f"resumed from {run.dir / 'checkpoint.pt'} at iteration {run.step} "
            f"(epoch {ck['loader'].get('epoch')}, index {ck['loader'].get('index')})")


# ------------------------------------------------------------------------------------------------ the run
def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Run (or resume) one training run; see the module docstring. Raises DarktuneError on bad input, CUDA
    out-of-memory (with advice) and a failed resume; a run stopped by non-finite losses returns status failed."""
    t0 = time.perf_counter()
    run = build_run(config, progress)
    run.t_start = t0
    try:
        if config.resume:
            _resume(run)
        else:
            _fresh_start(run)
        for note in run.notes:
            run.log(note)
        run.notes = []
        run.net = wrap_model(run)
        open_outputs(run, progress)
        status, message = training_loop(run)
    except (RuntimeError, MemoryError) as exc:  # CUDA's out of memory, or the CPU allocator's: the same advice
        if not is_out_of_memory(exc):
            _fail(run, f"{type(exc).__name__}: {exc}")
            raise
        _fail(run, f"out of memory on {run.dist.device}")
        raise DarktuneError(f"out of memory on {run.dist.device} at batch {run.batch} / subdivisions "
                            f"{run.subdivisions}: use a smaller --batch or more --subdivisions (or a smaller "
                            "--size)") from None
    except BaseException as exc:
        _fail(run, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        run.data.close()
    return finish(run, status, message)


def _fail(run: Run, message: str) -> None:
    if run.dist.main and run.dir.exists():
        try:
            write_summary(run, "failed", message)
        except (DarktuneError, OSError, ValueError, TypeError):  # never mask the original error
            pass
    if run.metrics is not None:
        run.metrics.close()
        run.metrics = None
    if run.progress is not None:
        run.progress.close()
    if run.log_file is not None:
        run.log_file.close()
        run.log_file = None
