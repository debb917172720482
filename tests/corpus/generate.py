"""Write the whole hostile/broken-input corpus to a folder: `python -m tests.corpus.generate OUT_DIR`.

The tests build the same cases in their tmp_path through the functions of this package (images, labels,
files, hostile, datasets); this command writes them all to disk, for a look or to feed another tool:

    OUT_DIR/images/<case>            broken, odd and hostile images (see corpus.images)
    OUT_DIR/labels/<case>.txt        darknet label files with every malformed-line kind
    OUT_DIR/annotations/<fmt>/<case>/  COCO JSON, VOC XML, Open Images CSV cases
    OUT_DIR/cfg/<case>.cfg           mutated cfgs of the tiny network (OUT_DIR/tiny.cfg)
    OUT_DIR/weights/<case>.weights   damaged weights of the tiny network
    OUT_DIR/checkpoints/<case>.pt    pickle payloads (they would create OUT_DIR/PAYLOAD_RAN if loaded unsafely)
    OUT_DIR/archives/<case>.tar.gz   archives with ../, absolute paths, links, devices
    OUT_DIR/specs/<case>.yaml        experiment specs with Python tags and alias bombs
    OUT_DIR/names/                   a dataset whose file names are shell syntax, spaces and unicode
    OUT_DIR/manifest.json            every case with its expected outcome

Nothing here is executed; the payloads are inert bytes unless something unpickles them unsafely.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "corpus"

from . import datasets, files, hostile, images, labels  # noqa: E402

PAYLOAD_MARKER = "PAYLOAD_RAN"


def text_bytes(text: str) -> bytes:
    """UTF-8, keeping lone surrogates as the raw bytes they stand for (how invalid UTF-8 is spelled here)."""
    return text.encode("utf-8", "surrogateescape")


def write_images(out: Path) -> list[dict]:
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in images.image_cases():
        (folder / case.name).write_bytes(case.data)
        rows.append({"file": f"images/{case.name}", "expect": case.expect, "detect": case.detect_expect,
                     "shape": case.shape, "note": case.note})
    return rows


def write_labels(out: Path) -> list[dict]:
    folder = out / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in labels.label_cases():
        (folder / f"{case.name}.txt").write_bytes(case.data)
        rows.append({"file": f"labels/{case.name}.txt", "rows": case.rows, "error": case.error,
                     "n_classes": case.n_classes, "note": case.note})
    return rows


def write_annotations(out: Path) -> list[dict]:
    rows = []
    for case in labels.annotation_cases():
        folder = out / "annotations" / case.fmt / case.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in case.files.items():
            (folder / name).write_bytes(data)
        rows.append({"folder": str(folder.relative_to(out)), "format": case.fmt, "expect": case.expect,
                     "note": case.note})
    return rows


def write_model_files(out: Path) -> list[dict]:
    cfg = datasets.write_tiny_cfg(out / "tiny.cfg")
    rows = []
    (out / "cfg").mkdir(exist_ok=True)
    for case in files.cfg_mutations(cfg.read_text()):
        path = out / "cfg" / f"{case.name}.cfg"
        path.write_bytes(cfg.read_text().encode("utf-16") if case.name == "utf16" else text_bytes(case.text))
        rows.append({"file": str(path.relative_to(out)), "expect": case.expect, "note": case.note})
    good = datasets.random_weights(cfg, out / "tiny.weights").read_bytes()
    (out / "weights").mkdir(exist_ok=True)
    for case in files.weights_cases(good):
        path = out / "weights" / f"{case.name}.weights"
        path.write_bytes(case.data)
        rows.append({"file": str(path.relative_to(out)), "expect": "reject", "note": case.note})
    return rows


def write_hostile(out: Path) -> list[dict]:
    rows = []
    marker = out / PAYLOAD_MARKER
    (out / "checkpoints").mkdir(exist_ok=True)
    for name, data in hostile.checkpoint_payloads(marker):
        (out / "checkpoints" / f"{name}.pt").write_bytes(data)
        rows.append({"file": f"checkpoints/{name}.pt", "expect": "reject (payload never runs)"})
    (out / "archives").mkdir(exist_ok=True)
    wanted = {"tiny.weights": b"\x00" * 24, "tiny.cfg": b"[net]\n"}
    for case in hostile.archive_cases("pkg-1.0/models", wanted, out / "outside"):
        (out / "archives" / f"{case.name}.tar.gz").write_bytes(hostile.tar_gz(case.members))
        rows.append({"file": f"archives/{case.name}.tar.gz", "expect": case.expect})
    (out / "specs").mkdir(exist_ok=True)
    for name, text in hostile.spec_cases(marker):
        (out / "specs" / f"{name}.yaml").write_bytes(text_bytes(text))
        rows.append({"file": f"specs/{name}.yaml", "expect": "reject (nothing runs)"})
    obj = datasets.make_dataset(out / "names", hostile.HOSTILE_NAMES, n_valid=3)
    rows.append({"file": str(obj.relative_to(out)), "expect": "ok (names are plain data)"})
    return rows


def write_all(out_dir: str | Path) -> dict:
    """Write every case under out_dir (created); returns the manifest (also written as manifest.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"images": write_images(out), "labels": write_labels(out), "annotations": write_annotations(out),
                "model_files": write_model_files(out), "hostile": write_hostile(out)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.corpus.generate", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR")
    args = parser.parse_args(argv)
    manifest = write_all(args.out_dir)
    counts = {k: len(v) for k, v in manifest.items()}
    print(f"wrote {sum(counts.values())} cases to {args.out_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
