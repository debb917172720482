"""`darktune recipe`: the fastest recipe to a target mAP on the user's data, by successive halving on time to target.

Owns: `run_recipe(settings, out_dir, ...) -> dict` (the search, its finalists' seeds and its result, also written
to DIR/recipe.json) and `train_command` (the winner as one `darktune train` line).

Layout of a search folder:
    DIR/recipe.json           settings, every candidate, each rung's trials and decisions, the finals, the result
    DIR/weights/              derived start weights (the COCO partial start), as in an experiment folder
    DIR/runs/<candidate>-s<seed>/   one ordinary training run folder per trial

Each candidate's seed-0 trial is one run that later rungs extend: a promoted trial resumes from its checkpoint
with more iterations (`iterations` is a resumable setting: the run goes on exactly as one longer run would), so
no iteration is trained twice. Every trial stops at its first evaluation at or above the target. The scheduler
is successive halving written here over the experiment executors (in this process, or Ray tasks as with
`experiment --ray`); rules: darktune/experiment/halving.py. Ray Tune's ASHA would add pandas and pyarrow to the
dependencies, and its trials would not be run folders.

Resume: the rungs' plans are written to recipe.json before they train, so a rerun replays the same decisions;
a trial already trained to its rung's iterations (or at the target) is not trained again, an interrupted one
resumes from its checkpoint. A folder made with other settings is refused (the budget and where runs train may
change). Each trial's run.json is checked as an experiment run's is (data, cfg and start weights' content);
`rerun_changed` deletes and retrains the changed ones.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from darktune.darknet.cfg import ConvSpec, parse_cfg
from darktune.devices import resolve_device
from darktune.errors import DarktuneError
from darktune.experiment import runner
from darktune.experiment.halving import Curve, decide, fit_budget, median, seed_verdict
from darktune.experiment.progress import GridProgress, last_iteration
from darktune.experiment.ray_executor import RayOptions, RayPool, require_ray
from darktune.experiment.recipe_space import Candidate, RecipeSettings, candidates
from darktune.experiment.runs import (
    RunInputs,
    describe_changes,
    make_out_dir,
    read_json,
    refusal,
    run_status,
    train_config,
    write_json,
)
from darktune.experiment.spec import ExperimentSpec, GridSpec, RunPlan
from darktune.experiment.task import TrainFn, call_run
from darktune.files import folder_lock
from darktune.report.data import read_metrics_file
from darktune.train.config import OPTIONS
from darktune.train.feature_cache import SharedFeatures, sharing_features

STATE = "recipe.json"
MAX_RUNGS = 10


class Search:
    """One search in one folder: its settings, candidates, start weights, state and where trials train."""

    def __init__(self, settings: RecipeSettings, out_dir: Path, cfg: str, inputs: RunInputs, state: dict,
                 train_fn: TrainFn, device: str, pool: RayPool | None, slots: int, progress: bool,
                 budget_s: float | None):
        self.settings, self.out_dir, self.cfg, self.inputs, self.state = settings, out_dir, cfg, inputs, state
        self.train_fn, self.device, self.pool, self.slots, self.progress = train_fn, device, pool, slots, progress
        self.budget_s = budget_s
        self.by_name = {c.name: c for c in candidates(settings)}
        self.t0 = time.perf_counter()
        self.spent0 = float(state.get("spent_s", 0.0))
        # trials trained here, one after the other, share their frozen layers' outputs (Ray workers do not)
        self.shared = SharedFeatures() if pool is None else None

    # ------------------------------------------------------------------------------------------ bookkeeping
    def spent(self) -> float:
        return self.spent0 + time.perf_counter() - self.t0

    def remaining(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - self.spent()

    def save(self) -> None:
        self.state["spent_s"] = round(self.spent(), 3)
        write_json(self.out_dir / STATE, self.state)

    def trial_dir(self, name: str, seed: int) -> Path:
        return self.out_dir / "runs" / f"{name}-s{seed}"

    def curve(self, name: str, seed: int = 0) -> Curve:
        run_dir = self.trial_dir(name, seed)
        train, evals = read_metrics_file(run_dir / "metrics.jsonl")
        points = tuple((int(e["iteration"]), float(e.get("train_s") or 0.0), float(e["map"])) for e in evals)
        seconds = max((float(t.get("train_s") or 0.0) for t in train + evals), default=0.0)
        status = run_status(run_dir)
        return Curve(name, points, last_iteration(run_dir), seconds, failed=status == "failed")

    def log(self, text: str) -> None:
        if self.progress:
            print(f"recipe: {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ training
    def done_to(self, run_dir: Path, iterations: int) -> bool:
        status = run_status(run_dir)
        return status == "stopped_at_target" or (status == "finished" and last_iteration(run_dir) >= iterations)

    def train(self, trials: list[tuple[str, int, int]]) -> None:
        """Train each (candidate, seed, iterations) that is not there yet: extended, resumed or started."""
        tasks, plans = [], []
        for name, seed, iterations in trials:
            plan = self.by_name[name].plan(self.settings, seed, iterations)
            run_dir = self.out_dir / plan.folder
            plans.append(plan)
            if self.done_to(run_dir, iterations):
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            if not (run_dir / "run.json").is_file():  # a recorded one was checked against this (_check_trials)
                write_json(run_dir / "run.json", trial_identity(self.inputs, plan))
            resume = (run_dir / "checkpoint.pt").is_file()
            if resume:  # an extension: the run goes on (its summary is rewritten when it ends)
                (run_dir / "summary.json").unlink(missing_ok=True)
            kwargs = train_config(plan, self.cfg, self.inputs.starts[plan.start], run_dir, self.device)
            tasks.append((len(tasks), {**kwargs, "resume": resume}))
        if not tasks:
            return
        bar = GridProgress(self.out_dir, plans, enabled=self.progress)
        try:
            if self.pool is not None:
                self.pool.run(self.train_fn, tasks, lambda i, error, status: self._ended(tasks[i][1], error, bar), bar)
            else:
                with sharing_features(self.shared):
                    for _, kwargs in tasks:
                        bar.count(running=1)
                        self._ended(kwargs, call_run(self.train_fn, kwargs), bar)
        finally:
            bar.close()

    def _ended(self, kwargs: dict, error: str | None, bar: GridProgress) -> None:
        failed = run_status(Path(kwargs["out"])) not in ("finished", "stopped_at_target")
        bar.count(done=int(not failed), failed=int(failed), running=0)
        if error:
            self.log(f"{Path(kwargs['out']).name} failed: {error.splitlines()[0]}")

    # ------------------------------------------------------------------------------------------ the rungs
    def rungs(self) -> None:
        s = self.settings
        rungs = self.state["rungs"]
        if not rungs:
            rungs.append({"iterations": {name: s.first_rung for name in self.by_name}})
            self.save()
        k = 0
        while True:
            rung = rungs[k]
            self.log(f"rung {k}: {len(rung['iterations'])} trials, up to {max(rung['iterations'].values())} "
                     "iterations")
            self.train([(name, 0, n) for name, n in rung["iterations"].items()])
            self.save()
            if "stopped" not in rung:
                self._decide(k)
            if k + 1 >= len(rungs):
                return
            k += 1

    def _decide(self, k: int) -> None:
        s, rungs = self.settings, self.state["rungs"]
        rung = rungs[k]
        curves = {name: self.curve(name) for name in self.by_name if self.trial_dir(name, 0).is_dir()}
        d = decide([curves[n] for n in rung["iterations"]], list(curves.values()), s.target_map, s.eta,
                   s.eval_every, s.max_iterations)
        d, fits = fit_budget(d, curves, self.remaining(), self.slots, s.eval_every)
        if d.go_on and not fits:
            d.stopped.update({n: "the budget ran out" for n in d.go_on})
            d.go_on = {}
        if k + 1 >= MAX_RUNGS and d.go_on:
            d.stopped.update({n: f"the search's last rung ({MAX_RUNGS})" for n in d.go_on})
            d.go_on = {}
        rung.update(stopped=d.stopped, horizon_s=d.horizon_s, scores=d.scores, go_on=d.go_on)
        if d.go_on:
            rungs.append({"iterations": d.go_on})
        self.save()

    # ------------------------------------------------------------------------------------------ the finals
    def finals(self) -> None:
        s = self.settings
        reached = self.reached_seed0()
        if "finals" not in self.state:
            best = reached[:s.finalists]
            names = [name for name, _, _ in best]
            caps = {name: min(s.max_iterations, _round_up(2 * it, s.eval_every)) for name, _, it in best}
            cost = sum(sec * 2 for _, sec, _ in best) * (s.seeds - 1) / max(1, self.slots)
            skipped = None
            if s.seeds < 2 or not names:
                skipped = "one seed asked for (--seeds 1)" if names else "no candidate reached the target"
            elif cost > self.remaining():
                skipped = f"the budget left ({self.remaining():.0f} s) is short of the seeds' estimated {cost:.0f} s"
            self.state["finals"] = {"candidates": names, "iterations": caps, "seeds": list(range(1, s.seeds)),
                                    "skipped": skipped}
            self.save()
        finals = self.state["finals"]
        if finals["skipped"] is None:
            self.log(f"finals: {', '.join(finals['candidates'])} with seeds {finals['seeds']}")
            self.train([(n, seed, finals["iterations"][n]) for n in finals["candidates"] for seed in finals["seeds"]])
            self.save()

    def reached_seed0(self) -> list[tuple[str, float, int]]:
        """(candidate, seconds, iteration) of every seed-0 trial that reached the target, fastest first."""
        out = []
        for name in self.by_name:
            if self.trial_dir(name, 0).is_dir():
                hit = self.curve(name).reached(self.settings.target_map)
                if hit:
                    out.append((name, hit[1], hit[0]))
        return sorted(out, key=lambda x: (x[1], x[0]))

    # ------------------------------------------------------------------------------------------ the result
    def result(self) -> dict:
        s = self.settings
        rows = [self.candidate_row(name) for name in self.by_name]
        trials = [p for p in (self.out_dir / "runs").glob("*") if p.is_dir()]
        curves = [self.curve(*_split_trial(p.name)) for p in trials]
        search = {"wall_s": round(self.spent(), 3), "train_s": round(sum(c.seconds for c in curves), 3),
                  "iterations": sum(c.iterations for c in curves), "trials": len(trials),
                  "candidates": len(self.by_name), "rungs": len(self.state["rungs"]), "budget_s": self.budget_s}
        out = {"target_map": s.target_map, "model": s.model, "data": s.data, "search": search, "candidates": rows,
               "reached": False, "winner": None, "sure": False, "verdict": None, "closest": None, "advice": []}
        finals = self.state.get("finals") or {}
        names = finals.get("candidates") or [name for name, _, _ in self.reached_seed0()[:1]]
        if not names:
            out.update(self._closest(rows))
            return out
        seeds = [0] + (finals.get("seeds", []) if finals.get("skipped") is None else [])
        times = {n: [self._time(n, seed) for seed in seeds] for n in names}
        winner = min(names, key=lambda n: (median(times[n]), times[n][0], n))
        verdict = seed_verdict(winner, times)
        hit = self.curve(winner).reached(s.target_map)
        its = [self._iteration(winner, seed) for seed in seeds]
        cand = self.by_name[winner]
        out.update(reached=True, sure=verdict.sure, verdict=verdict.text, winner={
            **cand.to_dict(), "trial": f"runs/{winner}-s0", "seconds": hit[1], "iteration": hit[0],
            "seed_seconds": [None if not math.isfinite(t) else t for t in times[winner]], "seeds": seeds,
            "median_s": median(times[winner]), "weights": str(self.trial_dir(winner, 0) / "weights" / "last.weights"),
            "train_command": train_command(s, cand, self.cfg, self.inputs.starts[cand.plan(s, 0, 1).start],
                                           _round_up(2 * max(i for i in its if i is not None), s.eval_every))})
        out["finalists"] = {n: [None if not math.isfinite(t) else t for t in times[n]] for n in names}
        return out

    def _time(self, name: str, seed: int) -> float:
        if not self.trial_dir(name, seed).is_dir():
            return math.inf
        hit = self.curve(name, seed).reached(self.settings.target_map)
        return hit[1] if hit else math.inf

    def _iteration(self, name: str, seed: int) -> int | None:
        hit = self.curve(name, seed).reached(self.settings.target_map) if self.trial_dir(name, seed).is_dir() else None
        return hit[0] if hit else None

    def candidate_row(self, name: str) -> dict:
        c = self.curve(name) if self.trial_dir(name, 0).is_dir() else Curve(name, (), 0, 0.0)
        hit = c.reached(self.settings.target_map)
        last, why = None, None
        for k, rung in enumerate(self.state["rungs"]):
            if name in rung["iterations"]:
                last, why = k, rung.get("stopped", {}).get(name)
        return {**self.by_name[name].to_dict(), "rung": last, "why": why, "iterations": c.iterations,
                "train_s": round(c.seconds, 3), "best_map": c.best_map(), "time_to_target_s": hit[1] if hit else None,
                "iteration_at_target": hit[0] if hit else None, "failed": c.failed}

    def _closest(self, rows: list[dict]) -> dict:
        ran = [r for r in rows if r["iterations"] > 0 and not r["failed"]]
        if not ran:
            return {"advice": ["every trial failed: read the train.log of a run under runs/"]}
        best = max(ran, key=lambda r: (r["best_map"], -r["train_s"]))
        advice = ["more training images (or cleaner boxes: darktune data check)",
                  "a larger input size (--size, e.g. 416 or 608)"]
        if any("budget" in (r["why"] or "") for r in rows) or self.remaining() <= 0:
            advice.append("more time (--budget)")
        if any("max-iterations" in (r["why"] or "") for r in rows):
            advice.append("longer trials (--max-iterations)")
        advice.append(f"a lower target (the best got to {100 * best['best_map']:.1f} mAP)")
        return {"closest": best, "advice": advice}


def _split_trial(folder: str) -> tuple[str, int]:
    name, _, seed = folder.rpartition("-s")
    return name, int(seed) if seed.isdigit() else 0


def _round_up(iterations: float, step: int) -> int:
    return max(step, int(math.ceil(iterations / step - 1e-9)) * step)


def trial_identity(inputs: RunInputs, plan: RunPlan) -> dict:
    """run.json of a trial: an experiment run's identity, less the iterations (later rungs extend the run)."""
    return {**inputs.identity(plan), "iterations": None, "eval_at": []}


def train_command(settings: RecipeSettings, cand: Candidate, cfg: str, start, iterations: int) -> str:
    """The winner as one `darktune train` line (its start weights as the search used them)."""
    opts = {**{k: v for k, v in cand.options(settings).items() if k not in ("target_map", "stop_at_target")},
            "freeze": cand.freeze}
    words = ["darktune", "train", "--cfg", cfg, "--data", settings.data]
    if start.path:
        words += ["--weights", start.path] + (["--upto", str(start.upto)] if start.upto else [])
    for key, value in sorted(opts.items()):
        if key not in OPTIONS or value is None:
            continue
        flag = OPTIONS[key].flag(key)
        if isinstance(value, bool):
            words += [flag] if value != (OPTIONS[key].kind == "store_false") else []
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    words += ["--iterations", str(iterations), "--target-map", str(settings.target_map), "--stop-at-target",
              "--out", "runs/recipe"]
    return " ".join(shlex.quote(w) for w in words)


def _open_state(out_dir: Path, settings: RecipeSettings) -> dict:
    identity = settings.identity()
    state = read_json(out_dir / STATE)
    if state is None:
        return {"settings": identity, "candidates": [c.to_dict() for c in candidates(settings)], "rungs": []}
    old = state.get("settings") or {}
    if old != identity:
        changed = [f"{k}: {old.get(k)} -> {identity.get(k)}" for k in sorted(set(old) | set(identity))
                   if old.get(k) != identity.get(k)]
        raise DarktuneError(f"holds a search with other settings ({'; '.join(changed)}); continue it with the "
                            "same settings (only --budget and where runs train may change), or use another --out",
                            path=str(out_dir))
    return state


def _check_trials(search: Search, rerun_changed: bool) -> None:
    """Every trial folder against the run it would be now (data, cfg, start weights' content); refused, or with
    `rerun_changed` deleted, and the search state that relied on them forgotten."""
    refused = []
    for run_dir in sorted((search.out_dir / "runs").glob("*")):
        recorded = read_json(run_dir / "run.json")
        name, seed = _split_trial(run_dir.name)
        if recorded is None or name not in search.by_name:
            continue
        plan = search.by_name[name].plan(search.settings, seed, 1)
        changes = describe_changes(recorded, trial_identity(search.inputs, plan), False)
        if changes:
            refused.append((f"runs/{run_dir.name}", "; ".join(changes)))
    if refused and not rerun_changed:
        raise refusal(refused, search.out_dir)
    if refused:
        for folder, _ in refused:
            shutil.rmtree(search.out_dir / folder)
        search.state.update(rungs=[], spent_s=0.0)
        search.state.pop("finals", None)
        search.spent0 = 0.0


def _check_frozen(settings: RecipeSettings, cfg: str) -> None:
    net = parse_cfg(cfg)
    last = max(i for i, layer in enumerate(net.layers) if isinstance(layer, ConvSpec))
    too_many = [n for n in settings.axes()["freeze"] if n > last]
    if too_many:
        raise DarktuneError(f"--freeze {too_many[0]} leaves nothing to train: the last layer with weights of "
                            f"{Path(cfg).name} is layer {last}")


def run_recipe(settings: RecipeSettings, out_dir: str | Path, *, budget_s: float | None = None,
               device: str | None = None, jobs: int = 1, ray: RayOptions | None = None,
               train_fn: TrainFn | None = None, progress: bool = True, rerun_changed: bool = False,
               keep_checkpoints: bool = False) -> dict:
    """Search the candidates by successive halving on time to target; the finalists across seeds; the result
    (also in DIR/recipe.json under "result"). `budget_s`: wall seconds for the whole search, counting earlier
    invocations on the same folder. `jobs`/`ray`: as `run_experiment`."""
    out_dir = Path(out_dir)
    if budget_s is not None and budget_s <= 0:
        raise DarktuneError(f"--budget must be above 0, got {budget_s} s")
    if device:
        resolve_device(device, "--device")
    if ray is None and jobs > 1:
        ray = runner.local_ray(jobs)
    if ray is not None:
        require_ray()
    weights = {"backbone": settings.backbone} if settings.backbone else {}
    spec = ExperimentSpec(cfg=settings.cfg or settings.model, model=settings.model, weights=weights,
                          backbone_layers=settings.backbone_count,
                          grid=GridSpec(data=settings.data, starts=settings.axes()["starts"]))
    cfg = runner.resolve_cfg(spec)
    _check_frozen(settings, cfg)
    make_out_dir(out_dir)
    with folder_lock(out_dir, "recipe search"):
        state = _open_state(out_dir, settings)
        _reopen_for_budget(state, budget_s)
        inputs = RunInputs(out_dir, cfg, set())
        first = [c.plan(settings, 0, settings.first_rung) for c in candidates(settings)]
        inputs.starts = runner.resolve_starts(spec, cfg, out_dir, first, inputs.digest)
        slots = (ray.jobs or 1) if ray is not None else 1
        with RayPool(ray, out_dir) if ray is not None else contextlib.nullcontext() as pool:
            search = Search(settings, out_dir, cfg, inputs, state, train_fn or runner.default_train,
                            device or _default_device(), pool, slots, progress, budget_s)
            _check_trials(search, rerun_changed)
            search.save()
            search.rungs()
            search.finals()
        result = search.result()
        state["result"] = result
        search.save()
        if not keep_checkpoints:  # a trial the budget stopped keeps its checkpoint: a larger budget continues it
            budget_stopped = {f"{r['name']}-s0" for r in result["candidates"] if "budget" in (r["why"] or "")}
            for ck in (out_dir / "runs").glob("*/checkpoint.pt"):
                if ck.parent.name not in budget_stopped:
                    ck.unlink()
    return result


def _default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _reopen_for_budget(state: dict, budget_s: float | None) -> None:
    """A search the budget ended, continued with a larger budget (or none): its last decision is made again."""
    rungs = state.get("rungs") or []
    old = state.get("budget_s")
    state["budget_s"] = budget_s
    if not rungs or old is None or (budget_s is not None and budget_s <= old):
        return
    last = rungs[-1]
    if any("budget" in why for why in (last.get("stopped") or {}).values()):
        for key in ("stopped", "horizon_s", "scores", "go_on"):
            last.pop(key, None)
        state.pop("finals", None)
        state.pop("result", None)
