"""Resumable training checkpoints: an explicit dict, written atomically, loaded without executing anything.

`RUN/checkpoint.pt` holds ``{"format", "model", "optimizer", "step", "config", "rng", "loader", "state"}``:
model and optimizer state dicts, the number of finished iterations, the run's TrainConfig as plain values,
the RNG states of python / numpy / torch (as lists and tensors so ``torch.load(weights_only=True)`` accepts
them), the loader position (epoch, index in the epoch) and the run's running figures (best mAP, time to
target, training seconds). It is serialised in memory and written with temp file + fsync + rename, so a
crash at any byte leaves the previous checkpoint in place.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes

FORMAT = "darktune-checkpoint-1"


def rng_state() -> dict:
    """Python, numpy and torch RNG states as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), list(internal), gauss],
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, step: int,
                    config: dict, loader: dict, state: dict) -> Path:
    """Write the checkpoint atomically (the old file stays until the new one is complete on disk)."""
    payload = {
        "format": FORMAT,
        "model": _to_cpu(model.state_dict()),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "step": int(step),
        "config": config,
        "rng": rng_state(),
        "loader": loader,
        "state": state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True; a missing, cut or foreign file is a DarktuneError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DarktuneError("no checkpoint to resume from (run without --resume first)", path=str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, zip errors, EOFError...
        raise DarktuneError(f"checkpoint is damaged or not a darktune checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})", path=str(path)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DarktuneError(f"not a {FORMAT} file", path=str(path))
    missing = [k for k in ("model", "optimizer", "step", "config", "rng", "loader", "state") if k not in payload]
    if missing:
        raise DarktuneError(f"checkpoint lacks {missing}", path=str(path))
    return payload
