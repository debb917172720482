"""The files of a run folder that the trainer writes whole (temp + fsync + rename): writing one, RUN/obj.names,
cutting metrics.jsonl back to a checkpoint's iteration on resume, and removing the temp files of writes that
a kill interrupted."""

from __future__ import annotations

import json
from pathlib import Path


def write_run_file(path: Path, text: str) -> None:
    """A whole run-folder file, atomically; a full disk or a permission problem is a DarktuneError naming it."""
    from darktune.weights import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def names_text(names: list[str]) -> str:
    return "".join(f"{n}\n" for n in names)


# files a run writes atomically (temp + rename): a killed write leaves ".<name>.<random>.tmp" beside them
RUN_FILES = ("checkpoint.pt", "summary.json", "metrics.jsonl", "init.json", "model.cfg", "obj.names",
             "freeze_proof.json", "weights/last.weights", "weights/best.weights")


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
    from darktune.weights import atomic_write_bytes

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
