"""The in-memory detection dataset and the darknet layout on disk.

Owns: `Box` / `ImageRecord` / `Dataset` (boxes as normalised corners in [0, 1]), `Problem` (one finding about
one file, with its line), `image_identity` (which file an image path names; merging sources by it is
darktune/data/merge.py), placing image copies under new unique names, the darknet writer (`write_darknet`), and the plain darknet
readers the trainer uses: `read_obj_data`, `label_path_for`, `read_label_file` (files are read and written
through `formats.files`: regular files only, a full disk named, nothing half-written).

Darknet layout written here (AlexeyAB darknet finds each label beside its image):
    out/obj.data  out/obj.names  out/train.txt  out/valid.txt  out/backup/
    out/images/<name>.jpg  out/images/<name>.txt   (`class cx cy w h`, normalised)
"""

from __future__ import annotations

import codecs
import math
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from darktune.files import (MAX_TEXT_BYTES, copy_file, output_folder, read_regular,
                                         write_text)
from darktune.errors import DarktuneError
from darktune.plural import plural

# A box may overshoot the image by this much (normalised) and is clipped; more is an error.
BOX_TOLERANCE = 1e-3
MIN_BOX_SIZE = 1e-6  # smaller is no box (and would be 0 in float32)
MAX_LABEL_BYTES = 16 * 1024 * 1024
MAX_CLASS_DIGITS = 9  # a class id is an index into obj.names; longer would only feed int() a huge string
MAX_NUMBER_CHARS = 100  # a coordinate token longer than this is not a coordinate
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_INT = re.compile(r"\+?[0-9]+")
_NO_ROWS = np.zeros((0, 5), np.float32)
_YAML_KEY = re.compile(r"[A-Za-z_][\w.-]*\s*:(\s|$)|---\s*$")  # `train: ...`, `names:`, a document start
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Problem:
    """One finding about a file. severity "error": the file (or record) is not used; "warning": used as read."""

    path: str
    line: int | None
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.severity}: {self.reason}"

    def to_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "reason": self.reason, "severity": self.severity}


@dataclass(frozen=True, slots=True)
class Box:
    """One object: class name and normalised corners (x to the right, y down), plus Open Images flags and VOC's
    `difficult` (`is_difficult`)."""

    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float
    is_group_of: bool = False
    is_depiction: bool = False
    is_truncated: bool = False
    is_occluded: bool = False
    is_inside: bool = False
    is_difficult: bool = False

    def __post_init__(self):
        coords = (self.x1, self.y1, self.x2, self.y2)
        if not all(isinstance(c, (int, float)) and math.isfinite(c) and 0.0 <= c <= 1.0 for c in coords):
            raise ValueError(f"box corners must be finite numbers in [0, 1], got {coords}")
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise ValueError(f"box has no area: {coords}")

    @property
    def w(self) -> float:
        return self.x2 - self.x1

    @property
    def h(self) -> float:
        return self.y2 - self.y1

    @property
    def cx(self) -> float:
        return (self.x1 + self.x2) / 2

    @property
    def cy(self) -> float:
        return (self.y1 + self.y2) / 2

    def flags(self) -> dict[str, bool]:
        return {"is_group_of": self.is_group_of, "is_depiction": self.is_depiction,
                "is_truncated": self.is_truncated, "is_occluded": self.is_occluded, "is_inside": self.is_inside,
                "is_difficult": self.is_difficult}


def class_name_problem(name) -> str | None:
    """Why `name` cannot be a class name (one line of obj.names), or None."""
    if not isinstance(name, str) or not name.strip():
        return f"bad class name {name!r} (empty)"
    if "\n" in name or "\r" in name:
        return f"bad class name {name[:60]!r} (a line break cannot be written to obj.names)"
    bad = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if bad is not None:  # NUL cuts the name in darknet's C reader; ESC and CSI drive the terminal that prints it
        return f"bad class name {name[:60]!r} (control character {bad!r}: refused in class names)"
    return None


def clipped_box(class_name: str, x1: float, y1: float, x2: float, y2: float, *,
                tol: float = BOX_TOLERANCE, **flags: bool) -> Box:
    """A Box from normalised corners; overshoot up to `tol` is clipped. Raises ValueError(reason) otherwise."""
    coords = [float(c) for c in (x1, y1, x2, y2)]
    if not all(math.isfinite(c) for c in coords):
        raise ValueError(f"coordinates are not finite numbers: {coords}")
    if any(c < -tol or c > 1 + tol for c in coords):
        raise ValueError(f"box lies outside the image: corners {coords} not in [0, 1]")
    x1, y1, x2, y2 = (min(1.0, max(0.0, c)) for c in coords)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box has no area (x1={x1}, y1={y1}, x2={x2}, y2={y2})")
    return Box(class_name, x1, y1, x2, y2, **flags)


@dataclass
class ImageRecord:
    """One image and its boxes. width/height are pixels when known (None: read from the file when needed)."""

    path: Path
    width: int | None = None
    height: int | None = None
    boxes: list[Box] = field(default_factory=list)


@dataclass
class Dataset:
    """Class names (index = darknet class id) and images. `skipped` lists what readers reported: records they
    dropped (severity "error", `dropped`) and notes on what they read as it was (severity "warning", `notes`:
    crowd boxes read as group-of, duplicate annotations kept once, Open Images rows of Confidence 0)."""

    classes: list[str]
    images: list[ImageRecord]
    skipped: list[Problem] = field(default_factory=list)

    @property
    def dropped(self) -> list[Problem]:
        return [p for p in self.skipped if p.severity == "error"]

    @property
    def notes(self) -> list[Problem]:
        return [p for p in self.skipped if p.severity != "error"]

    def __post_init__(self):
        for name in self.classes:
            reason = class_name_problem(name)
            if reason:
                raise DarktuneError(reason)
        if len(set(self.classes)) != len(self.classes):
            raise DarktuneError(f"duplicate class names in {self.classes}")

    @property
    def n_boxes(self) -> int:
        return sum(len(r.boxes) for r in self.images)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for rec in self.images:
            for b in rec.boxes:
                counts[b.class_name] = counts.get(b.class_name, 0) + 1
        return counts

    def validate(self) -> None:
        """Every box names a known class and no image file is listed twice (DarktuneError naming the image
        otherwise: two records of one picture would be written as two images, maybe one in train and one in
        valid; `merge_datasets` merges them)."""
        known = set(self.classes)
        seen: set[tuple] = set()
        for rec in self.images:
            for b in rec.boxes:
                if b.class_name not in known:
                    raise DarktuneError(f"box class {b.class_name!r} is not one of {self.classes}", path=str(rec.path))
            key = image_identity(rec.path)
            if key in seen:
                raise DarktuneError("image listed more than once in the dataset (merge its records first: "
                                    "merge_datasets)", path=str(rec.path))
            seen.add(key)

    def select_classes(self, names: list[str], keep_empty: bool = False) -> Dataset:
        """Keep only boxes of `names`, matched exactly (case included: Cat, cat and CAT are three classes); the
        order given becomes the class order. A name that matches a class only in another case is an error
        naming the exact spellings. Images that had boxes but none left are dropped unless keep_empty; images
        without any box (explicit negatives) are kept."""
        missing = [n for n in names if n not in self.classes]
        if missing:
            raise DarktuneError(_unknown_classes_message(missing, self.classes))
        wanted = set(names)
        images = []
        for rec in self.images:
            boxes = [b for b in rec.boxes if b.class_name in wanted]
            if boxes or keep_empty or not rec.boxes:
                images.append(replace(rec, boxes=boxes))
        return Dataset(list(names), images, list(self.skipped))


def _unknown_classes_message(missing: list[str], classes: list[str], shown: int = 20) -> str:
    """Why `missing` are not classes; names that differ from a class only in case get its exact spellings."""
    head = f"{'class' if len(missing) == 1 else 'classes'} {', '.join(repr(n) for n in missing)} not found"
    hints = []
    for name in missing:
        found = [repr(c) for c in classes if c.lower() == name.lower()]
        spellings = " or ".join(filter(None, [", ".join(found[:-1]), found[-1]])) if found else ""
        if spellings:
            hints.append(spellings if len(missing) == 1 else f"{spellings} for {name!r}")
    if hints:
        return f"{head} (class names are matched exactly, case included); did you mean {', '.join(hints)}?"
    listed = ", ".join(repr(c) for c in classes[:shown])
    more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
    return f"{head}; the dataset has {listed}{more}"


def image_identity(path: str | Path) -> tuple:
    """Which file an image path names: (device, inode) when the file exists, so a symlink, a hardlink or
    another spelling of the same file are one image; otherwise the absolute, resolved path."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        if st.st_ino:
            return ("file", st.st_dev, st.st_ino)
    except OSError:
        pass
    try:
        return ("path", str(p.resolve()))
    except (OSError, RuntimeError):  # a symlink loop
        return ("path", str(p.absolute()))


# ----------------------------------------------------------------------------------------------- writing


def place_images(records: list[ImageRecord], images_dir: Path, link: bool = False) -> list[Path]:
    """Copy (or hardlink, falling back to a copy) each image into `images_dir` under a unique safe name.

    Names keep the source stem (unsafe characters -> '_'); stems are unique case-insensitively, so label
    files `<stem>.txt` never collide either. Sources are only read. Use inside `output_folder`."""
    images_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    out = []
    for rec in records:
        src = Path(rec.path)
        stem = _NAME_UNSAFE.sub("_", src.stem).strip("._") or "image"
        candidate, n = stem, 0
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}_{n}"
        used.add(candidate.lower())
        dst = images_dir / (candidate + src.suffix.lower())
        copy_file(src, dst, link)
        out.append(dst)
    return out


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of range(n) into (train, valid), each sorted. At least one of each when 0 < f and n >= 2."""
    if not 0.0 <= val_fraction < 1.0:
        raise DarktuneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def label_line(class_id: int, box: Box) -> str:
    return f"{class_id} {box.cx:.8f} {box.cy:.8f} {box.w:.8f} {box.h:.8f}"


def write_darknet(dataset: Dataset, out_dir: str | Path, val_fraction: float = 0.1, seed: int = 0, *,
                  link: bool = False) -> Path:
    """Write `dataset` in the darknet layout (see module docstring) and return the path of obj.data.

    Paths in obj.data and the list files are absolute, so darknet runs from any folder. A failure (a full
    disk, an unreadable image) is a DarktuneError naming the file, and the output folder is left as it was
    found (see `output_folder`); obj.data is written last, so its presence means a complete dataset."""
    dataset.validate()
    if not dataset.images or not dataset.classes:
        raise DarktuneError(f"nothing to write: the dataset has {plural(len(dataset.images), 'image')} and "
                            f"{plural(len(dataset.classes), 'class')}", path=str(out_dir))
    split_indices(len(dataset.images), val_fraction, seed)  # a bad fraction fails before anything is written
    with output_folder(out_dir) as folder:
        out = folder.resolve()
        placed = place_images(dataset.images, out / "images", link=link)
        index = {c: i for i, c in enumerate(dataset.classes)}
        for rec, dst in zip(dataset.images, placed):
            write_text(dst.with_suffix(".txt"), "".join(label_line(index[b.class_name], b) + "\n" for b in rec.boxes))
        train, valid = split_indices(len(placed), val_fraction, seed)
        write_text(out / "train.txt", "".join(f"{placed[i]}\n" for i in train))
        write_text(out / "valid.txt", "".join(f"{placed[i]}\n" for i in valid))
        write_text(out / "obj.names", "".join(c + "\n" for c in dataset.classes))
        (out / "backup").mkdir(exist_ok=True)
        obj_data = out / "obj.data"
        write_text(obj_data, f"classes={len(dataset.classes)}\ntrain={out / 'train.txt'}\n"
                             f"valid={out / 'valid.txt'}\nnames={out / 'obj.names'}\nbackup={out / 'backup'}\n")
    return obj_data


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class ObjData:
    """A parsed obj.data: class names and the image lists, paths resolved."""

    path: Path
    names: list[str]
    train: list[Path]
    valid: list[Path]
    backup: Path | None = None

    @property
    def n_classes(self) -> int:
        return len(self.names)


def _resolve(value: str, bases: list[Path]) -> Path:
    """An absolute path as is; a relative one against each base in turn (first that exists), else the first."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return bases[0] / p


def _read_text(path: Path, what: str) -> str:
    data = read_regular(path, what, MAX_TEXT_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DarktuneError(f"{what} is not UTF-8 text (byte {exc.start})", path=str(path)) from None


def read_names(path: Path) -> list[str]:
    """Class names, one a line; trailing blank lines ignored, blank or duplicate names are errors."""
    lines = [line.strip() for line in _read_text(path, "names file").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, name in enumerate(lines, 1):
        if not name:
            raise DarktuneError("blank class name", path=str(path), line=i)
        if name in lines[: i - 1]:
            raise DarktuneError(f"duplicate class name {name!r}", path=str(path), line=i)
        reason = class_name_problem(name)
        if reason:
            raise DarktuneError(reason, path=str(path), line=i)
    if not lines:
        raise DarktuneError("names file lists no classes", path=str(path))
    return lines


def read_image_list(path: Path, extra_bases: list[Path]) -> list[Path]:
    """Image paths of a darknet list file; relative entries resolve against the list's folder, then the
    given bases (obj.data folder, current folder)."""
    bases = [path.parent, *extra_bases]
    return [_resolve(line.strip(), bases) for line in _read_text(path, "image list").splitlines() if line.strip()]


def read_obj_data(path: str | Path) -> ObjData:
    """Parse obj.data (or a folder holding one). Relative paths resolve against obj.data's folder first, then
    the current folder (darknet's own rule). `classes=` must agree with the names file."""
    path = Path(path)
    if path.is_dir():
        path = path / "obj.data"
    values: dict[str, tuple[str, int]] = {}
    for i, raw in enumerate(_read_text(path, "obj.data").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            if _YAML_KEY.match(line):
                raise DarktuneError(f"{line[:40]!r} looks like an Ultralytics data.yaml, which is not supported: "
                                    "obj.data has 'key = value' lines. To convert the dataset, write its class "
                                    "names one a line to classes.txt in its folder and run 'darktune data import "
                                    "FOLDER --out DIR'", path=str(path), line=i)
            raise DarktuneError(f"expected 'key = value', got {line[:60]!r}", path=str(path), line=i)
        key, value = (s.strip() for s in line.split("=", 1))
        values[key.lower()] = (value, i)
    bases = [path.parent.resolve(), Path.cwd()]
    for key in ("names", "train"):
        if not values.get(key, ("",))[0]:
            raise DarktuneError(f"missing '{key} = ...'", path=str(path))
    names = read_names(_resolve(values["names"][0], bases))
    if "classes" in values:
        text, line = values["classes"]
        if not _INT.fullmatch(text) or int(text) != len(names):
            raise DarktuneError(f"classes={text} but the names file lists {plural(len(names), 'class')}",
                                path=str(path), line=line)
    train = read_image_list(_resolve(values["train"][0], bases), bases)
    valid = read_image_list(_resolve(values["valid"][0], bases), bases) if values.get("valid", ("",))[0] else []
    backup = _resolve(values["backup"][0], bases) if values.get("backup", ("",))[0] else None
    return ObjData(path, names, train, valid, backup)


def label_path_for(image_path: str | Path) -> Path:
    """Darknet's rule: an `images` or `JPEGImages` folder in the path replaced by `labels` when that label
    file exists, else the label beside the image; the extension becomes .txt either way."""
    p = Path(image_path)
    parts = p.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            candidate = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
            if candidate.is_file():
                return candidate
    return p.with_suffix(".txt")


def parse_label_line(line: str, n_classes: int | None, tol: float = BOX_TOLERANCE) -> tuple[list[float] | None, str]:
    """One stripped, non-blank label line -> ([cls, cx, cy, w, h], "") or (None, reason)."""
    if "," in line:
        return None, "commas in label line (darknet expects 5 numbers separated by spaces)"
    tokens = line.split()
    if len(tokens) != 5:
        return None, f"expected 5 fields 'class cx cy w h', got {len(tokens)}"
    if not _INT.fullmatch(tokens[0]):
        return None, f"class {tokens[0][:20]!r} is not a non-negative integer"
    if len(tokens[0].lstrip("+0")) > MAX_CLASS_DIGITS:  # int() of a huge string is slow, or refused past 4300
        return None, f"class {tokens[0][:20]!r}... ({len(tokens[0])} digits) out of range"
    cls = int(tokens[0])
    if n_classes is not None and cls >= n_classes:
        return None, f"class {cls} out of range (dataset has {plural(n_classes, 'class')}: 0..{n_classes - 1})"
    values = []
    for name, tok in zip(("cx", "cy", "w", "h"), tokens[1:]):
        if len(tok) > MAX_NUMBER_CHARS:
            return None, f"{name} {tok[:20]!r}... is {len(tok)} characters long, not a coordinate"
        v = float(tok) if _FLOAT.fullmatch(tok) else math.nan
        if not math.isfinite(v):
            return None, f"{name} {tok[:20]!r} is not a finite number"
        values.append(v)
    cx, cy, w, h = values
    if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
        return None, f"centre ({cx}, {cy}) outside [0, 1]"
    if not (MIN_BOX_SIZE <= w <= 1.0 and MIN_BOX_SIZE <= h <= 1.0):
        return None, f"size ({w}, {h}) not in [{MIN_BOX_SIZE}, 1]"
    if cx - w / 2 < -tol or cx + w / 2 > 1 + tol or cy - h / 2 < -tol or cy + h / 2 > 1 + tol:
        return None, f"box (cx={cx}, cy={cy}, w={w}, h={h}) extends outside the image"
    return [float(cls), cx, cy, w, h], ""


def read_label_file(path: str | Path, n_classes: int | None, dtype=np.float32) -> tuple[np.ndarray, list[Problem]]:
    """Read a darknet label file -> (rows (n, 5) float32 [cls, cx, cy, w, h] of the valid lines, problems).

    Never raises for bad content: every bad line is an error Problem (file, line, reason); a UTF-8 BOM and
    exact duplicate lines are warnings (BOM ignored, duplicates dropped). Blank lines are fine."""
    path = Path(path)
    try:
        data = read_regular(path, "label file", MAX_LABEL_BYTES)
    except DarktuneError as exc:
        return _NO_ROWS.copy(), [Problem(str(path), None, str(exc).removeprefix(f"{path}: "))]
    return parse_label_bytes(data, path, n_classes, dtype)



def parse_label_bytes(data: bytes, path: str | Path, n_classes: int | None,
                      dtype=np.float32) -> tuple[np.ndarray, list[Problem]]:
    """`read_label_file` on bytes already read; `path` only names the file in problems."""
    problems: list[Problem] = []
    if len(data) > MAX_LABEL_BYTES:
        return _NO_ROWS.copy(), [Problem(str(path), None, f"label file larger than {MAX_LABEL_BYTES} bytes")]
    if data.startswith(codecs.BOM_UTF8):
        problems.append(Problem(str(path), 1, "UTF-8 byte-order mark at start (ignored; darknet would "
                                              "misread the first line)", "warning"))
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        reason = f"not UTF-8 text (bad byte at offset {exc.start})"
        return _NO_ROWS.copy(), problems + [Problem(str(path), line, reason)]
    rows: list[list[float]] = []
    seen: dict[tuple, int] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        row, reason = parse_label_line(line, n_classes)
        if row is None:
            problems.append(Problem(str(path), lineno, reason))
            continue
        key = tuple(round(v, 6) for v in row)
        if key in seen:
            problems.append(Problem(str(path), lineno, f"duplicate of line {seen[key]} (dropped)", "warning"))
            continue
        seen[key] = lineno
        rows.append(row)
    return np.asarray(rows, dtype).reshape(-1, 5), problems
