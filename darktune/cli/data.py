"""`darktune data ...`: import, filter and stats of datasets (`check` from cli.data_check, `synth` from
cli.synth_cmd).

Only argparse at module level; the work is imported inside the command functions.
"""

from __future__ import annotations

import argparse

from darktune.cli.data_anchors import add_anchors_parser
from darktune.cli.data_check import add_check_parser
from darktune.cli.data_import import add_split_args
from darktune.data.formats.records import clip_counts, is_clip_note
from darktune.numbers import COUNT, FRACTION, SEED, SHARE, TILE, integer, real

FORMATS = ("auto", "yolo", "coco", "voc", "openimages", "mot")
SOURCES_HELP = """\
Sources (SRC) per format:
  yolo        obj.data, a folder holding obj.data, or a folder of images + label .txt with obj.names
  coco        one or more COCO JSON files; images in --images DIR (default: the JSON's folder)
  voc         a folder of .xml (or a VOC root with Annotations/ + JPEGImages/), or .xml files;
              images in --images DIR (default: JPEGImages/ beside Annotations/, else the XML folder)
  openimages  one or more boxes CSV files (e.g. train-annotations-bbox.csv), with
              --descriptions CSV (LabelName,DisplayName) and --images DIR holding <ImageID>.jpg
              (defaults: a class-descriptions CSV and an images/ folder beside the boxes CSV)
  mot         a MOT sequence (img1/ + gt/gt.txt, optional seqinfo.ini) or a folder of them; rows with
              column 7 = 0 (not considered) left out; classes by MOT id (1 pedestrian, 3 car, ...)
  auto        by the source: .json -> coco, .csv -> openimages, obj.data or a folder with obj.data /
              obj.names / classes.txt -> yolo, a folder of .xml -> voc, MOT sequences -> mot
Several sources are merged (classes in order of first appearance). Records of one image file (from several
sources, or listed twice in one) become one image with the union of their boxes (identical boxes once),
counted in the summary. --classes keeps only those classes, matched exactly (Cat, cat and CAT are three
classes; a name that matches only in another case is an error naming the exact spellings); for openimages
by display name or LabelName in any case, e.g. --classes Window. Boxes it removes are counted."""


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("data", help="datasets: import, check, filter, stats, anchors, synth",
                                   description="Datasets: import, check, filter, stats, synth.")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _help(parser))
    _add_import(sub)
    add_check_parser(sub)
    _add_filter(sub)
    _add_stats(sub)
    anchors = add_anchors_parser(sub, SOURCES_HELP)
    _add_source_args(anchors)
    anchors.set_defaults(load_sources=load_sources)
    _add_tile(sub)
    try:
        from darktune.cli.synth_cmd import add_synth_parser
    except ModuleNotFoundError as exc:
        if exc.name != "darktune.cli.synth_cmd":
            raise
    else:
        add_synth_parser(sub)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", metavar="SRC", help="dataset source(s); see 'Sources' below")
    p.add_argument("--format", choices=FORMATS, default="auto", help="source format (default: auto)")
    p.add_argument("--images", metavar="DIR", help="images folder (coco, voc, openimages)")
    p.add_argument("--descriptions", metavar="CSV", help="openimages class descriptions (LabelName,DisplayName)")
    p.add_argument("--classes", metavar="A,B", help="keep only these classes, in this order (exact names, case "
                                                    "included)")
    p.add_argument("--keep-empty", action="store_true",
                   help="with --classes, keep images left without boxes (as negatives)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) bad records instead of stopping at the first")


def _guess_format(src: str) -> str:
    from pathlib import Path

    p = Path(src)
    if p.suffix.lower() == ".json":
        return "coco"
    if p.suffix.lower() == ".csv":
        return "openimages"
    if p.suffix.lower() == ".xml":
        return "voc"
    if p.is_file() or any((p / n).is_file() for n in ("obj.data", "obj.names", "classes.txt")):
        return "yolo"
    if p.is_dir() and ((p / "Annotations").is_dir() or any(p.glob("*.xml"))):
        return "voc"
    from darktune.data.formats.mot import is_mot_sequence

    if p.is_dir() and (is_mot_sequence(p) or any(c.is_dir() and is_mot_sequence(c) for c in p.iterdir())):
        return "mot"
    from darktune.errors import DarktuneError

    raise DarktuneError("cannot tell the format of this source; pass --format", path=src)


# the class-descriptions files Open Images publishes (v4..v7), and the one `data synth` / our writer make
DESCRIPTION_NAMES = ("class-descriptions.csv", "class-descriptions-boxable.csv", "oidv6-class-descriptions.csv",
                     "oidv7-class-descriptions.csv", "oidv7-class-descriptions-boxable.csv")


def _openimages_beside(src: str, descriptions: str | None, images: str | None) -> tuple[str, str]:
    """--descriptions and --images of an Open Images boxes CSV; each defaults to the one beside the CSV
    (a class-descriptions file of a known name, an images/ folder), and the note says which was taken."""
    import sys
    from pathlib import Path

    from darktune.errors import DarktuneError

    folder = Path(src).parent
    if not descriptions:
        found = [folder / n for n in DESCRIPTION_NAMES if (folder / n).is_file()]
        if len(found) != 1:
            why = "several" if found else "none"
            raise DarktuneError(f"openimages source needs --descriptions CSV ({why} of {', '.join(DESCRIPTION_NAMES)} "
                                "beside it)", path=src)
        descriptions = str(found[0])
        print(f"note: class descriptions from {descriptions}", file=sys.stderr)
    if not images:
        if not (folder / "images").is_dir():
            raise DarktuneError("openimages source needs --images DIR (no images/ folder beside it)", path=src)
        images = str(folder / "images")
        print(f"note: images from {images}", file=sys.stderr)
    return descriptions, images


def load_sources(args) -> tuple["Dataset", dict]:  # noqa: F821 (imported lazily)
    """The merged Dataset of args.src per args.format (see SOURCES_HELP), and what loading changed: counts
    n_images_merged, n_records_merged, n_duplicate_boxes_dropped (records of one image file merged) and
    n_boxes_removed_by_classes, n_images_removed_by_classes (--classes)."""
    from darktune.data.merge import merge_datasets

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    parts = []
    outside = getattr(args, "allow_outside_images", False)  # `data import` only: elsewhere such images are skipped
    for src in args.src:
        fmt = args.format if args.format != "auto" else _guess_format(src)
        if fmt == "yolo":
            from darktune.data.formats.yolo import read_yolo
            parts.append(read_yolo(src, skip_bad=args.skip_bad))
        elif fmt == "coco":
            from darktune.data.formats.coco import read_coco
            parts.append(read_coco(src, args.images, skip_bad=args.skip_bad, allow_outside=outside))
        elif fmt == "voc":
            from darktune.data.formats.voc import read_voc
            parts.append(read_voc(src, args.images, skip_bad=args.skip_bad, allow_outside=outside))
        elif fmt == "mot":
            from darktune.data.formats.mot import read_mot
            parts.append(read_mot(src, skip_bad=args.skip_bad))
        else:
            from darktune.data.formats.openimages import read_openimages
            descriptions, images = _openimages_beside(src, args.descriptions, args.images)
            parts.append(read_openimages(src, descriptions, images, classes=classes, skip_bad=args.skip_bad))
    dataset, merged = merge_datasets(parts, skip_bad=args.skip_bad)
    notes = merged.to_dict() | {"n_boxes_removed_by_classes": 0, "n_images_removed_by_classes": 0}
    notes |= clip_counts(dataset.notes)
    if classes:
        selected = dataset.select_classes(classes, keep_empty=args.keep_empty)
        notes["n_boxes_removed_by_classes"] = dataset.n_boxes - selected.n_boxes
        notes["n_images_removed_by_classes"] = len(dataset.images) - len(selected.images)
        dataset = selected
    return dataset, notes


def _notes_lines(notes: dict) -> list[str]:
    """The text summary of `load_sources`'s notes: one line per thing loading changed."""
    from darktune.data.merge import MergeCounts
    from darktune.plural import plural

    lines = [MergeCounts(notes["n_images_merged"], notes["n_records_merged"],
                         notes["n_duplicate_boxes_dropped"]).message()]
    boxes, images = notes["n_boxes_removed_by_classes"], notes["n_images_removed_by_classes"]
    if boxes or images:
        left = (f", and {plural(images, 'image')} left without boxes (--keep-empty keeps such images as "
                "negatives)") if images else ""
        lines.append(f"--classes removed {plural(boxes, 'box')} of other classes{left}")
    clipped, dropped = notes.get("n_boxes_clipped", 0), notes.get("n_boxes_dropped_at_edge", 0)
    if clipped or dropped:
        lines.append(f"{plural(clipped + dropped, 'box')} reached past the image edge: {clipped} clipped to the image, "
                     f"{dropped} dropped (less than a quarter of the box, or under 2 px, inside)")
    return [line for line in lines if line]


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2))


def _print_skipped(dataset, limit: int = 20) -> None:
    import sys

    notes = [p for p in dataset.notes if not is_clip_note(p)]  # clipped boxes: counted in one line instead
    for label, items in (("note", notes), ("skipped", dataset.dropped)):
        for p in items[:limit]:
            print(f"{label}: {p}", file=sys.stderr)
        if len(items) > limit:
            print(f"{label}: ... and {len(items) - limit} more", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- import


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="convert a dataset to the darknet layout",
                       description="Convert annotations to the darknet layout (obj.data, obj.names, train.txt, "
                                   "valid.txt, images/ with a label .txt beside each image). Sources are only "
                                   "read; images are copied (or hardlinked with --link).",
                       epilog=SOURCES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output folder")
    p.add_argument("--val-fraction", type=SHARE, default=0.1, metavar="F", help="validation share (default 0.1)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the train/valid split (default 0)")
    add_split_args(p)
    p.add_argument("--link", action="store_true", help="hardlink images instead of copying (falls back to copy)")
    p.add_argument("--allow-outside-images", action="store_true",
                   help="read images whose COCO file_name or VOC <filename> leads out of the images folder "
                        "('../x.jpg', an absolute path; counted in a note); without it each is a counted skip")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_import)


def _require_images(dataset, args) -> None:
    """Refuse, before anything is written, a dataset that has no image left (or no class)."""
    from darktune.errors import DarktuneError

    if dataset.images and dataset.classes:
        return
    from darktune.plural import plural

    _print_skipped(dataset)
    n = len(dataset.dropped)
    what = "no images" if not dataset.images else "no classes"
    reason = (f"{what} left after skipping {plural(n, 'bad record')}; nothing written" if n
              else f"{what} found; nothing written")
    edge = clip_counts(dataset.notes)["n_boxes_dropped_at_edge"]
    if edge:  # those notes are not listed one by one: say here that boxes went that way
        reason += f" ({plural(edge, 'box')} mostly past the image edge dropped)"
    raise DarktuneError(reason, path=args.src[0] if len(args.src) == 1 else ", ".join(args.src))


def cmd_import(args) -> int:
    from darktune.cli.data_import import import_summary, split_for_import, summary_lines
    from darktune.data.formats.yolo import write_darknet

    dataset, notes = load_sources(args)
    _require_images(dataset, args)
    n_read = len(dataset.images)
    mot = any((args.format if args.format != "auto" else _guess_format(src)) == "mot" for src in args.src)
    dataset, split = split_for_import(dataset, args, mot)
    obj_data = write_darknet(dataset, args.out, args.val_fraction, args.seed, link=args.link,
                             split=(split.train, split.valid))
    summary = import_summary(dataset, split, obj_data, n_read) | notes
    _print_skipped(dataset)
    if args.json:
        _print_json(summary)
    else:
        for line in _notes_lines(notes) + summary_lines(summary):
            print(line)
    return 0


# ------------------------------------------------------------------------------------------------ check


def _add_filter(sub) -> None:
    p = sub.add_parser("filter", help="drop noisy boxes (groups of objects, odd shapes) into a new dataset",
                       description="Write a new dataset without the boxes the rules reject (the source is only "
                                   "read). Rules work without IsGroupOf flags: --drop-containers, "
                                   "--max-rel-size and --like catch most boxes drawn around groups. A typical "
                                   "domain-set filter: --drop-group-of --drop-depiction --drop-containers "
                                   "--max-rel-size 3.5 --like TARGET_DIR.",
                       epilog=SOURCES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output folder")
    p.add_argument("--out-format", choices=("darknet", "coco", "voc", "openimages"), default="darknet",
                   help="format of the filtered set (default darknet)")
    for flag in ("group-of", "depiction", "truncated", "occluded"):
        p.add_argument(f"--drop-{flag}", action="store_true",
                       help=f"drop boxes flagged Is{flag.title().replace('-', '')}")
    p.add_argument("--drop-difficult", action="store_true",
                   help="drop boxes marked difficult (VOC <difficult>1</difficult>); darknet's voc_label.py "
                        "leaves them out of training")
    p.add_argument("--drop-containers", action="store_true",
                   help="drop boxes that contain >= --container-min other boxes of their class")
    p.add_argument("--container-min", type=COUNT, default=2, metavar="N", help="(default 2)")
    p.add_argument("--max-rel-size", type=real(1, low_open=True), metavar="T",
                   help="drop boxes larger/longer than the other same-class boxes of their image: "
                        "max(1, area ratio) x aspect factor > T (3.5 is a good start)")
    p.add_argument("--area", type=real(0), nargs=2, metavar=("MIN", "MAX"), help="box area, fraction of the image")
    p.add_argument("--aspect", type=real(0), nargs=2, metavar=("MIN", "MAX"), help="box aspect w/h (pixels)")
    p.add_argument("--max-boxes", type=COUNT, metavar="N", help="drop images with more than N boxes")
    p.add_argument("--like", metavar="REF", help="darknet dataset of good boxes whose shapes to keep")
    p.add_argument("--like-iou", type=real(0, 1, low_open=True), default=0.35, metavar="T",
                   help="keep boxes whose best shape IoU with a reference cluster is >= T (default 0.35)")
    p.add_argument("--like-k", type=integer(1, 1000), default=9, metavar="K", help="shape clusters (default 9)")
    p.add_argument("--whole-images", action="store_true",
                   help="drop a whole image as soon as a rule rejects one of its boxes (its other objects would be "
                        "unlabelled, i.e. false negatives; the study's group boxes hide their member windows)")
    p.add_argument("--val-fraction", type=SHARE, default=0.1, metavar="F", help="darknet output: valid share")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the train/valid split (default 0)")
    p.add_argument("--link", action="store_true", help="hardlink images instead of copying")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_filter)


def _fill_sizes(dataset) -> None:
    """Image sizes from headers where unknown (pixel aspect and shape comparisons need them); an image whose
    header cannot be read is dropped and counted in dataset.skipped."""
    from darktune.data.dataset import Problem
    from darktune.data.formats.image import read_image_size
    from darktune.errors import DarktuneError

    kept = []
    for rec in dataset.images:
        if not (rec.width and rec.height):
            try:
                rec.width, rec.height = read_image_size(rec.path)
            except DarktuneError as exc:
                dataset.skipped.append(Problem(str(rec.path), None, f"{exc} (skipped)"))
                continue
        kept.append(rec)
    dataset.images = kept


def cmd_filter(args) -> int:
    from darktune.data.filter import FilterRules, filter_dataset, reference_shapes

    dataset, notes = load_sources(args)
    _fill_sizes(dataset)
    like = None
    if args.like:
        from darktune.data.formats.yolo import read_yolo

        reference = read_yolo(args.like)
        _fill_sizes(reference)
        like = reference_shapes(reference)
    rules = FilterRules(drop_group_of=args.drop_group_of, drop_depiction=args.drop_depiction,
                        drop_truncated=args.drop_truncated, drop_occluded=args.drop_occluded,
                        drop_difficult=args.drop_difficult, drop_containers=args.drop_containers,
                        container_min=args.container_min, max_rel_size=args.max_rel_size,
                        area=tuple(args.area) if args.area else None,
                        aspect=tuple(args.aspect) if args.aspect else None, like=like, like_k=args.like_k,
                        like_iou=args.like_iou, max_boxes=args.max_boxes, whole_images=args.whole_images,
                        seed=args.seed)
    filtered, report = filter_dataset(dataset, rules)
    out = _write(filtered, args)
    _print_skipped(dataset)
    if args.json:
        _print_json(report.to_dict() | notes | {"out": str(out)})
    else:
        for line in _notes_lines(notes):
            print(line)
        print(report.format_table())
        print(f"wrote {out}")
    return 0


def _write(dataset, args):
    if args.out_format == "darknet":
        from darktune.data.formats.yolo import write_darknet
        return write_darknet(dataset, args.out, args.val_fraction, args.seed, link=args.link)
    if args.out_format == "coco":
        from darktune.data.formats.coco import write_coco
        return write_coco(dataset, args.out, link=args.link)
    if args.out_format == "voc":
        from darktune.data.formats.voc import write_voc
        return write_voc(dataset, args.out, link=args.link)
    from darktune.data.formats.openimages import write_openimages
    return write_openimages(dataset, args.out, link=args.link)[0]


# ------------------------------------------------------------------------------------------------- tile


def _add_tile(sub) -> None:
    p = sub.add_parser("tile", help="cut large images into overlapping tiles (small objects keep their pixels)",
                       description="A new dataset of tiles; tiles.json: each tile's source and offset (docs/tiles.md)",
                       epilog=SOURCES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output folder")
    p.add_argument("--size", type=TILE, default=416, help="tile width and height in pixels (default 416)")
    p.add_argument("--overlap", type=SHARE, default=0.2, help="of neighbouring tiles, a fraction in [0, 1) (0.2)")
    p.add_argument("--min-visible", type=real(0, 1, low_open=True), default=0.5, metavar="F",
                   help="keep a box cut by a tile edge, clipped, when this share of it is inside (default 0.5)")
    p.add_argument("--negatives", type=FRACTION, default=0.1, metavar="F", help="share of empty tiles kept (0.1)")
    p.add_argument("--val-fraction", type=SHARE, default=0.0, metavar="F", help="valid share of sources, whole (0)")
    p.add_argument("--tile-valid", action="store_true", help="tile the validation images too")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the split and of the negatives kept (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_tile)


def cmd_tile(args) -> int:
    from darktune.data.tile import TileOptions, tile_dataset

    opts = TileOptions(args.size, args.overlap, args.min_visible, args.negatives, args.val_fraction,
                       args.tile_valid, args.seed)  # bad options fail before anything is read
    dataset, notes = load_sources(args)
    _require_images(dataset, args)
    obj_data, counts = tile_dataset(dataset, args.out, opts)
    _print_skipped(dataset)
    if args.json:
        _print_json({"obj_data": str(obj_data), "classes": dataset.classes} | counts.to_dict() | notes)
    else:
        print("\n".join(_notes_lines(notes) + counts.lines(opts, obj_data)))
    return 0


# ------------------------------------------------------------------------------------------------ stats


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="class counts, box size/aspect distributions, k-means anchors",
                       description="Dataset statistics and anchors (k-means on box shapes with IoU distance, "
                                   "as darknet calc_anchors).",
                       epilog=SOURCES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_args(p)
    p.add_argument("--anchors", type=integer(0, 1000), default=6, metavar="K",
                   help="number of anchors (0: none; default 6)")
    p.add_argument("--size", type=integer(1, 65536), nargs=2, default=(416, 416), metavar=("W", "H"),
                   help="network size for the anchors (default 416 416)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the k-means anchors (default 0)")
    p.add_argument("--png", metavar="OUT.png", help="write histograms to this PNG")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    from darktune.data.stats import dataset_stats, format_stats, plot_stats

    dataset, notes = load_sources(args)
    stats = dataset_stats(dataset, args.anchors, tuple(args.size), args.seed, source=", ".join(args.src))
    if args.png:
        plot_stats(dataset, stats, args.png)
    _print_skipped(dataset)
    if args.json:
        _print_json(stats.to_dict() | notes | ({"png": args.png} if args.png else {}))
    else:
        for line in _notes_lines(notes):
            print(line)
        print(format_stats(stats))
    return 0
