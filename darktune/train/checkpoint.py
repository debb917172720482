"""Resumable training checkpoints: an explicit dict, written atomically, loaded without executing anything.

`RUN/checkpoint.pt` holds ``{"format", "model", "optimizer", "step", "config", "rng", "loader", "state"}``:
model and optimizer state dicts, the number of finished iterations, the run's TrainConfig as plain values,
the RNG states of python / numpy / torch (as lists and tensors so ``torch.load(weights_only=True)`` accepts
them), the loader position (epoch, index in the epoch) and the run's running figures (best mAP, time to
target, training seconds). It is serialised in memory and written with temp file + fsync + rename, so a
crash at any byte leaves the previous checkpoint in place.

Read back, every entry is checked before the trainer uses it (`load_checkpoint`: types, ranges, finiteness of
the step, the config, the loader position, the RNG states and the running figures; `load_model_state`: every
tensor's name and shape against the network the cfg builds now), so a tampered or foreign checkpoint, or a cfg
edited since the run started, is one line naming the file, never a traceback nor a run that "finished".
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes
from darktune.records import Field, record_problem

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
    problem = _payload_problem(payload)
    if problem:
        raise DarktuneError(f"checkpoint is damaged or was edited: {problem}", path=str(path))
    return payload


MAX_STEP = 100_000_000  # no darknet schedule comes near (the study's longest run: 2,000 iterations)
_TOP = {"model": Field(dict, nullable=False), "optimizer": Field(dict, nullable=False),
        "step": Field(int, 0, MAX_STEP, nullable=False), "config": Field(dict, nullable=False),
        "rng": Field(dict, nullable=False), "loader": Field(dict, nullable=False),
        "state": Field(dict, nullable=False)}
_CONFIG = {"iterations": Field(int, 1, MAX_STEP)}
_LOADER = {"epoch": Field(int, 0, MAX_STEP), "index": Field(int, 0)}
_STATE = {"best_map": Field(float, 0, 1), "final_map": Field(float, 0, 1), "time_to_target": Field(dict),
          "maps": Field(list), "train_seconds": Field(float, 0), "elapsed_seconds": Field(float, 0),
          "skipped_steps": Field(int, 0), "bad_in_row": Field(int, 0), "schedule_offset": Field(int, 0),
          "init": Field(dict), "input": Field(str), "digests_before": Field(dict),
          "digests_at_unfreeze": Field(dict), "scaler": Field(dict), "last_saved_step": Field(int, 0)}


def _payload_problem(payload: dict) -> str | None:
    """What makes a loaded checkpoint unusable (None when nothing)."""
    for where, record, schema in (("", payload, _TOP), ("config ", payload["config"], _CONFIG),
                                  ("loader ", payload["loader"], _LOADER), ("state ", payload["state"], _STATE)):
        problem = record_problem(record, schema)
        if problem:
            return where + problem
    step, planned = payload["step"], payload["config"].get("iterations")
    if planned is not None and step > planned:
        return f"step {step:,} is past the run's {planned:,} iterations"
    point = Field(float, 0, 1, nullable=False)
    for item in payload["state"].get("maps") or []:
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or Field(int, 0, step).problem(item[0])
                or point.problem(item[1])):
            return f"state 'maps' holds {item!r:.40} (want [iteration <= step, mAP in [0, 1]])"
    if not all(isinstance(v, torch.Tensor) for v in payload["model"].values()):
        return "'model' holds something other than tensors"
    return _rng_problem(payload["rng"])


def _rng_problem(rng: dict) -> str | None:
    python, numpy_state = rng.get("python"), rng.get("numpy")
    ok = (isinstance(python, (list, tuple)) and len(python) == 3 and isinstance(python[1], (list, tuple))
          and len(python[1]) == 625 and all(isinstance(v, int) for v in python[1])
          and isinstance(numpy_state, (list, tuple)) and len(numpy_state) == 5
          and isinstance(numpy_state[1], torch.Tensor) and numpy_state[1].numel() == 624
          and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8)
    return None if ok else "'rng' is not the random-number states darktune writes"


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """`model.load_state_dict(state)` after checking every tensor's name and shape: a cfg edited since the run
    started (another filter count, a layer more) is one line naming the checkpoint and the first difference."""
    mine = model.state_dict()
    extra = sorted(set(state) - set(mine))
    lacking = sorted(set(mine) - set(state))
    shapes = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if extra or lacking or shapes:
        first = (f"{shapes[0]} is {tuple(state[shapes[0]].shape)} in the checkpoint, {tuple(mine[shapes[0]].shape)} "
                 "in the network" if shapes else f"{(extra or lacking)[0]} is only in the "
                 f"{'checkpoint' if extra else 'network'}")
        raise DarktuneError(f"the checkpoint does not fit the network the cfg builds now ({first}): was the cfg "
                            "edited since the run started? Resume with the run's cfg (RUN/model.cfg) or start a new "
                            "run", path=str(path))
    model.load_state_dict(state)


def load_optimizer_state(optimizer, state: dict, path: str | Path) -> None:
    """`optimizer.load_state_dict(state)`, a mismatch being one line naming the checkpoint."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise DarktuneError(f"the checkpoint's optimizer state does not fit this run ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})", path=str(path)) from None
