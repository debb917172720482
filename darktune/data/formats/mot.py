"""MOTChallenge tracking ground truth (MOT16/17/20) read as a detection dataset.

A sequence is a folder holding `img1/` (frames `000001.jpg`, ...), `gt/gt.txt` (or `gt.txt` beside `img1/`) and,
optionally, `seqinfo.ini` (`imDir`, `imExt`, `imWidth`, `imHeight`). SRC is a sequence or a folder of sequences
(e.g. `MOT17/train`). One row of gt.txt is one box:

    frame, id, bb_left, bb_top, bb_width, bb_height, considered, class, visibility

pixels, 1-based (darknet's voc_label.py rule: `value - 1`). `considered` is the ignore flag: rows with 0
(objects the benchmark ignores: static people, reflections, occluders, ...) are not imported and are counted.
`class` is MOT's class id, read into the names of `MOT_CLASSES` (1 = pedestrian); 7 and 8 columns (no class
or no visibility) read as pedestrians, fully visible; MOT15's 10 columns (`conf, x, y, z` world coordinates)
as pedestrians with `conf` as the flag. Boxes past the frame edge are clipped by `records.clip_to_image`.
A bad row is an error naming gt.txt and its line; with skip_bad that row's frame is skipped and counted.
Images are taken in frame order within each sequence, sequence by sequence, so a split by sequence or by the
last frames (`darktune.data.split`) keeps neighbouring frames together.
"""

from __future__ import annotations

import configparser
import math
from pathlib import Path

from darktune.data.dataset import Dataset, ImageRecord, Problem
from darktune.data.formats.image import IMAGE_EXTENSIONS, read_image_size
from darktune.data.formats.records import BadBox, EmptyBox, clip_to_image
from darktune.errors import DarktuneError
from darktune.plural import plural

MOT_CLASSES = {1: "pedestrian", 2: "person_on_vehicle", 3: "car", 4: "bicycle", 5: "motorbike",
               6: "non_motorized_vehicle", 7: "static_person", 8: "distractor", 9: "occluder",
               10: "occluder_on_ground", 11: "occluder_full", 12: "reflection", 13: "crowd"}
MAX_GT_BYTES = 256 * 1024 * 1024


class _BadRow(ValueError):
    pass


def is_mot_sequence(folder: Path) -> bool:
    """True for a folder laid out as a MOT sequence (img1/ or seqinfo.ini, and a gt file)."""
    has_gt = (folder / "gt" / "gt.txt").is_file() or (folder / "gt.txt").is_file()
    return has_gt and ((folder / "img1").is_dir() or (folder / "seqinfo.ini").is_file())


def mot_sequences(src: str | Path) -> list[Path]:
    """The sequence folders of SRC: SRC itself, or its sub-folders that are sequences (sorted)."""
    src = Path(src)
    if not src.is_dir():
        raise DarktuneError("not a folder (expected a MOT sequence or a folder of sequences)", path=str(src))
    if is_mot_sequence(src):
        return [src]
    found = sorted(p for p in src.iterdir() if p.is_dir() and is_mot_sequence(p))
    if not found:
        raise DarktuneError("no MOT sequence here (a folder with img1/ and gt/gt.txt, or sub-folders with them)",
                            path=str(src))
    return found


def _seqinfo(folder: Path) -> dict[str, str]:
    path = folder / "seqinfo.ini"
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8", errors="replace"), str(path))
    except configparser.Error as exc:
        raise DarktuneError(f"not a valid seqinfo.ini: {str(exc).splitlines()[0]}", path=str(path)) from None
    return dict(parser["Sequence"]) if parser.has_section("Sequence") else {}


def _int_field(text: str, what: str, low: int | None = None) -> int:
    try:
        value = float(text)
    except ValueError:
        raise _BadRow(f"{what} {text[:20]!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise _BadRow(f"{what} {text[:20]!r} is not a whole number")
    if low is not None and value < low:
        raise _BadRow(f"{what} {int(value)} is below {low}")
    return int(value)


def _float_field(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _BadRow(f"{what} {text[:20]!r} is not a number") from None
    if not math.isfinite(value):
        raise _BadRow(f"{what} {text[:20]!r} is not a finite number")
    return value


def parse_gt_row(line: str) -> tuple[int, bool, str, tuple[float, float, float, float]]:
    """(frame, considered, class name, (left, top, width, height) in pixels) of one gt.txt row; _BadRow."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) not in (6, 7, 8, 9, 10):
        raise _BadRow(f"expected 9 comma-separated fields (frame, id, left, top, width, height, considered, "
                      f"class, visibility), got {len(fields)}")
    frame = _int_field(fields[0], "frame", 1)
    _int_field(fields[1], "id")
    left, top, width, height = (_float_field(f, n) for f, n in zip(fields[2:6], ("left", "top", "width", "height")))
    if width <= 0 or height <= 0:
        raise _BadRow(f"width and height must be positive, got {width:g} x {height:g}")
    considered, cls = True, 1
    if len(fields) >= 7:
        flag = _float_field(fields[6], "considered flag")
        if len(fields) != 10 and flag not in (0, 1):
            raise _BadRow(f"considered flag must be 0 or 1, got {fields[6][:20]!r}")
        considered = flag != 0
    if len(fields) in (8, 9):
        cls = _int_field(fields[7], "class")
        if cls not in MOT_CLASSES:
            raise _BadRow(f"class {cls} is not a MOT class (1..{max(MOT_CLASSES)})")
    if len(fields) == 9:
        visibility = _float_field(fields[8], "visibility")
        if not 0 <= visibility <= 1:
            raise _BadRow(f"visibility {visibility:g} not in [0, 1]")
    return frame, considered, MOT_CLASSES[cls], (left, top, width, height)


class _Sequence:
    """One sequence read: its frames' records in frame order, and what was skipped or noted."""

    def __init__(self, folder: Path, skip_bad: bool):
        self.folder, self.skip_bad = folder, skip_bad
        info = _seqinfo(folder)
        self.image_dir = folder / info.get("imdir", "img1")
        self.ext = info.get("imext", ".jpg").lower()
        self.size = (int(info["imwidth"]), int(info["imheight"])) if info.get("imwidth", "").isdigit() \
            and info.get("imheight", "").isdigit() else None
        self.gt = folder / "gt" / "gt.txt" if (folder / "gt" / "gt.txt").is_file() else folder / "gt.txt"
        self.problems: list[Problem] = []
        self.n_ignored = 0
        self.frames: dict[int, Path] = {}

    def list_frames(self) -> None:
        if not self.image_dir.is_dir():
            raise DarktuneError("no image folder of the sequence (seqinfo.ini imDir, default img1)",
                                path=str(self.image_dir))
        for path in sorted(self.image_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                continue
            if not path.stem.isdigit():
                self.problems.append(Problem(str(path), None, "not a frame number: image not read", "warning"))
                continue
            self.frames.setdefault(int(path.stem), path)

    def read(self) -> list[ImageRecord]:
        self.list_frames()
        records = {frame: ImageRecord(path, *(self.size or (None, None))) for frame, path in self.frames.items()}
        bad_frames: set[int] = set()
        missing: dict[int, int] = {}
        try:
            text = self.gt.read_bytes()[:MAX_GT_BYTES + 1].decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DarktuneError(f"cannot read gt file: {exc}", path=str(self.gt)) from None
        if len(text) > MAX_GT_BYTES:
            raise DarktuneError(f"gt file larger than {MAX_GT_BYTES} bytes", path=str(self.gt))
        for lineno, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                self._row(raw, lineno, records, bad_frames, missing)
        for frame in bad_frames:
            records.pop(frame, None)
        if missing:
            self.problems.append(Problem(str(self.gt), None, (
                f"{plural(sum(missing.values()), 'row')} of {plural(len(missing), 'frame')} with no image in "
                f"{self.image_dir} (not imported)"), "warning"))
        return [records[f] for f in sorted(records)]

    def _row(self, raw: str, lineno: int, records: dict, bad_frames: set, missing: dict) -> None:
        head = raw.split(",", 1)[0].strip()
        frame = int(head) if head.isdigit() else None  # the frame a bad row costs, when it can be told
        try:
            frame, considered, name, (left, top, w, h) = parse_gt_row(raw)
            if frame not in records:
                missing[frame] = missing.get(frame, 0) + 1
                return
            if not considered:
                self.n_ignored += 1
                return
            rec = records[frame]
            if rec.width is None:
                rec.width, rec.height = read_image_size(rec.path)
            x1, y1 = (left - 1) / rec.width, (top - 1) / rec.height
            box, clip = clip_to_image(name, x1, y1, x1 + w / rec.width, y1 + h / rec.height,
                                      f"left={left:g} top={top:g} width={w:g} height={h:g}", rec.width, rec.height)
        except (_BadRow, BadBox, DarktuneError) as exc:
            reason = str(exc).removeprefix(f"{self.gt}: ")
            if not self.skip_bad:
                raise DarktuneError(reason, path=str(self.gt), line=lineno) from None
            cost = "box skipped" if isinstance(exc, EmptyBox) else \
                f"frame {frame} skipped" if frame in records else "row skipped"
            if not isinstance(exc, EmptyBox) and frame in records:
                bad_frames.add(frame)
            self.problems.append(Problem(str(self.gt), lineno, f"{reason} ({cost})"))
            return
        if clip:
            self.problems.append(Problem(str(self.gt), lineno, clip, "warning"))
        if box is not None:
            rec.boxes.append(box)


def read_mot(src: str | Path, *, skip_bad: bool = False) -> Dataset:
    """Read MOT sequences (see module docstring) into a Dataset: classes in MOT's order of those present, images
    sequence by sequence in frame order. Rows flagged not considered are counted in one note per sequence."""
    records: list[ImageRecord] = []
    problems: list[Problem] = []
    for folder in mot_sequences(src):
        seq = _Sequence(folder, skip_bad)
        records += seq.read()
        problems += seq.problems
        if seq.n_ignored:
            problems.append(Problem(str(seq.gt), None, f"{plural(seq.n_ignored, 'row')} flagged not considered "
                                                       "(MOT's ignore flag, column 7 = 0) not imported", "warning"))
    present = {b.class_name for rec in records for b in rec.boxes}
    classes = [name for name in MOT_CLASSES.values() if name in present]
    return Dataset(classes, records, problems)
