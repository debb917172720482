"""The files of a run folder that the trainer writes whole (temp + fsync + rename): writing one, RUN/obj.names,
cutting metrics.jsonl back to a checkpoint's iteration on resume, removing the temp files of writes that a kill
interrupted, and the command line's refusal to start a fresh run over an existing one (`check_fresh_run_folder`,
after `make_run_folder`; darktune train holds the folder's lock around both and the run).
Also RUN/train.log (`open_run_log`), the one file written line by line: the run's event lines, appended to on
resume. The schemas of the run files that are read back (`METRICS_LINE`, `SUMMARY`: `darktune.records`) live here
beside their writer; `read_metrics` and `read_summary` are the readers the trainer, the experiment and the
report share."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes, make_folder
from darktune.records import Field, read_json_lines, read_record

MAX_ITERATION = 100_000_000
# one line of RUN/metrics.jsonl (training lines: loss, lr, speed; evaluation lines: map and its protocol)
METRICS_LINE = {
    "iteration": Field(int, 0, MAX_ITERATION, required=True, nullable=False), "map": Field(float, 0, 1),
    "protocol": Field(str), "precision": Field(float, 0, 1), "recall": Field(float, 0, 1), "f1": Field(float, 0, 1),
    "loss": Field(float, finite=False), "lr": Field(float, 0), "images_per_s": Field(float, 0),
    "train_s": Field(float, 0), "elapsed_s": Field(float, 0), "eval_seconds": Field(float, 0),
}
SUMMARY = {
    "status": Field(str, required=True, nullable=False, choices=("finished", "stopped_at_target", "failed")),
    "iterations": Field(int, 0, MAX_ITERATION), "iterations_planned": Field(int, 0, MAX_ITERATION),
    "best_map": Field(float, 0, 1), "final_map": Field(float, 0, 1), "target_map": Field(float, 0, 1),
    "maps": Field(list), "train_seconds": Field(float, 0), "elapsed_seconds": Field(float, 0),
    "images_per_s": Field(float, 0), "skipped_steps": Field(int, 0), "time_to_target": Field(dict),
    "config": Field(dict), "protocol": Field(str), "message": Field(str),
}


def read_metrics(path: Path) -> list[dict]:
    """The lines of a RUN/metrics.jsonl, each checked (`METRICS_LINE`); [] for a missing file; DarktuneError
    naming the file and line for one that is not UTF-8 JSON lines or holds an impossible value."""
    if not os.path.lexists(path):
        return []
    return read_json_lines(path, METRICS_LINE, "run metrics")


def read_summary(path: Path) -> dict | None:
    """RUN/summary.json, checked (`SUMMARY`); None when missing; DarktuneError naming it when it does not fit."""
    if not os.path.lexists(path):
        return None
    return read_record(path, SUMMARY, "run summary", max_bytes=64 << 20)


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
    """Keep the lines up to the checkpoint's iteration (a damaged file is refused by `read_metrics`)."""
    keep = [json.dumps(rec) for rec in read_metrics(path) if rec["iteration"] <= step]
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
