"""The reliability table of docs/reliability.md, produced by the test suite itself.

Each reliability test asks the `tally` fixture for a `Tally` of one input kind and records, case by case,
what darktune did with each input on each path: "handled" (decoded correctly, or refused with a message
naming the file; a counted skip), "crash" (any other exception, a hang) or "silent" (bad input accepted, or a
wrong result). It also records user files modified, payloads executed and kills survived. At teardown (pass,
fail or xfail alike) the tally is written as JSON to the records folder: $DARKTUNE_RELIABILITY_DIR, set per
session by tests/reliability_plugin.py, else build/reliability/records.

`render` turns the records into the section of docs/reliability.md; known bugs (strict-xfail tests) are
counted, not hidden.

    python -m tests.reliability_table                  # run the reliability tests, print the section
    python -m tests.reliability_table --update-readme  # ... and write it into docs/reliability.md
    python -m tests.reliability_table --check          # ... and fail if docs/reliability.md differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = "DARKTUNE_RELIABILITY_DIR"
DEFAULT_DIR = ROOT / "build" / "reliability" / "records"
TABLE_FILE = ROOT / "build" / "reliability-table.md"  # from the last full run of the reliability tests
PARTIAL_TABLE_FILE = ROOT / "build" / "reliability-table.partial.md"  # from a run of only some of them
DOC = ROOT / "docs" / "reliability.md"  # the page that shows the table (the README links to it)
HEADING = "## Reliability (produced by the test suite)"
TEST_FILES = ("tests/reliability/test_images.py", "tests/reliability/test_labels.py",
              "tests/reliability/test_cfg_weights.py", "tests/reliability/test_hostile.py",
              "tests/reliability/test_faults.py", "tests/reliability/test_imports.py",
              "tests/reliability/test_videos.py", "tests/reliability/test_outputs.py",
              "tests/reliability/test_caches.py", "tests/reliability/test_report_inputs.py",
              "tests/reliability/test_ray_guards.py", "tests/reliability/test_options.py",
              "tests/reliability/test_memory.py", "tests/reliability/test_semantics.py",
              "tests/train/test_determinism.py")
OUTCOMES = ("handled", "crash", "silent")

# Table rows, in order: key -> what the inputs are.
KINDS = {
    "images": "Images: truncated at 9 points, bit flips, empty, misnamed, decompression bombs, grey/RGBA/16-bit, "
              "EXIF rotation (paths: data check, trainer, data loader, detect)",
    "labels": "Darknet label files, every malformed-line kind (validator, data check, import)",
    "label_fuzz": "Random label files from hypothesis (validator)",
    "annotations": "COCO JSON, VOC XML (entity bombs, external entities), Open Images CSV",
    "cfg": "Mutated cfgs (tests/darknet/test_cfg.py's and the corpus's)",
    "weights": "Damaged .weights: cut at 10 points, extra bytes, bad headers, NaN",
    "special_files": "Devices and FIFOs named like data files",
    "checkpoints": "Checkpoints carrying pickle payloads (load, train --resume, experiment)",
    "archives": "Weights archives with ../, absolute paths, links, devices (zoo)",
    "specs": "Experiment specs with Python tags, alias bombs",
    "names": "File names with shell syntax, spaces, unicode (check, detect, train)",
    "ckpt_kills": "SIGKILL while writing checkpoints",
    "grid_kills": "SIGKILL during an experiment grid",
    "disk_full": "Disk full (ENOSPC) while writing weights, checkpoints, datasets, exports",
    "nan_loss": "Non-finite loss injected into training",
    "oom": "CUDA out of memory (simulated) in train, map and detect",
    "determinism": "Same seed twice on CPU (tiny training run)",
    "run_folders": "Two trainings started 0.3 s apart into one --out (folder lock)",
    "import_skips": "Import of dangling, looping, device and folder links and of annotation paths outside the "
                    "dataset",
    "class_names": "Class names with control characters or terminal escapes (names file, COCO, VOC, Open Images)",
    "outputs": "Outputs a hostile input could flood or arm: 200,000 bad label lines (data check), spreadsheet "
               "formulas in CSV cells",
    "videos": "Videos and other frame sources: cut at 30-90 %, zeroed frames, 100 MP+ frame headers, FIFOs, "
              "devices and folders named like videos (detect)",
    "detect_outputs": "detect --out onto its own inputs: the source folder, links and hard links to inputs and to "
                      "other user files, --out naming an input file",
    "caches": "backend-probe.json with NaN, negative or text timings, as a FIFO, device or folder; an unwritable "
              "$DARKTUNE_HOME (detect --backend auto)",
    "run_files": "Tampered checkpoints (types, ranges, NaN, RNG states), a cfg edited before --resume, metrics.jsonl "
                 "that is not UTF-8 (train --resume)",
    "report_inputs": "experiment.json, summary.json, metrics.jsonl with wrong types, NaN/inf/out-of-range mAPs, "
                     "escaping folders, FIFOs; a --model both folder with one half missing (report)",
    "ray": "Ray cluster addresses where nothing listens or a non-Ray listener answers (loopback), runs no node can "
           "hold, --jobs past the runs",
    "options": "Numbers on the command line: every numeric flag of every command with -1, 0, nan, inf, 1e30, text, "
               "fractions for counts, past int64 (refused at parse time, naming the flag)",
    "spec_numbers": "Numbers in experiment specs: every numeric key (train options, grid, stages, per_start, "
                    "weights) with .nan, .inf, -1, 0, text, booleans, 1e30 (refused naming the file and line)",
    "memory": "Sizes that multiply into memory: detect --size/--workers, train --batch, export --batch, cfg "
              "random/maxpool/conv sizes; CPU out of memory in train, map, detect, export",
    "semantics": "Model semantics: a spec's model against the network its cfg builds; decode keys out of domain "
                 "(scale_x_y, random); an ONNX export whose stored cfg decodes otherwise",
}

INTRO = ("Every figure below is counted by the reliability tests as they run (`tests/reliability/test_*.py`, "
         "`tests/train/test_determinism.py`, inputs from `tests/corpus/`; `python -m tests.corpus.generate DIR` writes "
         "them all). *Inputs* are distinct hostile or broken inputs, *checks* are (input, code path) pairs. A check "
         "passes when darktune decodes the input correctly or refuses it with a message naming the file (a counted "
         "skip where it goes on); a *crash* is any other exception or a hang; *silently accepted* is a bad input "
         "taken as good, or a wrong result. Known bugs are strict-xfail tests, counted here rather than hidden. "
         "This section is written by `python -m tests.reliability_table --update-readme` and compared with the "
         "suite's own figures after every full test run (tests/reliability_plugin.py).")
NOTES = (
    "EXIF orientation: darknet (stb_image) ignores it, so darknet labels refer to the stored pixels; darktune "
    "decodes the stored pixels on every path (data check, training, evaluation, detect) so a box never moves "
    "against its picture.",
    "JPEG has no checksum: a flipped bit in the entropy-coded data, or in the frame height, can still decode to a "
    "picture of the declared size; those inputs pass when decoded at the header's size or refused. PNG flips are "
    "always refused (CRC).",
    "Checkpoint kills: the writer is killed at each step of the write (after serialising, after creating the "
    "temporary file, at 0, 1, 50 and 99 % of the bytes, before fsync, before and after the rename) and at "
    "random times; every time the checkpoint on disk loads and holds the previous or the new step.",
)


@dataclass
class Tally:
    """What one test found for one input kind."""

    kind: str
    nodeid: str
    cases: dict = field(default_factory=dict)  # "path:case" -> [outcome, detail]
    modified: list = field(default_factory=list)  # user files changed
    executed: list = field(default_factory=list)  # payload markers found
    kills: list = field(default_factory=list)  # [survived, detail]

    def case(self, name: str, outcome: str, detail: str = "") -> str:
        assert outcome in OUTCOMES, outcome
        self.cases[name] = [outcome, detail]
        return outcome

    def kill(self, survived: bool, detail: str = "") -> None:
        self.kills.append([bool(survived), detail])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "nodeid": self.nodeid, "cases": self.cases, "modified": self.modified,
                "executed": self.executed, "kills": self.kills}


def records_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


def _record_path(nodeid: str, kind: str) -> Path:
    return records_dir() / (hashlib.sha1(f"{nodeid}|{kind}".encode()).hexdigest()[:20] + ".json")


def save(tallies: list[Tally]) -> None:
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for t in tallies:
        path = _record_path(t.nodeid, t.kind)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(t.to_dict(), sort_keys=True))
        os.replace(tmp, path)


def load_records(folder: Path | None = None) -> list[dict]:
    folder = Path(folder or records_dir())
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _pytest_fixture():
    import pytest

    @pytest.fixture
    def tally(request):
        """tally(kind) -> Tally; every tally of the test is saved at teardown, whatever the outcome."""
        made: list[Tally] = []

        def make(kind: str) -> Tally:
            assert kind in KINDS, kind
            t = Tally(kind, request.node.nodeid)
            made.append(t)
            return t

        yield make
        save(made)

    return tally


try:
    tally = _pytest_fixture()
except ImportError:  # pragma: no cover - rendering works without pytest
    tally = None


# ------------------------------------------------------------------------------------------------ rendering


def summarize(records: list[dict]) -> dict[str, dict]:
    rows = {k: {"inputs": set(), "checks": 0, "crash": 0, "silent": 0, "modified": 0, "executed": 0,
                "kills": 0, "survived": 0, "bugs": []} for k in KINDS}
    for rec in records:
        row = rows.get(rec["kind"])
        if row is None:
            continue
        for name, (outcome, detail) in sorted(rec["cases"].items()):
            row["inputs"].add(name.split(":", 1)[-1])
            row["checks"] += 1
            if outcome != "handled":
                row[outcome] += 1
                row["bugs"].append(f"{outcome}: `{name}`" + (f" ({detail})" if detail else ""))
        row["modified"] += len(rec["modified"])
        row["executed"] += len(rec["executed"])
        row["kills"] += len(rec["kills"])
        row["survived"] += sum(1 for s, _ in rec["kills"] if s)
    for row in rows.values():  # a kill is an input and a check of its own
        row["n_inputs"] = len(row["inputs"]) + row["kills"]
        row["checks"] += row["kills"]
        row["bugs"].sort()
    return rows


def complete(records: list[dict]) -> bool:
    """Every kind has records (a full run of the reliability tests)."""
    return {r["kind"] for r in records} >= set(KINDS)


def render(records: list[dict]) -> str:
    """The README section (heading included) for these records."""
    rows = summarize(records)
    lines = [HEADING, ""] + textwrap.wrap(INTRO, 115) + [""] + [
        line for note in NOTES for line in textwrap.wrap(note, 115, initial_indent="- ", subsequent_indent="  ")
    ] + ["",
             "| kind | inputs | checks | crashes | silently accepted | user files modified | payloads executed "
             "| kills survived |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in KINDS.items():
        r = rows[key]
        kills = f"{r['survived']}/{r['kills']}" if r["kills"] else "–"
        lines.append(f"| {label} | {r['n_inputs']} | {r['checks']} | {r['crash']} | {r['silent']} | "
                     f"{r['modified']} | {r['executed']} | {kills} |")
    total = {k: sum(r[k] for r in rows.values())
             for k in ("n_inputs", "checks", "crash", "silent", "modified", "executed")}
    lines.append(f"| **all** | {total['n_inputs']} | {total['checks']} | {total['crash']} | {total['silent']} | "
                 f"{total['modified']} | {total['executed']} | "
                 f"{sum(r['survived'] for r in rows.values())}/{sum(r['kills'] for r in rows.values())} |")
    bugs = [f"- {KINDS[k].split(':')[0].split(' (')[0]}: {b}" for k in KINDS for b in rows[k]["bugs"]]
    if bugs:
        lines += ["", "Open bugs counted above (each is a strict-xfail test naming the file and the fix):", ""]
        lines += bugs
    return "\n".join(lines) + "\n"


def readme_section(readme: str) -> str | None:
    """The Reliability section of a README text (heading to the next '## ' heading or the end)."""
    start = readme.find(HEADING + "\n")
    if start < 0:
        return None
    end = readme.find("\n## ", start + len(HEADING))
    return readme[start:] if end < 0 else readme[start:end + 1]


def with_section(readme: str, section: str) -> str:
    old = readme_section(readme)
    if old is None:
        return readme.rstrip("\n") + "\n\n" + section
    return readme.replace(old, section)


def write_table(records: list[dict], path: Path = TABLE_FILE) -> str:
    text = render(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


# ------------------------------------------------------------------------------------------------ command


def run_tests(folder: Path, extra: list[str]) -> int:
    env = {**os.environ, ENV: str(folder)}
    readme_test = "tests/reliability/test_faults.py::test_readme_reliability_section_is_the_measured_table"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES, "--deselect", readme_test,
           *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability_table", description=__doc__.splitlines()[0])
    parser.add_argument("--update-readme", "--update", dest="update_readme", action="store_true",
                        help=f"write the section into {DOC.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {DOC.relative_to(ROOT)}'s section differs")
    parser.add_argument("--records", metavar="DIR", help="render these records instead of running the tests")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -n 2)")
    args = parser.parse_args(argv)
    ran = not args.records
    if args.records:
        records = load_records(Path(args.records))
    else:
        with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
            rc = run_tests(Path(tmp), args.pytest_args)
            records = load_records(Path(tmp))
            if rc != 0:
                print(f"reliability tests failed (exit {rc}); table not written", file=sys.stderr)
                return rc
    if not complete(records):
        print("records are incomplete (not every kind was tested); table not written", file=sys.stderr)
        return 1
    text = write_table(records) if ran or args.update_readme else render(records)
    readme = DOC
    current = readme_section(readme.read_text(encoding="utf-8"))
    if args.update_readme:
        readme.write_text(with_section(readme.read_text(encoding="utf-8"), text), encoding="utf-8")
        print(f"wrote the Reliability section of {readme} and {TABLE_FILE}")
    elif args.check and current != text:
        print(f"{DOC.relative_to(ROOT)}'s Reliability section differs from the suite's figures ({TABLE_FILE}); run "
              "`python -m tests.reliability_table --update-readme`", file=sys.stderr)
        return 1
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
