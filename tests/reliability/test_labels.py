"""Malformed labels and annotations: every malformed darknet line kind through the validator, `darktune data
check` and `darktune data import`; 1,000 random label files through the validator (hypothesis); malformed
COCO JSON, VOC XML (entity bombs, external entities) and Open Images CSV through `darktune data import`.

Each bad input is refused with the file (and line) named, or skipped and counted: never a crash, never a bad
box accepted. User files are never modified.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus.harness import changed, exception_outcome, snapshot
from corpus.images import picture
from corpus.labels import annotation_cases, label_cases
from reliability_table import tally  # noqa: F401 (fixture)

LABELS = label_cases()
LABEL_BUGS: dict[str, str] = {}


def _params(cases, bugs: dict, key=lambda c: c.name) -> list:
    return [pytest.param(key(c), id=key(c), marks=[pytest.mark.xfail(reason=bugs[key(c)], strict=True)]
                         if key(c) in bugs else []) for c in cases]


def _row_ok(row, n_classes: int) -> bool:
    cls, cx, cy, w, h = (float(v) for v in row)
    return (cls == int(cls) and 0 <= cls < n_classes and all(math.isfinite(v) for v in row) and 0 <= cx <= 1
            and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1)


@pytest.mark.parametrize("name", _params(LABELS, LABEL_BUGS))
def test_label_validator(name, tally):
    from darktune.data.formats.yolo import parse_label_bytes

    case = next(c for c in LABELS if c.name == name)
    t = tally("labels")
    try:
        rows, problems = parse_label_bytes(case.data, Path(f"{name}.txt"), case.n_classes)
    except Exception as exc:  # noqa: BLE001 - any failure is a finding
        t.case(f"validator:{name}", *exception_outcome(exc))
        raise
    has_error = any(p.severity == "error" for p in problems)
    lines_named = all(p.line is not None and p.path == f"{name}.txt" for p in problems if p.severity == "error")
    good = (len(rows) == case.rows and has_error == case.error and lines_named
            and all(_row_ok(r, case.n_classes) for r in rows))
    assert t.case(f"validator:{name}", "handled" if good else "silent") == "handled", (rows, problems)


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory) -> Path:
    """One small image per label case (the crash cases left out: see their own tests)."""
    root = tmp_path_factory.mktemp("labels")
    ok, jpg = cv2.imencode(".jpg", picture())
    for case in LABELS:
        if case.name in LABEL_BUGS:
            continue
        (root / f"{case.name}.jpg").write_bytes(jpg.tobytes())
        (root / f"{case.name}.txt").write_bytes(case.data)
    (root / "obj.names").write_text("window\ndoor\n")
    return root


def test_data_check_skips_images_with_bad_labels(label_dir, tally, capsys):
    from darktune.cli import main
    from darktune.data.check import scan_folder

    t = tally("labels")
    before = snapshot(label_dir)
    report = scan_folder(label_dir, cache=False, progress=False)
    good = {Path(p).stem: labels for p, labels in report.good}
    named = {Path(p.path).stem for p in report.problems if p.severity == "error" and p.line is not None}
    wrong = []
    for case in LABELS:
        if case.name in LABEL_BUGS:
            continue
        if case.error:
            ok = case.name not in good and case.name in named
        else:
            ok = case.name in good and len(good[case.name]) == case.rows
        if t.case(f"check:{case.name}", "handled" if ok else "silent") != "handled":
            wrong.append(case.name)
    assert main(["data", "check", str(label_dir), "--no-cache"]) == 1
    printed = capsys.readouterr().out
    assert all(f"{label_dir / c.name}.txt:" in printed for c in LABELS if c.error and c.name not in LABEL_BUGS)
    t.modified += changed(before, snapshot(label_dir))
    assert not wrong and not t.modified


def test_import_refuses_first_bad_label_or_skips_and_counts(label_dir, tally, tmp_path, capsys):
    from darktune.cli import main

    t = tally("labels")
    before = snapshot(label_dir)
    rc = main(["data", "import", str(label_dir), "--format", "yolo", "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err.strip()
    refused = rc == 2 and err.count("\n") == 0 and ".txt:" in err
    t.case("import:strict", "handled" if refused else "silent")
    rc = main(["data", "import", str(label_dir), "--format", "yolo", "--skip-bad", "--json",
               "--out", str(tmp_path / "lenient")])
    summary = json.loads(capsys.readouterr().out)
    bad = [c for c in LABELS if c.import_error and c.name not in LABEL_BUGS]
    imported = {Path(p).stem for p in (tmp_path / "lenient" / "images").glob("*.jpg")}
    for case in LABELS:
        if case.name in LABEL_BUGS:
            continue
        ok = (case.name in imported) != case.import_error
        t.case(f"import:{case.name}", "handled" if ok else "silent")
    clipped = sum(c.import_clips for c in LABELS if c.name not in LABEL_BUGS)  # each clipped and counted
    t.case("import:clipped_counted", "handled" if summary["n_boxes_clipped"] == clipped else "silent")
    t.modified += changed(before, snapshot(label_dir))
    assert refused and rc == 0 and summary["n_images"] == len(imported) == len(LABELS) - len(LABEL_BUGS) - len(bad)
    assert all(v[0] == "handled" for v in t.cases.values()) and not t.modified


def test_data_check_survives_a_5000_digit_class_id(tmp_path, tally):
    from darktune.data.check import scan_folder

    t = tally("labels")
    case = next(c for c in LABELS if c.name == "class_5000_digits")
    ok, jpg = cv2.imencode(".jpg", picture())
    (tmp_path / "a.jpg").write_bytes(jpg.tobytes())
    (tmp_path / "a.txt").write_bytes(case.data)
    try:
        report = scan_folder(tmp_path, n_classes=2, cache=False, progress=False)
    except Exception as exc:  # noqa: BLE001
        t.case("check:class_5000_digits", *exception_outcome(exc))
        raise
    t.case("check:class_5000_digits", "handled" if not report.good else "silent")
    assert not report.good


# --------------------------------------------------------------------------------------- hypothesis fuzz

_TOKENS = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.floats(0, 1).map(lambda v: f"{v:.6f}"),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-0", "+1", ".5", "5.", "0x10", "1_000", "١", "０",
                     "0.5,", "", "#", "\x00", "\ufeff", "--1", "1e-400", "e5", "0.", "00", "+-1"]),
    st.text(min_size=0, max_size=12),
)
_LINE = st.lists(_TOKENS, min_size=0, max_size=7).flatmap(
    lambda toks: st.sampled_from([" ", "\t", "  ", ",", " , "]).map(lambda sep: sep.join(toks)))
_FILE = st.one_of(
    st.lists(_LINE, max_size=8).flatmap(
        lambda lines: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda nl: nl.join(lines).encode("utf-8", "replace"))),
    st.binary(max_size=300),
    st.lists(_LINE, max_size=4).map(lambda lines: ("\ufeff" + "\n".join(lines)).encode("utf-8", "replace")),
)
FUZZ_EXAMPLES = 1000


def test_random_label_files_never_crash_the_validator(tally):
    """1,000 random label files (random bytes, random tokens and separators, BOMs, NaN/inf, huge numbers,
    unicode digits): the validator returns only sane rows and names the line of every error. Tokens are short
    (the 5000-digit class id is its own case above)."""
    from darktune.data.formats.yolo import parse_label_bytes

    t = tally("label_fuzz")
    seen = {"n": 0}

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(data=_FILE, n_classes=st.integers(1, 5))
    def check(data: bytes, n_classes: int) -> None:
        name = f"fuzz:{seen['n']}"
        seen["n"] += 1
        try:
            rows, problems = parse_label_bytes(data, "fuzz.txt", n_classes)
        except Exception as exc:  # noqa: BLE001
            t.case(name, *exception_outcome(exc))
            raise
        n_lines = data.count(b"\n") + 1
        sane = all(_row_ok(r, n_classes) for r in rows) and all(
            p.line is None or 1 <= p.line <= n_lines for p in problems)
        assert t.case(name, "handled" if sane else "silent") == "handled", (data, rows, problems)

    check()
    assert seen["n"] >= 1000


# ------------------------------------------------------------------------------------- COCO, VOC, OI

ANNOTATIONS = annotation_cases()
ANNOTATION_BUGS: dict[str, str] = {}


_EXT = {"coco": "json", "voc": "xml", "openimages": "csv"}


def _import_args(case, folder: Path, with_good: bool) -> list[str]:
    """The case's source, then (lenient run) a valid source of the same format, so the import has something
    to write once the bad records are skipped."""
    main = "boxes.csv" if case.fmt == "openimages" else f"ann.{_EXT[case.fmt]}"
    sources = [str(folder / main)] + ([str(folder / f"good.{_EXT[case.fmt]}")] if with_good else [])
    args = [*sources, "--format", case.fmt, "--images", str(folder)]
    return args + (["--descriptions", str(folder / "desc.csv")] if case.fmt == "openimages" else [])


def _valid_source(fmt: str) -> bytes:
    valid = next(c for c in ANNOTATIONS if c.fmt == fmt and c.name == "valid")
    return valid.files["boxes.csv" if fmt == "openimages" else f"ann.{_EXT[fmt]}"]


@pytest.mark.parametrize("key", _params(ANNOTATIONS, ANNOTATION_BUGS, key=lambda c: f"{c.fmt}/{c.name}"))
def test_annotation_import(key, tally, tmp_path, capsys):
    """Strict import: a bad file or record is one DarktuneError line naming the file. With --skip-bad (and a
    good second source): bad records skipped and counted, only the good box imported."""
    from darktune.cli import main

    case = next(c for c in ANNOTATIONS if f"{c.fmt}/{c.name}" == key)
    t = tally("annotations")
    folder = tmp_path / "src"
    folder.mkdir()
    ok, jpg = cv2.imencode(".jpg", np.zeros((40, 64, 3), np.uint8))
    (folder / "img.jpg").write_bytes(jpg.tobytes())
    (folder / f"good.{_EXT[case.fmt]}").write_bytes(_valid_source(case.fmt))
    if case.fmt == "openimages":
        (folder / "desc.csv").write_bytes(next(c for c in ANNOTATIONS if c.name == "valid" and
                                               c.fmt == "openimages").files["desc.csv"])
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    before = snapshot(folder)
    outcomes = []
    for lenient in (False, True):
        argv = ["data", "import", *_import_args(case, folder, lenient), "--out", str(tmp_path / f"out{lenient}"),
                "--json"] + (["--skip-bad"] if lenient else [])
        try:
            rc = main(argv)
        except Exception as exc:  # noqa: BLE001 - a traceback out of the CLI is a crash
            outcomes.append(exception_outcome(exc)[0])
            continue
        captured = capsys.readouterr()
        err_lines = [line for line in captured.err.splitlines() if line.startswith("darktune: error:")]
        refused = rc == 2 and len(err_lines) == 1 and str(folder) in err_lines[0]
        if rc == 2 and not refused:
            outcomes.append("crash")  # refused, but not with one line naming the file
            continue
        summary = json.loads(captured.out) if rc == 0 else {}
        boxes, skipped = summary.get("n_boxes"), summary.get("n_skipped", 0)
        at_edge = summary.get("n_boxes_clipped", 0) + summary.get("n_boxes_dropped_at_edge", 0)
        if case.expect == "clip":  # clipped (or dropped as mostly outside) and counted, in both runs
            kept = 1 if summary.get("n_boxes_clipped", 0) else 0
            good = rc == 0 and at_edge == 1 and boxes == kept + (1 if lenient else 0)
            # a source whose only box goes (VOC: classes come from boxes) is refused, saying why
            good = good or (not lenient and refused and "mostly past the image edge dropped" in err_lines[0])
        elif case.expect == "ok":  # the lenient run adds the good source: the same picture and, mostly, the same
            # box, which the import keeps once and counts (n_duplicate_boxes_dropped)
            merged = summary.get("n_duplicate_boxes_dropped", 0)
            good = rc == 0 and boxes == (2 - merged if lenient else 1) and merged <= (1 if lenient else 0)
        elif not lenient:
            good = refused
        else:  # a record-level problem is skipped and counted; a file-level one may still refuse the run
            good = (rc == 0 and skipped >= 1 and boxes == 1) or (case.expect == "reject" and refused)
        outcomes.append("handled" if good else ("silent" if rc == 0 else "crash"))
    t.modified += changed(before, snapshot(folder))
    outcome = next((o for o in outcomes if o != "handled"), "handled")
    assert t.case(f"import:{key}", outcome) == "handled" and not t.modified, outcomes
