"""This machine as figures name it: the CPU model, the load average, the versions of the libraries that do the
arithmetic. Read by the benchmarks, the runtime probe's cache key and the report's machine lines."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows, else 'unknown CPU'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> float | None:
    """1-minute load average (other processes competing for the CPUs make every timing slower), None where
    the OS does not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def library_versions() -> dict[str, str | None]:
    """torch, OpenCV and onnxruntime versions (None: onnxruntime not installed). Imports them: call it where
    they are loaded anyway."""
    import cv2
    import torch

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"torch": torch.__version__, "opencv": cv2.__version__, "onnxruntime": ort}


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes a process may still allocate: the kernel's MemAvailable (Linux /proc/meminfo), or less when a cgroup
    (v2 memory.max, v1 limit_in_bytes) caps this process's group; None where the OS does not say."""
    have = None
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 says "no limit" with a huge number
            have = max(0, limit - usage) if have is None else min(have, max(0, limit - usage))
    return have
