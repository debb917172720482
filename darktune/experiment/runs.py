"""The folder of one experiment run and what decides whether it may be reused.

Owns: `StartWeights` and `RunOutcome`, `train_config(plan, ...)` (a run's TrainConfig arguments), the run
identity written to run.json (`RunInputs.identity`: the plan with its model, the start weights' path and
sha256, a sha256 over the data set's obj.data and the lists it names, the cfg's sha256), `check_reuse`
(refuse, or with `rerun_changed` delete, every folder whose identity differs from the spec's), `prepare_run` /
`finish_run` (a finished run drops its checkpoint.pt unless kept), and the experiment folder itself (`make_out_dir`, the
flock of `darktune.files.folder_lock`). darktune/experiment.py runs the stages and the grid with these.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.darknet.transfer import DEFAULT_MODEL
from darktune.experiment.spec import RunPlan, identity_options
from darktune.files import atomic_write_bytes, make_folder
from darktune.plural import plural
from darktune.records import read_text
from darktune.train.files import read_summary

DONE = ("finished", "stopped_at_target")


@dataclass(frozen=True)
class StartWeights:
    """Where a starting point's weights come from: `path` (None: random init), read up to layer `upto`."""

    path: str | None
    upto: int | None
    description: str


@dataclass
class RunOutcome:
    plan: RunPlan
    run_dir: Path
    status: str  # a summary.json status, or "failed" with `error`
    reused: bool = False
    error: str | None = None


def read_json(path: Path) -> dict | None:
    """A JSON object from disk, or None when missing or unreadable (a half-written file counts as missing; a
    FIFO or device is never opened)."""
    try:
        data = json.loads(read_text(path, "run file", 64 << 20))
    except (DarktuneError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def run_status(run_dir: Path) -> str | None:
    """The status RUN/summary.json gives; None when there is none, or when it does not fit its schema (the run
    is then trained again, from its checkpoint: a damaged summary never counts as a finished run)."""
    try:
        summary = read_summary(Path(run_dir) / "summary.json")
    except DarktuneError:
        return None
    return summary["status"] if summary else None


def train_config(plan: RunPlan, cfg: str, start: StartWeights, run_dir: Path, device: str) -> dict:
    """TrainConfig keyword arguments of one run (plain data: it crosses process boundaries)."""
    options = dict(plan.options)
    target = options.pop("target_map", None)
    stop = options.pop("stop_at_target", False)
    return {"cfg": cfg, "data": plan.data, "weights": start.path, "upto": start.upto, "freeze": plan.freeze,
            "iterations": plan.iterations, "eval_at": list(plan.eval_at), "target_map": target,
            "stop_at_target": bool(stop and target is not None), "seed": plan.seed, "max_images": plan.images,
            "out": str(run_dir), "device": device, **options}


def start_identity(start: StartWeights, out_dir: Path) -> dict:
    """Which weights a run starts from, as recorded in run.json (inside the folder: relative, so a moved
    experiment folder still resumes)."""
    path = start.path
    if path is not None:
        try:
            path = str(Path(path).resolve().relative_to(out_dir.resolve()))
        except ValueError:
            path = str(Path(path).resolve())
    return {"path": path, "upto": start.upto}


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a regular file's bytes; None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_files(obj_data: str | Path) -> list[tuple[str, Path]]:
    """obj.data and the names / train / valid files it names, resolved as darknet does (obj.data's folder,
    then the current folder). Lenient: what cannot be read is simply not named (the trainer reports it)."""
    path = Path(obj_data)
    path = path / "obj.data" if path.is_dir() else path
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    except OSError:
        text = ""
    files = [("obj.data", path)]
    for line in text.splitlines():
        key, sep, value = (part.strip() for part in line.partition("="))
        if sep and key.lower() in ("names", "train", "valid") and value:
            candidates = [Path(value)] if Path(value).is_absolute() else [path.parent / value, Path.cwd() / value]
            files.append((key.lower(), next((c for c in candidates if c.is_file()), candidates[0])))
    return files


class RunInputs:
    """What the runs of one invocation start from (the cfg, the start weights) and the sha256 digests that
    identify them in run.json: each file is read once per invocation (start weights are up to ~35 MB)."""

    def __init__(self, out_dir: Path, cfg: str, stages: set[str]):
        self.out_dir, self.cfg, self.stages = out_dir, cfg, stages
        self.starts: dict[str, StartWeights] = {}
        self._digests: dict[str, str | None] = {}

    def digest(self, path: str | Path) -> str | None:
        key = str(Path(path).resolve())
        if key not in self._digests:
            self._digests[key] = file_sha256(key)
        return self._digests[key]

    def data_digest(self, obj_data: str) -> str:
        """One sha256 over the data set's identity: obj.data and its names / train / valid lists (texts only;
        the images are not read). A missing file counts as such."""
        h = hashlib.sha256()
        for label, path in data_files(obj_data):
            h.update(f"{label}\0{self.digest(path) or 'missing'}\0".encode())
        return h.hexdigest()

    def identity(self, plan: RunPlan) -> dict:
        """run.json of a run: what decides its result."""
        start = self.starts[plan.start]
        weights = {**start_identity(start, self.out_dir), "sha256": self.digest(start.path) if start.path else None}
        return {**plan.identity(), "start_weights": weights, "data_sha256": self.data_digest(plan.data),
                "cfg_sha256": self.digest(self.cfg)}


def _show(key: str, value: object) -> str:
    if value is None:
        return "all" if key == "images" else "unset"
    return json.dumps(value)


def describe_changes(recorded: dict, identity: dict, from_stage: bool) -> list[str]:
    """What differs between a folder's run.json and the run the spec asks for, named as the user set it
    ("iterations: 20 -> 30"; eval_at is not named when only its implied last point moved with iterations)."""
    old = dict(recorded)
    old.setdefault("model", DEFAULT_MODEL)  # run.json from before `model`: the COCO starts were yolov3-tiny's
    if isinstance(old.get("options"), dict):  # run.json files written before target_map left the identity
        old["options"] = identity_options(old["options"])
    if old == identity:
        return []
    changes = []
    ow, nw = old.get("start_weights") or {}, identity["start_weights"]
    unknown = ["start weights"] if nw["path"] is not None and "sha256" not in ow else []
    unknown += [what for key, what in (("data_sha256", "data set"), ("cfg_sha256", "cfg")) if key not in old]
    if unknown:
        changes.append(f"made by an older darktune that did not record the content of its {', '.join(unknown)}, "
                       "so it cannot be checked")
    for key in ("model", "start", "data", "freeze", "images", "seed", "iterations"):
        if old.get(key) != identity[key]:
            changes.append(f"{key}: {_show(key, old.get(key))} -> {_show(key, identity[key])}")
    if old.get("eval_at") != identity["eval_at"] and not _moved_with_iterations(old, identity):
        changes.append(f"eval_at: {_show('eval_at', old.get('eval_at'))} -> {_show('eval_at', identity['eval_at'])}")
    oo, no = old.get("options") or {}, identity["options"]
    changes += [f"{k}: {_show(k, oo.get(k))} -> {_show(k, no.get(k))}" for k in sorted(set(oo) | set(no))
                if oo.get(k) != no.get(k)]
    if (ow.get("path"), ow.get("upto")) != (nw["path"], nw["upto"]):
        changes.append(f"start weights: {ow.get('path')} (layers {ow.get('upto') or 'all'}) -> {nw['path']} "
                       f"(layers {nw['upto'] or 'all'})")
    elif "sha256" in ow and ow["sha256"] != nw["sha256"]:
        changes.append("its start weights changed " + (f"(stage '{identity['start']}' was retrained)" if from_stage
                                                       else f"({nw['path']} holds other weights now)"))
    if "data_sha256" in old and old["data_sha256"] != identity["data_sha256"]:
        changes.append("its data set's files changed (obj.data or the names / train / valid lists it names)")
    if "cfg_sha256" in old and old["cfg_sha256"] != identity["cfg_sha256"]:
        changes.append("the cfg's text changed")
    named = {"model", "start", "data", "freeze", "images", "seed", "iterations", "eval_at", "options", "start_weights",
             "data_sha256", "cfg_sha256"}
    changes += [f"{k} differs" for k in sorted((set(old) | set(identity)) - named) if old.get(k) != identity.get(k)]
    return changes or ["its run.json differs"]


def _moved_with_iterations(old: dict, new: dict) -> bool:
    """eval_at always holds the last iteration: a changed `iterations` alone moves that point."""
    if not isinstance(old.get("eval_at"), list) or old.get("iterations") == new["iterations"]:
        return False
    before, after = set(old["eval_at"]), set(new["eval_at"])
    return before - after <= {old.get("iterations")} and after - before <= {new["iterations"]}


def refusal(refused: list[tuple[str, str]], out_dir: Path) -> DarktuneError:
    """One error for every refused run folder: which, why, and what to do."""
    groups: dict[str, list[str]] = {}
    for folder, why in refused:
        groups.setdefault(why, []).append(folder)
    listed = "; ".join(f"{', '.join(folders)} ({why})" for why, folders in groups.items())
    one = len(refused) == 1
    return DarktuneError(f"{plural(len(refused), 'run folder')} {'was' if one else 'were'} made with other inputs "
                         f"than the spec asks for and {'is' if one else 'are'} not reused: {listed}. Delete "
                         f"{'it' if one else 'them'} to retrain, or rerun with --rerun-changed (deletes and "
                         "retrains exactly these)", path=str(out_dir))


def check_reuse(plans: list[RunPlan], inputs: RunInputs, rerun_changed: bool = False) -> None:
    """Before anything trains: every run folder the spec no longer matches is refused in one error (or, with
    `rerun_changed`, deleted so that it trains again). `plans` hold the stages first, in dependency order, so a
    stage that is to (re)train is known before the runs that start from it: their folders are refused too."""
    retrain: set[str] = set()
    refused: list[tuple[str, str]] = []
    for plan in plans:
        run_dir = inputs.out_dir / plan.folder
        recorded = read_json(run_dir / "run.json")
        if recorded is None:
            changes = []
        elif plan.start in retrain:
            changes = [f"its start weights will change (stage '{plan.start}' is to be retrained)"]
        else:
            changes = describe_changes(recorded, inputs.identity(plan), plan.start in inputs.stages)
        if changes:
            refused.append((plan.folder, "; ".join(changes)))
        if plan.group == "stage" and (changes or run_status(run_dir) not in DONE):
            retrain.add(plan.name)
    if refused and not rerun_changed:
        raise refusal(refused, inputs.out_dir)
    for folder, _ in refused:
        shutil.rmtree(inputs.out_dir / folder)


def prepare_run(plan: RunPlan, inputs: RunInputs) -> tuple[Path, bool, bool]:
    """(run dir, done already, resume): checks run.json against the plan and writes it for a new run (a run
    that starts from a stage is prepared after the stage trained: its identity holds the stage's weights)."""
    run_dir = inputs.out_dir / plan.folder
    identity = inputs.identity(plan)
    recorded = read_json(run_dir / "run.json")
    if recorded is not None:
        changes = describe_changes(recorded, identity, plan.start in inputs.stages)
        if changes:
            raise refusal([(plan.folder, "; ".join(changes))], inputs.out_dir)
    if run_status(run_dir) in DONE:
        return run_dir, True, False
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run.json", identity)
    return run_dir, False, (run_dir / "checkpoint.pt").is_file()


def finish_run(outcome: RunOutcome, keep_checkpoints: bool) -> RunOutcome:
    """A run that ended (finished or at its target) needs its checkpoint.pt no more (~67 MB for yolov3-tiny:
    model and momentum); only an unfinished run resumes from it. Reuse reads run.json and summary.json."""
    if outcome.status in DONE and not keep_checkpoints:
        (outcome.run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return outcome


def make_out_dir(out_dir: Path) -> None:
    """Create the experiment folder; a path that is, or goes through, a file is a one-line error."""
    make_folder(out_dir, "experiment folder")
