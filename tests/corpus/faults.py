"""Fault injection for the reliability tests: a checkpoint writer killed at every step of its write (run in a
subprocess: `kill_driver`), and a disk that fills up (`DiskFull`, monkeypatching every Python write path)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

# Where the writer kills itself (darktune.darknet.weights.atomic_write_bytes under
# darktune.train.checkpoint.save_checkpoint), then random times while it saves in a loop.
KILL_POINTS = ["serialised", "temp_created", "write_0", "write_1pct", "write_half", "write_99pct", "before_fsync",
               "before_rename", "after_rename"]
RANDOM_KILLS = 6


def kill_child(path: Path, model, opt, step: int, point: str | None, progress_fd: int) -> None:
    """In a forked child: save checkpoints (steps step, step+1, ...) and die at `point` (or run until killed)."""
    import tempfile

    from darktune.train import checkpoint

    me = os.getpid()

    def die() -> None:
        os.kill(me, signal.SIGKILL)

    real_fdopen, real_fsync, real_replace, real_mkstemp = os.fdopen, os.fsync, os.replace, tempfile.mkstemp

    class Dying(io.RawIOBase):
        def __init__(self, f, fraction):
            self.f, self.fraction = f, fraction

        def write(self, data):
            cut = int(len(data) * self.fraction)
            self.f.write(bytes(data[:cut]))
            self.f.flush()
            die()

        def __getattr__(self, name):
            return getattr(self.f, name)

    if point == "serialised":
        checkpoint.atomic_write_bytes = lambda p, data: die()
    elif point == "temp_created":
        tempfile.mkstemp = lambda *a, **k: (real_mkstemp(*a, **k), die())[0]
    elif point and point.startswith("write_"):
        fraction = {"write_0": 0.0, "write_1pct": 0.01, "write_half": 0.5, "write_99pct": 0.99}[point]
        os.fdopen = lambda fd, mode="r", *a, **k: Dying(real_fdopen(fd, mode, *a, **k), fraction)
    elif point == "before_fsync":
        os.fsync = lambda fd: die()
    elif point == "before_rename":
        os.replace = lambda a, b: die()
    elif point == "after_rename":
        os.replace = lambda a, b: (real_replace(a, b), die())
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        checkpoint.save_checkpoint(path, model=model, optimizer=opt, step=step, config={"step": step},
                                   loader={"epoch": 0, "index": step}, state={"step": step})
        os.write(progress_fd, f"{step}\n".encode())
        step += 1


def kill_driver(root: str, out: str, seed: int) -> None:
    """Subprocess body: a ~70 MB checkpoint (yolov3-tiny-sized model with momentum), written by forked
    children that are killed at each KILL_POINT and then at random times; after each kill the checkpoint
    must load, hold a step that was being written or already written, and be internally consistent."""
    torch.set_num_threads(1)  # no OpenMP pool before fork
    from darktune.darknet import zoo
    from darktune.darknet.cfg import parse_cfg
    from darktune.train.checkpoint import load_checkpoint, save_checkpoint
    from darktune.darknet.model import Darknet

    from darktune.train.init import build_optimizer

    model = Darknet(parse_cfg(zoo.fetch("yolov3-tiny", progress=False).cfg).with_classes(1))
    opt = build_optimizer(model, 0.1, 0.9, 0.0005)  # the trainer's optimizer
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # momentum buffers exist: the checkpoint holds model + optimizer state
    path = Path(root) / "checkpoint.pt"
    save_checkpoint(path, model=model, optimizer=opt, step=0, config={"step": 0}, loader={"epoch": 0, "index": 0},
                    state={"step": 0})
    rng = np.random.default_rng(seed)
    results, last = [], 0
    plans = [(p, None) for p in KILL_POINTS] + [(None, float(rng.uniform(0.05, 1.0))) for _ in range(RANDOM_KILLS)]
    for point, delay in plans:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                kill_child(path, model, opt, last + 1, point, write_fd)
            finally:
                os._exit(3)
        os.close(write_fd)
        if delay is not None:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_fd) as f:
            done = [int(s) for s in f.read().split()]
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        try:
            ck = load_checkpoint(path)
            step = int(ck["step"])
            values = {float(v.flatten()[0]) for v in ck["model"].values() if v.is_floating_point() and v.numel()}
            consistent = ck["state"]["step"] == step and ck["loader"]["index"] == step
            ok = killed and step in (last, *done, (done[-1] if done else last) + 1) and consistent
            detail = "" if ok else f"step {step}, last {last}, done {done}, killed {killed}"
            if ok and float(step) not in values and step != 0:
                ok, detail = False, f"model values {sorted(values)[:3]} do not match step {step}"
        except Exception as exc:  # noqa: BLE001
            ok, detail, step = False, f"{type(exc).__name__}: {exc}", last
        results.append({"point": point or f"random {delay:.2f}s", "ok": ok, "detail": detail,
                        "leftover_temp_files": len(list(Path(root).glob(".checkpoint.pt.*.tmp")))})
        last = step
    Path(out).write_text(json.dumps(results))


class _FullFile:
    """A writable file that takes `left` more bytes, then fails with ENOSPC (like a disk filling up)."""

    def __init__(self, f, disk):
        self._f, self._disk = f, disk

    def write(self, data):
        n = len(data)
        if n > self._disk.left:
            self._f.write(data[:self._disk.left])
            self._disk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.left -= n
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


class DiskFull:
    """Every file opened for writing from now on (open, io.open, Path.open, os.fdopen, os.write, shutil copies)
    fails with ENOSPC once `left` more bytes have been written."""

    def __init__(self, monkeypatch, left: int = 0):
        self.left = left
        real = {"open": builtins.open, "fdopen": os.fdopen, "write": os.write}

        def wrap(f, mode):
            return _FullFile(f, self) if isinstance(mode, str) and any(c in mode for c in "wax+") else f

        def fake_write(fd, data):
            if fd > 2 and len(data) > self.left:
                self.left = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real["write"](fd, data)

        monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: wrap(real["open"](file, mode, *a, **k),
                                                                                    mode))
        monkeypatch.setattr(io, "open", builtins.open)
        monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: wrap(real["fdopen"](fd, mode, *a, **k), mode))
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)
