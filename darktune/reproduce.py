"""`darktune reproduce`: the whole study on the synthetic windows benchmark, in one resumable pipeline.

Steps (each reuses its result when run again in the same folder):
  1. the COCO yolov3-tiny files from the zoo (the conv.15 extract is made by the experiment);
  2. the target set (one window design among distractors) and the domain set (many window styles, Open
     Images CSV with IsGroupOf boxes), both seeded;
  3. the domain set's group boxes filtered out (images that had one are dropped whole, as the study kept only
     images with reasonable boxes), written in darknet layout;
  4. the experiment: stage `domain` (COCO conv.15 -> domain set, darknet's usual recipe), then the grid over the
     target set with the starting points scratch, backbone, coco15, domain, 0, 13, 20 frozen layers and the
     profile's training seeds; on CPU two one-thread runs at a time through a local Ray instance when Ray is
     installed, else one at a time (the stage trains beside the runs that do not need it);
  5. the report (report.md, report.html).

`model`: yolov3-tiny (the study's; default), yolov4-tiny (the same study in its layer numbering: STUDY_MODELS),
or both: each model's reproduction in DIR/<model>/ (each a complete reproduction folder with its own report) and
DIR/report.md + report.html, which puts the two side by side (darktune.report.compare).

Owns: `PROFILES` (smoke / quick / full), `STUDY_MODELS`, `reproduce(profile, out, device, model) ->
ReproduceOutcome`, `prepare_data`, `build_spec`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.darknet import zoo
from darktune.files import atomic_write_bytes
from darktune.data.formats.yolo import write_darknet
from darktune.data.filter import filter_dataset, FilterRules
from darktune.data.formats.openimages import read_openimages
from darktune.data.synth.sets import make_domain_set, make_target_set, WINDOW_SCALE
from darktune.devices import resolve_device
from darktune.darknet.transfer import MODELS
from darktune.experiment.ray_executor import RayOptions
from darktune.experiment.runner import ExperimentResult, run_experiment
from darktune.experiment.runs import make_out_dir
from darktune.files import folder_lock
from darktune.experiment.spec import spec_from_dict
from darktune.report.data import load_experiment
from darktune.report.compare import write_comparison
from darktune.report.findings import findings
from darktune.report.render import write_report

SEED = 0  # the data sets' seed; the training runs use Profile.seeds
# Without darknet's ImageNet weights the backbone start is a stand-in: the COCO weights' layers 0..7 (conv 0, 2,
# 4, 6: edge, colour and texture filters, the generic part that transfers between tasks and data sets), with
# layers 8..12 random. COCO's layers 8..12 are detection features trained on COCO's objects: an ImageNet
# classifier has no such thing, and with them the stand-in shared 13 of coco15's 15 layers (see the report).
STAND_IN_BACKBONE_LAYERS = 8
STARTS = ("scratch", "backbone", "coco15", "domain")


@dataclass(frozen=True)
class StudyModel:
    """The study's grid in one model's layer numbering (docs/study.md says why these cuts)."""

    model: str
    stand_in_layers: int  # the stand-in backbone: the COCO weights' layers up to the stride-16 maxpool

    @property
    def starts(self) -> tuple[str, ...]:
        return ("scratch", "backbone", MODELS[self.model].partial, "domain")

    @property
    def freeze(self) -> tuple[int, ...]:
        """The study's 0/13/20 in this model's numbering (none / the whole backbone / all but the last two convs
        of the 26x26 head): darktune.darknet.transfer."""
        return MODELS[self.model].study_freeze


# Stand-in backbones end at the stride-16 maxpool: v3 layer 7, v4 layer 17 (the second CSP block's maxpool).
STUDY_MODELS: dict[str, StudyModel] = {
    "yolov3-tiny": StudyModel("yolov3-tiny", STAND_IN_BACKBONE_LAYERS),
    "yolov4-tiny": StudyModel("yolov4-tiny", 18),
}
MODEL_CHOICES = tuple(STUDY_MODELS) + ("both",)


@dataclass(frozen=True)
class Profile:
    """Sizes and schedule of one reproduction. Iterations are darknet iterations of `batch` images."""

    name: str
    size: int  # image and network size (square)
    target_images: int  # target set size (train + valid)
    domain_images: int  # domain images generated (about 40% have no group box and are kept)
    batch: int
    subdivisions: int
    lr: float
    burn_in: int
    stage_iterations: int  # COCO conv.15 -> domain set
    iterations: int  # scratch / backbone / coco15 on the target
    eval_at: tuple[int, ...]  # the study's four table rows, scaled
    eval_every: int
    domain_iterations: int  # domain -> target
    domain_eval_at: tuple[int, ...]
    domain_eval_every: int
    target_map: float
    val_fraction: float = 0.2
    max_valid_images: int | None = None
    checkpoint_every: int = 50
    augment: bool = True
    seeds: tuple[int, ...] = (0,)  # training seeds of every grid point (the report shows mean and spread)
    # the target set's range of window widths (fractions of the image side); None: synth's default views
    target_window_scale: tuple[float, float] | None = None
    # close-ups (synth close_up): every image a crop around one window spanning lo..hi of its width; None: whole
    # scenes
    target_close_up: tuple[float, float] | None = None
    domain_close_up: tuple[float, float] | None = None
    note: str = ""


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", size=64, target_images=16, domain_images=30, batch=2, subdivisions=1, lr=0.001,
        burn_in=1, stage_iterations=2, iterations=3, eval_at=(2, 3), eval_every=0, domain_iterations=2,
        domain_eval_at=(1, 2), domain_eval_every=0, target_map=0.5, checkpoint_every=2,
        note="smoke: checks that the pipeline runs end to end; its numbers mean nothing"),
    "quick": Profile(
        name="quick", size=128, target_images=400, domain_images=600, batch=8, subdivisions=1, lr=0.001,
        burn_in=20, stage_iterations=300, iterations=200, eval_at=(100, 150, 180, 200), eval_every=10,
        domain_iterations=160, domain_eval_at=(40, 80, 120, 160), domain_eval_every=10, target_map=0.9,
        max_valid_images=80, checkpoint_every=50, augment=False, seeds=(0, 1, 2),
        target_window_scale=(0.14, 0.40), target_close_up=(0.45, 0.75), domain_close_up=(0.15, 0.75),
        note="quick: small images and short runs sized for 2 CPU cores, three training seeds per grid point: the "
             "study's iterations scaled by 0.1, the domain runs by 0.4 (the study ran them a fifth as long as "
             "coco15; longer here so that their plateau shows); every run evaluated every 10 iterations, so that "
             "time to target has the same resolution for every start. Every target image is a close-up around one "
             "window, which spans 45-75% of its width, and the domain images are crops in which a window spans "
             "15-75%. At 128x128 the target windows are then 58-96 pixels wide, so they go to the stride-32 [yolo] "
             "head, as windows wider than about 60 pixels do in the study's 416 network (anchors are network "
             "pixels; we assume the study's drone photos show the target window large), and their design details "
             "are resolved. With whole scenes at 128 px, 99% of the target boxes went to the stride-16 head, which "
             "freezing 20 layers leaves trainable. The target mAP, 90, is about the study's final levels"),
    "full": Profile(
        name="full", size=416, target_images=1000, domain_images=5000, batch=64, subdivisions=2, lr=0.001,
        burn_in=100, stage_iterations=1000, iterations=2000, eval_at=(1000, 1500, 1800, 2000), eval_every=100,
        domain_iterations=400, domain_eval_at=(100, 200, 300, 400), domain_eval_every=20, target_map=0.9,
        checkpoint_every=100,
        note="full: the study's network size, batch and iterations (for a GPU)"),
}


@dataclass
class ReproduceOutcome:
    profile: Profile
    result: object  # ExperimentResult
    report: object  # ReportPaths
    verdicts: list[str]
    data: dict
    models: dict = field(default_factory=dict)  # --model both: model -> its ReproduceOutcome


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise DarktuneError(f"unknown profile '{name}' (known: {', '.join(PROFILES)})")
    return PROFILES[name]


def prepare_data(profile: Profile, out: Path, progress: bool = False, workers: int = 1) -> dict:
    """Target set, domain set, filtered domain set in darknet layout; returns their paths and counts.
    A set left half-written by an interrupted run (no synth.json yet) is written again. `workers`: processes
    drawing images (the files are the same for any number)."""
    import shutil


    data_dir = out / "data"
    for name in ("target", "domain_raw"):
        if (data_dir / name).is_dir() and not (data_dir / name / "synth.json").is_file():
            shutil.rmtree(data_dir / name)
    target = make_target_set(data_dir / "target", profile.target_images, profile.size, SEED,
                             val_fraction=profile.val_fraction, progress=progress, workers=workers,
                             window_scale=profile.target_window_scale or WINDOW_SCALE,
                             close_up=profile.target_close_up)
    raw = make_domain_set(data_dir / "domain_raw", profile.domain_images, profile.size, SEED + 1, progress=progress,
                          workers=workers, close_up=profile.domain_close_up)
    domain, stats = _filtered_domain(raw, data_dir / "domain", profile)
    return {"target": str(target), "domain_raw": str(raw), "domain": str(domain), "filter": stats}


def _filtered_domain(boxes_csv: Path, out: Path, profile: Profile) -> tuple[Path, dict]:
    """Drop the images that carry an IsGroupOf box (their member windows have no box of their own)."""
    stats_path = out / "filter.json"
    if (out / "obj.data").is_file() and stats_path.is_file():
        return out / "obj.data", json.loads(stats_path.read_text())
    if out.exists():  # a half-written folder from an interrupted run: write it again
        import shutil

        shutil.rmtree(out)
    raw = boxes_csv.parent
    dataset = read_openimages(boxes_csv, raw / "class-descriptions.csv", raw / "images")
    kept, report = filter_dataset(dataset, FilterRules(drop_group_of=True, whole_images=True))
    if not kept.images:
        raise DarktuneError("no domain image is left after filtering group boxes", path=str(boxes_csv))
    obj_data = write_darknet(kept, out, val_fraction=profile.val_fraction, seed=SEED)
    stats = {"images_in": report.n_images_in, "images_out": report.n_images_out, "boxes_in": report.n_boxes_in,
             "boxes_out": report.n_boxes_out,
             "group_boxes": next((r.flagged for r in report.rules if r.rule == "group_of"), 0)}
    (out / "filter.json").write_text(json.dumps(stats, indent=1) + "\n")
    return obj_data, stats


def build_spec(profile: Profile, data: dict, backbone: str | None = None, model: str = "yolov3-tiny") -> dict:
    """The experiment spec (as the YAML would hold it) for the study's grid on the prepared data. `backbone`:
    darknet's ImageNet weights (darknet.weights) for the backbone start; default: the COCO weights' first
    layers as a stand-in. `model`: a key of STUDY_MODELS (yolov3-tiny writes the spec it always wrote)."""
    p, study = profile, STUDY_MODELS[model]
    train = {"batch": p.batch, "subdivisions": p.subdivisions, "size": p.size, "lr": p.lr, "burn_in": p.burn_in,
             "protocol": "darknet", "checkpoint_every": p.checkpoint_every, "augment": p.augment,
             "obj_prior": 0.5}  # darknet's objectness start (bias 0), as the study trained: its figures stand
    if p.max_valid_images:
        train["max_valid_images"] = p.max_valid_images
    f = data["filter"]
    seeds = ", ".join(map(str, p.seeds))
    notes = (f"Profile {p.name} ({p.note}). Training seeds {seeds}. Synthetic windows benchmark, seed {SEED}: "
             f"target set {p.target_images} images, domain set {p.domain_images} images of which "
             f"{f['images_out']} kept after dropping every image with an IsGroupOf box ({f['group_boxes']} group "
             f"boxes). Images and network {p.size}x{p.size}, batch {p.batch}, lr {p.lr}, burn_in {p.burn_in}, "
             f"augmentation {'on' if p.augment else 'off'}.")
    if not backbone:
        n, last = study.stand_in_layers, MODELS[model].backbone_layers - 1
        notes += (" The backbone start is a stand-in: without darknet's ImageNet weights it loads the COCO "
                  f"weights' layers 0..{n - 1} only (generic low-level filters) and leaves layers {n}..{last} "
                  "random" + ("; `reproduce --backbone darknet.weights` runs the study's Table I start (13 layers)."
                              if model == "yolov3-tiny" else "."))
    if model != "yolov3-tiny":
        m = MODELS[model]
        notes += (f" Model {model}: the COCO partial start is {m.partial} (layers 0..{m.partial_layers - 1}); "
                  f"frozen layers {'/'.join(map(str, study.freeze))} play the study's 0/13/20 (none, the whole "
                  "backbone, all but the 26x26 head's last two convs).")
    spec = {
        **({"cfg": model} if model == "yolov3-tiny" else {"model": model}),
        "train": train,
        "notes": notes,
        "stages": {"domain": {"data": data["domain"], "weights": MODELS[model].partial,
                              "iterations": p.stage_iterations,
                              "eval_at": [p.stage_iterations // 2, p.stage_iterations]}},
        "grid": {"data": data["target"], "starts": list(study.starts), "freeze": list(study.freeze),
                 "images": ["all"],
                 "seeds": list(p.seeds), "iterations": p.iterations, "eval_at": list(p.eval_at),
                 "eval_every": p.eval_every, "target_map": p.target_map,
                 "per_start": {"domain": {"iterations": p.domain_iterations, "eval_at": list(p.domain_eval_at),
                                          "eval_every": p.domain_eval_every}}},
    }
    if backbone:
        spec["weights"] = {"backbone": str(Path(backbone).resolve())}
    else:
        spec["weights"] = {"backbone_layers": study.stand_in_layers}
    return spec


def default_jobs(device: str | None) -> int:
    """Runs at a time: on CPU one per core, at most 4 (the cores are shared out as torch threads; these small
    runs scale badly over threads, and one-thread runs hold up far better when other work shares the cores:
    measured 2 runs x 1 thread in 30 s against 1 run x 2 threads in 100 s for the same 60 iterations on a
    loaded 2-core VM); on a GPU one."""
    if device is not None and device != "cpu":
        return 1
    if device is None:
        try:
            import torch

            if torch.cuda.is_available():
                return 1
        except ImportError:  # pragma: no cover
            pass
    if importlib.util.find_spec("ray") is None:  # more than one run at a time runs through Ray
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def reproduce(profile_name: str = "quick", out: str | Path = "runs/reproduce", device: str | None = None,
              progress: bool = True, backbone: str | None = None, jobs: int | None = None,
              rerun_changed: bool = False, model: str = "yolov3-tiny", ray: RayOptions | None = None
              ) -> ReproduceOutcome:
    """Run (or continue) the whole reproduction in `out` and write its report. One process at a time works in
    `out` (the experiment's lock, held from the data sets on). `rerun_changed`, `ray`: see run_experiment.
    `model`: yolov3-tiny, yolov4-tiny, or both (DIR/<model>/ each, one after the other, and the comparison in
    DIR)."""
    profile = get_profile(profile_name)
    if model not in MODEL_CHOICES:
        raise DarktuneError(f"unknown model '{model}' (known: {', '.join(MODEL_CHOICES)})")
    if backbone and model != "yolov3-tiny":
        raise DarktuneError("--backbone is darknet's ImageNet darknet.weights for yolov3-tiny's Table I start; for "
                            "yolov4-tiny give weights.backbone in a `darktune experiment` spec")
    out = Path(out).resolve()  # the spec written into `out` holds the data paths; relative ones would be read
    # against the spec's own folder, i.e. doubled
    devices = [_device(device)] if device else None
    make_out_dir(out)
    with folder_lock(out):
        if model != "both":
            return _reproduce(profile, out, devices, progress, backbone, jobs, rerun_changed, model, ray)
        _check_both_folder(out)
    outcomes = {}
    for name in STUDY_MODELS:  # each sub-folder holds its own lock; the comparison only reads their files
        sub = out / name
        make_out_dir(sub)
        with folder_lock(sub):
            outcomes[name] = _reproduce(profile, sub, devices, progress, backbone, jobs, rerun_changed, name,
                                    ray)
    report = write_comparison(out, {name: out / name for name in STUDY_MODELS},
                              title=f"darktune reproduce --profile {profile.name} --model both")
    results = [o.result for o in outcomes.values()]  # one result over both models: its `failed` decides the exit
    both = ExperimentResult(out, [x for r in results for x in r.outcomes], sum(r.wall_s for r in results))
    return ReproduceOutcome(profile, both, report, [f"{name}: {v}" for name, o in outcomes.items() for v in o.verdicts],
                            outcomes["yolov3-tiny"].data, models=outcomes)


def _check_both_folder(out: Path) -> None:
    """A `--model both` folder holds the models' sub-folders and the comparison only; anything else (a
    single-model reproduction, a user's files) is refused, nothing touched."""
    allowed = {".lock", "report.md", "report.html", "report_files", "comparison.json", *STUDY_MODELS}
    other = sorted(p.name for p in out.iterdir() if p.name not in allowed)
    if other:
        raise DarktuneError(f"holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}, which a --model both "
                            "folder does not (it holds one sub-folder per model); choose a new --out", path=str(out))


def _reproduce(profile: Profile, out: Path, devices: list[str] | None, progress: bool, backbone: str | None,
               jobs: int | None, rerun_changed: bool, model: str = "yolov3-tiny",
               ray: RayOptions | None = None) -> ReproduceOutcome:
    import yaml

    _check_profile_folder(out, profile, model)
    zoo.fetch(model)
    jobs = jobs or (1 if ray else default_jobs(devices[0] if devices else None))
    data = prepare_data(profile, out, progress, workers=min(8, os.cpu_count() or 1))
    if backbone and not Path(backbone).is_file():
        raise DarktuneError("backbone weights not found", path=str(backbone))
    spec_dict = build_spec(profile, data, backbone, model)
    spec_path = out / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = spec_from_dict(spec_dict, str(spec_path))
    result = run_experiment(spec, out, device=devices[0] if devices else None, jobs=jobs, ray=ray, progress=progress,
                            rerun_changed=rerun_changed)
    title = f"darktune reproduce --profile {profile.name}" + (f" --model {model}" if model != "yolov3-tiny" else "")
    report = write_report(out, title=f"{title}: the transfer-learning study")
    verdicts = [f"{f.verdict}: {f.claim}" for f in findings(load_experiment(out))]
    return ReproduceOutcome(profile, result, report, verdicts, data)


def _device(name: str) -> str:
    """The device as the grid's workers take it, checked to exist here (before any file is written)."""
    resolve_device(name, "--device")
    return "cuda:0" if name == "cuda" else name


def _check_profile_folder(out: Path, profile: Profile, model: str = "yolov3-tiny") -> None:
    """One folder holds one profile and one model: continuing a folder with another profile or model is
    refused, not mixed; a non-empty folder that is not a reproduction is refused too (nothing of the user's is
    touched). A yolov3-tiny folder's marker is the profile alone, as before models could be chosen."""
    marker = out / "profile.json"
    wanted = asdict(profile) | ({} if model == "yolov3-tiny" else {"model": model})
    if not marker.is_file() and out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        raise DarktuneError("is not empty and holds no reproduction (profile.json); choose a new --out",
                            path=str(out))
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = None
        if found != json.loads(json.dumps(wanted)):
            name = found.get("name") if isinstance(found, dict) else "?"
            held = found.get("model", "yolov3-tiny") if isinstance(found, dict) else "?"
            raise DarktuneError(f"this folder holds a reproduction with profile '{name}' and model '{held}' (or other "
                                f"settings); use another --out for profile '{profile.name}' and model '{model}'",
                                path=str(out))
        return

    atomic_write_bytes(marker, (json.dumps(wanted, indent=1) + "\n").encode())  # creates the folder too
