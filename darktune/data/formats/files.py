"""Reading and writing the files of a dataset safely.

Reading: only regular files, up to a size cap. A device or FIFO posing as a data file (a symlink to
/dev/zero, a named pipe) would be read until memory runs out or block forever, so every file is opened
without blocking (O_NONBLOCK) and checked with fstat before a byte is read.

Writing: `output_folder` creates a new (or empty) output folder and, when anything inside fails, removes what
was written there, so a failed import leaves no half-written dataset; an OSError (a full disk above all)
becomes a DarktuneError naming the file. `write_text` and `copy_file` name the file they were writing.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from darktune.errors import DarktuneError

MAX_TEXT_BYTES = 1 << 30  # obj.data, names and image lists
MAX_ANNOTATION_BYTES = 2 << 30  # COCO JSON (instances_train2017.json is 0.45 GB)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def open_regular(path: str | Path, what: str, max_bytes: int | None = None) -> BinaryIO:
    """Open a regular file for reading (binary); DarktuneError naming it when it is missing, a folder, a
    device or FIFO, larger than `max_bytes`, or unreadable."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except FileNotFoundError:
        raise DarktuneError(f"{what} not found", path=str(path)) from None
    except OSError as exc:
        raise DarktuneError(f"cannot read {what}: {exc.strerror or exc}", path=str(path)) from None
    except ValueError:  # a NUL byte in the name
        raise DarktuneError(f"{what} name holds a NUL byte", path=repr(str(path))) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise DarktuneError(f"{what} is a folder, not a file", path=str(path))
        if not stat.S_ISREG(st.st_mode):
            raise DarktuneError(f"{what} is not a regular file (a device, pipe or socket)", path=str(path))
        if max_bytes is not None and st.st_size > max_bytes:
            raise DarktuneError(f"{what} of {st.st_size} bytes is larger than {max_bytes} (not read)",
                                path=str(path))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, what: str, max_bytes: int) -> bytes:
    """All bytes of a regular file of at most `max_bytes` (see `open_regular`)."""
    with open_regular(path, what, max_bytes) as f:
        try:
            data = f.read()  # to the end: sized from fstat, so no max_bytes buffer up front
        except OSError as exc:
            raise DarktuneError(f"cannot read {what}: {exc.strerror or exc}", path=str(path)) from None
    if len(data) > max_bytes:  # grew while we read it
        raise DarktuneError(f"{what} is larger than {max_bytes} bytes (not read)", path=str(path))
    return data


def is_outside(folder: Path, path: Path) -> bool:
    """True when `path` (folder / a name taken from an annotation) leaves `folder` as written: an absolute name,
    or one whose '..' climb out of it. Links inside the folder are the dataset's own business and not followed
    here."""
    base = os.path.normpath(os.path.abspath(folder))
    target = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([base, target]) != base


def outside_note(source: Path, n: int, folder: Path) -> str:
    """The note of a reader that followed names out of their images folder (--allow-outside-images)."""
    return f"{n} image{'s' if n != 1 else ''} read from outside the images folder {folder} (--allow-outside-images)"


def write_error(exc: OSError, path: str | Path) -> DarktuneError:
    """The DarktuneError for a failed write of `path`; a full disk says so."""
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        reason += " (the disk may be full: free some space and run again)"
    return DarktuneError(f"cannot write: {reason}", path=str(path))


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file; DarktuneError naming it when the write fails."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise write_error(exc, path) from None


def copy_file(src: Path, dst: Path, link: bool = False) -> None:
    """Copy `src` to `dst` (or hardlink it, falling back to a copy); `src` is only read. DarktuneError naming
    `src` when it is not a regular file or cannot be read, `dst` when it cannot be written."""
    with open_regular(src, "image") as fin:
        if link:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        try:
            fout = open(dst, "xb")
        except OSError as exc:
            raise write_error(exc, dst) from None
        with fout:
            while chunk := _read_chunk(fin, src):
                try:
                    fout.write(chunk)
                except OSError as exc:
                    raise write_error(exc, dst) from None


def _read_chunk(f: BinaryIO, path: Path) -> bytes:
    try:
        return f.read(1 << 20)
    except OSError as exc:
        raise DarktuneError(f"cannot read image: {exc.strerror or exc}", path=str(path)) from None


def blocking_file(path: Path) -> Path | None:
    """The nearest existing path at or above `path` when it is not a folder (a mkdir of `path` would fail there
    with a traceback), else None."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


@contextmanager
def output_folder(out_dir: str | Path) -> Iterator[Path]:
    """Create `out_dir` (new, or an existing empty folder: nothing the user has is ever overwritten) and yield
    it. When the body fails, everything written inside is removed again (the folder itself too when it was
    new) and an OSError becomes a DarktuneError; write the file that marks the output complete (obj.data,
    annotations.json) last."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DarktuneError("output folder exists and is not empty; choose a new folder", path=str(out))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out) from None
    try:
        yield out
    except BaseException as exc:
        _remove_written(out, created)
        if isinstance(exc, OSError):
            raise write_error(exc, exc.filename or out) from None
        raise


def _remove_written(out: Path, created: bool) -> None:
    """Remove what a failed writer left in `out` (it was new or empty, so all of it is ours)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in list(out.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            try:
                child.unlink()
            except OSError:
                pass
