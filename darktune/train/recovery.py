"""Recovery from a loss spike or a non-finite loss: back to the last good state, a lower lr for a while.

A run keeps, in memory, snapshots of what an update changes (the model's parameters and batch-norm statistics,
the optimizer's momentum): a *candidate* every `SNAPSHOT_EVERY` iterations, which becomes the *good* snapshot
once `SNAPSHOT_EVERY` more iterations have passed without a spike (so the state restored was followed by healthy
steps, not the start of the blow-up). An iteration is bad when its loss is not finite, or when ``spike_factor``
> 0 and one of its terms (total, box, objectness, class) per image, scaled to the run's base size (``x * (base /
size)^2``: the objectness term grows with the number of grid cells, so a multi-scale batch at 608 px is not taken
for a spike at 416), is more than ``spike_factor`` times that term's median over the last `HISTORY` good
iterations (once there are `MIN_HISTORY`; a term's median counts as at least `FLOOR` of the total's, so a term
near 0, e.g. the class term of one class, is not a spike when it moves a little). The terms are watched apart
because a blow-up often starts in the small box term while the total, ruled by objectness, barely moves.
A bad iteration is not applied; the run goes back to the good snapshot (or the candidate, before the first
good one), multiplies the lr by `LR_DROP` (compounding when a recovery follows another before the lr is back)
and brings it back linearly to the schedule's over `RAMP` iterations; the iteration count goes on (batches
are a function of the iteration, so the next batches are new ones). train.log and metrics.jsonl say so.
``max_bad_steps`` bad iterations in a row still stop the run (last resort: e.g. broken labels give NaN at
any lr).

`GuardState` is plain data and goes into the checkpoint (snapshots included), so a resumed run makes the same
decisions as an unbroken one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, fields

import torch

SNAPSHOT_EVERY = 10  # iterations between snapshots
HISTORY = 20  # good iterations whose median is the spike reference
MIN_HISTORY = 5  # no spike test before this many good iterations (non-finite losses are always bad)
TERMS = ("loss", "box", "obj", "cls")  # what is watched, in the order of a history row
FLOOR = 0.01  # a term's median counts as at least this fraction of the total's
LR_DROP = 0.5  # lr multiplier right after a recovery
RAMP = 50  # iterations over which the lr returns to the schedule's after a recovery


@dataclass
class GuardState:
    """What the guard carries across a resume (the checkpoint's state["guard"])."""

    history: list = field(default_factory=list)  # [total, box, obj, cls] per image, scaled, of good iterations
    recoveries: int = 0
    drop: float = 1.0  # lr multiplier right after the last recovery
    drop_at: int | None = None  # iteration of the last recovery
    good: dict | None = None  # {"step", "model", "optimizer"}
    candidate: dict | None = None

    def to_checkpoint(self, step: int) -> dict:
        """The checkpoint's state["guard"]; a candidate taken at the checkpoint's own iteration is the
        checkpoint's model and optimizer, so it is marked rather than stored twice."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: the snapshots are not copied
        if self.candidate is not None and self.candidate["step"] == step:
            out["candidate"] = {"step": step, "is_checkpoint": True}
        return out

    @classmethod
    def from_checkpoint(cls, saved: dict | None, model: torch.nn.Module, opt) -> GuardState:
        """The guard of a resumed run (after its model and optimizer are loaded); an older checkpoint has none:
        a fresh guard with a candidate of the loaded state."""
        known = {f.name for f in fields(cls)}
        g = cls(**{k: v for k, v in (saved or {}).items() if k in known})
        if g.candidate is not None and g.candidate.get("is_checkpoint"):
            g.candidate = snapshot(model, opt, g.candidate["step"])
        return g


def lr_scale(g: GuardState, iteration: int) -> float:
    """The multiplier of the schedule's lr at `iteration`: 1 until a recovery, then LR_DROP-ed and ramped back."""
    if g.drop_at is None or g.drop >= 1.0:
        return 1.0
    return g.drop + (1.0 - g.drop) * min(1.0, (iteration - g.drop_at) / RAMP)


def scaled(values: list[float], size: int, base: int) -> list[float]:
    return [v * (base / size) ** 2 for v in values]


def is_spike(g: GuardState, values: list[float], factor: float) -> tuple[str | None, float]:
    """(the term that spiked or None, its ratio to its median) for finite scaled values [total, box, obj, cls]."""
    if factor <= 0 or len(g.history) < MIN_HISTORY:
        return None, 0.0
    medians = [statistics.median(column) for column in zip(*g.history)]
    floor = FLOOR * medians[0]
    for term, value, median in zip(TERMS, values, medians):
        reference = max(median, floor, 1e-12)
        if value > factor * reference:
            return term, value / reference
    return None, 0.0


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def snapshot(model: torch.nn.Module, opt, step: int) -> dict:
    """A copy (on the CPU) of what an update changes."""
    return {"step": step, "model": _clone(model.state_dict()), "optimizer": _clone(opt.state_dict())}


def restore(model: torch.nn.Module, opt, snap: dict) -> None:
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["optimizer"])


def take_snapshot(g: GuardState, model: torch.nn.Module, opt, iteration: int) -> None:
    """A new candidate (after a good iteration that is a multiple of SNAPSHOT_EVERY, and at the start); the
    previous candidate, SNAPSHOT_EVERY healthy iterations old, becomes the good snapshot."""
    if g.candidate is not None and g.candidate["step"] <= iteration - SNAPSHOT_EVERY:
        g.good = g.candidate
    g.candidate = snapshot(model, opt, iteration)


def recover(g: GuardState, model: torch.nn.Module, opt, iteration: int) -> int | None:
    """Go back to the good snapshot (else the candidate); returns its iteration (None: nothing to go back to).
    The lr drops to LR_DROP x the multiplier in force now."""
    target = g.good or g.candidate
    g.drop = LR_DROP * lr_scale(g, iteration)
    g.drop_at = iteration
    g.recoveries += 1
    if target is None:
        return None
    restore(model, opt, target)
    g.good, g.candidate = target, None  # the same place again if the next try fails too
    # the losses recorded after that state (the start of the blow-up) leave the spike reference
    g.history = g.history[:max(0, len(g.history) - (iteration - 1 - target["step"]))]
    return target["step"]


def describe(loss: float, term: str | None = None, ratio: float = 0.0, size: int = 0) -> str:
    """Why an iteration was bad, for the log."""
    if not math.isfinite(loss):
        return "non-finite loss"
    what = "loss" if term == "loss" else f"{ {'box': 'box', 'obj': 'objectness', 'cls': 'class'}[term]} term"
    return f"loss spike: the {what} at {size} px is {ratio:.0f}x its median over the last good iterations"
