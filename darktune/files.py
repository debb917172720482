"""Reading and writing files safely: the one place for atomic writes and for darktune's home folder.

Atomic writes (`atomic_write_bytes`, `atomic_write_many`): temp file beside the target, fsync, rename, fsync of
the folder; a reader sees the old file or the new one, never half of one. `darktune_home()`: $DARKTUNE_HOME
(default ~/.cache/darktune), where known weights, check caches and probes live.

Reading: only regular files, up to a size cap. A device or FIFO posing as a data file (a symlink to
/dev/zero, a named pipe) would be read until memory runs out or block forever, so every file is opened
without blocking (O_NONBLOCK) and checked with fstat before a byte is read.

Writing: `output_folder` creates a new (or empty) output folder and, when anything inside fails, removes what
was written there, so a failed import leaves no half-written dataset; an OSError (a full disk above all)
becomes a DarktuneError naming the file. `write_text` and `copy_file` name the file they were writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
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


def darktune_home() -> Path:
    """$DARKTUNE_HOME, default ~/.cache/darktune (known weights, caches)."""
    return Path(os.environ.get("DARKTUNE_HOME") or Path.home() / ".cache" / "darktune").expanduser()


def _default_mode() -> int:
    """The mode a plain new file gets (0666 less the umask); mkstemp's private 0600 is not wanted for outputs."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_temp(path: Path, data: bytes) -> str:
    """`data` in a fsynced temp file beside `path`; returns the temp name (removed again on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        space = " (the disk may be full)" if exc.errno == errno.ENOSPC else ""
        raise DarktuneError(f"cannot write: {exc.strerror or exc}{space}", path=str(path)) from None
    return tmp


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_many(files: dict[Path, bytes]) -> list[Path]:
    """Write several files so that none is replaced unless all were written (a cfg never lands beside stale
    weights): every file goes to a temp name first, then all are renamed."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            temps.append((_write_temp(Path(path), data), Path(path)))
    except DarktuneError:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in temps:
        os.replace(tmp, path)
    for folder in {path.parent for _, path in temps}:
        _fsync_dir(folder)
    return [path for _, path in temps]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via temp file + fsync + rename: a reader sees the old file or the new one, never half of one."""
    return atomic_write_many({Path(path): data})[0]


def replace_file(path: str | Path, data: bytes) -> Path:
    """Write an output file through a temp file and a rename (no fsync: an output, not a record): whatever was
    at `path` (a link, a hard link to another file) is replaced, never written through, so no other file
    changes. DarktuneError naming `path` when it cannot be written."""
    path = Path(path)
    try:
        # a short temp name: the output's own name may already be as long as the file system allows
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path) from None
    return path


_HELD: dict[str, int] = {}  # folders this process holds the lock of


@contextlib.contextmanager
def folder_lock(out_dir: Path, what: str = "experiment"):
    """Hold an flock on DIR/.lock while working in DIR (an experiment folder, a training run's folder): a second
    process fails at once instead of training the same runs. The kernel releases it when the process ends, kill -9
    included (no stale lock). Re-entrant in one process (a caller may hold it around run_experiment); no lock where
    fcntl is missing (Windows). `what` names the holder in the refusal (`darktune train` takes it on its run folder
    too)."""
    key = str(out_dir.resolve())
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    if key in _HELD or fcntl is None:
        yield
        return
    path = out_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DarktuneError(f"cannot open the lock file: {exc.strerror or exc}", path=str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise DarktuneError(f"another darktune {what} is running in {out_dir} (pid {holder}): wait for it to "
                            "end, or use another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = fd
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock


def make_folder(path: str | Path, what: str) -> Path:
    """Create the folder `path` (parents too) for `what` ("experiment folder", "run folder"); a path that is, or
    goes through, a file is a one-line error naming it."""
    path = Path(path)
    p = blocking_file(path)
    if p is not None:
        why = "exists and is not a folder" if p == path else f"cannot be made: {p} is a file, not a folder"
        raise DarktuneError(f"the {what} {why}", path=str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DarktuneError(f"cannot make the {what}: {exc.strerror or exc}", path=str(path)) from None
    return path
