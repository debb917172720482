"""Devices and FIFOs posing as data files: each case makes one file of a kind (image, label, weights, cfg, names,
checkpoint, obj.data, train list, spec, COCO/VOC/Open Images) a symlink to /dev/zero (endless zeros) or a FIFO
(blocks forever on open), and runs the darktune command that reads it. `run_all` runs every case in a
subprocess under a memory limit and a 3 s alarm per case, and writes {case: [outcome, detail]} as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import datasets

SPECIAL_CASES = ["image:zero", "image:fifo", "label:zero", "label:fifo", "weights:zero", "cfg:zero", "names:zero",
                 "checkpoint:zero", "obj_data:zero", "train_list:zero", "spec:zero", "coco:zero", "voc:zero",
                 "openimages:zero"]


def run_all(root: str, out: str) -> None:
    """Subprocess body: build each special file, run the reader that meets it, record the outcome."""
    import resource
    import signal

    import darktune.cli  # noqa: F401 - import everything before limiting memory
    import darktune.data.check  # noqa: F401
    import darktune.experiment.runner  # noqa: F401

    root_p = Path(root)
    cfg = datasets.write_tiny_cfg(root_p / "tiny.cfg")
    weights = datasets.random_weights(cfg, root_p / "tiny.weights")
    vm = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmSize:"))) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (384 << 20), resource.RLIM_INFINITY))

    def alarm(signum, frame):
        raise TimeoutError("no answer within 3 s")

    signal.signal(signal.SIGALRM, alarm)
    results = {}
    for case in SPECIAL_CASES:
        folder = root_p / case.replace(":", "_")
        folder.mkdir()
        signal.alarm(3)
        try:
            results[case] = special_case(case, folder, cfg, weights)
        except TimeoutError as exc:
            results[case] = ["crash", str(exc)]
        except BaseException as exc:  # noqa: BLE001 - MemoryError included
            results[case] = ["crash", type(exc).__name__]
        finally:
            signal.alarm(0)
    Path(out).write_text(json.dumps(results))


def special_file(path: Path, how: str) -> Path:
    if how == "zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    return path


def special_case(case: str, folder: Path, cfg: Path, weights: Path) -> list:
    """[outcome, detail] of one case: handled = a DarktuneError naming the file, or the file skipped and counted."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from darktune.cli import main

    kind, how = case.split(":")
    obj = datasets.make_dataset(folder, ["a.jpg", "b.jpg"], n_valid=1)
    images = folder / "images"
    err = io.StringIO()

    def run(argv: list[str]) -> int:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            return main(argv)

    if kind in ("image", "label"):
        target = images / ("a.jpg" if kind == "image" else "a.txt")
        target.unlink()
        special_file(target, how)
        rc = run(["data", "check", str(obj), "--no-cache", "--json"])
        if kind == "image":
            rc2 = run(["detect", "--cfg", str(cfg), "--weights", str(weights), str(target)])
            return ["handled", ""] if rc == 1 and rc2 == 1 and str(target) in err.getvalue() else ["silent", "rc"]
        return ["handled", ""] if rc == 0 else ["silent", f"exit {rc}"]  # counted as an image without labels
    special = special_file(folder / {"weights": "w.weights", "cfg": "c.cfg", "names": "n.names",
                                      "checkpoint": "run/checkpoint.pt", "obj_data": "x.data",
                                      "train_list": "list.txt", "spec": "s.yaml", "coco": "c.json",
                                      "voc": "v.xml", "openimages": "o.csv"}[kind]
                            if kind != "checkpoint" else _mkdir(folder / "run") / "checkpoint.pt", how)
    argv = {
        "weights": ["detect", "--cfg", str(cfg), "--weights", str(special), str(images / "a.jpg")],
        "cfg": ["summary", str(special)],
        "names": ["detect", "--cfg", str(cfg), "--weights", str(weights), "--names", str(special),
                  str(images / "a.jpg")],
        "checkpoint": ["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(folder / "run"), "--resume",
                       "--iterations", "1", "--batch", "2", "--no-progress"],
        "obj_data": ["train", "--cfg", str(cfg), "--data", str(special), "--out", str(folder / "run"),
                     "--iterations", "1", "--batch", "2", "--no-progress"],
        "train_list": ["data", "check", _obj_with_list(folder, obj, special), "--no-cache"],
        "spec": ["experiment", str(special), "--out", str(folder / "exp")],
        "coco": ["data", "import", str(special), "--format", "coco", "--out", str(folder / "o")],
        "voc": ["data", "import", str(special), "--format", "voc", "--out", str(folder / "o")],
        "openimages": ["data", "import", str(special), "--format", "openimages", "--descriptions", str(special),
                       "--images", str(images), "--out", str(folder / "o")],
    }[kind]
    rc = run(argv)
    named = str(special) in err.getvalue() or str(special.parent) in err.getvalue()
    return ["handled", ""] if rc == 2 and named else ["silent", f"exit {rc}"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _obj_with_list(folder: Path, obj: Path, listing: Path) -> str:
    text = obj.read_text().replace(str(folder / "train.txt"), str(listing))
    out = folder / "listed.data"
    out.write_text(text)
    return str(out)
