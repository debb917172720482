"""The wall-clock budget (`time`, darktune.train.budget and darktune.train.timed): durations, the fit, and a tiny
run under a fake clock (so the test does not depend on the machine's load) that fits its schedule to the budget
and ends inside it with a final evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darktune.errors import DarktuneError
from darktune.train import budget as B
from darktune.train import timed
from darktune.train.config import TrainConfig, parse_duration
from darktune.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150),
                                           ("45", 45), ("0s", None), ("15 m", None), ("m", None), ("1.2.3m", None),
                                           ("-5m", None), ("", None)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_refused_naming_the_flag():
    with pytest.raises(DarktuneError, match="--time must be a duration"):
        TrainConfig(cfg="a.cfg", data="obj.data", time="soon")


def _budget(seconds: float, per_iteration_416: float, cap: int | None = None) -> B.Budget:
    b = B.Budget(seconds, cap)
    b.timed_s, b.timed_px, b.eval_s = per_iteration_416, 8 * 416 * 416, 2.0
    return b


def test_fit_spends_the_budget_without_passing_it():
    b = _budget(900, 0.6)
    n = B.fit(b, elapsed=30, step=5, batch=8, seed=0, base=416, multi_scale=False, largest=416, evals_left=5,
              eval_px=0)
    left = 900 * (1 - B.RESERVE_FRACTION) - B.RESERVE_S - 30 - 5 * 2.0
    assert n - 5 == int(left / 0.6)  # one size: plain division
    assert B.fit(_budget(900, 0.6, cap=100), elapsed=30, step=5, batch=8, seed=0, base=416, multi_scale=False,
                 largest=416, evals_left=5, eval_px=0) == 100
    # no time left: still one more iteration than done (the run's end decides, not the fit)
    assert B.fit(b, elapsed=10_000, step=5, batch=8, seed=0, base=416, multi_scale=False, largest=416, evals_left=5,
                 eval_px=0) == 6


def test_fit_costs_each_multi_scale_size_and_the_last_stretch():
    b = _budget(900, 0.6)
    plain = B.fit(b, elapsed=30, step=5, batch=8, seed=0, base=416, multi_scale=False, largest=608, evals_left=5,
                  eval_px=0)
    multi = B.fit(b, elapsed=30, step=5, batch=8, seed=0, base=416, multi_scale=1.4, largest=608, evals_left=5,
                  eval_px=0)
    assert multi < plain  # the first 10 iterations and the last stretch at 608 cost (608/416)^2 each
    assert B.last_stretch(multi) == min(100, round(0.1 * multi))
    assert B.size_iterations(1000) == 1000  # 1000 iterations: darknet's last 100 as they are
    assert [B.burn_in_for(n) for n in (2, 28, 100, 1400)] == [1, 7, 10, 70]


# ------------------------------------------------------------------------------------------------ in a run
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from corpus import datasets

    return datasets.make_tiny(tmp_path_factory.mktemp("budget"))


def _fake_clock(monkeypatch, per_iteration: float, per_evaluation: float):
    """The budget's clock: per_iteration seconds per iteration done, per_evaluation per evaluation done."""
    monkeypatch.setattr(timed, "clock", lambda run: run.step * per_iteration + len(run.state.maps) * per_evaluation)


def test_a_timed_run_fits_its_schedule_and_ends_inside_the_budget(tiny, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.1, 0.05)
    cfg, obj = tiny
    out = tmp_path / "run"
    res = train(TrainConfig(cfg=str(cfg), data=str(obj), batch=2, subdivisions=1, time="10s", out=str(out),
                            checkpoint_every=1000), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    n = summary["time_budget"]["iterations"]
    # 10 s less the reserve and 5 evaluations, at 0.1 s an iteration (its size fixed: no multi-scale in tiny.cfg)
    assert n == int((10 * (1 - B.RESERVE_FRACTION) - B.RESERVE_S - 5 * 0.05) / 0.1) - 1 or n == res.iterations_done
    assert res.status == "finished" and res.iterations_done == n
    assert res.iterations_done * 0.1 + len(res.maps) * 0.05 <= 10
    evaluated = [m[0] for m in res.maps]
    assert evaluated[0] == 0 and evaluated[-1] == n and len(evaluated) == B.EVALUATIONS + 1
    log = (out / "train.log").read_text()
    assert f"-> {n} iterations; burn_in {B.burn_in_for(n)}, lr steps " in log
    lrs = {r["iteration"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "lr" in r}
    # x0.1 at 80% of the run, x0.01 at 90% (a refit may move them by an iteration)
    assert lrs[round(0.85 * n)] == pytest.approx(0.1 * lrs[round(0.7 * n)])
    assert lrs[n] == pytest.approx(0.01 * lrs[round(0.7 * n)])


def test_a_budget_shorter_than_the_evaluations_ends_at_once(tiny, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 1.0, 1.0)
    cfg, obj = tiny
    res = train(TrainConfig(cfg=str(cfg), data=str(obj), batch=2, subdivisions=1, time="6s", out=str(tmp_path / "r"),
                            checkpoint_every=1000), progress=False)
    assert res.status == "finished" and res.iterations_done <= 2
    assert "time budget 6s reached" in res.message and res.maps[-1][0] == res.iterations_done


def test_time_caps_at_iterations(tiny, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.01, 0.01)
    cfg, obj = tiny
    res = train(TrainConfig(cfg=str(cfg), data=str(obj), batch=2, subdivisions=1, time="1h", iterations=12,
                            out=str(Path(tmp_path) / "cap"), checkpoint_every=1000), progress=False)
    assert res.iterations_done == 12 and res.maps[-1][0] == 12


def test_timed_cpu_runs_fill_batch_and_multi_scale():
    base = TrainConfig(cfg="a.cfg", data="obj.data", time="15m")
    filled = timed.with_defaults(base, net_batch=1, cuda=False)
    assert (filled.batch, filled.subdivisions, filled.obj_prior, filled.multi_scale) == (8, 1, None, False)
    given = TrainConfig(cfg="a.cfg", data="obj.data", time="15m", batch=4, obj_prior=0.5, multi_scale=True)
    assert timed.with_defaults(given, net_batch=1, cuda=False) == given  # what the user gave stays
    assert timed.with_defaults(base, net_batch=64, cuda=False).batch == 8  # darknet's GPU batch: 8 on a CPU
    assert timed.with_defaults(base, net_batch=8, cuda=False).batch is None  # the cfg's own 8
    assert timed.with_defaults(base, net_batch=1, cuda=True) == base  # a GPU run: as given
    untimed = TrainConfig(cfg="a.cfg", data="obj.data")
    assert timed.with_defaults(untimed, net_batch=1, cuda=False) == untimed


def test_a_resumed_timed_run_keeps_its_fitted_schedule(tiny, tmp_path, monkeypatch):
    """Killed after its first fit (a checkpoint at 10) and resumed: the same fitted length, burn-in, lr and
    evaluations as an unbroken run under the same (fake) clock."""
    from darktune.train import steps

    _fake_clock(monkeypatch, 0.1, 0.05)
    cfg, obj = tiny

    def run(out, **kw):
        return train(TrainConfig(cfg=str(cfg), data=str(obj), batch=2, subdivisions=1, time="10s", out=str(out),
                                 checkpoint_every=5, **kw), progress=False)

    straight = run(tmp_path / "a")
    real_step = steps.train_step

    def killed_at_12(r, it):
        if it == 12:
            raise KeyboardInterrupt
        return real_step(r, it)

    monkeypatch.setattr(steps, "train_step", killed_at_12)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(steps, "train_step", real_step)
    resumed = run(tmp_path / "b", resume=True)

    def lrs(out):
        return [(r["iteration"], r["lr"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "lr" in r]

    assert resumed.iterations_done == straight.iterations_done and resumed.maps == straight.maps
    assert lrs(tmp_path / "a") == lrs(tmp_path / "b")


def test_a_timed_run_does_not_warn_about_the_cfgs_burn_in(tiny, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.1, 0.05)
    cfg, obj = tiny
    long_burn_in = Path(cfg).read_text().replace("burn_in=2", "burn_in=1000")
    (tmp_path / "long.cfg").write_text(long_burn_in)
    out = tmp_path / "run"
    train(TrainConfig(cfg=str(tmp_path / "long.cfg"), data=str(obj), batch=2, subdivisions=1, time="3s",
                      iterations=40, out=str(out), checkpoint_every=1000), progress=False)
    log = (out / "train.log").read_text()
    assert "time budget 3s" in log and "is at least half of the run" not in log


def test_a_refit_at_an_evaluation_point_keeps_it():
    """The length is fitted again at iteration 100, which is also an evaluation point not yet evaluated: it stays."""
    from types import SimpleNamespace

    from darktune.darknet.cfg import NetParams

    run = SimpleNamespace(config=TrainConfig(cfg="a.cfg", data="obj.data", time="15m"), budget=B.Budget(900),
                          data=SimpleNamespace(iterations=None), net_params=NetParams(), eval_points={1},
                          budget_evaluates=True, step=0, state=SimpleNamespace(maps=[[0, 0.1]]), progress=None)
    timed._apply(run, 200, first=True)  # every 40
    assert run.eval_points == {40, 80, 120, 160, 200}
    run.step, run.state.maps = 120, [[0, 0.1], [40, 0.2], [80, 0.3]]
    timed._apply(run, 300, first=False)
    assert run.eval_points == {120, 160, 200, 240, 280, 300}
    run.state.maps.append([120, 0.4])  # a refit right after the evaluation at 120 does not repeat it
    timed._apply(run, 300, first=False)
    assert run.eval_points == {160, 200, 240, 280, 300}
    timed._apply(run, 290, first=False)
    assert run.eval_points == {160, 200, 240, 290}  # 280 is too close to the end
