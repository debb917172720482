"""`darktune train`, `darktune map`, and `darktune bench train` (registered by darktune.cli.bench through
`add_bench_train_parser`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

from darktune.numbers import COUNT, FRACTION, NET_SIZE, SHARE, THREADS, TILE, integer, list_type


def _add_option(p, f) -> None:
    """The `darktune train` flag(s) of TrainConfig field `f`, from its Option (darktune.train.config)."""
    option, flag = f.metadata["option"], f.metadata["option"].flag(f.name)
    if option.kind == "tristate":
        p.add_argument(flag, dest=f.name, action="store_true", default=None, help=option.help)
        p.add_argument(f"--no-{flag[2:]}", dest=f.name, action="store_false")
        return
    if option.kind in ("store_true", "store_false"):
        p.add_argument(flag, dest=f.name, action=option.kind, help=option.help)
        return
    if f.default_factory is not dataclasses.MISSING:
        kw = {"default": f.default_factory()}
    else:
        kw = {"required": True} if f.default is dataclasses.MISSING else {"default": f.default}
    if option.kind in ("int", "float"):  # the Option's domain parses and checks the flag (darktune.numbers)
        kw["type"] = option.domain
    elif option.kind in ("int-list", "float-list"):
        kw["type"] = list_type(option.domain)
    if option.metavar:
        kw["metavar"] = option.metavar
    if option.choices:
        kw["choices"] = option.choices
    p.add_argument(flag, dest=f.name, help=option.help, **kw)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """The flags of every TrainConfig field that has one, in field order (an Option's cli_after moves it)."""
    from darktune.train.config import TrainConfig

    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata["option"].cli]
    for f in [f for f in fields if f.metadata["option"].cli_after]:
        fields.remove(f)
        fields.insert(next(i for i, g in enumerate(fields) if g.name == f.metadata["option"].cli_after) + 1, f)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}  # Option.exclusive -> its flags' group
    for f in fields:
        group = f.metadata["option"].exclusive
        if group and group not in groups:
            groups[group] = p.add_mutually_exclusive_group()
        _add_option(groups[group] if group else p, f)
        if f.name == "resume":
            p.add_argument("--overwrite", action="store_true",
                           help="start a fresh run in RUN even though it holds a previous run (its checkpoint, "
                                "weights and metrics are replaced)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (transfer-learn) a darknet detector, with frozen layers and mAP over "
                                     "iterations")
    _add_train_options(p)
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
    m.add_argument("--size", type=NET_SIZE, help="network width=height (default: the cfg's)")
    m.add_argument("--thresh", type=FRACTION, default=0.25, help="threshold for precision/recall/F1/IoU")
    m.add_argument("--batch", type=COUNT, default=32, help="images per forward pass (default 32)")
    m.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    m.add_argument("--max-images", type=COUNT, help="evaluate on the first N images of the list")
    m.add_argument("--class-map", default="auto", choices=("auto", "names", "none"),
                   help="names: the model's classes mapped onto the data's by name (case, spaces, _ and - ignored; "
                        "aliases such as pedestrian=person), so the COCO model is scored on the data's classes "
                        "it has and a class it lacks scores 0; none: class i is the data's class i; auto "
                        "(default): none when the weights hold the data's class count, else names")
    m.add_argument("--model-names", metavar="FILE",
                   help="the model's class names for --class-map (default: the names file beside --weights or "
                        "--cfg, e.g. the zoo's coco.names)")
    m.add_argument("--tile", type=TILE, metavar="PX",
                   help="score whole images by sliced detection, as `detect --tile PX` runs them: tiles of PX x PX "
                        "pixels, boxes shifted back and merged across tiles (a model trained on `data tile` tiles)")
    m.add_argument("--overlap", type=SHARE, default=0.2, help="--tile: overlap of neighbouring tiles (default 0.2)")
    m.add_argument("--tile-full", action="store_true", help="--tile: detect the whole image resized as well")
    m.add_argument("--merge", choices=("nms", "greedynmm"), default="nms",
                   help="--tile: merge across tiles: nms by IoU > 0.5 (default) or greedynmm by intersection over "
                        "the smaller box > 0.5, as detect --tile")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_map)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of `darktune train`'s flags: every field that has a flag (the others keep their default)."""
    from darktune.errors import DarktuneError
    from darktune.train.config import TrainConfig
    from darktune.train.freeze import parse_layer_list

    values = {}
    for f in dataclasses.fields(TrainConfig):
        option = f.metadata["option"]
        if not option.cli:
            continue
        value = getattr(args, f.name)
        if option.kind == "layer-list" and value is not None:  # '' too: an empty list is an error, not "none"
            try:
                value = parse_layer_list(value, 10_000)
            except DarktuneError as exc:
                raise DarktuneError(f"{option.flag(f.name)}: {exc}") from None
        values[f.name] = value
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from darktune.devices import resolve_device
    from darktune.files import folder_lock
    from darktune.train.files import check_fresh_run_folder, make_run_folder
    from darktune.train.loop import train

    resolve_device(args.device)  # before anything is read or written (train() checks again, for library use)
    if int(os.environ.get("RANK", "0")) == 0:  # one lock per run (torchrun's other ranks write no run files)
        make_run_folder(args.out)
        lock = folder_lock(Path(args.out), "training")
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
    from darktune.eval.evaluate import evaluate_model, load_eval_set, load_for_data

    device = resolve_device(args.device)
    model, spec, match = load_for_data(args.cfg, args.weights, args.data, args.size, args.class_map,
                                       args.model_names)
    if match is not None and not args.json:
        print(f"the model's {len(match.model_names)} classes mapped onto the data's by name: "
              + "; ".join(match.describe()), file=sys.stderr)
    model.to(device)
    if args.tile is not None:
        return _map_tiled(args, model, spec, device)
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
        out.update(images=len(es), skipped_images=es.n_skipped, size=[spec.net.width, spec.net.height],
                   class_map=None if match is None else match.to_dict())
        print(json.dumps(out))
    else:
        print(f"{len(es)} images ({es.n_skipped} skipped), network {spec.net.width}x{spec.net.height}")
        print(result.summary())
    return 0


def _map_tiled(args: argparse.Namespace, model, spec, device) -> int:
    """`map --tile`: mAP on the split's whole images, sliced and merged as `detect --tile` does."""
    from darktune.eval.tiled import Slicing, evaluate_tiled, load_whole_set

    slicing = Slicing(args.tile, args.overlap, args.tile_full, args.merge, batch=args.batch)
    ws = load_whole_set(args.data, args.split, args.max_images, progress=not args.json)
    result = evaluate_tiled(model, ws, slicing, args.protocol, device, conf_thresh=args.thresh)
    tiling = {"tile": args.tile, "overlap": args.overlap, "tile_full": args.tile_full, "merge": args.merge}
    if args.json:
        print(json.dumps(result.to_dict() | {"images": len(ws), "skipped_images": ws.n_skipped,
                                             "size": [spec.net.width, spec.net.height], "tiling": tiling}))
    else:
        print(f"{len(ws)} whole images ({ws.n_skipped} skipped), tiles of {args.tile} px with overlap "
              f"{args.overlap:g} ({args.merge}), network {spec.net.width}x{spec.net.height}")
        print(result.summary())
    return 0


# ------------------------------------------------------------------------------------------------ bench train
def add_bench_train_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `darktune bench train` on the `bench` command group's subparsers."""
    b = bench_sub.add_parser("train", help="training images/s (CPU loader and --gpu-augment) vs the bare "
                                           "forward+backward+step; freeze speed-up")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    b.add_argument("--sizes", type=list_type(NET_SIZE), default=[416, 160], help="network sizes (default 416,160)")
    b.add_argument("--batch", type=COUNT, default=8, help="images per iteration (default 8)")
    b.add_argument("--iterations", type=integer(1, 100_000), default=6, help="timed iterations per measurement")
    b.add_argument("--repeats", type=integer(1, 1000), default=3, help="measurements per case (median reported)")
    b.add_argument("--freeze", type=integer(0, 10_000), default=13,
                   help="frozen layers to compare with freeze 0 (0: no freeze cases)")
    b.add_argument("--amp", action="store_true", help="bf16 autocast in every case")
    b.add_argument("--threads", type=THREADS, help="torch CPU threads (default: all cores)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=bench_train)
    return b


def bench_train(args: argparse.Namespace) -> int:
    from darktune.train.bench import run_bench_train

    report = run_bench_train(device=args.device, sizes=args.sizes, batch=args.batch, iterations=args.iterations,
                             repeats=args.repeats, freeze=args.freeze, amp=args.amp, threads=args.threads,
                             progress=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        for line in report["lines"]:
            print(line)
    return 0
