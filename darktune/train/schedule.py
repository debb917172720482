"""Learning-rate schedule of darknet's `[net]` section, as a pure function of the iteration number.

Darknet updates the weights once per iteration (``batch`` images accumulated over ``subdivisions``) with the
rate ``get_current_rate(net)`` evaluated *after* ``seen`` has counted the iteration's images, so the first
update uses iteration number 1. Here ``learning_rate(net, it)`` is the rate of the update that completes
iteration ``it`` (1-based), the same number darknet prints beside ``rate`` in its log.

Policies (darknet semantics):
  burn_in  for ``it < burn_in``: ``learning_rate * (it / burn_in) ** power`` (before any policy)
  constant ``learning_rate``
  steps    ``learning_rate`` times every ``scales[i]`` whose ``steps[i] <= it``
  step     ``learning_rate * scale ** (it // step)``  (darknet's ``scale`` key is ``gamma`` here)
  exp      ``learning_rate * gamma ** it``
  poly     ``learning_rate * (1 - it / max_batches) ** power``
  sig      ``learning_rate / (1 + exp(gamma * (it - step)))``
  sgdr     one cosine from ``learning_rate`` to 0 over ``max_batches`` (darknet's cycle keys are not parsed)
  random   ``learning_rate * u ** power`` with ``u`` a pure function of (seed, it) instead of ``rand()``
"""

from __future__ import annotations

import math
import random as _random

from darktune.darknet.cfg import NetParams
from darktune.errors import DarktuneError


def learning_rate(net: NetParams, iteration: int, base_lr: float | None = None, max_batches: int | None = None,
                  seed: int = 0) -> float:
    """Rate used by the update that completes `iteration` (1-based). `base_lr` overrides `net.learning_rate`;
    `max_batches` overrides `net.max_batches` (poly and sgdr need a positive one)."""
    if iteration < 0:
        raise DarktuneError(f"iteration must be >= 0, got {iteration}")
    lr = net.learning_rate if base_lr is None else base_lr
    if net.burn_in > 0 and iteration < net.burn_in:
        return lr * (iteration / net.burn_in) ** net.power
    total = max_batches if max_batches is not None else net.max_batches
    policy = net.policy
    if policy == "constant":
        return lr
    if policy == "steps":
        for step, scale in zip(net.steps, net.scales):
            if step > iteration:
                break
            lr *= scale
        return lr
    if policy == "step":
        return lr * net.gamma ** (iteration // max(1, net.step))
    if policy == "exp":
        return lr * net.gamma ** iteration
    if policy == "sig":
        z = net.gamma * (iteration - net.step)
        return lr / (1.0 + math.exp(z)) if z < 700 else 0.0
    if policy in ("poly", "sgdr"):
        if not total or total <= 0:
            raise DarktuneError(f"[net] policy={policy} needs max_batches > 0 (or --iterations)")
        frac = min(1.0, iteration / total)
        if policy == "poly":
            return lr * (1.0 - frac) ** net.power
        return 0.5 * lr * (1.0 + math.cos(math.pi * frac))
    if policy == "random":
        u = _random.Random(f"{seed}:{iteration}").random()
        return lr * u ** net.power
    raise DarktuneError(f"[net] unknown policy '{policy}'")


def describe(net: NetParams, base_lr: float | None = None) -> str:
    """One line for logs: the schedule in darknet's words."""
    lr = net.learning_rate if base_lr is None else base_lr
    text = f"lr {lr:g}, policy {net.policy}"
    if net.burn_in:
        text += f", burn_in {net.burn_in} (power {net.power:g})"
    if net.policy == "steps" and net.steps:
        text += ", steps " + ",".join(f"{s}x{c:g}" for s, c in zip(net.steps, net.scales))
    return text
