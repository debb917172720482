"""Device names given on the command line (``--device``): the one check every command that takes a device uses.

darktune runs on ``cpu``, ``cuda`` (the current GPU) or ``cuda:N`` (GPU N). `resolve_device` turns such a name
into a `torch.device` after checking that this machine can run it; anything else (``gpu``, ``mps``, ``cuda:7``
on a one-GPU machine, CUDA on a CPU-only torch build) is a `DarktuneError` naming the option and the value, so
the user sees one line instead of torch's traceback. `parse_device` checks the form only, for runtimes other
than torch (ONNX Runtime, OpenCV DNN) that have their own CUDA support.

Use: ``device = resolve_device(args.device)`` before any work or file writes; `option` names the flag in the
message, e.g. ``resolve_device(d, "--devices")`` for each entry of a comma-separated list.
"""

from __future__ import annotations

import os
import re

import torch

from darktune.errors import DarktuneError

VALID_FORMS = "cpu, cuda or cuda:N (N: a GPU index, e.g. cuda:0)"
_FORM = re.compile(r"cpu|cuda(?::(\d+))?")


def parse_device(text: str | torch.device, option: str = "--device") -> torch.device:
    """The `torch.device` that `text` names (cpu, cuda or cuda:N); DarktuneError for any other text. Checks the
    form only: whether this machine has that device is `resolve_device`'s question."""
    text = str(text)
    if not _FORM.fullmatch(text):
        raise DarktuneError(f"{option} {text!r} is not a device: use {VALID_FORMS}")
    return torch.device(text)


def resolve_device(text: str | torch.device, option: str = "--device") -> torch.device:
    """The `torch.device` that `text` names, checked to exist here: a CUDA device needs a CUDA build of torch,
    a visible GPU and, for cuda:N, N below the number of GPUs torch sees. Raises DarktuneError naming `option`
    and the value otherwise."""
    device = parse_device(text, option)
    if device.type != "cuda":
        return device
    if not torch.backends.cuda.is_built():
        raise DarktuneError(f"{option} {text}: this torch build ({torch.__version__}) has no CUDA support; use cpu, "
                            "or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise DarktuneError(f"{option} {text}: torch sees no CUDA device (no GPU or driver, or "
                            "CUDA_VISIBLE_DEVICES hides them); use cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        seen = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise DarktuneError(f"{option} {text}: no such GPU; torch sees {count} CUDA device"
                            f"{'s' * (count != 1)} ({seen})")
    return device


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
