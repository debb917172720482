"""The whole grid's one progress view on the driver: a tqdm bar over the iterations of every run (polled from
the runs' metrics files, so it reads the same whichever process or machine trains a run), with the runs done /
running / failed beside it; tqdm gives the ETA.

Owns: `GridProgress`, `last_iteration`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.experiment.runs import DONE, run_status
from darktune.experiment.spec import RunPlan
from darktune.files import open_regular


def last_iteration(run_dir: Path) -> int:
    """The last iteration logged in RUN/metrics.jsonl (0 when none): read from the file's tail only."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open_regular(path, "run metrics") as f:  # a FIFO or device is never read (it would block the bar)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except (OSError, DarktuneError):
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class GridProgress:
    """One tqdm bar (stderr) over the iterations of every run, polled from the runs' metrics files."""

    def __init__(self, out_dir: Path, plans: list[RunPlan], enabled: bool = True, interval_s: float = 1.0):
        self.out_dir, self.plans, self.interval_s = out_dir, plans, interval_s
        self.total = sum(p.iterations for p in plans)
        self.done = self.running = self.failed = 0
        self._note = ""
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        if enabled:
            from tqdm import tqdm

            done = self.iterations_done()
            self._bar = tqdm(total=self.total, initial=done, desc="experiment", unit="it", dynamic_ncols=True)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def iterations_done(self) -> int:
        done = 0
        for p in self.plans:
            run_dir = self.out_dir / p.folder
            done += p.iterations if run_status(run_dir) in DONE else min(p.iterations, last_iteration(run_dir))
        return done

    def refresh(self, note: str | None = None) -> None:
        if self._bar is not None:
            self._bar.n = self.iterations_done()
            if note is not None:
                self._note = note
            counts = f"{self.done} done, {self.running} running, {self.failed} failed"
            self._bar.set_postfix_str(f"{counts}; {self._note}" if self._note else counts, refresh=False)
            self._bar.refresh()

    def count(self, *, done: int = 0, running: int | None = None, failed: int = 0) -> None:
        """Runs that ended (done, failed: added) and the runs training now (set), as the executor sees them."""
        self.done += done
        self.failed += failed
        if running is not None:
            self.running = running
        self.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self.refresh()
            self._bar.close()
