"""`--backend auto`: run a model on the fastest runtime installed on this machine.

Which runtime is fastest depends on the CPU and the library versions (onnxruntime, OpenCV DNN, torch: each
order has been seen), so it is measured, not assumed: the first time a model shape meets a machine, each
installed runtime runs the model a few times on one image-sized batch (the runtimes taking turns, medians
kept), and the winner is cached in `$DARKTUNE_HOME/backend-probe.json` under a key made of the machine (CPU
model, CPUs, library versions) and the model's shape (the cfg as darknet would write it, at its input size,
and the batch). Weights do not change speed and are not part of the key. A cache file that cannot be read is
ignored and rewritten. Runtimes that are not installed (onnxruntime without `darktune[export]`) are skipped.

The onnxruntime runtime needs an ONNX file of the model: it is exported once per cfg + weights + batch into
`$DARKTUNE_HOME/onnx/` and reused, so `detect` does not pay an export on every run.

`DARKTUNE_BACKEND=torch|onnxruntime|opencv` sets the choice without a probe (the test suite uses it).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from darktune.darknet.cfg import format_cfg
from darktune.darknet.load import load_darknet
from darktune.deploy.onnx import export_onnx
from darktune.deploy.runtimes import BACKENDS, Backend, OnnxRuntimeBackend, make_backend, time_backends
from darktune.devices import cpu_count, parse_device
from darktune.errors import DarktuneError, MissingDependency, optional_import
from darktune.files import atomic_write_bytes, darktune_home
from darktune.machine import cpu_name, library_versions
from darktune.records import Field, read_record, record_problem

ENV = "DARKTUNE_BACKEND"
CACHE_NAME = "backend-probe.json"
CACHE_VERSION = 1
PROBE_ITERS, PROBE_WARMUP, PROBE_BLOCK = 9, 2, 3


@dataclass
class Choice:
    """The runtime that runs the model and why (`detect --json` reports both)."""

    backend: str
    reason: str
    medians_ms: dict[str, float] = field(default_factory=dict)


def machine_key(threads: int) -> dict:
    """What makes timings on one machine comparable: CPU model, CPUs used, library versions."""
    return {"cpu": cpu_name(), "threads": threads, "versions": library_versions()}


def probe_key(cfg_text: str, batch: int, threads: int) -> tuple[str, dict]:
    """(digest, what it digests) for the cache: machine + model shape (cfg at its size, batch)."""
    what = {"machine": machine_key(threads), "cfg_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
            "batch": batch}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32], what


CACHE_SCHEMA = {"version": Field(int, required=True, nullable=False), "entries": Field(dict, required=True)}
ENTRY_SCHEMA = {"medians_ms": Field(dict, required=True, nullable=False), "date": Field(str)}


def read_cache(path: Path) -> dict:
    """The probe cache's valid entries; {} for a missing, unreadable (a FIFO or device is never opened) or
    malformed file, which is then rewritten: a bad cache costs a probe, never a wrong choice. An entry whose
    timings are not finite positive numbers of known runtimes is dropped (probed again)."""
    try:
        data = read_record(path, CACHE_SCHEMA, "backend probe cache", max_bytes=16 << 20)
    except DarktuneError:
        return {}
    if data["version"] != CACHE_VERSION:
        return {}
    return {k: v for k, v in data["entries"].items() if _valid_entry(v)}


def _valid_entry(entry) -> bool:
    if record_problem(entry, ENTRY_SCHEMA) or not entry["medians_ms"]:
        return False
    timing = Field(float, low=1e-6, nullable=False)  # ms: finite, > 0
    return all(k in BACKENDS and not timing.problem(v) for k, v in entry["medians_ms"].items())


def write_cache(path: Path, key: str, entry: dict) -> None:
    """Add or replace one entry, atomically (readers see the old file or the new one); best effort."""
    entries = read_cache(path)
    entries[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1).encode())
    except (OSError, DarktuneError):
        pass  # a read-only home only costs a probe next time


def installed() -> tuple[list[str], dict[str, str]]:
    """(runtimes that can run here, {runtime: why not} for the others), in BACKENDS order."""
    import cv2

    ok, missing = [], {}
    for name in BACKENDS:
        if name == "onnxruntime":
            try:
                optional_import("onnxruntime", "export")
                optional_import("onnx", "export")  # for the export that feeds it
            except MissingDependency as exc:
                missing[name] = f"{exc.module} not installed"
                continue
        if name == "opencv" and not hasattr(cv2.dnn, "readNetFromDarknet"):
            missing[name] = f"OpenCV {cv2.__version__} has no darknet importer"
            continue
        ok.append(name)
    return ok, missing


def cached_onnx(model, cfg_text: str, weights: str | Path, batch: int | None, note=None) -> Path:
    """A raw-heads ONNX file of `model` in $DARKTUNE_HOME/onnx, exported once per cfg + weights + batch +
    torch version and reused after; `note(text)` is told before an export starts."""
    digest = hashlib.sha256()
    for part in (cfg_text, str(batch), torch.__version__):
        digest.update(part.encode() + b"\0")
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    path = darktune_home() / "onnx" / f"{digest.hexdigest()[:32]}.onnx"
    if path.is_file():
        return path
    if note:
        note(f"exporting this model to ONNX for onnxruntime (once per weights file; kept in {path.parent})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, batch=batch, verify=False, overwrite=True)
        return path
    except (OSError, DarktuneError):  # a home that cannot be written costs an export each run, nothing more
        folder = Path(tempfile.mkdtemp(prefix="darktune-onnx-"))
        atexit.register(shutil.rmtree, folder, True)
        export_onnx(model, folder / path.name, batch=batch, verify=False, overwrite=True)
        return folder / path.name


def build(name: str, cfg, weights, *, size: int | None, device: str, batch: int, threads: int | None,
          note=None) -> Backend:
    """`make_backend`, with the onnxruntime runtime on the cached ONNX export (re-exported once if the
    cached file does not load; `note` is told of an export)."""
    if name != "onnxruntime":
        return make_backend(name, cfg, weights, size=size, device=device, batch=batch, threads=threads)
    optional_import("onnxruntime", "export", "the onnxruntime backend")  # before the export's work
    model, _ = load_darknet(cfg, weights, size=size)
    text = format_cfg(model.spec)
    path = cached_onnx(model, text, weights, batch, note)
    try:
        return OnnxRuntimeBackend(path, model.spec, device, threads)
    except DarktuneError:
        path.unlink(missing_ok=True)  # a damaged cache file: export again
        return OnnxRuntimeBackend(cached_onnx(model, text, weights, batch, note), model.spec, device, threads)


def choose(cfg, weights, *, size: int | None = None, device: str = "cpu", batch: int = 1,
           threads: int | None = None, onnx: str | Path | None = None, note=None,
           run_threads: int | None = None) -> tuple[Backend, Choice]:
    """The backend `--backend auto` runs, built, and why. `note(text)` is told before a probe starts.
    `threads`: the CPU threads the runtimes are timed with (default: all); `run_threads`: those the chosen
    backend is built with (default: `threads`; fewer when several images run side by side,
    `darktune.deploy.pipeline`): the choice is the fastest call on one image either way."""
    run_threads = run_threads or threads
    if onnx is not None:  # an ONNX model runs on onnxruntime only, whatever DARKTUNE_BACKEND says
        return _explicit("onnxruntime", "--onnx given", cfg, weights, size, device, batch, run_threads, onnx)
    forced = os.environ.get(ENV, "").strip()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise DarktuneError(f"{ENV}={forced}: use one of {', '.join(BACKENDS)} or auto")
        return _explicit(forced, f"{ENV}={forced}", cfg, weights, size, device, batch, run_threads, onnx)
    if parse_device(device).type != "cpu":
        return _explicit("torch", f"--device {device}: torch (the probe is for CPUs)", cfg, weights, size,
                         device, batch, run_threads, None)
    if cfg is None or weights is None:
        raise DarktuneError("--cfg and --weights are required (or --onnx MODEL)")
    threads = threads or cpu_count()
    run_threads = run_threads or threads
    spec_text = format_cfg(load_darknet(cfg, size=size)[0].spec)
    key, what = probe_key(spec_text, batch, threads)
    cache = darktune_home() / CACHE_NAME
    runnable, missing = installed()
    entry = read_cache(cache).get(key)
    skipped = "".join(f"; {n} skipped: {why}" for n, why in missing.items())
    if entry is not None:
        medians = {n: float(v) for n, v in entry["medians_ms"].items() if n in runnable}
        for name in sorted(medians, key=medians.get):
            try:
                backend = build(name, cfg, weights, size=size, device=device, batch=batch, threads=run_threads,
                                note=note)
            except DarktuneError:
                continue
            return backend, Choice(name, _reason(medians, f"probed {entry.get('date', '?')}, cached in {cache}")
                                   + skipped, medians)
    if note:
        note(f"first run of this model shape on this machine: timing {', '.join(runnable)} to pick the fastest "
             f"(once; the choice is cached in {cache}; seconds, up to a minute on a busy machine)")
    built, failed = [], {}
    for name in runnable:
        try:
            built.append(build(name, cfg, weights, size=size, device=device, batch=batch, threads=threads,
                               note=note))
        except DarktuneError as exc:
            failed[name] = str(exc)
    if not built:
        raise DarktuneError("no runtime can run this model: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    if note:
        note(f"timing {', '.join(b.name for b in built)}: {PROBE_ITERS} calls each, taking turns")
    medians = probe(built, batch)
    write_cache(cache, key, {"medians_ms": medians, "date": datetime.date.today().isoformat(), **what})
    best = min(medians, key=medians.get)
    skipped += "".join(f"; {n} failed: {why}" for n, why in failed.items())
    backend = next(b for b in built if b.name == best)
    if run_threads != threads:  # probed with all threads, runs with fewer
        backend = build(best, cfg, weights, size=size, device=device, batch=batch, threads=run_threads)
    return backend, Choice(best, _reason(medians, "probed now") + skipped, medians)


def probe(backends: list[Backend], batch: int) -> dict[str, float]:
    """Median wall ms of each backend's network call on a random image-sized batch, runtimes taking turns."""
    h, w = backends[0].net_hw
    x = np.random.default_rng(0).random((batch, 3, h, w), dtype=np.float32)
    times = time_backends(backends, x, iters=PROBE_ITERS, warmup=PROBE_WARMUP, block=PROBE_BLOCK)
    return {name: round(float(np.median(t.wall)) * 1000.0, 2) for name, t in times.items()}


def _reason(medians: dict[str, float], when: str) -> str:
    order = sorted(medians, key=medians.get)
    timings = ", ".join(f"{n} {medians[n]:.1f} ms" for n in order)
    return f"fastest of {len(order)} probed on this machine ({when}): {timings}"


def _explicit(name, reason, cfg, weights, size, device, batch, threads, onnx) -> tuple[Backend, Choice]:
    if onnx is not None or cfg is None or weights is None:  # make_backend says what is missing
        backend = make_backend(name, cfg, weights, size=size, device=device, onnx=onnx, batch=batch,
                               threads=threads)
    else:
        backend = build(name, cfg, weights, size=size, device=device, batch=batch, threads=threads)
    return backend, Choice(name, reason)


def explicit(name: str, cfg, weights, *, size: int | None = None, device: str = "cpu", batch: int = 1,
             threads: int | None = None, onnx: str | Path | None = None) -> tuple[Backend, Choice]:
    """`--backend NAME` as given (onnxruntime on the cached ONNX export unless --onnx is given)."""
    return _explicit(name, f"--backend {name}", cfg, weights, size, device, batch, threads, onnx)
