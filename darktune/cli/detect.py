"""`darktune detect`: run a detector (torch, ONNX Runtime or OpenCV DNN backend) on images, videos and cameras."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from darktune.numbers import COUNT, FRACTION, NET_SIZE, SHARE, TILE, integer

THRESH, NMS = 0.25, 0.45  # score threshold and NMS IoU without --thresh, --nms


def most_workers() -> int:
    """The most --workers on this machine: each holds an image or frame and its network's buffers."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(64, 2 * cpus)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects in images, videos and camera streams",
                       description="Sources: image files, video files, or camera indices (an integer: 0 is the "
                                   "first camera). A source that cannot be read is reported and skipped; the "
                                   "exit status is then 1. Frames per second are shown on stderr.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image file, video file, camera index, folder (its image and video files by suffix, "
                        "sorted, not its subfolders) or quoted glob pattern such as 'imgs/*.jpg' (sorted)")
    p.add_argument("--cfg", help="darknet cfg (optional for --backend onnxruntime --onnx: the cfg stored in the "
                                 "model is used; a --cfg given with --onnx must match the model's outputs and "
                                 "its stored [yolo] heads (classes, anchors, masks), else detect refuses; the "
                                 "model's input size wins over the cfg's, with a note)")
    p.add_argument("--weights", help="darknet weights (not needed with --onnx)")
    p.add_argument("--names", help="class names file, one per line (default: the names stored in an --onnx "
                                   "model; else a names file beside --cfg with one name per class: <cfg "
                                   "stem>.names, obj.names, or the folder's only .names file; else class_0, "
                                   "class_1, ...)")
    p.add_argument("--map-classes", metavar="FILE",
                   help="report only the model's classes that FILE (an obj.data or a names file) names, under "
                        "FILE's names and class ids, matched by name (case, spaces, _ and - ignored; aliases such "
                        "as pedestrian=person): the COCO model's detections in a dataset's classes")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "opencv"), default="auto",
                   help="who runs the network; preprocessing, decoding and NMS are darktune's for all. auto "
                        "(default): on CPU the fastest runtime installed on this machine, timed once per machine "
                        "and model shape and cached in $DARKTUNE_HOME (DARKTUNE_BACKEND=NAME sets it without "
                        "timing); torch on a GPU; onnxruntime with --onnx")
    p.add_argument("--onnx", help="ONNX model for --backend onnxruntime or auto (default: the model exported once "
                                  "into $DARKTUNE_HOME/onnx): a raw-heads export, or a decode graph (`export onnx "
                                  "--decode`, recognised by its output) whose own decode and NMS then run, with "
                                  "--tile too; its score threshold and NMS IoU are fixed at export")
    p.add_argument("--no-winograd", action="store_true",
                   help="--backend opencv: direct convolutions instead of OpenCV's Winograd 3x3 ones (slower; "
                        "raw outputs within 1e-4 of torch and ONNX Runtime, where Winograd is about 2e-4 away)")
    p.add_argument("--size", type=NET_SIZE, help="network input size (square, multiple of 32); default: the cfg's")
    p.add_argument("--thresh", type=FRACTION, help=f"score threshold, 0 to 1 (default {THRESH:g}; with a decode "
                                                   "graph, its own threshold if higher; no lower one is possible)")
    p.add_argument("--nms", type=FRACTION, help=f"NMS IoU threshold, 0 to 1 (default {NMS:g}; with a decode graph, "
                                                "its own, the only one possible)")
    p.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                   help="--letterbox keeps the aspect ratio (grey padding), --no-letterbox resizes plainly; default: "
                        "as the cfg's [net] letter_box (the cfg stored in an --onnx model without --cfg), as "
                        "training and evaluation do")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--workers", type=integer(1, most_workers()), metavar="N",
                   help="images (or a video's frames) detected side by side, the CPU threads shared out among "
                        "them (default on a CPU: one per CPU, no more than there are images; 1, one at a time on "
                        "all threads, with a camera among the sources or off a CPU). Output order and results do "
                        "not depend on it (torch's may round 1e-5 differently on fewer threads)")
    p.add_argument("--max-frames", type=COUNT, help="stop each video or camera after this many frames")
    p.add_argument("--tile", type=TILE, metavar="PX",
                   help="sliced detection for large images and frames with small objects: cut each into tiles of "
                        "PX x PX pixels (as `data tile`; use the tile size the model was trained on), detect the "
                        "tiles in batches, shift the boxes back and merge them across tiles; an image no larger "
                        "than a tile is detected plainly")
    p.add_argument("--overlap", type=SHARE, default=0.2, help="--tile: overlap of neighbouring tiles, a fraction "
                                                              "of the tile in [0, 1) (default 0.2)")
    p.add_argument("--tile-full", action="store_true",
                   help="--tile: detect the whole image resized as well, for objects larger than a tile")
    p.add_argument("--merge", choices=("nms", "greedynmm"), default="nms",
                   help="--tile: how boxes of neighbouring tiles merge: nms (default) keeps the best of the boxes "
                        "that match and drops the rest; greedynmm joins them into their enclosing box (an object "
                        "cut by a tile edge becomes one box, but so may neighbouring objects in a dense scene)")
    p.add_argument("--match", choices=("iou", "ios"),
                   help="--tile: match boxes by IoU or by intersection over the smaller box (ios); default: iou "
                        "for nms, ios for greedynmm")
    p.add_argument("--match-thresh", type=FRACTION, default=0.5, help="--tile: match above this (default 0.5)")
    p.add_argument("--out", help="folder for annotated outputs: an image keeps its file name (x.png -> x.png), "
                                 "a video becomes <file name>.mp4 (clip.mp4, clip.avi.mp4), camera N cameraN.mp4; "
                                 "a name taken by another input of the run gets -2, -3, ... (with a note)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list of records: {image, width, height, detections} per image, "
                        "{video|camera, frame, width, height, detections} per frame; each detection {class_id, "
                        "name, score, box: [x1, y1, x2, y2] in pixels, clipped to the image}; every record also "
                        "says which runtime ran (backend) and why (backend_reason)")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args) -> int:
    import torch

    from darktune.errors import DarktuneError

    try:
        return _detect(args)
    except torch.cuda.OutOfMemoryError:
        raise DarktuneError(f"out of memory on {args.device}: try a smaller --size, or --device cpu") from None


def _detect(args) -> int:
    from functools import partial
    from pathlib import Path

    from tqdm import tqdm

    from darktune.deploy import backend_choice
    from darktune.deploy.decoded import run_thresholds
    from darktune.deploy.runtimes import make_backend
    from darktune.errors import DarktuneError
    from darktune.deploy.pipeline import (PerThread, all_images, in_order, threads_each, threads_for_each,
                                          worker_count, workers_pool)
    from darktune.deploy.video import expand_source
    from darktune.files import make_folder
    from darktune.plural import plural

    for option, value in (("--thresh", args.thresh), ("--nms", args.nms)):
        if value is not None and not 0.0 <= value <= 1.0:  # also refuses nan
            raise DarktuneError(f"{option} must be between 0 and 1, got {value:g}")
    if args.no_winograd and args.backend != "opencv":
        raise DarktuneError("--no-winograd is for --backend opencv")
    if args.onnx and args.backend not in ("onnxruntime", "auto"):
        raise DarktuneError("--onnx is for --backend onnxruntime")
    if args.cfg is None and not args.onnx:
        raise DarktuneError("--cfg is required (or --backend onnxruntime --onnx MODEL)")
    args.slicing = None
    if args.tile is not None:
        from darktune.eval.tiled import Slicing

        args.slicing = Slicing(args.tile, args.overlap, args.tile_full, args.merge, args.match, args.match_thresh)
    sources, failures = [], 0
    for source in args.sources:  # folders and quoted globs -> their files; an empty one is a failed source
        try:
            sources += expand_source(source)
        except DarktuneError as exc:
            print(f"darktune: error: {exc}", file=sys.stderr)
            failures += 1
    workers = worker_count(sources, args.device, args.workers)
    if args.cfg:  # each worker holds an image's tensors: refused here rather than by the allocator
        from darktune.darknet.cfg import parse_cfg
        from darktune.darknet.memory import check_memory

        spec = parse_cfg(args.cfg)
        check_memory(spec.with_size(args.size) if args.size else spec, workers, args.device,
                     what=f"detect with {workers} worker{'s' * (workers > 1)}",
                     advice="use a smaller --size or fewer --workers")
    threads = threads_each(workers) if workers > 1 else None  # None: the runtime's default, all CPUs
    if args.backend == "auto":
        backend, choice = backend_choice.choose(args.cfg, args.weights, size=args.size, device=args.device,
                                                onnx=args.onnx, note=_note, run_threads=threads)
        _note(f"backend {choice.backend}: {choice.reason}")
    elif args.backend == "opencv":
        backend = make_backend("opencv", args.cfg, args.weights, size=args.size, device=args.device, batch=1,
                               threads=threads, winograd=not args.no_winograd)
        choice = backend_choice.Choice("opencv", "--backend opencv" + " --no-winograd" * args.no_winograd)
    else:
        backend, choice = backend_choice.explicit(args.backend, args.cfg, args.weights, size=args.size,
                                                  device=args.device, onnx=args.onnx, threads=threads)
    args.choice = choice
    args.thresh, args.nms = run_thresholds(backend, args.thresh, args.nms, (THRESH, NMS))
    for note in getattr(backend, "notes", ()):
        print(f"darktune: note: {note}", file=sys.stderr)
    if args.letterbox is None:
        args.letterbox = backend.spec.net.letter_box
        if args.letterbox:
            print("darktune: note: letterbox, as the cfg's letter_box=1 (--no-letterbox for a plain resize)",
                  file=sys.stderr)
    names = _class_names(args, backend)
    args.remap = None
    if args.map_classes:
        names, args.remap = _mapped_classes(args.map_classes, names)
    out_dir = make_folder(args.out, "--out folder") if args.out else None
    outputs = OutputNames(out_dir, sources) if out_dir else None
    runner = PerThread(backend)
    job = partial(_opened_detected, args, runner) if workers > 1 else _opened
    pool = workers_pool(workers)
    records, bar = [], None
    images = all_images(sources)
    if workers > 1 and len(sources) > 1:
        _note(f"{plural(len(sources), 'source')}, {workers} {'images' if images else 'images or frames'} side by "
              f"side, {plural(threads, 'CPU thread')} each (--workers 1: one at a time on all threads)")
    try:
        with pool, threads_for_each(threads):
            for source, (src, dets) in in_order(sources, job, ahead=workers, pool=pool):
                if isinstance(src, DarktuneError):
                    tqdm.write(f"darktune: error: {src}", file=sys.stderr)
                    failures += 1
                    continue
                if bar is None:
                    bar = _counter(args, sources, src, images)
                bar.set_description(Path(src.name).name if src.kind != "camera" else src.name)
                target = outputs.name_for(src) if outputs else None
                if src.kind == "image":
                    records += _image(args, runner.get() if dets is None else None, src, names, target, bar, dets)
                    continue
                try:
                    records += _stream(args, runner, src, names, target, bar, pool, workers)
                except DarktuneError as exc:  # a frame over the size limit, an unwritable output: counted
                    tqdm.write(f"darktune: error: {exc}", file=sys.stderr)
                    failures += 1
                    continue
                if src.shortfall:
                    tqdm.write(f"darktune: error: {src.name}: the video ended after {src.frames_read} of the "
                               f"{src.frame_count} frames its header gives: {src.shortfall} frames missing or "
                               "damaged (truncated file?), not detected", file=sys.stderr)
                    failures += 1
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(records))
    return 1 if failures else 0


def _counter(args, sources: list[str], src, images: bool):
    """The counter on stderr: images (or frames, when videos or cameras are among the sources) done. None shown
    for one image, nor for images whose results are printed on a terminal (each image's lines are its progress
    there, and a counter would be redrawn between them); decided on what the first source turned out to be."""
    from tqdm import tqdm

    unit = "image" if images else "frame"
    lines_on_terminal = not args.json and sys.stdout.isatty() and images
    quiet = src.kind == "image" and (len(sources) == 1 or lines_on_terminal)
    return tqdm(unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, disable=quiet,
                bar_format="{desc}{n_fmt} " + unit + "s [{elapsed}{postfix}]")


def _opened(source: str):
    """(FrameSource or the DarktuneError that refused it, None). `in_order` runs it for the next source in a
    background thread while the current one is being detected (OpenCV's decoding and the runtimes release
    the GIL, so reading overlaps the network); cameras are opened in turn, never ahead."""
    from darktune.deploy.video import open_source
    from darktune.errors import DarktuneError

    try:
        return open_source(source), None
    except DarktuneError as exc:
        return exc, None


def _opened_detected(args, runner, source: str):
    """(FrameSource or DarktuneError, detections of an image source or None): with --workers N, each of N
    threads reads an image and detects it on its own backend (`runner.get()`), on its share of the CPUs."""
    src, _ = _opened(source)
    if isinstance(src, Exception) or src.kind != "image":
        return src, None
    return src, _detect_one(args, runner.get(), src._first)


class OutputNames:
    """Unique names for the annotated outputs of one run, in --out. An image keeps its file name (x.png ->
    x.png; a suffix OpenCV cannot write gets .jpg added); a video becomes <file name>.mp4 (clip.mp4 stays
    clip.mp4, clip.avi becomes clip.avi.mp4); camera N becomes cameraN.mp4. A name already used in this run
    (two inputs a/x.jpg, b/x.jpg) gets -2, -3, ... before its suffix, with a note: no output is overwritten.
    A name that is one of the run's inputs (--out SRC, the same file under another name, a link to it) gets
    the same treatment, with a note: an output never replaces an input."""

    def __init__(self, out_dir, sources=()):
        self.out_dir = out_dir
        self.used: set[str] = set()  # lower case: a case-insensitive file system must not merge two outputs
        self.inputs = {ident for s in sources if (ident := _file_identity(s)) is not None}

    def _taken(self, name: str) -> bool:
        return name.lower() in self.used or _file_identity(self.out_dir / name) in self.inputs

    def name_for(self, src) -> Path:
        import cv2
        from tqdm import tqdm

        if src.kind == "camera":
            base = src.name.replace(" ", "") + ".mp4"
        elif src.kind == "video":
            base = Path(src.name).name
            base = base if Path(base).suffix.lower() == ".mp4" else base + ".mp4"
        else:
            base = Path(src.name).name
            base = base if Path(base).suffix and cv2.haveImageWriter(base) else base + ".jpg"
        name, n = base, 1
        while self._taken(name):
            n += 1
            name = f"{Path(base).stem}-{n}{Path(base).suffix}"
        self.used.add(name.lower())
        if name != base:
            why = ("is an input of this run (an output never replaces an input)"
                   if _file_identity(self.out_dir / base) in self.inputs else "is another input's output in this run")
            tqdm.write(f"darktune: note: {src.name}: {self.out_dir / base} {why}; writing {self.out_dir / name}",
                       file=sys.stderr)
        return self.out_dir / name


def _file_identity(path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names (links followed), None for no file (or a camera index)."""
    import os

    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _class_names(args, backend) -> list[str]:
    """--names; else the names an ONNX model carries; else a names file beside the cfg; else class_N."""
    from darktune.deploy.detect import default_names, read_names

    n = backend.spec.num_classes
    if args.names:
        return read_names(args.names, n)
    names = getattr(backend, "names", None)
    if names and len(names) == n:
        return names
    names, note = default_names(args.cfg, n)
    if note:
        print(f"darktune: note: {note}", file=sys.stderr)
    return names


def _mapped_classes(path: str, model_names: list[str]) -> tuple[list[str], list[int]]:
    """--map-classes: (the file's class names, per model class the file's class id or -1), with a note."""
    from darktune.darknet.classes import match_classes, model_to_data, read_names_file
    from darktune.data.formats.yolo import read_obj_data
    from darktune.errors import DarktuneError

    names = list(read_obj_data(path).names) if path.endswith(".data") else read_names_file(path)
    match = match_classes(names, model_names)
    if not match.matched:
        raise DarktuneError(f"--map-classes: none of the classes ({', '.join(names[:8])}) is among the model's "
                            f"{len(model_names)} classes by name", path=path)
    _note("classes mapped by name: " + "; ".join(match.describe()))
    return names, model_to_data(match)


def _note(text: str) -> None:
    print(f"darktune: note: {text}", file=sys.stderr)


def _record(src, frame_index: int | None, dets, names, size: tuple[int, int], choice=None) -> dict:
    from darktune.deploy.detect import detections_to_json

    record = detections_to_json(src.name, dets, names, size)
    if src.kind != "image":
        record = {src.kind: record.pop("image"), "frame": frame_index, **record}
    if choice is not None:
        record.update(backend=choice.backend, backend_reason=choice.reason)
    return record


def _detect_one(args, backend, image):
    """(n, 6) detections of one BGR image, boxes clipped to it (the JSON, the text and the drawing agree)."""
    from darktune.deploy.detect import clip_boxes

    if getattr(args, "slicing", None) is not None:
        from darktune.deploy.sliced import sliced_detect

        dets = sliced_detect(backend, image, args.slicing, args.thresh, args.nms, args.letterbox)
    else:
        dets = backend.detect([image], args.thresh, args.nms, args.letterbox)[0]
    if args.remap is not None:
        from darktune.darknet.classes import remap_detections

        dets = remap_detections(dets, args.remap)
    return clip_boxes(dets, image.shape[1], image.shape[0])


def _image(args, backend, src, names, target, bar, dets=None) -> list[dict]:
    """One image source: its detections (`dets` when a worker has found them already), the record, the text
    and the annotated image (--out)."""
    import cv2

    from darktune.deploy.detect import draw

    image = next(iter(src))
    if dets is None:
        dets = _detect_one(args, backend, image)
    bar.update(1)
    record = _record(src, None, dets, names, (image.shape[1], image.shape[0]), args.choice)
    if target:
        from darktune.errors import DarktuneError
        from darktune.files import replace_file

        ok, encoded = cv2.imencode(target.suffix, draw(image, dets, names))
        if not ok:
            raise DarktuneError("cannot encode the annotated image", path=str(target))
        replace_file(target, encoded.tobytes())  # a new file: never written through a link into another one
    if not args.json:
        lines = [f"{src.name}: {len(dets)} object{'' if len(dets) == 1 else 's'}"]
        lines += [f"  {d['name']}: {d['score'] * 100:.0f}%  box {d['box']}" for d in record["detections"]]
        bar.write("\n".join(lines), file=sys.stdout)
    return [record]


def _stream(args, runner, src, names, target, bar, pool=None, workers: int = 1) -> list[dict]:
    """A video or camera: detect frame by frame (with `workers` > 1, that many frames side by side on `pool`'s
    threads while this one decodes the next), show frames/s, write an annotated mp4 to `target` (--out)."""
    from itertools import islice

    from darktune.deploy.detect import draw
    from darktune.deploy.pipeline import ordered_map
    from darktune.deploy.video import VideoSink

    def detected(frame):
        return frame, _detect_one(args, runner.get(), frame)

    frames = islice(src, args.max_frames)
    results = ordered_map(detected, frames, workers, pool) if workers > 1 else map(detected, frames)
    sink, records, objects, start = None, [], 0, time.perf_counter()
    try:
        for i, (frame, dets) in enumerate(results):
            records.append(_record(src, i, dets, names, (frame.shape[1], frame.shape[0]), args.choice))
            objects += len(dets)
            if target:
                if sink is None:
                    sink = VideoSink(target, src.fps, (frame.shape[1], frame.shape[0]))
                sink.write(draw(frame, dets, names))
            bar.update(1)
            bar.set_postfix(fps=f"{len(records) / (time.perf_counter() - start):.1f}", refresh=False)
    except KeyboardInterrupt:
        if src.kind != "camera":  # Ctrl-C is how a camera stream ends; anywhere else it stops the run
            if sink:
                sink.abort()
            raise
    finally:
        src.close()
    written = sink.close() if sink else None
    if not args.json:
        fps = len(records) / max(time.perf_counter() - start, 1e-9)
        line = f"{src.name}: {len(records)} frames, {objects} objects, {fps:.1f} frames/s"
        bar.write(line + (f", wrote {written}" if written else ""), file=sys.stdout)
    return records
