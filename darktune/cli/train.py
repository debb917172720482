"""`darktune train`, `darktune map`, and `darktune bench train` (registered by darktune.cli.bench through
`add_bench_train_parser`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _tristate(p: argparse.ArgumentParser, name: str, help_text: str) -> None:
    dest = name.replace("-", "_")
    p.add_argument(f"--{name}", dest=dest, action="store_true", default=None, help=help_text)
    p.add_argument(f"--no-{name}", dest=dest, action="store_false")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (transfer-learn) a darknet detector, with frozen layers and mAP over "
                                     "iterations")
    p.add_argument("--cfg", required=True, help="darknet .cfg (classes follow the data's names)")
    p.add_argument("--data", required=True, help="obj.data (train/valid lists, names)")
    p.add_argument("--weights", default=None, help="darknet .weights to start from, or 'none' (scratch)")
    p.add_argument("--upto", type=int, help="load only layers 0..N-1 of --weights (a partial file, e.g. conv.15)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--freeze", type=int, default=0, metavar="N", help="freeze layers 0..N-1")
    g.add_argument("--freeze-layers", metavar="LIST", help="freeze these layers, e.g. 0-12,15")
    p.add_argument("--unfreeze-at", type=int, metavar="K", help="unfreeze everything after iteration K (before "
                                                                 "the last; needs --freeze or --freeze-layers)")
    p.add_argument("--iterations", type=int, help="iterations (default: [net] max_batches)")
    p.add_argument("--batch", type=int, help="images per iteration (default: [net] batch)")
    p.add_argument("--subdivisions", type=int, help="micro-batches per iteration (default: [net] subdivisions)")
    p.add_argument("--size", type=int, help="network width=height, a multiple of 32 (default: the cfg's)")
    p.add_argument("--eval-every", type=int, default=0, metavar="E", help="mAP on the valid list every E iterations")
    p.add_argument("--eval-at", type=_int_list, default=[], metavar="LIST", help="and at these iterations (each at most --iterations)")
    p.add_argument("--target-map", type=float, metavar="M", help="target mAP (fraction, e.g. 0.9)")
    p.add_argument("--stop-at-target", action="store_true",
                   help="stop at the first evaluation reaching --target-map (needs it)")
    p.add_argument("--protocol", default="darknet", choices=("darknet", "voc07", "coco101", "coco"),
                   help="mAP protocol: darknet (detector map), voc07 (11-point), coco101 (AP50, 101-point), "
                        "coco (AP50-95); default darknet")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default="runs/train", metavar="RUN", help="run folder (default runs/train); one that "
                                                                       "already holds a run needs --resume or "
                                                                       "--overwrite")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start a fresh run in RUN even though it holds a previous run (its checkpoint, weights "
                        "and metrics are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, batches and augmentation")
    p.add_argument("--workers", type=int, default=0, help="background threads preparing batches (CPU loader; "
                                                             "--gpu-augment needs none)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; use 1 per process when "
                                               "several trainings share the cores)")
    p.add_argument("--max-images", type=int, metavar="N", help="use a seeded subset of N training images (1 up to "
                                                                  "the number of usable images; default: all)")
    p.add_argument("--max-valid-images", type=int, metavar="N", help="evaluate on the first N valid images")
    p.add_argument("--lr", type=float, help="override [net] learning_rate")
    p.add_argument("--obj-prior", type=float, metavar="P",
                   help="start new yolo heads' objectness at probability P (bias logit(P), e.g. 0.01; "
                        "default: darknet's bias 0, i.e. 0.5)")
    p.add_argument("--burn-in", type=int, metavar="N",
                   help="override [net] burn_in: the lr ramps up as lr * (i/N)^power over the first N iterations. "
                        "yolov3-tiny.cfg says burn_in=1000, which keeps the lr near 0 for a short run (a run warns "
                        "when burn_in is at least half its iterations): for a run of a few hundred iterations give "
                        "e.g. a tenth of them; 0: no burn-in")
    p.add_argument("--continue-schedule", action="store_true",
                   help="go on with the learning-rate schedule of --weights, as darknet does without -clear: it "
                        "starts at iteration seen/batch of the file's header (no second burn-in; steps count from "
                        "there); this run's iterations and metrics still count from 0")
    p.add_argument("--steps", type=_int_list, help="override [net] steps (policy becomes steps)")
    p.add_argument("--scales", type=_float_list, help="override [net] scales")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no jitter/colour/flip")
    _tristate(p, "gpu-augment", "device-side input path: images decoded once into a uint8 cache, whole batches "
                                "augmented on --device (default: on for CUDA, off on CPU)")
    _tristate(p, "multi-scale", "darknet multi-scale training: a new size in [size/1.4, size*1.4] every 10 "
                                "iterations (default: on when the cfg's [yolo] layers say random=1, "
                                "unless --no-augment)")
    _tristate(p, "amp", "mixed precision: bf16 (fp16 on GPUs without bf16); default on for CUDA, off on CPU")
    _tristate(p, "channels-last", "channels_last memory format (default: on)")
    _tristate(p, "compile", "torch.compile (default: on for CUDA)")
    _tristate(p, "feature-cache", "with frozen layers and no augmentation, compute each training image's frozen "
                                  "layers once and reuse them every epoch (bit-identical, checked on the run; "
                                  "default: on where it applies)")
    p.add_argument("--log-every", type=int, default=1, help="metrics.jsonl line every N iterations")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="checkpoint.pt and last.weights every N iterations")
    p.add_argument("--max-bad-steps", type=int, default=10, help="stop after K non-finite losses in a row")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard logs (if tensorboard is installed)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (e.g. when logging to a file): evaluations and other events are still "
                        "printed as plain lines on stderr; RUN/train.log has them too")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_train)

    m = sub.add_parser("map", help="mAP of a model on a dataset split (darknet's detector map, and more)")
    m.add_argument("--cfg", required=True, help="darknet .cfg")
    m.add_argument("--weights", required=True, help="darknet .weights (a run's weights/best.weights)")
    m.add_argument("--data", required=True, help="obj.data")
    m.add_argument("--split", default="valid", choices=("valid", "train"), help="which list (default valid)")
    m.add_argument("--protocol", default="darknet", choices=("darknet", "voc07", "coco101", "coco"),
                   help="mAP protocol: darknet (detector map), voc07 (11-point), coco101 (AP50, 101-point), "
                        "coco (AP50-95); default darknet")
    m.add_argument("--size", type=int, help="network width=height (default: the cfg's)")
    m.add_argument("--thresh", type=float, default=0.25, help="threshold for precision/recall/F1/IoU")
    m.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    m.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    m.add_argument("--max-images", type=int, help="evaluate on the first N images of the list")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_map)


def config_from_args(args: argparse.Namespace):
    from darktune.errors import DarktuneError
    from darktune.freeze import parse_layer_list
    from darktune.train import TrainConfig

    freeze_layers = None
    if args.freeze_layers is not None:  # '' too: an empty list is an error, not "no freezing"
        try:
            freeze_layers = parse_layer_list(args.freeze_layers, 10_000)
        except DarktuneError as exc:
            raise DarktuneError(f"--freeze-layers: {exc}") from None
    return TrainConfig(
        cfg=args.cfg, data=args.data, weights=args.weights, upto=args.upto, freeze=args.freeze,
        freeze_layers=freeze_layers, unfreeze_at=args.unfreeze_at, iterations=args.iterations, batch=args.batch,
        subdivisions=args.subdivisions, size=args.size, eval_every=args.eval_every, eval_at=args.eval_at,
        target_map=args.target_map, stop_at_target=args.stop_at_target, protocol=args.protocol,
        device=args.device, out=args.out, resume=args.resume, seed=args.seed, workers=args.workers,
        threads=args.threads,
        max_images=args.max_images, max_valid_images=args.max_valid_images, lr=args.lr, burn_in=args.burn_in,
        continue_schedule=args.continue_schedule,
        steps=args.steps, scales=args.scales, augment=args.augment, gpu_augment=args.gpu_augment,
        multi_scale=args.multi_scale, amp=args.amp, obj_prior=args.obj_prior,
        channels_last=args.channels_last, compile=args.compile, feature_cache=args.feature_cache,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, max_bad_steps=args.max_bad_steps, tensorboard=args.tensorboard)


def cmd_train(args: argparse.Namespace) -> int:
    from darktune.devices import resolve_device
    from darktune.experiment_runs import experiment_lock
    from darktune.train import train
    from darktune.train_files import check_fresh_run_folder, make_run_folder

    resolve_device(args.device)  # before anything is read or written (train() checks again, for library use)
    if int(os.environ.get("RANK", "0")) == 0:  # one lock per run (torchrun's other ranks write no run files)
        make_run_folder(args.out)
        lock = experiment_lock(Path(args.out), "training")
    else:
        lock = contextlib.nullcontext()
    with lock:  # the fresh-folder check and every write of the run under one flock: a second run fails at once
        check_fresh_run_folder(args.out, args.resume, args.overwrite)
        result = train(config_from_args(args), progress=args.progress)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    if args.json:
        print(json.dumps(summary))
    else:
        ttt = result.time_to_target
        best = "n/a" if result.best_map is None else f"{100 * result.best_map:.2f}%"
        final = "n/a" if result.final_map is None else f"{100 * result.final_map:.2f}%"
        print(f"{result.status}: {result.iterations_done} iterations, {result.images_per_s:.1f} images/s, "
              f"mAP final {final} best {best} ({args.protocol})")
        if ttt:
            print(f"target reached at iteration {ttt['iteration']} after {ttt['seconds']:.1f} s of training "
                  f"({ttt['elapsed_seconds']:.1f} s elapsed)")
        print(f"run folder: {result.run_dir}")
    if result.status == "failed":
        print(f"darktune: error: {result.message}", file=sys.stderr)
        return 1
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from darktune.devices import resolve_device
    from darktune.evaluate import evaluate_model, load_eval_set, load_for_data

    device = resolve_device(args.device)
    model, spec = load_for_data(args.cfg, args.weights, args.data, args.size)
    model.to(device)
    es = load_eval_set(args.data, (spec.net.height, spec.net.width), args.split, spec.net.letter_box,
                       args.max_images, progress=not args.json)
    import torch

    from darktune.errors import DarktuneError

    try:
        result = evaluate_model(model, es, args.protocol, args.batch, device, conf_thresh=args.thresh)
    except torch.cuda.OutOfMemoryError:
        raise DarktuneError(f"CUDA out of memory evaluating batches of {args.batch} images: use a smaller --batch "
                            "(or a smaller --size, or --device cpu)") from None
    if args.json:
        out = result.to_dict()
        out.update(images=len(es), skipped_images=es.n_skipped, size=[spec.net.width, spec.net.height])
        print(json.dumps(out))
    else:
        print(f"{len(es)} images ({es.n_skipped} skipped), network {spec.net.width}x{spec.net.height}")
        print(result.summary())
    return 0


# ------------------------------------------------------------------------------------------------ bench train
def add_bench_train_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `darktune bench train` on the `bench` command group's subparsers."""
    b = bench_sub.add_parser("train", help="training images/s (CPU loader and --gpu-augment) vs the bare "
                                           "forward+backward+step; freeze speed-up")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    b.add_argument("--sizes", type=_int_list, default=[416, 160], help="network sizes (default 416,160)")
    b.add_argument("--batch", type=int, default=8, help="images per iteration (default 8)")
    b.add_argument("--iterations", type=int, default=6, help="timed iterations per measurement")
    b.add_argument("--repeats", type=int, default=3, help="measurements per case (median reported)")
    b.add_argument("--freeze", type=int, default=13, help="frozen layers to compare with freeze 0 (0: no freeze "
                                                           "cases)")
    b.add_argument("--amp", action="store_true", help="bf16 autocast in every case")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=bench_train)
    return b


def bench_train(args: argparse.Namespace) -> int:
    from darktune.train_bench import run_bench_train

    report = run_bench_train(device=args.device, sizes=args.sizes, batch=args.batch, iterations=args.iterations,
                             repeats=args.repeats, freeze=args.freeze, amp=args.amp, threads=args.threads,
                             progress=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        for line in report["lines"]:
            print(line)
    return 0
