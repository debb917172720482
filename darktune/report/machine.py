"""The machine and versions lines of a report: where the runs ran (from their summaries) and where the report
was written (python, torch, CPU / GPU names, darktune version, date)."""

from __future__ import annotations

import datetime
import os
import platform

from darktune.machine import cpu_name
from darktune.report.data import ExperimentData
from darktune import __version__


def gpu_names() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA setup must not stop a report
        pass
    return []


def machine_lines(data: ExperimentData | None = None) -> list[str]:
    import torch


    devices = sorted({str(r.summary.get("device")) for r in (data.runs if data else []) if r.summary.get("device")})
    gpus = gpu_names()
    lines = [
        f"darktune {__version__}; Python {platform.python_version()}; torch {torch.__version__} "
        f"({torch.get_num_threads()} CPU threads)",
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); GPU: {', '.join(gpus) if gpus else 'none'}",
        f"OS: {platform.platform()}",
        f"Report written {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]
    if devices:
        lines.insert(2, f"Runs trained on: {', '.join(devices)}")
    return lines
