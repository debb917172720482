"""Successive halving on time to a target mAP: the decisions of `darktune recipe`, as pure functions of the trials'
curves (no files, no training), so that each rule is tested on its own.

Owns: `Curve` (one trial's evaluations against training seconds), `Rung` (what one rung decided), `decide`
(after a rung: which trials go on and to how many iterations), `fit_budget` (shrink a rung to the time left) and
`seed_verdict` (how sure the winner is across seeds).

The objective is the training seconds to the first evaluation at or above the target (evaluations and
checkpoints are not counted, as in the experiment report). After each rung:
- a trial that reached the target is done: its time is known;
- a trial that did not, and has trained as long as the best time already known, can no longer win: stopped;
- after the first rung (equal iterations), the candidates that trained for fewer seconds (frozen layers) are
  first trained on to the seconds of the longest, so that the comparison is at equal seconds;
- the others are ranked on mAP at equal seconds (the best mAP each had reached by the horizon: the fewest
  seconds any of them trained), and the best 1/eta of the rung's trials go on, each to eta times the horizon in
  its own seconds (a trial with frozen layers gets more iterations for the same seconds), never past the best
  time known, nor past `max_iterations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Curve:
    """One trial as its metrics say: evaluations as (iteration, training seconds, mAP), the iterations and
    training seconds done, and whether it failed."""

    name: str
    evals: tuple[tuple[int, float, float], ...]
    iterations: int
    seconds: float
    failed: bool = False

    def reached(self, target: float) -> tuple[int, float] | None:
        """(iteration, seconds) of the first evaluation at or above the target, or None."""
        for it, s, m in sorted(self.evals):
            if m >= target:
                return it, s
        return None

    def map_by(self, seconds: float) -> float:
        """The best mAP evaluated within `seconds` of training (0 when none was)."""
        return max((m for _, s, m in self.evals if s <= seconds + 1e-9), default=0.0)

    def best_map(self) -> float:
        return max((m for _, _, m in self.evals), default=0.0)

    @property
    def seconds_per_iteration(self) -> float | None:
        return self.seconds / self.iterations if self.iterations > 0 and self.seconds > 0 else None


@dataclass
class Rung:
    """What one rung decided: `go_on` maps each trial that trains further to its next iteration count; `stopped`
    maps the others to why; `horizon_s` is the equal-seconds point the ranking used."""

    go_on: dict[str, int] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    horizon_s: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # mAP at the horizon, of the trials ranked


def best_time(curves: list[Curve], target: float) -> tuple[str, float] | None:
    """(trial, seconds) of the fastest trial to the target, or None when none reached it."""
    times = [(c.reached(target)[1], c.name) for c in curves if not c.failed and c.reached(target)]
    return (min(times)[1], min(times)[0]) if times else None


def _round_up(iterations: float, step: int) -> int:
    return max(step, int(math.ceil(iterations / step - 1e-9)) * step)


def decide(rung: list[Curve], known: list[Curve], target: float, eta: int, step: int,
           max_iterations: int) -> Rung:
    """After a rung (`rung`: the trials it trained, as they are now; `known`: every trial of the search, for the
    best time so far): which go on, to how many iterations (a multiple of `step`, the evaluation interval)."""
    out = Rung()
    best = best_time(known, target)
    contenders = []
    for c in rung:
        if c.failed:
            out.stopped[c.name] = "failed"
        elif c.reached(target):
            out.stopped[c.name] = "reached the target"
        elif best and c.seconds >= best[1]:
            out.stopped[c.name] = (f"not at the target after {c.seconds:.1f} s; {best[0]} reached it in "
                                   f"{best[1]:.1f} s")
        elif c.iterations >= max_iterations:
            out.stopped[c.name] = f"at --max-iterations ({max_iterations}) without reaching the target"
        else:
            contenders.append(c)
    if not contenders:
        return out
    if _equalize(contenders, out, best, step, max_iterations):
        return out
    horizon = min(c.seconds for c in contenders)
    out.horizon_s = horizon
    out.scores = {c.name: c.map_by(horizon) for c in contenders}
    ranked = sorted(contenders, key=lambda c: (-out.scores[c.name], -c.best_map(), c.name))
    keep = max(1, math.ceil(len(rung) / eta))
    for i, c in enumerate(ranked):
        if i >= keep:
            out.stopped[c.name] = (f"mAP {100 * out.scores[c.name]:.1f} at {horizon:.1f} s, below the best "
                                   f"{keep} of {len(rung)} at equal seconds")
            continue
        seconds = eta * horizon if best is None else min(eta * horizon, best[1])
        out.go_on[c.name] = _iterations_for(c, seconds, step, max_iterations)
    return out


def _iterations_for(c: Curve, seconds: float, step: int, max_iterations: int) -> int:
    """Iterations for `seconds` of training at the trial's own speed: a multiple of `step`, at least one more
    evaluation interval, at most `max_iterations`."""
    spi = c.seconds_per_iteration or 1.0
    return min(max_iterations, max(c.iterations + step, _round_up(seconds / spi, step)))


def _equalize(contenders: list[Curve], out: Rung, best: tuple[str, float] | None, step: int,
              max_iterations: int) -> bool:
    """The first rung gives every candidate the same iterations, so the cheap ones (frozen layers) trained for
    fewer seconds: before any is ranked, those are trained on to the seconds of the longest (never past the
    best time known), and the rest wait (go on with the iterations they have). True when that is the decision."""
    horizon = max(c.seconds for c in contenders)
    if best is not None:
        horizon = min(horizon, best[1])
    short = [c for c in contenders if c.seconds < 0.8 * horizon and c.iterations < max_iterations]
    if not short:
        return False
    out.horizon_s = horizon
    for c in contenders:
        out.go_on[c.name] = _iterations_for(c, horizon, step, max_iterations) if c in short else c.iterations
    return True


def fit_budget(rung: Rung, curves: dict[str, Curve], remaining_s: float, slots: int, step: int) -> tuple[Rung, bool]:
    """The rung shrunk so that its estimated wall seconds (the added iterations at each trial's own speed, over
    `slots` trials at a time) fit `remaining_s`; (rung, False) when not even one more evaluation interval fits."""
    def cost(go_on: dict[str, int]) -> float:
        total = sum((n - curves[k].iterations) * (curves[k].seconds_per_iteration or 0.0) for k, n in go_on.items())
        return total / max(1, slots)

    if not rung.go_on or cost(rung.go_on) <= remaining_s:
        return rung, bool(rung.go_on)
    scale = remaining_s / cost(rung.go_on)
    go_on = {}
    for k, n in rung.go_on.items():
        done = curves[k].iterations
        more = int((n - done) * scale) // step * step
        if more >= step or n == done:  # n == done: a trial that waits this rung out
            go_on[k] = done + more
    shrunk = Rung(go_on, dict(rung.stopped), rung.horizon_s, dict(rung.scores))
    for k in rung.go_on:
        if k not in go_on:
            shrunk.stopped[k] = "the budget ran out"
    return shrunk, any(go_on[k] > curves[k].iterations for k in go_on)


@dataclass(frozen=True)
class SeedVerdict:
    sure: bool
    text: str


def _range(times: list[float]) -> str:
    done = sorted(t for t in times if math.isfinite(t))
    missed = len(times) - len(done)
    text = f"{done[0]:.1f}–{done[-1]:.1f} s" if len(done) > 1 else (f"{done[0]:.1f} s" if done else "")
    if missed:
        text += (", " if text else "") + f"{missed} of {len(times)} seeds not within the limit"
    return text


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        return math.inf
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def seed_verdict(winner: str, times: dict[str, list[float]]) -> SeedVerdict:
    """How sure the winner is, from the seconds to target of each finalist's seeds (inf: a seed that did not get
    there): sure when every seed of the winner got there before any seed of the runner-up (with one seed each:
    never sure)."""
    mine = times[winner]
    others = sorted((k for k in times if k != winner), key=lambda k: median(times[k]))
    if len(mine) < 2:
        return SeedVerdict(False, f"one seed only ({_range(mine)}): not checked against the seed-to-seed noise")
    if not others:
        return SeedVerdict(all(math.isfinite(t) for t in mine),
                           f"the only finalist; its {len(mine)} seeds: {_range(mine)}")
    rival = others[0]
    theirs = times[rival]
    if max(mine) < min(theirs):
        return SeedVerdict(True, f"every one of its {len(mine)} seeds reached the target sooner ({_range(mine)}) "
                                 f"than any seed of the runner-up {rival} ({_range(theirs)})")
    return SeedVerdict(False, f"its seeds ({_range(mine)}) overlap those of the runner-up {rival} "
                              f"({_range(theirs)}): the difference is within the seed-to-seed noise, either is a "
                              "good choice")
