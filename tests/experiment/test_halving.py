"""The rules of the recipe search (darktune/experiment/halving.py), each on curves written by hand."""

from __future__ import annotations

import math

from darktune.experiment.halving import Curve, decide, fit_budget, seed_verdict


def curve(name: str, spi: float, maps: dict[int, float], iterations: int, failed: bool = False) -> Curve:
    """A trial at `spi` seconds per iteration with mAP `maps[iteration]` at its evaluations."""
    return Curve(name, tuple((it, it * spi, m) for it, m in sorted(maps.items())), iterations, iterations * spi,
                 failed)


def test_first_rung_tops_up_the_cheap_trials_to_equal_seconds_before_ranking():
    slow = curve("slow", 1.0, {0: 0.0, 20: 0.3, 40: 0.5}, 40)
    cheap = curve("cheap", 0.25, {0: 0.0, 20: 0.2, 40: 0.4}, 40)
    d = decide([slow, cheap], [slow, cheap], target=0.9, eta=3, step=10, max_iterations=1000)
    assert d.go_on == {"slow": 40, "cheap": 160} and not d.stopped  # 40 s each, nobody ranked yet
    assert d.horizon_s == 40


def test_ranking_at_equal_seconds_keeps_a_third_and_gives_them_eta_times_the_seconds():
    trials = [curve(f"t{i}", 1.0, {10: 0.1 * i, 30: 0.1 * i + 0.05}, 30) for i in range(6)]
    d = decide(trials, trials, target=0.9, eta=3, step=10, max_iterations=1000)
    assert d.go_on == {"t5": 90, "t4": 90}
    assert set(d.stopped) == {"t0", "t1", "t2", "t3"} and "below the best 2 of 6" in d.stopped["t0"]
    assert d.scores["t5"] == 0.55


def test_a_trial_that_trained_as_long_as_the_best_time_cannot_win():
    fast = curve("fast", 0.5, {10: 0.5, 20: 0.95}, 20)  # reached at 10 s
    long = curve("long", 1.0, {10: 0.6, 20: 0.8}, 20)  # 20 s, not there
    short = curve("short", 0.25, {10: 0.3, 20: 0.6}, 20)  # 5 s, may still beat 10 s
    d = decide([fast, long, short], [fast, long, short], target=0.9, eta=3, step=10, max_iterations=1000)
    assert d.stopped["fast"] == "reached the target" and d.stopped["long"] == "not at the target after 20.0 s; fast reached it in 10.0 s"
    assert d.go_on == {"short": 40}  # never past the best time known: 10 s at 0.25 s an iteration


def test_failed_and_capped_trials_stop_with_their_reason():
    bad = curve("bad", 1.0, {}, 3, failed=True)
    capped = curve("capped", 1.0, {100: 0.5}, 100)
    d = decide([bad, capped], [bad, capped], target=0.9, eta=3, step=10, max_iterations=100)
    assert d.stopped == {"bad": "failed", "capped": "at --max-iterations (100) without reaching the target"}
    assert not d.go_on


def test_budget_shrinks_a_rung_or_ends_it():
    a, b = curve("a", 1.0, {10: 0.5}, 10), curve("b", 1.0, {10: 0.4}, 10)
    d = decide([a, b], [a, b], target=0.9, eta=2, step=10, max_iterations=1000)
    assert d.go_on == {"a": 20}
    shrunk, ok = fit_budget(d, {"a": a, "b": b}, remaining_s=math.inf, slots=1, step=10)
    assert ok and shrunk.go_on == {"a": 20}
    wide = decide([a, b], [a, b], target=0.9, eta=2, step=10, max_iterations=1000)
    wide.go_on = {"a": 110, "b": 110}  # 100 more iterations each at 1 s, 2 at a time: 100 s
    shrunk, ok = fit_budget(wide, {"a": a, "b": b}, remaining_s=50.0, slots=2, step=10)
    assert ok and shrunk.go_on == {"a": 60, "b": 60}
    shrunk, ok = fit_budget(wide, {"a": a, "b": b}, remaining_s=1.0, slots=1, step=10)
    assert not ok and shrunk.stopped["a"] == "the budget ran out"


def test_seed_verdict_is_sure_only_when_the_seeds_do_not_overlap():
    sure = seed_verdict("a", {"a": [8.0, 9.0, 8.5], "b": [10.0, 12.0, 11.0]})
    assert sure.sure and "8.0–9.0 s" in sure.text and "runner-up b (10.0–12.0 s)" in sure.text
    overlap = seed_verdict("a", {"a": [8.0, 11.0, 8.5], "b": [10.0, 12.0, 9.0]})
    assert not overlap.sure and "within the seed-to-seed noise" in overlap.text
    missed = seed_verdict("a", {"a": [8.0, 9.0], "b": [10.0, math.inf]})
    assert missed.sure and "1 of 2 seeds not within the limit" in missed.text
    assert not seed_verdict("a", {"a": [8.0]}).sure
