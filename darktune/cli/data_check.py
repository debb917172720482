"""`darktune data check`: decode every image and validate every label of a dataset (a problem listing capped
per file in text, complete in --json)."""

from __future__ import annotations

import json

from darktune.numbers import COUNT


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def add_check_parser(sub) -> None:
    p = sub.add_parser("check", help="decode every image and validate every label",
                       description="Check a darknet dataset (obj.data or its folder: train and valid lists) or any "
                                   "folder of images with label .txt files. Every image is decoded fully once; "
                                   "every label line is validated. Nothing in the dataset is modified; results "
                                   "are cached under $DARKTUNE_HOME/cache/checks. Exit status: 0 no errors, "
                                   "1 errors found (bad images are skipped by training), 2 --strict and any "
                                   "problem.")
    p.add_argument("target", metavar="DIR|obj.data")
    p.add_argument("--classes", type=COUNT, metavar="N", help="number of classes (folder scan without obj.names)")
    p.add_argument("--strict", action="store_true", help="any problem, warnings included, is an error")
    p.add_argument("--no-cache", action="store_true",
                   help="do not reuse or write cached results. The cache trusts a file whose size and mtime are "
                        "unchanged: an edit that keeps the size and puts the old mtime back (touch -r, some "
                        "copy tools) is not seen without --no-cache")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_check)


def _problem_lines(problems, per_file: int = 20) -> list[str]:
    """The text listing of a check: the first `per_file` problems of each file, then one line per file that had
    more, counting the rest (a label file of 2 million bad lines prints 21 lines; --json keeps them all)."""
    counts: dict[str, int] = {}
    lines = []
    for p in problems:
        counts[p.path] = counts.get(p.path, 0) + 1
        if counts[p.path] <= per_file:
            lines.append(str(p))
    lines += [f"{path}: ... and {n - per_file:,} more problems in this file (--json lists them all)"
              for path, n in counts.items() if n > per_file]
    return lines


def cmd_check(args) -> int:
    from pathlib import Path

    from darktune.data.check import check_dataset, scan_folder, split_overlap

    target = Path(args.target)
    cache = not args.no_cache
    if target.is_file() or (target / "obj.data").is_file():
        reports = [check_dataset(target, split, cache=cache) for split in ("train", "valid")]
        reports[0].problems += split_overlap(target)
        if not reports[1].n_images:
            reports = reports[:1]
    else:
        reports = [scan_folder(target, args.classes, cache=cache)]
    if args.json:
        _print_json([r.to_dict() for r in reports])
    else:  # the report (each problem, then each split's summary) goes to stdout as one piece
        for r in reports:
            for line in _problem_lines(r.problems):
                print(line)
        for r in reports:
            for line in r.unlabelled_lines():
                print(line)
        for r in reports:
            print(r.summary())
    if args.strict and any(r.problems for r in reports):
        from darktune.errors import DarktuneError
        from darktune.plural import plural

        n = sum(len(r.problems) for r in reports)
        raise DarktuneError(f"{plural(n, 'problem')} (strict mode)", path=str(target))
    return 1 if any(r.n_errors for r in reports) else 0


# ----------------------------------------------------------------------------------------------- filter
