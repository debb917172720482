"""The study's findings, each checked against our own runs: "agrees", "DISAGREES", "inconclusive" (the runs are
there but tell nothing, e.g. neither start learned) or "not measured" (the runs are missing or did not finish).

Owns: `findings(data) -> list[Finding]`. Every verdict is computed from the runs' metrics (report_data); the
thresholds that decide a verdict are constants here and are printed in the report beside the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from darktune.report.data import (
    ExperimentData,
    best_transfer_decrease,
    its_text,
    main_images,
    seed_means,
    spread,
    target_levels,
    time_to_target,
    transfer_excluded,
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


def _as_study(data: ExperimentData, text: str, study_text: str) -> str:
    """`text` in the model's own names, with the study's in brackets where they differ (yolov4-tiny's coco29
    is the study's coco15, its 35 frozen layers the study's 20)."""
    return text if text == study_text else f"{text} (the study's {study_text})"


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
    deep = data.study.study_freeze[2]  # the study's 20 in this model's layers
    layers = _as_study(data, f"{deep} layers", "20 layers")
    claim = f"Freezing {layers} is clearly worse than freezing none, for every starting point"
    study = "Table I 92 vs <1, Table II 98 vs 27, Table III 98.1 vs 72.8 (N=0 vs N=20)"
    images = main_images(data)
    evidence, ok = [], []
    for start in data.starts():
        its = _rows(data, start, 0, images)
        lost = _unfinished(data, start, 0, images) + _unfinished(data, start, deep, images)
        if lost and data.select(start, deep, images):
            evidence.append(f"{start}: {_unfinished_text(lost)}")
            continue
        s0, s20 = _stat(data, start, 0, images, its), _stat(data, start, deep, images, its)
        if s0 is None or s20 is None:
            continue
        where = f"{start}, mean over iterations {', '.join(map(str, its))} ({_seeds_text(s0, s20)})"
        good = s0.mean - s20.mean >= CLEAR_MARGIN
        if s0.mean < CLEAR_MARGIN and not good:
            evidence.append(f"{where}: N=0 {s0.text()} vs N={deep} {s20.text()} mAP (inconclusive: without frozen "
                            f"layers it reached less than the {CLEAR_MARGIN * 100:.0f}-point margin itself)")
            continue
        ok.append(good)
        tag = "clearly worse" if good else "NOT clearly worse"
        if _within_spread(s0, s20):
            tag += "; the gap is within the seeds' spread"
        if not good and its:
            last0, last20 = (_stat(data, start, n, images, its[-1:]) for n in (0, deep))
            e0, e20 = (_stat(data, start, n, images, its[:1]) for n in (0, deep))
            if last0 and last20 and e0 and e20:
                tag += (f"; at its last row (it. {its[-1]}) N=0 {last0.text()} vs N={deep} {last20.text()}, at its "
                        f"first (it. {its[0]}) {e0.text()} vs {e20.text()}")
        evidence.append(f"{where}: N=0 {s0.text()} vs N={deep} {s20.text()} mAP "
                        f"({tag}: margin {CLEAR_MARGIN * 100:.0f} points)")
    note = _heads_note(data, deep)
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
    m, p = data.study, data.partial
    bb, pl, mid, deep = m.backbone_layers, m.partial_layers, m.study_freeze[1], m.study_freeze[2]
    upto = start.get("upto") or bb
    if upto >= bb:
        return (f"note: our backbone is a STAND-IN, the COCO weights' layers 0..{bb - 1} (detection features, not the "
                f"study's ImageNet classification backbone), so backbone and {p} share {bb} of {p}'s {pl} loaded "
                f"layers; with {mid} or {deep} frozen layers they differ only in layers {bb}-{pl - 1}, and little "
                "difference is expected there"), None
    return (f"note: our backbone is a STAND-IN (no ImageNet weights offline): the COCO weights' layers 0..{upto - 1} "
            f"(generic low-level filters) with layers {upto}..{bb - 1} random, where the study's ImageNet backbone "
            f"has classification features; it is weaker than that backbone, while the COCO weights' layers "
            f"0..{bb - 1} (detection features, {bb} of {p}'s {pl} layers) would be stronger. With {mid} or {deep} "
            f"frozen layers its random layers {upto}..{bb - 1} stay frozen, so {p}'s lead there follows from the "
            "construction; N=0 compares learned features"), upto


def coco15_beats(data: ExperimentData, other: str) -> Finding:
    """The COCO partial start (the study's coco15) against `other` ("backbone" or "scratch") at every frozen
    count: per-seed mean mAP over the evaluation iterations both have, then mean (and spread) over seeds."""
    p = data.partial
    conv = f"COCO conv.{data.study.partial_layers}" + ("" if p == "coco15" else ", the study's coco15")
    claim = f"{p} ({conv}) beats {other} at equal iterations"
    study = {"backbone": "Table II (coco15) above Table I (backbone) at every frozen count: 98/80/27 vs 92/~3/<1",
             "scratch": "no scratch table in the study; Table II (coco15) is its weakest transfer start"}[other]
    images = main_images(data)
    evidence, ok = [], []
    note, by_construction = _backbone_note(data) if other == "backbone" else (None, None)
    if p in data.starts() and other in data.starts():
        its = _last_common(data, p, other)
        for freeze in data.freezes():
            lost = _unfinished(data, p, freeze, images) + _unfinished(data, other, freeze, images)
            if lost and data.select(p, freeze, images) and data.select(other, freeze, images):
                evidence.append(f"N={freeze}: {_unfinished_text(lost)}")
                continue
            a, b = _stat(data, p, freeze, images, its), _stat(data, other, freeze, images, its)
            if a is None or b is None:
                continue
            text = (f"N={freeze}: {p} {a.text()} vs {other} {b.text()} mean mAP over iterations "
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
                for a, b in [(_stat(data, p, n, images, its), _stat(data, other, n, images, its))]
                if a and b and a.mean - b.mean < BEAT_MARGIN]
        if lost:
            note += (f". Yet {p} does not lead at N={'/'.join(map(str, lost))}: frozen random layers "
                     f"{by_construction}..{data.study.backbone_layers - 1} do as well as COCO's frozen layers there, "
                     "so on this target COCO's deeper features add nothing measurable (a likely reason: the "
                     "target differs from its distractor windows only in small design details, which COCO's object "
                     "features do not single out)")
        evidence.append(note)
    return Finding(claim, study, _verdict(ok, evidence), evidence)


def domain_faster(data: ExperimentData) -> Finding:
    target = data.target_map
    name = data.domain_start() or "domain"
    p = data.partial
    claim = (f"{name} reaches the target mAP ({_pct(target)}) with at least {REQUIRED_DECREASE * 100:.0f}% fewer "
             f"iterations than {_as_study(data, p, 'coco15')} (no frozen layers)")
    if name != "domain":
        claim += f" ('{name}' is this grid's pretraining stage, the study's domain path)"
    study = "83% less time to the required mAP through the domain set"
    images = main_images(data)
    dom = time_to_target(data, name, 0, images)
    base = time_to_target(data, p, 0, images)
    if dom is None or base is None:
        return Finding(claim, study, "not measured", [f"the grid lacks {p} runs or runs from a pretraining stage "
                                                      "with N=0, or a target"])
    lost = ([] if dom.iterations is not None else _unfinished(data, name, 0, images)) + (
        [] if base.iterations is not None else _unfinished(data, p, 0, images))
    if lost:  # a run that failed before reaching the target: its time to target is unknown, not "never"
        return Finding(claim, study, "not measured", [_unfinished_text(lost)])
    if dom.iterations is None:
        return Finding(claim, study, "DISAGREES",
                       [f"{name} did not reach {_pct(target)} within {dom.max_iterations} iterations "
                        f"({dom.reached_seeds} of {dom.seeds} seeds did)"])
    if base.iterations == 0:
        return Finding(claim, study, "not measured",
                       [f"{p}'s start weights already meet the target {_pct(target)} (iteration 0): the target "
                        "is too low to tell the starts apart"])
    if base.iterations is not None:
        fraction, bound = 1 - dom.iterations / base.iterations, ""
        line = (f"{name} {its_text(dom.iterations)} it. vs {p} {its_text(base.iterations)} it.: "
                f"{fraction * 100:.0f}% fewer")
    else:
        fraction, bound = 1 - dom.iterations / base.max_iterations, "at least "
        line = (f"{name} {its_text(dom.iterations)} it.; {p} did not reach the target in {base.max_iterations} it.: "
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
            f"{p}'s {its_text(base_its)} (evaluate more often: grid.eval_every or per_start, or train longer)"])
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
        base = time_to_target(data, data.partial, 0, images, level)
        if dom is None or base is None:
            break
        first = min(min(e.iteration for e in r.evals) for r in data.select(name, 0, images) if r.evals)
        if dom.iterations is not None and dom.iterations <= first:
            continue
        if dom.iterations is None or base.iterations is None:
            return (f"so this agreement is NOT robust to the target: at {_pct(level)} "
                    f"{name if dom.iterations is None else data.partial} no longer reaches it in every seed")
        fraction = 1 - dom.iterations / base.iterations
        verdict = "still agrees" if fraction >= REQUIRED_DECREASE else "NOT robust to the target"
        return (f"so it rests on the start weights; at the next target level, {_pct(level)}, {name} "
                f"{its_text(dom.iterations)} it. vs {data.partial} {its_text(base.iterations)} it.: "
                f"{fraction * 100:.0f}% fewer ({verdict}; see the target "
                "sensitivity table)")
    return "no higher target level tells the two apart"


def headline(data: ExperimentData) -> Finding:
    p = data.partial
    claim = ("The best transfer path cuts the iterations to the target mAP by about 83% against "
             + _as_study(data, p, "coco15"))
    study = "83% (the study's headline, in time)"
    images = main_images(data)
    dec = best_transfer_decrease(data, 0, images)
    lost = [name for start in data.starts() if start not in transfer_excluded(data) or start == p
            for name in _unfinished(data, start, 0, images)]
    if dec is None:
        if lost:
            return Finding(claim, study, "not measured", [_unfinished_text(lost)])
        return Finding(claim, study, "not measured", [f"no transfer path and {p} pair reached the target"])
    if dec.partial_iterations == 0:
        return Finding(claim, study, "not measured", [f"{p}'s start weights already meet the target "
                                                      "(iteration 0): nothing to cut"])
    prefix = "at least " if dec.lower_bound else ""
    base = f"{its_text(dec.partial_iterations)}" if dec.partial_iterations is not None else f"> {dec.partial_max}"
    verdict = "agrees" if dec.fraction >= REQUIRED_DECREASE else "DISAGREES"
    evidence = [f"best path '{dec.best}' {its_text(dec.best_iterations)} it. vs {p} {base} it.: "
                f"{prefix}{dec.fraction * 100:.0f}% fewer iterations (N=0)"]
    if lost:
        evidence.append(f"best among the runs that finished; {_unfinished_text(lost)}")
    if dec.best_iterations == 0:
        evidence.append(f"'{dec.best}' meets the target with its start weights, before any training: see the target "
                        "sensitivity table for the decrease at higher targets")
    return Finding(claim, study, verdict, evidence)


def findings(data: ExperimentData) -> list[Finding]:
    """The study's findings, each in the experiment's model's own names (yolov4-tiny: coco29 for coco15, 27
    and 35 frozen layers for 13 and 20; darktune.darknet.transfer)."""
    return [freeze_20_worse(data), coco15_beats(data, "backbone"), coco15_beats(data, "scratch"),
            domain_faster(data), headline(data)]
