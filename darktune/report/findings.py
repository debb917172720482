"""The study's findings, each checked against our own runs: "agrees", "DISAGREES", "inconclusive" (the runs are
there but tell nothing, e.g. neither start learned) or "not measured" (the runs are missing or did not finish).

Owns: `findings(data) -> list[Finding]`. Every verdict is computed from the runs' metrics (report_data); the
thresholds that decide a verdict are constants here and are printed in the report beside the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from darktune.report.data import (
    TRANSFER_EXCLUDED,
    ExperimentData,
    best_transfer_decrease,
    its_text,
    main_images,
    seed_means,
    spread,
    target_levels,
    time_to_target,
)
from darktune.darknet.cfg import parse_cfg
from darktune.errors import DarktuneError
from darktune.report.heads import head_shares, training_box_sizes

CLEAR_MARGIN = 0.10  # "clearly worse": at least 10 mAP points lower (the study's gaps were 25 to 91 points)
BEAT_MARGIN = 0.02  # "beats": a mean at least 2 mAP points higher; closer is a tie (evaluations swing more)
# a start below the clear margin has not learned to detect the target (the rule freeze_20_worse applies to an
# unfrozen run), so a comparison where neither start reaches it shows nothing. Runs whose every box goes to a
# frozen head sit flat at a few mAP points (1.6-3.8 measured), above any "exactly nothing" threshold.
NOTHING_LEARNED = CLEAR_MARGIN
REQUIRED_DECREASE = 0.80  # "at least 80% fewer iterations" (the study: 83%)
STUDY_NETWORK = 416  # the study's network size, in pixels


@dataclass(frozen=True)
class Finding:
    claim: str  # the study's finding, as a sentence
    study: str  # what the study measured
    verdict: str  # "agrees" | "DISAGREES" | "inconclusive" | "not measured"
    evidence: list[str]  # one line per comparison, numbers from our runs


def _unfinished(data: ExperimentData, start: str, freeze: int | None, images: int | None) -> list[str]:
    """Names of the runs of a group that did not end as planned (failed, interrupted, never started)."""
    return [r.name for r in data.select(start, freeze, images) if not r.complete]


def _unfinished_text(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"not compared: {len(names)} of its runs did not finish ({shown}; see the runs table)"


def _verdict(ok: list[bool], evidence: list[str]) -> str:
    """agrees / DISAGREES from the decisive comparisons; without any, inconclusive when some comparison was
    made (and told nothing), else not measured."""
    if ok:
        return "agrees" if all(ok) else "DISAGREES"
    return "inconclusive" if any("inconclusive" in e for e in evidence) else "not measured"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _last_common(data: ExperimentData, a: str, b: str) -> list[int]:
    """Evaluation iterations both starts have (the 'equal iterations' of a comparison)."""
    its_a = {int(i) for r in data.select(a) for i in r.plan["eval_at"]}
    its_b = {int(i) for r in data.select(b) for i in r.plan["eval_at"]}
    return sorted(its_a & its_b)


@dataclass(frozen=True)
class SeedStat:
    """A group of runs (one start and frozen count, every seed) summarised over a set of table rows: the mean
    and standard deviation over seeds of each seed's mean mAP over those rows."""

    mean: float
    sd: float | None
    seeds: int

    def text(self) -> str:
        return _pct(self.mean) + (f" ± {_pct(self.sd)}" if self.sd is not None else "")


def _stat(data: ExperimentData, start: str, freeze: int, images: int | None, its: list[int]) -> SeedStat | None:
    values = seed_means(data, start, freeze, images, its)
    if not values:
        return None
    return SeedStat(sum(values) / len(values), spread(values), len(values))


def _seeds_text(a: SeedStat, b: SeedStat) -> str:
    n = max(a.seeds, b.seeds)
    return "1 seed" if n == 1 else f"mean ± sd over {n} seeds"


def _within_spread(a: SeedStat, b: SeedStat) -> bool:
    """The gap between two means is no larger than the seeds' spread (sd of the one plus sd of the other)."""
    if a.sd is None or b.sd is None:
        return False
    return abs(a.mean - b.mean) <= a.sd + b.sd


def _rows(data: ExperimentData, start: str, freeze: int, images: int | None) -> list[int]:
    """A start's table rows: its planned evaluation iterations (an evaluation at iteration 0, of the start
    weights, is the same for every frozen count and is not a row)."""
    return sorted({int(i) for r in data.select(start, freeze, images) for i in r.plan["eval_at"]})


def freeze_20_worse(data: ExperimentData) -> Finding:
    claim = "Freezing 20 layers is clearly worse than freezing none, for every starting point"
    study = "Table I 92 vs <1, Table II 98 vs 27, Table III 98.1 vs 72.8 (N=0 vs N=20)"
    images = main_images(data)
    evidence, ok = [], []
    for start in data.starts():
        its = _rows(data, start, 0, images)
        lost = _unfinished(data, start, 0, images) + _unfinished(data, start, 20, images)
        if lost and data.select(start, 20, images):
            evidence.append(f"{start}: {_unfinished_text(lost)}")
            continue
        s0, s20 = _stat(data, start, 0, images, its), _stat(data, start, 20, images, its)
        if s0 is None or s20 is None:
            continue
        where = f"{start}, mean over iterations {', '.join(map(str, its))} ({_seeds_text(s0, s20)})"
        good = s0.mean - s20.mean >= CLEAR_MARGIN
        if s0.mean < CLEAR_MARGIN and not good:
            evidence.append(f"{where}: N=0 {s0.text()} vs N=20 {s20.text()} mAP (inconclusive: without frozen "
                            f"layers it reached less than the {CLEAR_MARGIN * 100:.0f}-point margin itself)")
            continue
        ok.append(good)
        tag = "clearly worse" if good else "NOT clearly worse"
        if _within_spread(s0, s20):
            tag += "; the gap is within the seeds' spread"
        if not good and its:
            last0, last20 = (_stat(data, start, n, images, its[-1:]) for n in (0, 20))
            e0, e20 = (_stat(data, start, n, images, its[:1]) for n in (0, 20))
            if last0 and last20 and e0 and e20:
                tag += (f"; at its last row (it. {its[-1]}) N=0 {last0.text()} vs N=20 {last20.text()}, at its first "
                        f"(it. {its[0]}) {e0.text()} vs {e20.text()}")
        evidence.append(f"{where}: N=0 {s0.text()} vs N=20 {s20.text()} mAP "
                        f"({tag}: margin {CLEAR_MARGIN * 100:.0f} points)")
    note = _heads_note(data, 20)
    if note and ok:
        evidence.append(note)
    return Finding(claim, study, _verdict(ok, evidence), evidence)


def _heads_note(data: ExperimentData, frozen: int) -> str | None:
    """Which [yolo] heads learn the target set's training boxes at the runs' network size and at the study's
    416, and which of them `frozen` layers freeze (darktune/heads.py); None when a run's files are missing."""
    runs = data.select(freeze=frozen)
    if not runs:
        return None
    run = runs[0]
    try:
        spec = parse_cfg(run.run_dir / "model.cfg")
        wh = training_box_sizes(run.plan["data"])
    except (DarktuneError, OSError, ValueError, KeyError):
        return None
    size = int(run.plan.get("options", {}).get("size") or spec.net.width)
    if len(wh) == 0:
        return None

    def text_of(shares: list) -> str:
        return ", ".join(f"layer {h.layer} ({'frozen' if h.layer < frozen else 'trainable'}) {h.share * 100:.0f}%"
                         for h in shares)

    def frozen_share(shares: list) -> float:
        return sum(h.share for h in shares if h.layer < frozen)

    at_size = head_shares(spec, wh, size)
    text = (f"which [yolo] head learns the target set's {len(wh)} training boxes (darknet's best-anchor rule; "
            f"anchors are network pixels), with N={frozen}: at {size} px {text_of(at_size)}")
    if size != STUDY_NETWORK:
        at_study = head_shares(spec, wh, STUDY_NETWORK)
        text += f"; the same boxes in a {STUDY_NETWORK} px network, the study's size: {text_of(at_study)}"
        if frozen_share(at_size) < 0.5 <= frozen_share(at_study):
            text += (f". So at {size} px N={frozen} leaves most boxes to a head that still learns, while at "
                     f"{STUDY_NETWORK} px it would freeze the head that learns them: a likely reason why a start "
                     "whose trainable head already detects the object (domain) loses less by freezing here than "
                     "in the study")
    return text


def _backbone_note(data: ExperimentData) -> tuple[str | None, int | None]:
    """(a note on the stand-in backbone, the frozen count from which the comparison is decided by
    construction), both None when the backbone is the user's own weights."""
    start = data.record.get("starts", {}).get("backbone", {})
    if "STAND-IN" not in start.get("description", ""):
        return None, None
    upto = start.get("upto") or 13
    if upto >= 13:
        return ("note: our backbone is a STAND-IN, the COCO weights' layers 0..12 (detection features, not the "
                "study's ImageNet classification backbone), so backbone and coco15 share 13 of coco15's 15 loaded "
                "layers; with 13 or 20 frozen layers they differ only in layers 13-14, and little difference is "
                "expected there"), None
    return (f"note: our backbone is a STAND-IN (no ImageNet weights offline): the COCO weights' layers 0..{upto - 1} "
            f"(generic low-level filters) with layers {upto}..12 random, where the study's ImageNet backbone has "
            "classification features; it is weaker than that backbone, while the COCO weights' layers 0..12 "
            "(detection features, 13 of coco15's 15 layers) would be stronger. With 13 or 20 frozen layers its "
            f"random layers {upto}..12 stay frozen, so coco15's lead there follows from the construction; N=0 "
            "compares learned features"), upto


def coco15_beats(data: ExperimentData, other: str) -> Finding:
    """coco15 against `other` ("backbone" or "scratch") at every frozen count: per-seed mean mAP over the
    evaluation iterations both have, then mean (and spread) over seeds."""
    claim = f"coco15 (COCO conv.15) beats {other} at equal iterations"
    study = {"backbone": "Table II (coco15) above Table I (backbone) at every frozen count: 98/80/27 vs 92/~3/<1",
             "scratch": "no scratch table in the study; Table II (coco15) is its weakest transfer start"}[other]
    images = main_images(data)
    evidence, ok = [], []
    note, by_construction = _backbone_note(data) if other == "backbone" else (None, None)
    if "coco15" in data.starts() and other in data.starts():
        its = _last_common(data, "coco15", other)
        for freeze in data.freezes():
            lost = _unfinished(data, "coco15", freeze, images) + _unfinished(data, other, freeze, images)
            if lost and data.select("coco15", freeze, images) and data.select(other, freeze, images):
                evidence.append(f"N={freeze}: {_unfinished_text(lost)}")
                continue
            a, b = _stat(data, "coco15", freeze, images, its), _stat(data, other, freeze, images, its)
            if a is None or b is None:
                continue
            text = (f"N={freeze}: coco15 {a.text()} vs {other} {b.text()} mean mAP over iterations "
                    f"{', '.join(map(str, its))} ({_seeds_text(a, b)})")
            if max(a.mean, b.mean) < NOTHING_LEARNED:
                evidence.append(text + f" (inconclusive: neither learned to detect the target, both below "
                                       f"{NOTHING_LEARNED * 100:g})")
                continue
            won = a.mean - b.mean >= BEAT_MARGIN
            ok.append(won)
            tags = [] if won else [f"NOT beaten by {BEAT_MARGIN * 100:g} points"]
            if _within_spread(a, b):
                tags.append("the gap is within the seeds' spread")
            if won and by_construction is not None and freeze >= by_construction:
                tags.append("expected by construction, see the note")
            evidence.append(text + (f" ({'; '.join(tags)})" if tags else ""))
    if note and ok:
        lost = [n for n in data.freezes() if by_construction is not None and n >= by_construction
                for a, b in [(_stat(data, "coco15", n, images, its), _stat(data, other, n, images, its))]
                if a and b and a.mean - b.mean < BEAT_MARGIN]
        if lost:
            note += (f". Yet coco15 does not lead at N={'/'.join(map(str, lost))}: frozen random layers "
                     f"{by_construction}..12 do as well as COCO's frozen layers there, so on this target COCO's "
                     "deeper features add nothing measurable (a likely reason: the target differs from its "
                     "distractor windows only in small design details, which COCO's object features do not "
                     "single out)")
        evidence.append(note)
    return Finding(claim, study, _verdict(ok, evidence), evidence)


def domain_faster(data: ExperimentData) -> Finding:
    target = data.target_map
    name = data.domain_start() or "domain"
    claim = (f"{name} reaches the target mAP ({_pct(target)}) with at least {REQUIRED_DECREASE * 100:.0f}% fewer "
             "iterations than coco15 (no frozen layers)")
    if name != "domain":
        claim += f" ('{name}' is this grid's pretraining stage, the study's domain path)"
    study = "83% less time to the required mAP through the domain set"
    images = main_images(data)
    dom = time_to_target(data, name, 0, images)
    base = time_to_target(data, "coco15", 0, images)
    if dom is None or base is None:
        return Finding(claim, study, "not measured", ["the grid lacks coco15 runs or runs from a pretraining stage "
                                                      "with N=0, or a target"])
    lost = ([] if dom.iterations is not None else _unfinished(data, name, 0, images)) + (
        [] if base.iterations is not None else _unfinished(data, "coco15", 0, images))
    if lost:  # a run that failed before reaching the target: its time to target is unknown, not "never"
        return Finding(claim, study, "not measured", [_unfinished_text(lost)])
    if dom.iterations is None:
        return Finding(claim, study, "DISAGREES",
                       [f"{name} did not reach {_pct(target)} within {dom.max_iterations} iterations "
                        f"({dom.reached_seeds} of {dom.seeds} seeds did)"])
    if base.iterations == 0:
        return Finding(claim, study, "not measured",
                       [f"coco15's start weights already meet the target {_pct(target)} (iteration 0): the target "
                        "is too low to tell the starts apart"])
    if base.iterations is not None:
        fraction, bound = 1 - dom.iterations / base.iterations, ""
        line = (f"{name} {its_text(dom.iterations)} it. vs coco15 {its_text(base.iterations)} it.: "
                f"{fraction * 100:.0f}% fewer")
    else:
        fraction, bound = 1 - dom.iterations / base.max_iterations, "at least "
        line = (f"{name} {its_text(dom.iterations)} it.; coco15 did not reach the target in {base.max_iterations} it.: "
                f"at least {fraction * 100:.0f}% fewer")
    seeds = f", mean over {dom.seeds} seeds" if dom.seeds > 1 else ""
    good = fraction >= REQUIRED_DECREASE
    first_after = min((e.iteration for r in data.select(name, 0, images) for e in r.evals if e.iteration > 0),
                      default=None)
    base_its = base.iterations if base.iterations is not None else base.max_iterations
    if not good and dom.iterations > 0 and first_after is not None \
            and first_after > (1 - REQUIRED_DECREASE) * base_its:  # the evaluations could not have shown it
        return Finding(claim, study, "inconclusive", [
            line + f"; but the evaluations cannot show {REQUIRED_DECREASE * 100:.0f}%: {name}'s first evaluation "
            f"after the start is at iteration {first_after}, more than {(1 - REQUIRED_DECREASE) * 100:.0f}% of "
            f"coco15's {its_text(base_its)} (evaluate more often: grid.eval_every or per_start, or train longer)"])
    evidence = [line + f" ({bound}{fraction * 100:.0f}% vs the required {REQUIRED_DECREASE * 100:.0f}%{seeds})"]
    first = min((min(e.iteration for e in r.evals) for r in data.select(name, 0, images) if r.evals), default=None)
    if dom.iterations == 0:
        evidence.append(f"{name}'s start weights (the pretraining stage's result) meet the target before any "
                        "training on the target set (its evaluation at iteration 0)")
    elif first is not None and dom.iterations <= first:
        evidence.append(f"{name} was at the target at its first evaluation (iteration {first}): the pretrained "
                        "weights alone reach it, before fine-tuning has changed much")
    if first is not None and dom.iterations <= first:
        evidence.append(_above_start(data, images, name))
    return Finding(claim, study, "agrees" if good else "DISAGREES", evidence)


def _above_start(data: ExperimentData, images: int | None, name: str = "domain") -> str:
    """The decrease at the lowest target of the sensitivity table that the domain path does not meet at its
    first evaluation: what fine-tuning speed, rather than the start weights, says."""
    for level in target_levels(data)[1:]:
        dom = time_to_target(data, name, 0, images, level)
        base = time_to_target(data, "coco15", 0, images, level)
        if dom is None or base is None:
            break
        first = min(min(e.iteration for e in r.evals) for r in data.select(name, 0, images) if r.evals)
        if dom.iterations is not None and dom.iterations <= first:
            continue
        if dom.iterations is None or base.iterations is None:
            return (f"so this agreement is NOT robust to the target: at {_pct(level)} "
                    f"{name if dom.iterations is None else 'coco15'} no longer reaches it in every seed")
        fraction = 1 - dom.iterations / base.iterations
        verdict = "still agrees" if fraction >= REQUIRED_DECREASE else "NOT robust to the target"
        return (f"so it rests on the start weights; at the next target level, {_pct(level)}, {name} "
                f"{its_text(dom.iterations)} it. vs coco15 {its_text(base.iterations)} it.: "
                f"{fraction * 100:.0f}% fewer ({verdict}; see the target "
                "sensitivity table)")
    return "no higher target level tells the two apart"


def headline(data: ExperimentData) -> Finding:
    claim = "The best transfer path cuts the iterations to the target mAP by about 83% against coco15"
    study = "83% (the study's headline, in time)"
    images = main_images(data)
    dec = best_transfer_decrease(data, 0, images)
    lost = [name for start in data.starts() if start not in TRANSFER_EXCLUDED or start == "coco15"
            for name in _unfinished(data, start, 0, images)]
    if dec is None:
        if lost:
            return Finding(claim, study, "not measured", [_unfinished_text(lost)])
        return Finding(claim, study, "not measured", ["no transfer path and coco15 pair reached the target"])
    if dec.coco15_iterations == 0:
        return Finding(claim, study, "not measured", ["coco15's start weights already meet the target "
                                                      "(iteration 0): nothing to cut"])
    prefix = "at least " if dec.lower_bound else ""
    base = f"{its_text(dec.coco15_iterations)}" if dec.coco15_iterations is not None else f"> {dec.coco15_max}"
    verdict = "agrees" if dec.fraction >= REQUIRED_DECREASE else "DISAGREES"
    evidence = [f"best path '{dec.best}' {its_text(dec.best_iterations)} it. vs coco15 {base} it.: "
                f"{prefix}{dec.fraction * 100:.0f}% fewer iterations (N=0)"]
    if lost:
        evidence.append(f"best among the runs that finished; {_unfinished_text(lost)}")
    if dec.best_iterations == 0:
        evidence.append(f"'{dec.best}' meets the target with its start weights, before any training: see the target "
                        "sensitivity table for the decrease at higher targets")
    return Finding(claim, study, verdict, evidence)


def findings(data: ExperimentData) -> list[Finding]:
    out = [freeze_20_worse(data), coco15_beats(data, "backbone"), coco15_beats(data, "scratch"),
           domain_faster(data), headline(data)]
    model = data.record.get("model") or "yolov3-tiny"
    if model != "yolov3-tiny" and "coco15" not in data.starts():  # the claims name yolov3-tiny's starts and layers
        why = (f"these findings are stated in yolov3-tiny's names (coco15, N=13/20); this grid is {model}'s, in its "
               f"own starts and layer numbers ({', '.join(data.starts())}; N={'/'.join(map(str, data.freezes()))}): "
               "see the tables above, and the side-by-side comparison of `reproduce --model both`")
        out = [replace(f, evidence=f.evidence + [why]) if f.verdict == "not measured" else f for f in out]
    return out
