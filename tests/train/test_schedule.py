"""darknet's learning-rate schedule: burn_in with power, steps/scales and the other policies."""

import dataclasses
import itertools
import math

import pytest

from darktune.darknet.cfg import NetParams
from darktune.errors import DarktuneError
from darktune.train.schedule import describe, learning_rate


def net(**kw) -> NetParams:
    return NetParams(**kw)


def test_burn_in_power_4_then_full_rate():
    n = net(learning_rate=0.001, burn_in=1000, power=4, policy="constant")
    assert learning_rate(n, 0) == 0.0
    assert learning_rate(n, 1) == pytest.approx(0.001 * (1 / 1000) ** 4, rel=1e-12)  # darknet's first update
    assert learning_rate(n, 500) == pytest.approx(0.001 / 16, rel=1e-12)
    assert learning_rate(n, 999) == pytest.approx(0.001 * 0.999 ** 4, rel=1e-12)
    assert learning_rate(n, 1000) == 0.001
    rates = [learning_rate(n, i) for i in range(1, 1001)]
    assert all(a < b for a, b in itertools.pairwise(rates))


def test_steps_scales_apply_at_the_step_itself():
    n = net(learning_rate=0.01, burn_in=10, policy="steps", steps=(400, 450), scales=(0.1, 0.5))
    assert learning_rate(n, 10) == 0.01
    assert learning_rate(n, 399) == 0.01
    assert learning_rate(n, 400) == pytest.approx(0.001)
    assert learning_rate(n, 449) == pytest.approx(0.001)
    assert learning_rate(n, 450) == pytest.approx(0.0005)
    assert learning_rate(n, 10_000) == pytest.approx(0.0005)


def test_burn_in_wins_over_steps_inside_it():
    n = net(learning_rate=0.01, burn_in=100, policy="steps", steps=(50,), scales=(0.1,))
    assert learning_rate(n, 50) == pytest.approx(0.01 * 0.5 ** 4)
    assert learning_rate(n, 100) == pytest.approx(0.001)


def test_other_policies():
    assert learning_rate(net(learning_rate=0.1, policy="step", step=10, gamma=0.5), 25) == pytest.approx(0.025)
    assert learning_rate(net(learning_rate=0.1, policy="exp", gamma=0.9), 3) == pytest.approx(0.1 * 0.9 ** 3)
    poly = net(learning_rate=0.1, policy="poly", power=2, max_batches=100)
    assert learning_rate(poly, 50) == pytest.approx(0.025)
    assert learning_rate(poly, 50, max_batches=200) == pytest.approx(0.1 * 0.75 ** 2)
    sgdr = net(learning_rate=0.1, policy="sgdr", max_batches=100)
    assert learning_rate(sgdr, 0) == pytest.approx(0.1) and learning_rate(sgdr, 100) == pytest.approx(0.0)
    assert learning_rate(sgdr, 50) == pytest.approx(0.05)
    sig = net(learning_rate=0.1, policy="sig", gamma=1.0, step=10)
    assert learning_rate(sig, 10) == pytest.approx(0.05)
    rnd = net(learning_rate=0.1, policy="random", power=1)
    assert learning_rate(rnd, 7, seed=3) == learning_rate(rnd, 7, seed=3)  # a pure function of (seed, it)
    assert 0 <= learning_rate(rnd, 7) <= 0.1


def test_overrides_and_errors():
    n = net(learning_rate=0.001, burn_in=0, policy="steps", steps=(5,), scales=(0.1,))
    assert learning_rate(n, 6, base_lr=0.02) == pytest.approx(0.002)
    with pytest.raises(DarktuneError, match="max_batches"):
        learning_rate(net(policy="poly"), 5)
    with pytest.raises(DarktuneError):
        learning_rate(n, -1)
    assert "burn_in" in describe(dataclasses.replace(n, burn_in=100)) and "5x0.1" in describe(n)


def test_run_overrides_rewrite_the_schedule(tmp_path):
    from darktune.darknet.cfg import parse_cfg_text
    from darktune.train.config import TrainConfig
    from darktune.train.loop import _net_params

    spec = parse_cfg_text("[net]\nlearning_rate=0.001\nburn_in=1000\npolicy=steps\nsteps=400000\nscales=.1\n"
                          "[convolutional]\nfilters=4\nsize=1\n")
    cfg = TrainConfig(cfg="x", data="y", burn_in=10, steps=[20, 30], scales=[0.1, 0.1])
    n = _net_params(cfg, spec)
    assert learning_rate(n, 10) == 0.001 and math.isclose(learning_rate(n, 30), 0.001 * 0.01)
