"""The study's findings, each checked against our own runs: "agrees", "DISAGREES" or "not measured".

Owns: `findings(data) -> list[Finding]`. Every verdict is computed from the runs' metrics (report_data); the
thresholds that decide a verdict are constants here and are printed in the report beside the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from darktune.report_data import ExperimentData, best_transfer_decrease, cell_map, main_images, time_to_target

CLEAR_MARGIN = 0.10  # "clearly worse": at least 10 mAP points lower (the study's gaps were 25 to 91 points)
BEAT_MARGIN = 0.02  # "beats": a mean at least 2 mAP points higher; closer is a tie (evaluations swing more)
NOTHING_LEARNED = 0.01  # a run at or below 1 mAP point learned nothing: it cannot show that another is better
REQUIRED_DECREASE = 0.80  # "at least 80% fewer iterations" (the study: 83%)


@dataclass(frozen=True)
class Finding:
    claim: str  # the study's finding, as a sentence
    study: str  # what the study measured
    verdict: str  # "agrees" | "DISAGREES" | "not measured"
    evidence: list[str]  # one line per comparison, numbers from our runs


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _last_common(data: ExperimentData, a: str, b: str) -> list[int]:
    """Evaluation iterations both starts have (the 'equal iterations' of a comparison)."""
    its_a = {int(i) for r in data.select(a) for i in r.plan["eval_at"]}
    its_b = {int(i) for r in data.select(b) for i in r.plan["eval_at"]}
    return sorted(its_a & its_b)


def _table_mean(data: ExperimentData, start: str, freeze: int, images: int | None) -> tuple[float | None, list[int]]:
    """Mean mAP over the start's table rows (its planned evaluation iterations): one noisy evaluation does not
    decide a finding."""
    its = sorted({int(i) for r in data.select(start, freeze, images) for i in r.plan["eval_at"]})
    values = [v for i in its for v in [cell_map(data, start, freeze, i, images)] if v is not None]
    return (sum(values) / len(values) if values else None), its


def freeze_20_worse(data: ExperimentData) -> Finding:
    claim = "Freezing 20 layers is clearly worse than freezing none, for every starting point"
    study = "Table I 92 vs <1, Table II 98 vs 27, Table III 98.1 vs 72.8 (N=0 vs N=20)"
    images = main_images(data)
    evidence, ok = [], []
    for start in data.starts():
        (m0, its), (m20, _) = _table_mean(data, start, 0, images), _table_mean(data, start, 20, images)
        if m0 is None or m20 is None:
            continue
        where = f"{start}, mean over iterations {', '.join(map(str, its))}"
        good = m0 - m20 >= CLEAR_MARGIN
        if m0 < CLEAR_MARGIN and not good:
            evidence.append(f"{where}: N=0 {_pct(m0)} vs N=20 {_pct(m20)} mAP (inconclusive: without frozen layers "
                            f"it reached less than the {CLEAR_MARGIN * 100:.0f}-point margin itself)")
            continue
        ok.append(good)
        evidence.append(f"{where}: N=0 {_pct(m0)} vs N=20 {_pct(m20)} mAP "
                        f"({'clearly worse' if good else 'NOT clearly worse'}: margin {CLEAR_MARGIN * 100:.0f} points)")
    verdict = "not measured" if not ok else ("agrees" if all(ok) else "DISAGREES")
    return Finding(claim, study, verdict, evidence)


def coco15_beats(data: ExperimentData, other: str) -> Finding:
    """coco15 against `other` ("backbone" or "scratch") at every frozen count, mean mAP over shared iterations."""
    claim = f"coco15 (COCO conv.15) beats {other} at equal iterations"
    study = {"backbone": "Table II (coco15) above Table I (backbone) at every frozen count: 98/80/27 vs 92/~3/<1",
             "scratch": "no scratch table in the study; Table II (coco15) is its weakest transfer start"}[other]
    images = main_images(data)
    evidence, ok = [], []
    if "coco15" in data.starts() and other in data.starts():
        its = _last_common(data, "coco15", other)
        for freeze in data.freezes():
            pairs = [(a, b) for i in its for a, b in [(cell_map(data, "coco15", freeze, i, images),
                                                       cell_map(data, other, freeze, i, images))]
                     if a is not None and b is not None]
            if not pairs:
                continue
            mean_a = sum(a for a, _ in pairs) / len(pairs)
            mean_b = sum(b for _, b in pairs) / len(pairs)
            wins = sum(a > b for a, b in pairs)
            text = (f"N={freeze}: coco15 {_pct(mean_a)} vs {other} {_pct(mean_b)} mean mAP over iterations "
                    f"{', '.join(map(str, its))} (coco15 higher at {wins} of {len(pairs)})")
            if max(mean_a, mean_b) <= NOTHING_LEARNED:
                evidence.append(text + f" (inconclusive: neither learned anything, both <= {NOTHING_LEARNED * 100:g})")
                continue
            won = mean_a - mean_b >= BEAT_MARGIN
            ok.append(won)
            evidence.append(text + ("" if won else f" (NOT beaten by {BEAT_MARGIN * 100:g} points)"))
    backbone = data.record.get("starts", {}).get("backbone", {}).get("description", "")
    if other == "backbone" and "STAND-IN" in backbone and ok:
        evidence.append("note: our backbone is the COCO weights' layers 0..12 (a stand-in for the study's ImageNet "
                        "backbone), so backbone and coco15 share 13 of coco15's 15 loaded layers; with 13 or 20 "
                        "frozen layers they differ only in layers 13-14, and little difference is expected there")
    verdict = "not measured" if not ok else ("agrees" if all(ok) else "DISAGREES")
    return Finding(claim, study, verdict, evidence)


def domain_faster(data: ExperimentData) -> Finding:
    target = data.target_map
    claim = (f"domain reaches the target mAP ({_pct(target)}) with at least {REQUIRED_DECREASE * 100:.0f}% fewer "
             "iterations than coco15 (no frozen layers)")
    study = "83% less time to the required mAP through the domain set"
    images = main_images(data)
    dom = time_to_target(data, "domain", 0, images)
    base = time_to_target(data, "coco15", 0, images)
    if dom is None or base is None:
        return Finding(claim, study, "not measured", ["the grid lacks domain or coco15 runs with N=0, or a target"])
    if dom.iterations is None:
        return Finding(claim, study, "DISAGREES",
                       [f"domain did not reach {_pct(target)} within {dom.max_iterations} iterations "
                        f"({dom.reached_seeds} of {dom.seeds} seeds did)"])
    if base.iterations is not None:
        fraction, bound = 1 - dom.iterations / base.iterations, ""
        line = f"domain {dom.iterations:g} it. vs coco15 {base.iterations:g} it.: {fraction * 100:.0f}% fewer"
    else:
        fraction, bound = 1 - dom.iterations / base.max_iterations, "at least "
        line = (f"domain {dom.iterations:g} it.; coco15 did not reach the target in {base.max_iterations} it.: "
                f"at least {fraction * 100:.0f}% fewer")
    good = fraction >= REQUIRED_DECREASE
    evidence = [line + f" ({bound}{fraction * 100:.0f}% vs the required {REQUIRED_DECREASE * 100:.0f}%)"]
    first = min((min(e.iteration for e in r.evals) for r in data.select("domain", 0, images) if r.evals), default=None)
    if first is not None and dom.iterations <= first:
        evidence.append(f"domain was at the target at its first evaluation (iteration {first}): the pretrained "
                        "weights alone reach it, before fine-tuning has changed much")
    return Finding(claim, study, "agrees" if good else "DISAGREES", evidence)


def headline(data: ExperimentData) -> Finding:
    claim = "The best transfer path cuts the iterations to the target mAP by about 83% against coco15"
    study = "83% (the study's headline, in time)"
    dec = best_transfer_decrease(data, 0, main_images(data))
    if dec is None:
        return Finding(claim, study, "not measured", ["no transfer path and coco15 pair reached the target"])
    prefix = "at least " if dec.lower_bound else ""
    base = f"{dec.coco15_iterations:g}" if dec.coco15_iterations is not None else f"> {dec.coco15_max}"
    verdict = "agrees" if dec.fraction >= REQUIRED_DECREASE else "DISAGREES"
    return Finding(claim, study, verdict, [f"best path '{dec.best}' {dec.best_iterations:g} it. vs coco15 {base} it.: "
                                           f"{prefix}{dec.fraction * 100:.0f}% fewer iterations (N=0)"])


def findings(data: ExperimentData) -> list[Finding]:
    return [freeze_20_worse(data), coco15_beats(data, "backbone"), coco15_beats(data, "scratch"),
            domain_faster(data), headline(data)]
