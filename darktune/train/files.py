"""The files of a run folder that the trainer writes whole (temp + fsync + rename): writing one, RUN/obj.names,
cutting metrics.jsonl back to a checkpoint's iteration on resume, removing the temp files of writes that a kill
interrupted, and the command line's refusal to start a fresh run over an existing one (`check_fresh_run_folder`,
after `make_run_folder`; darktune train holds the folder's lock around both and the run).
Also RUN/train.log (`open_run_log`), the one file written line by line: the run's event lines, appended to on
resume."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes, make_folder


def write_run_file(path: Path, text: str) -> None:
    """A whole run-folder file, atomically; a full disk or a permission problem is a DarktuneError naming it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def names_text(names: list[str]) -> str:
    return "".join(f"{n}\n" for n in names)


# files a run writes atomically (temp + rename): a killed write leaves ".<name>.<random>.tmp" beside them
RUN_FILES = ("checkpoint.pt", "summary.json", "metrics.jsonl", "init.json", "model.cfg", "obj.names",
             "freeze_proof.json", "weights/last.weights", "weights/best.weights")


def run_files_in(run_dir: Path) -> list[str]:
    """The run files (RUN_FILES) that `run_dir` already holds, in RUN_FILES order; [] for a missing folder."""
    return [name for name in RUN_FILES if (run_dir / name).is_file()]


def check_fresh_run_folder(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """`darktune train` without --resume must not silently replace a run: a folder that holds any run file (a
    finished or an interrupted run) is refused unless `overwrite`. A missing or empty folder, or one with only
    other files, is fine. Library callers (`darktune experiment`) manage their own folders and skip this."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise DarktuneError("--resume continues a run and --overwrite replaces it: give one of them")
    if resume or overwrite or not run_dir.is_dir():
        return
    found = run_files_in(run_dir)
    if found:
        listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise DarktuneError(f"already holds a training run's files ({listed}): pass --resume to continue it, "
                            "--overwrite to replace it, or choose another --out", path=str(run_dir))


def make_run_folder(run_dir: str | Path) -> None:
    """Create the run folder (so `darktune train` can lock it before its first check); a path that is, or goes
    through, a file is a one-line error naming it."""
    make_folder(run_dir, "run folder")


def remove_stale_temps(run_dir: Path) -> int:
    """Delete the temp files of writes that were killed before their rename; returns how many."""
    removed = 0
    for name in RUN_FILES:
        target = run_dir / name
        for tmp in target.parent.glob(f".{target.name}.*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def truncate_metrics(path: Path, step: int) -> None:
    keep = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("iteration", 0) <= step:
                keep.append(line)
    atomic_write_bytes(path, "".join(s + "\n" for s in keep).encode())


def open_run_log(run_dir: Path, append: bool):
    """RUN/train.log, open for the run's event lines (init, evaluations, unfreeze, warnings): a fresh run starts
    it, a resume appends to it, so the first start's lines stay. None when stderr already goes to that file
    (`darktune experiment` sends each run's output there), so no line is written twice."""
    path = Path(run_dir) / "train.log"
    try:
        if path.exists() and os.path.samestat(os.fstat(sys.stderr.fileno()), path.stat()):
            return None
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # stderr without a file (captured)
        pass
    try:
        return open(path, "a" if append else "w", buffering=1, encoding="utf-8")
    except OSError as exc:
        raise DarktuneError(f"cannot open: {exc.strerror or exc}", path=str(path)) from None
