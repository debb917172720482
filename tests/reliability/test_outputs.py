"""`darktune detect --out` pointed at its own inputs: an output never replaces an input, nor writes through a
link into another user file.

Each case lays out a user's photos and clip, runs `darktune detect ... --out DIR` and checks, byte for byte,
that no user file changed (inputs, link targets, files beside them), that every annotated output exists under
some name in DIR, and that the renaming was said. `--out` naming an input file is refused in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import pytest

from corpus import datasets
from corpus.harness import changed, snapshot
from reliability_table import tally  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs-model")
    cfg = datasets.write_tiny_cfg(root / "tiny.cfg")
    return cfg, datasets.random_weights(cfg, root / "tiny.weights")


def _photos(folder: Path, names=("a.jpg", "b.png")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), datasets.box_image(i)[0])
        out.append(folder / name)
    return out


def _clip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(4):
        writer.write(datasets.box_image(i)[0])
    writer.release()
    return path


def _layout(case: str, root: Path) -> tuple[list[str], Path]:
    """(sources, --out) of one case, its files made under root/user."""
    user = root / "user"
    if case == "out-is-the-source-folder":
        _photos(user / "photos")
        return [str(user / "photos")], user / "photos"
    if case == "out-is-the-image-folder":
        a, _ = _photos(user / "photos")
        return [str(a)], user / "photos"
    if case == "out-is-the-video-folder":
        clip = _clip(user / "clips" / "clip.mp4")
        return [str(clip)], user / "clips"
    if case == "out-holds-a-link-to-the-input":
        a, _ = _photos(user / "photos")
        (user / "drawn").mkdir(parents=True)
        (user / "drawn" / "a.jpg").symlink_to(a)
        return [str(a)], user / "drawn"
    if case == "out-holds-a-hard-link-to-the-input":
        a, _ = _photos(user / "photos")
        (user / "drawn").mkdir(parents=True)
        os.link(a, user / "drawn" / "a.jpg")
        return [str(a)], user / "drawn"
    if case == "out-holds-a-link-to-another-user-file":
        a, _ = _photos(user / "photos")
        keep = _photos(user / "keep", ("precious.jpg",))[0]
        (user / "drawn").mkdir(parents=True)
        (user / "drawn" / "a.jpg").symlink_to(keep)
        return [str(a)], user / "drawn"
    if case == "input-given-through-a-link-in-out":
        a, _ = _photos(user / "photos")
        (user / "drawn").mkdir(parents=True)
        (user / "drawn" / "a.jpg").symlink_to(a)
        return [str(user / "drawn" / "a.jpg")], user / "drawn"
    if case == "out-is-the-source-folder-upper-case-twin":
        _photos(user / "photos", ("x.jpg", "X.JPG"))
        return [str(user / "photos")], user / "photos"
    raise AssertionError(case)


CASES = ("out-is-the-source-folder", "out-is-the-image-folder", "out-is-the-video-folder",
         "out-holds-a-link-to-the-input", "out-holds-a-hard-link-to-the-input",
         "out-holds-a-link-to-another-user-file", "input-given-through-a-link-in-out",
         "out-is-the-source-folder-upper-case-twin")


@pytest.mark.parametrize("case", CASES)
def test_outputs_never_replace_inputs(case, model, tmp_path, tally, capsys):
    from darktune.cli import main

    t = tally("detect_outputs")
    cfg, weights = model
    sources, out = _layout(case, tmp_path)
    # the link a user left in --out is replaced by the output (never written through): watch what it points to
    watched = ([tmp_path / "user" / d for d in ("photos", "keep")] if "another-user-file" in case
               else [tmp_path / "user"])
    before = {k: v for w in watched for k, v in snapshot(w).items()}
    try:
        rc = main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--json", "--out", str(out), *sources])
    except Exception as exc:  # noqa: BLE001 - counted as a crash
        t.case(f"detect:{case}", "crash", f"{type(exc).__name__}: {exc}"[:120])
        raise
    captured = capsys.readouterr()
    t.modified += changed(before, {k: v for w in watched for k, v in snapshot(w).items()})
    records = json.loads(captured.out)
    made = [p for p in out.iterdir() if not p.is_symlink() and str(p) not in before]
    ok = rc == 0 and not t.modified and len(made) >= len(records if records and "image" in records[0] else [1])
    said = "never replaces an input" in captured.err or case == "out-holds-a-link-to-another-user-file"
    t.case(f"detect:{case}", "handled" if ok and said else "silent",
           "" if ok and said else f"exit {rc}, modified {t.modified}, new outputs {[p.name for p in made]}")
    assert t.cases[f"detect:{case}"][0] == "handled", t.cases
    assert not t.modified


def test_out_naming_an_input_file_is_refused(model, tmp_path, tally, capsys):
    from darktune.cli import main
    from darktune.errors import DarktuneError

    t = tally("detect_outputs")
    cfg, weights = model
    a, _ = _photos(tmp_path / "user")
    before = snapshot(tmp_path / "user")
    try:
        rc = main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--out", str(a), str(a)])
        err = capsys.readouterr().err
        named = [line for line in err.splitlines() if line.startswith("darktune: error:") and str(a) in line
                 and "--out" in line]
        outcome = ("handled", "") if rc != 0 and named else ("silent", f"exit {rc}")
    except DarktuneError as exc:
        outcome = ("handled", "") if str(a) in str(exc) and "--out" in str(exc) else ("crash", str(exc)[:80])
    except Exception as exc:  # noqa: BLE001
        outcome = ("crash", type(exc).__name__)
    t.case("detect:out-is-an-input-file", *outcome)
    t.modified += changed(before, snapshot(tmp_path / "user"))
    assert outcome[0] == "handled" and not t.modified, outcome
