"""Export a `Darknet` model as darknet cfg + weights (+ names, obj.data), checked in OpenCV DNN right after it is
written; and the loading of a trained model (a run folder, or a cfg and weights) that both exports use.

Owns: `resolve_run(run) -> RunFiles`, `load_for_export(cfg, weights, ...)`, `check_darknet_out`, and
`export_darknet(model, out_dir, ...) -> DarknetExport`. The ONNX export is darktune/export.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from darktune.darknet.cfg import format_cfg, parse_cfg
from darktune.darknet.load import classes_in_weights, load_darknet
from darktune.errors import DarktuneError
from darktune.records import read_text
from darktune.files import atomic_write_many
from darktune.deploy.onnx import check_parents, verification_input
from darktune.deploy.fuse import fuse_model
from darktune.plural import plural
from darktune.darknet.weights import (
    weights_bytes,
)
from darktune.data.formats.yolo import read_obj_data
from darktune.deploy.runtimes import OpenCVBackend


@dataclass
class RunFiles:
    """cfg, weights and class names of a trained model (names from a names file, or the run's dataset)."""

    cfg: Path
    weights: Path
    names: Path | None = None
    class_names: list[str] | None = None
    note: str = ""  # why no names were found, if so


def resolve_run(run: str | Path, which: str = "best") -> RunFiles:
    """The files of a `darktune train` run folder (`darktune.train.config`): model.cfg (or the folder's only .cfg),
    weights/<which>.weights (best: highest mAP; falls back to the other one), and class names from obj.names
    in the folder if present, else from the obj.data recorded in RUN/summary.json's config."""
    run = Path(run)
    if not run.is_dir():
        raise DarktuneError("not a run folder", path=str(run))
    cfg = _one(run, "model.cfg", "*.cfg", "model.cfg")
    order = ("best", "last") if which == "best" else ("last", "best")
    candidates = [run / "weights" / f"{w}.weights" for w in order] + [run / f"{w}.weights" for w in order]
    weights = next((c for c in candidates if c.is_file()), None)
    if weights is None:
        raise DarktuneError("no weights/best.weights or weights/last.weights in the run folder", path=str(run))
    names = (run / "obj.names") if (run / "obj.names").is_file() else None
    if names is None and len(list(run.glob("*.names"))) == 1:
        names = next(run.glob("*.names"))
    if names is not None:
        return RunFiles(cfg, weights, names)
    class_names, note = _names_from_summary(run)
    return RunFiles(cfg, weights, None, class_names, note)


def _names_from_summary(run: Path) -> tuple[list[str] | None, str]:
    import json

    summary = run / "summary.json"
    try:  # a regular file only (a FIFO would block), and "data" a string
        data = json.loads(read_text(summary, "run summary", 64 << 20))["config"]["data"]
        if not isinstance(data, str):
            raise TypeError(data)
    except (DarktuneError, ValueError, KeyError, TypeError):
        return None, f"no obj.names in {run} and no dataset recorded in {summary}"

    try:
        return read_obj_data(data).names, ""
    except DarktuneError as exc:
        return None, f"the run's dataset is not readable ({exc})"


def _one(folder: Path, name: str, pattern: str, what: str) -> Path:
    if (folder / name).is_file():
        return folder / name
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise DarktuneError(f"no {what} in the run folder" if not found else
                            f"{plural(len(found), pattern + ' file')} in the run folder and no {name}",
                            path=str(folder))
    return found[0]


def load_for_export(cfg: str | Path, weights: str | Path, classes: int | None = None, size: int | None = None):
    """(Darknet model, weights header). When the weights fit the cfg only with another class count (a cfg whose
    classes/filters were not edited for the trained model), the cfg is re-headed to that count."""
    if classes is None:
        classes = classes_in_weights(parse_cfg(cfg), weights)
    return load_darknet(cfg, weights, size=size, classes=classes)


@dataclass
class DarknetExport:
    cfg: Path
    weights: Path
    names: Path
    data: Path
    classes: int
    placeholder_names: bool = False  # no class names were known: <stem>.names holds class_0 .. class_<N-1>
    max_abs_diff: float | None = None  # OpenCV DNN on the written files vs darktune's torch model

    def to_dict(self) -> dict:
        return {"cfg": str(self.cfg), "weights": str(self.weights), "names": str(self.names),
                "data": str(self.data), "classes": self.classes, "placeholder_names": self.placeholder_names,
                "max_abs_diff": self.max_abs_diff}


def check_darknet_out(out_dir: str | Path, stem: str = "model", inputs: tuple[str | Path, ...] = (),
                      overwrite: bool = False) -> tuple[Path, Path, Path, Path]:
    """The (cfg, weights, names, obj.data) paths an export to `out_dir` writes, after checking that none is one
    of `inputs`, that `out_dir` is a folder (or none yet), and that none of them exists unless `overwrite`."""
    out_dir = Path(out_dir)
    targets = (out_dir / f"{stem}.cfg", out_dir / f"{stem}.weights", out_dir / f"{stem}.names",
               out_dir / "obj.data")
    protected = {Path(p).resolve() for p in inputs}
    for path in targets:
        if path.resolve() in protected:
            raise DarktuneError("export would overwrite one of its own input files; choose another --out",
                                path=str(path))
    if out_dir.exists() and not out_dir.is_dir():
        raise DarktuneError("is not a folder; --out names the folder to write the cfg, weights and names into",
                            path=str(out_dir))
    check_parents(out_dir)
    for path in targets:
        if path.exists() and not path.is_file():
            raise DarktuneError("is not a regular file, so the export cannot write it; choose another --out",
                                path=str(path))
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise DarktuneError(f"already holds an export ({', '.join(existing)}); pass --overwrite to replace it, "
                            "or choose another --out", path=str(out_dir))
    return targets


def export_darknet(model: nn.Module, out_dir: str | Path, *, names: list[str] | None = None, stem: str = "model",
                   header=None, inputs: tuple[str | Path, ...] = (), verify: bool = True,
                   overwrite: bool = False) -> DarknetExport:
    """Write <stem>.cfg (classes and head filters consistent with the model), <stem>.weights (darknet layout,
    header kept), <stem>.names and obj.data (classes, names) into out_dir. Without `names`, <stem>.names holds
    placeholders class_0 .. class_<N-1>: darknet's `detector test` needs a names file, and every file of the
    export is rewritten, so no names of an earlier export are left beside the new cfg. Refuses to overwrite
    any of `inputs`, and an export already in out_dir unless `overwrite`.
    With `verify`, OpenCV DNN loads the written files and its raw heads are compared with the model's."""
    spec = model.spec
    if names is not None and len(names) != spec.num_classes:
        raise DarktuneError(f"{plural(len(names), 'name')} for a model with {plural(spec.num_classes, 'class')}")
    cfg, weights, names_path, data_path = check_darknet_out(out_dir, stem, inputs, overwrite)
    placeholder = names is None
    if placeholder:
        names = [f"class_{i}" for i in range(spec.num_classes)]
    files = {cfg: format_cfg(spec).encode(), weights: weights_bytes(model, header),
             names_path: "".join(n + "\n" for n in names).encode(),
             data_path: f"classes = {spec.num_classes}\nnames = {names_path.resolve()}\n".encode()}
    atomic_write_many(files)  # all or nothing: a full disk never leaves a new cfg beside old weights
    result = DarknetExport(cfg, weights, names_path, data_path, spec.num_classes, placeholder)
    if verify:
        result.max_abs_diff = _opencv_diff(model, cfg, weights)
    return result


def _opencv_diff(model: nn.Module, cfg: Path, weights: Path) -> float:
    x = verification_input(1, model.input_size)
    theirs = OpenCVBackend(cfg, weights, model.spec, threads=None, winograd=False).raw(x)
    with torch.inference_mode():
        ours = fuse_model(model).cpu()(torch.from_numpy(x))
    return max(float(np.abs(t - o.numpy()).max()) for t, o in zip(theirs, ours))
