"""Recovery from a loss spike or a non-finite loss (darktune.train.recovery): the rules on their own, then a tiny
synthetic run with an injected spike / NaN that goes back to its last good state, lowers the lr, says so, and
finishes; a resumed run makes the same decisions as an unbroken one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darktune.train import recovery, steps
from darktune.train.config import TrainConfig
from darktune.train.loop import train
from darktune.train.recovery import GuardState

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_spike_needs_history_and_the_factor_per_term():
    g = GuardState(history=[[100.0, 10.0, 89.0, 1.0]] * 4)  # [total, box, obj, cls]
    assert recovery.is_spike(g, [1e6, 0, 0, 0], 10) == (None, 0.0)  # fewer than MIN_HISTORY good iterations
    g.history.append([100.0, 10.0, 89.0, 1.0])
    assert recovery.is_spike(g, [999.0, 10.0, 89.0, 1.0], 10) == (None, 0.0)
    assert recovery.is_spike(g, [1001.0, 10.0, 89.0, 1.0], 10) == ("loss", pytest.approx(10.01))
    # the box term alone: 150 is 15x its median while the total moves 1.5x
    assert recovery.is_spike(g, [150.0, 150.0, 0.0, 0.0], 10) == ("box", pytest.approx(15.0))
    # a term near 0 counts as FLOOR of the total's median: the class term going 1 -> 9 is no spike
    assert recovery.is_spike(g, [108.0, 10.0, 89.0, 9.0], 10) == (None, 0.0)
    assert recovery.is_spike(g, [1e6, 1e6, 1e6, 1e6], 0) == (None, 0.0)  # 0: off
    # a 608 px batch is scaled to the base size before the comparison: (416/608)^2 of its loss
    assert recovery.scaled([608 * 608.0], 608, 416) == [pytest.approx(416 * 416.0)]


def test_lr_drops_compound_and_ramp_back():
    g = GuardState()
    assert recovery.lr_scale(g, 5) == 1.0
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    assert recovery.recover(g, net, opt, 10) is None  # nothing kept yet: the lr still drops
    assert recovery.lr_scale(g, 10) == recovery.LR_DROP
    assert recovery.lr_scale(g, 10 + recovery.RAMP // 2) == pytest.approx(0.75)
    assert recovery.lr_scale(g, 10 + recovery.RAMP) == 1.0
    recovery.recover(g, net, opt, 20)  # a second one before the lr is back: 0.5 x (0.5 + 0.5 * 10/50)
    assert recovery.lr_scale(g, 20) == pytest.approx(0.5 * 0.6) and g.recoveries == 2


def test_snapshots_restore_weights_and_momentum():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    g = GuardState()
    recovery.take_snapshot(g, net, opt, 0)
    recovery.take_snapshot(g, net, opt, recovery.SNAPSHOT_EVERY)  # the first candidate is now the good one
    assert g.good["step"] == 0 and g.candidate["step"] == recovery.SNAPSHOT_EVERY
    weights = net.weight.detach().clone()
    momentum = opt.state[net.weight]["momentum_buffer"].clone()
    with torch.no_grad():
        net.weight.mul_(1e6)
    opt.state[net.weight]["momentum_buffer"].fill_(7.0)
    assert recovery.recover(g, net, opt, 15) == 0
    assert torch.equal(net.weight, weights) and torch.equal(opt.state[net.weight]["momentum_buffer"], momentum)
    assert g.candidate is None and g.good["step"] == 0
    g.history = [[float(i)] * 4 for i in range(1, 15)]  # good iterations 1..14: those after 0 leave the reference
    recovery.recover(g, net, opt, 15)
    assert g.history == []


# ------------------------------------------------------------------------------------------------ in a run
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from corpus import datasets

    return datasets.make_tiny(tmp_path_factory.mktemp("recovery"))


def _config(tiny, out: Path, iterations: int = 14, **kw) -> TrainConfig:
    cfg, obj = tiny
    base = dict(cfg=str(cfg), data=str(obj), iterations=iterations, batch=2, subdivisions=1, seed=3, out=str(out),
                checkpoint_every=1000, lr=0.002, burn_in=2)
    return TrainConfig(**{**base, **kw})


def _inject(monkeypatch, bad: dict[int, float]):
    """Multiply the loss of the listed iterations (factor, or NaN) as a blow-up would."""
    from darktune.train import loss as loss_module

    real_step, real_loss = steps.train_step, loss_module.YoloLoss.__call__
    now = {"it": 0}

    def step(run, it):
        now["it"] = it
        return real_step(run, it)

    def loss(self, heads, targets, hw):
        total, parts = real_loss(self, heads, targets, hw)
        return (total * bad[now["it"]], parts) if now["it"] in bad else (total, parts)

    monkeypatch.setattr(steps, "train_step", step)
    monkeypatch.setattr(loss_module.YoloLoss, "__call__", loss)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_spike_goes_back_to_the_last_good_state_and_finishes(tiny, tmp_path, monkeypatch):
    _inject(monkeypatch, {12: 1e4})
    res = train(_config(tiny, tmp_path / "run"), progress=False)
    assert res.status == "finished" and res.iterations_done == 14 and res.skipped_steps == 1
    recs = _records(tmp_path / "run")
    event = [r for r in recs if r.get("event") == "recovery"]
    assert len(event) == 1 and event[0]["iteration"] == 12 and event[0]["restored_iteration"] == 0
    assert "loss spike: the loss at 64 px" in event[0]["reason"] and event[0]["lr_scale"] == recovery.LR_DROP
    train_rows = {r["iteration"]: r for r in recs if "lr" in r}
    assert train_rows[12]["skipped"] and train_rows[12]["loss"] is not None  # a spike's loss is finite, and logged
    assert train_rows[13]["lr"] == pytest.approx(0.002 * (recovery.LR_DROP + 0.5 / recovery.RAMP))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "iteration 12: loss spike" in log and "back to the state after iteration 0" in log
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["recoveries"] == 1


def test_a_nan_recovers_and_k_bad_in_a_row_still_stop(tiny, tmp_path, monkeypatch):
    _inject(monkeypatch, {3: float("nan")})
    res = train(_config(tiny, tmp_path / "nan", iterations=6), progress=False)
    assert res.status == "finished" and res.skipped_steps == 1
    assert [r["reason"] for r in _records(tmp_path / "nan") if r.get("event")] == ["non-finite loss"]

    _inject(monkeypatch, {i: float("nan") for i in range(1, 20)})
    res = train(_config(tiny, tmp_path / "dead", max_bad_steps=3), progress=False)
    assert res.status == "failed" and res.iterations_done == 3 and "not finite" in res.message


def test_resume_makes_the_same_recovery(tiny, tmp_path, monkeypatch):
    """A checkpoint carries the snapshots and the spike reference: stopped at 10 (a snapshot iteration) and
    resumed, the spike at 12 goes back to the same state and the run ends with the same weights."""
    _inject(monkeypatch, {12: 1e4})
    straight = train(_config(tiny, tmp_path / "a"), progress=False)
    train(_config(tiny, tmp_path / "b", iterations=10), progress=False)
    resumed = train(_config(tiny, tmp_path / "b", resume=True), progress=False)
    assert resumed.skipped_steps == straight.skipped_steps == 1

    def losses(run):
        return [(r["iteration"], r["loss"], r["lr"]) for r in _records(run) if "lr" in r]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert ((tmp_path / "a" / "weights" / "last.weights").read_bytes()
            == (tmp_path / "b" / "weights" / "last.weights").read_bytes())
