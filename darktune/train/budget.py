"""A wall-clock budget for a run (``time``, e.g. ``--time 15m``): the schedule fitted to the time there is.

The budget counts from the start of `train` (start-up, evaluations and checkpoints included) and the run ends
within it with a final evaluation. The first `PROBE` iterations measure the speed, as training seconds per image
pixel (the first iteration, which builds the kernels, is left out): the cost of an iteration is that times
``batch x size^2``, so multi-scale's sizes (known in advance: a function of the seed and the iteration) are
costed one by one. From the speed, the seconds of an evaluation (measured on the start weights, else estimated
as a forward pass, a third of a training pass) and a reserve for the end of the run, the number of iterations N
is fitted; it is fitted again at every evaluation and every `REFIT_EVERY` iterations from the speed so far (the
machine may be shared), up to the last tenth of the run, and never grows past ``iterations`` when that is
given. With N fitted, unless the run
sets them itself (``burn_in``, ``steps``, ``eval_every``/``eval_at``):

  * burn-in: `BURN_IN_FRACTION` of N, at least min(`MIN_BURN_IN`, N/4) (yolov3-tiny.cfg's 1000 would be most of
    a short run; with the lr at full strength from iteration 2, a 28-iteration run's box loss jumped 60x at
    iteration 7 on MOT17-mini, docs/real_data.md);
  * lr steps: x0.1 at `STEPS` (0.8 and 0.9) of N, darknet's usual steps=80%,90% of max_batches;
  * multi-scale: darknet's largest size for the last min(100, `LAST_FRACTION` of N) iterations instead of the
    last 100;
  * evaluations: the start weights, every N/`EVALUATIONS` iterations (N of the first fit) and at N.

Before each iteration the run checks that the iteration, the evaluations left and the reserve still fit; when
they do not, that iteration does not start: the last one done becomes the end (final evaluation, files).
The fitted N and the measured speed are part of the run's state, so a resume goes on with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from darktune.train.inputs import MULTI_SCALE_LAST, network_size

PROBE = 5  # iterations before the first fit (iteration 1 is not timed)
REFIT_EVERY = 25
BURN_IN_FRACTION = 0.05
MIN_BURN_IN = 10
STEPS = (0.8, 0.9)
LAST_FRACTION = 0.1
EVALUATIONS = 5
RESERVE_S = 4.0  # the end of a run: last checkpoint, freeze proof, chart, summary
RESERVE_FRACTION = 0.02  # and a margin for the noise of a shared machine
FORWARD_SHARE = 1 / 3  # an evaluation image costs about a third of a training image (forward only)
PROVISIONAL = 1_000_000  # the run's length until the first fit


@dataclass
class Budget:
    """The budget's measurements (plain values: the checkpoint's state["budget"])."""

    seconds: float
    cap: int | None = None  # --iterations given with --time: at most that many
    timed_s: float = 0.0  # training seconds of the timed iterations
    timed_px: float = 0.0  # image pixels of the timed iterations
    eval_s: float | None = None  # seconds of one evaluation (measured)
    iterations: int | None = None  # fitted N
    eval_every: int | None = None  # N / EVALUATIONS at the first fit
    burn_in: int | None = None  # BURN_IN_FRACTION x N at the first fit

    def seconds_per_px(self) -> float | None:
        return self.timed_s / self.timed_px if self.timed_px > 0 else None

    def record(self, iteration: int, seconds: float, batch: int, size: int) -> None:
        if iteration > 1:  # iteration 1 builds the kernels
            self.timed_s += seconds
            self.timed_px += batch * size * size

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, saved: dict | None, seconds: float, cap: int | None) -> Budget:
        b = cls(**saved) if saved else cls(seconds)
        b.seconds, b.cap = seconds, cap  # a resume may change the budget
        return b


def burn_in_for(n: int) -> int:
    """The burn-in of a fitted run of `n` iterations."""
    return max(1, round(BURN_IN_FRACTION * n), min(MIN_BURN_IN, n // 4))


def last_stretch(n: int) -> int:
    """Iterations at the largest multi-scale size at the end of a fitted run of `n` iterations."""
    return min(MULTI_SCALE_LAST, round(LAST_FRACTION * n))


def size_iterations(n: int) -> int:
    """The `iterations` to give `network_size` so that its last stretch is `last_stretch(n)`: it makes the last
    100 iterations before that number the largest size."""
    return n - last_stretch(n) + MULTI_SCALE_LAST


def fit(b: Budget, *, elapsed: float, step: int, batch: int, seed: int, base: int, multi_scale, largest: int,
        evals_left: int, eval_px: float) -> int:
    """The most iterations N > step whose training, the `evals_left` evaluations (each `eval_px` image pixels:
    valid images x base^2) and the reserve fit the budget; at least step+1, at most the cap."""
    per_px = b.seconds_per_px()
    if per_px is None:
        return b.iterations or step + 1
    eval_s = b.eval_s if b.eval_s is not None else eval_px * per_px * FORWARD_SHARE
    left = (b.seconds * (1 - RESERVE_FRACTION) - RESERVE_S - elapsed - max(1, evals_left) * eval_s) / (batch * per_px)
    # left: what is left for training, in pixels per image. prefix[k]: the squared sizes of iterations
    # step+1..step+k without the last-stretch rule; the last L iterations then cost largest^2 each instead
    prefix = [0.0]
    while prefix[-1] <= left and len(prefix) <= 100_000:
        size = network_size(seed, step + len(prefix) - 1, base, multi_scale)  # 0-based index of the iteration
        prefix.append(prefix[-1] + size * size)
    k = len(prefix) - 1
    while k > 1:
        stretch = min(k, last_stretch(step + k))
        if prefix[k] + stretch * largest * largest - (prefix[k] - prefix[k - stretch]) <= left:
            break
        k -= 1
    n = step + max(1, k)
    return min(n, b.cap) if b.cap else n


def next_fits(b: Budget, *, elapsed: float, iteration_px: float, evals_left: int, eval_px: float) -> bool:
    """Whether the next iteration (its image pixels), the evaluations left and the reserve fit what is left."""
    per_px = b.seconds_per_px()
    if per_px is None:
        return True
    eval_s = b.eval_s if b.eval_s is not None else eval_px * per_px * FORWARD_SHARE
    return elapsed + iteration_px * per_px + max(1, evals_left) * eval_s + RESERVE_S <= b.seconds
