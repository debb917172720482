"""`darktune data import`'s split options and summary: how images go to train and valid (`--split-by`, the
user's lists, MOT sources split by sequence), and the lines that say what import did (the split, images
renamed with their sources in image_sources.tsv). Source loading is shared with filter and stats (cli.data).
"""

from __future__ import annotations

from darktune.numbers import COUNT


def add_split_args(p) -> None:
    p.add_argument("--split-by", choices=("random", "lists", "folders", "sequence", "last"), metavar="HOW",
                   help="how images go to train and valid: random (seeded, --val-fraction), lists (--valid-list "
                        "and optionally --train-list), folders (train/ and val/ or valid/ folders in the image "
                        "paths), sequence (whole image folders, e.g. video sequences, to one side, about "
                        "--val-fraction of the images to valid), last (the last --val-count frames, or "
                        "--val-fraction, of each folder to valid). Default: random; for MOT sources sequence "
                        "(last with one sequence), so neighbouring video frames are never on both sides")
    p.add_argument("--valid-list", metavar="FILE", help="--split-by lists: the validation images, one a line (path "
                                                        "or unique file name)")
    p.add_argument("--train-list", metavar="FILE", help="--split-by lists: the training images; images in neither "
                                                        "list are left out (counted)")
    p.add_argument("--val-count", type=COUNT, metavar="N", help="--split-by last: this many last frames of each "
                                                              "sequence to valid (default: --val-fraction of it)")


def split_for_import(dataset, args, mot: bool):
    """(dataset without the images the user's lists leave out, Split); the default rule is random, or for MOT
    sources by sequence (the last frames with one sequence)."""
    from dataclasses import replace

    from darktune.data.split import SplitRule, sequences, split_dataset

    mode = args.split_by or (("sequence" if len(sequences(dataset)) > 1 else "last") if mot else "random")
    rule = SplitRule(mode, args.val_fraction, args.seed, args.valid_list, args.train_list, args.val_count)
    split = split_dataset(dataset, rule)
    if not split.left_out:
        return dataset, split
    keep = sorted(split.train + split.valid)
    new_index = {old: new for new, old in enumerate(keep)}
    kept = replace(dataset, images=[dataset.images[i] for i in keep])
    return kept, replace(split, train=[new_index[i] for i in split.train], valid=[new_index[i] for i in split.valid])


def import_summary(dataset, split, obj_data, n_read: int) -> dict:
    from darktune.data.formats.yolo import SOURCES_FILE, read_obj_data, renamed_images

    od = read_obj_data(obj_data)
    renamed = renamed_images(obj_data.parent)
    return {"obj_data": str(obj_data), "classes": dataset.classes, "n_images": len(dataset.images),
            "n_boxes": dataset.n_boxes, "n_train": len(od.train), "n_valid": len(od.valid),
            "split": split.description, "n_left_out_by_lists": n_read - len(dataset.images),
            "n_renamed": len(renamed), "renamed_example": list(renamed[0]) if renamed else None,
            "image_sources": str(obj_data.parent / SOURCES_FILE), "n_skipped": len(dataset.dropped),
            "n_notes": len(dataset.notes), "class_counts": dataset.class_counts()}


def summary_lines(summary: dict) -> list[str]:
    from darktune.plural import plural

    left = summary["n_left_out_by_lists"]
    lines = [f"split {summary['split']}" + (f"; {plural(left, 'image')} in neither list left out" if left else "")]
    if summary["n_renamed"]:
        image, source = summary["renamed_example"]
        lines.append(f"{plural(summary['n_renamed'], 'image')} renamed (the same file name in several folders, e.g. "
                     f"{source} -> {image}); every image's source: {summary['image_sources']}")
    lines.append(f"wrote {summary['obj_data']}: {plural(summary['n_images'], 'image')} ({summary['n_train']} train, "
                 f"{summary['n_valid']} valid), {plural(summary['n_boxes'], 'box')}, classes {summary['classes']}, "
                 f"{plural(summary['n_skipped'], 'record')} skipped")
    return lines
