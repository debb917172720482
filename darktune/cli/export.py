"""`darktune export onnx|darknet`: ship a model to ONNX runtimes or to darknet / OpenCV DNN, verified on export."""

from __future__ import annotations

import argparse
import json
import sys

from darktune.numbers import COUNT, FRACTION, NET_SIZE, integer


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="a `darktune train` run folder (model.cfg, weights/best.weights; names from "
                                 "its obj.names or the dataset in summary.json)")
    p.add_argument("--run-weights", choices=("best", "last"), default="best",
                   help="with --run: the best-mAP weights (default) or the last ones")
    p.add_argument("--cfg", help="darknet cfg (instead of --run)")
    p.add_argument("--weights", help="darknet weights (instead of --run)")
    p.add_argument("--names", help="class names file, one per line (default: with --run, the run's obj.names or "
                                   "its dataset's names; with --cfg, a names file beside the cfg with one name "
                                   "per class, as `darktune detect` finds it: <cfg stem>.names, obj.names, or "
                                   "the folder's only .names file)")
    p.add_argument("--classes", type=COUNT, help="re-head the cfg for this many classes (default: what the weights "
                                               "fit)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or darknet cfg + weights")
    esub = p.add_subparsers(dest="export_command", metavar="FORMAT", required=True)

    o = esub.add_parser("onnx", help="ONNX model: raw yolo heads, or boxes with NMS in the graph (--decode)",
                        description="Input `images` (B,3,H,W) float32 RGB [0,1]. Raw: outputs head_<i> per yolo "
                                    "layer i (raw conv output, no sigmoid). --decode: output `detections` (K,7) "
                                    "[batch, x1, y1, x2, y2, score, class], boxes as fractions of the input "
                                    "size, NMS by the ONNX NonMaxSuppression op. Verified with ONNX Runtime.")
    _model_args(o)
    o.add_argument("--out", required=True, help="the .onnx file to write (an existing one only with --overwrite)")
    o.add_argument("--size", type=NET_SIZE, help="input size (square, multiple of 32); default: the cfg's")
    o.add_argument("--batch", type=integer(1, words=(("dynamic", None),)), default=1,
                   help="static batch size, or 'dynamic' (default 1)")
    o.add_argument("--fp16", action="store_true", help="float16 weights and compute; input/outputs stay float32")
    o.add_argument("--decode", action="store_true", help="decode + class-wise NMS inside the graph")
    o.add_argument("--conf", type=FRACTION, default=0.25, help="--decode: score threshold (score > conf)")
    o.add_argument("--iou", type=FRACTION, default=0.45, help="--decode: NMS IoU threshold (suppress IoU > iou)")
    o.add_argument("--max-det", type=integer(1, 100_000), default=1000,
                   help="--decode: most boxes kept per class and image")
    o.add_argument("--opset", type=integer(7, 100), default=17, help="ONNX opset (default 17)")
    o.set_defaults(func=cmd_export_onnx)

    d = esub.add_parser("darknet", help="cfg + weights (+ names, obj.data) for darknet and OpenCV DNN",
                        description="Writes <stem>.cfg with classes and head filters matching the weights, "
                                    "<stem>.weights, <stem>.names and obj.data (classes, names). Without class "
                                    "names (see --names), <stem>.names holds placeholders class_0 .. class_<N-1> "
                                    "(darknet's `detector test obj.data ...` needs a names file; OpenCV DNN "
                                    "reads only cfg + weights); edit it or export again with --names. Verified "
                                    "by loading the written files in OpenCV DNN.")
    _model_args(d)
    d.add_argument("--out", required=True, help="output folder (new or empty; one holding an export only with "
                                                "--overwrite, which rewrites all four files)")
    d.add_argument("--stem", default="model", help="file name stem (default: model)")
    d.add_argument("--size", type=NET_SIZE, help="write this input size into the cfg")
    d.set_defaults(func=cmd_export_darknet)


def _resolve(args):
    """(cfg, weights, names: a path, a list or None) from --run or --cfg/--weights."""
    from darktune.errors import DarktuneError
    from darktune.deploy.darknet_export import resolve_run

    if args.run:
        if args.cfg or args.weights:
            raise DarktuneError("give either --run or --cfg/--weights, not both")
        files = resolve_run(args.run, args.run_weights)
        if args.names:
            return files.cfg, files.weights, args.names
        if files.note:
            print(f"darktune: note: {files.note}; exporting without class names", file=sys.stderr)
        return files.cfg, files.weights, files.names or files.class_names
    if not (args.cfg and args.weights):
        raise DarktuneError("give --run RUN, or --cfg and --weights")
    if args.names:
        return args.cfg, args.weights, args.names
    from darktune.deploy.detect import names_beside

    return args.cfg, args.weights, names_beside(args.cfg)  # the rule `darktune detect` uses without --names


def _model_names(args, names_path, num_classes: int) -> list[str] | None:
    """`_names`, except that a names file found beside --cfg (not given) with another class count is skipped
    with a note rather than refused, as `darktune detect` does."""
    from darktune.errors import DarktuneError

    if args.run or args.names or names_path is None:
        return _names(names_path, num_classes)
    try:
        names = _names(names_path, num_classes)
    except DarktuneError as exc:
        print(f"darktune: note: {exc}; not used", file=sys.stderr)
        return None
    print(f"darktune: note: class names from {names_path}", file=sys.stderr)
    return names


def _names(path, num_classes: int) -> list[str] | None:
    from darktune.deploy.detect import read_names
    from darktune.errors import DarktuneError
    from darktune.plural import plural

    if path is None:
        return None
    if isinstance(path, list):
        if len(path) != num_classes:
            raise DarktuneError(f"the run's dataset has {plural(len(path), 'class')}, the model {num_classes}")
        return path
    names = read_names(path, num_classes)
    with open(path, encoding="utf-8-sig") as f:
        total = sum(1 for line in f if line.strip())
    if total != num_classes:
        raise DarktuneError(f"{plural(total, 'name')} for a model with {plural(num_classes, 'class')}",
                            path=str(path))
    return names


def cmd_export_onnx(args) -> int:
    from darktune.deploy.onnx import check_onnx_out, export_onnx
    from darktune.deploy.darknet_export import load_for_export

    cfg, weights, names_path = _resolve(args)
    check_onnx_out(args.out, args.overwrite)  # before the export's minutes of work
    model, _ = load_for_export(cfg, weights, args.classes, args.size)
    names = _model_names(args, names_path, model.spec.num_classes)
    result = export_onnx(model, args.out, batch=args.batch, fp16=args.fp16, decode=args.decode, opset=args.opset,
                         conf_thresh=args.conf, nms_thresh=args.iou, max_det=args.max_det, names=names,
                         overwrite=args.overwrite)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    h, w = result.net_hw
    batch = result.batch if result.batch is not None else "dynamic"
    print(f"wrote {result.path}: input {result.input_name} ({batch}, 3, {h}, {w}) float32, outputs "
          f"{', '.join(result.output_names)}{' (fp16 weights)' if result.fp16 else ''}")
    if result.decode:
        for line in decode_check_lines(result, args.conf):
            print(f"onnxruntime check: {line}")
    else:
        for name, diff in result.max_abs_diff.items():
            print(f"onnxruntime check: {name} max abs diff vs torch {diff:.3g} "
                  f"(relative {result.max_rel_diff[name]:.3g})")
    return 0


def decode_check_lines(result, conf: float) -> list[str]:
    """What the check of a decode graph compared (see darktune.deploy.onnx), in words that say so when the
    comparison after NMS covered no box rather than implying a pass."""
    from darktune.plural import plural

    diff = result.max_abs_diff
    boxes, classes = result.candidates
    before = (f"decoded boxes and scores before NMS ({plural(boxes, 'box')} x {plural(classes, 'class')}, fixed "
              f"synthetic input): max abs diff vs torch {diff['boxes']:.3g} (boxes), {diff['scores']:.3g} (scores)")
    tries = [(conf, "as exported", result.detections, diff["detections"])]
    if result.check_detections is not None:
        tries.append((result.check_conf, "lowered for the check", result.check_detections,
                      diff["check_detections"]))
    lines = [before]
    for thresh, how, (graph, ours), d in tries:
        head = f"at score > {thresh:.3g} ({how}): {plural(graph, 'detection')} in the graph, {ours} by darktune"
        if graph != ours or d == float("inf"):
            lines.append(f"{head}; the detections DIFFER")
        else:
            lines.append(f"{head}, max difference {d:.3g}" if graph else f"{head}; no box to compare")
    if not any(graph or ours for _, _, (graph, ours), _ in tries):
        lines.append("the comparison after NMS covered no box: only the decoded tensors before NMS were compared")
    return lines


def cmd_export_darknet(args) -> int:
    from darktune.deploy.darknet_export import (
        check_darknet_out,
        export_darknet,
        load_for_export,
    )
    from darktune.plural import plural

    cfg, weights, names_path = _resolve(args)
    inputs = tuple(p for p in (cfg, weights, names_path) if p and not isinstance(p, list))
    check_darknet_out(args.out, args.stem, inputs, args.overwrite)  # before loading the model
    model, header = load_for_export(cfg, weights, args.classes, args.size)
    names = _model_names(args, names_path, model.spec.num_classes)
    result = export_darknet(model, args.out, names=names, stem=args.stem, header=header, inputs=inputs,
                            overwrite=args.overwrite)
    if result.placeholder_names:
        print(f"darktune: note: no class names (no --names, none found beside the cfg): {result.names} holds "
              f"placeholders class_0 .. class_{result.classes - 1}; edit it or export again with --names",
              file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"wrote {result.cfg}, {result.weights}, {result.names}, {result.data} ({plural(result.classes, 'class')})")
    print(f"OpenCV DNN check (direct convs, no Winograd): raw heads max abs diff vs darktune's torch backend "
          f"{result.max_abs_diff:.3g}")
    return 0
