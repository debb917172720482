"""Files darktune wrote and reads back (caches, checkpoints, run folders, experiment records): read as regular
files, decoded as UTF-8 JSON and checked against a small schema before anything uses them.

A hand-edited, damaged or hostile record must not become a traceback deep inside the reader, nor a figure that
looks measured: every value a reader relies on is checked for its type, its range and finiteness here, and a
record that fails is refused in one line naming the file (and the line of a JSON-lines file).

    SUMMARY = {"status": Field(str, required=True), "best_map": Field(float, 0, 1)}
    summary = read_record(run / "summary.json", SUMMARY, "run summary")

`Field(float, ...)` takes ints too (JSON writes 1.0 as 1); `Field(int, ...)` takes no float and no bool;
`nullable` fields take None (JSON null), which is how darktune writes "not measured".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darktune.errors import DarktuneError
from darktune.files import read_regular

MAX_RECORD_BYTES = 256 << 20  # a run's metrics.jsonl of a long run with evaluations is a few MB
_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
               list: "a list"}


@dataclass(frozen=True)
class Field:
    """One key of a record: its kind, an optional closed range for numbers, whether it must be there and
    whether null is allowed; `choices` for strings; `finite=False` lets a number be NaN or infinite (a loss)."""

    kind: type
    low: float | None = None
    high: float | None = None
    required: bool = False
    nullable: bool = True
    choices: tuple = ()
    finite: bool = True

    def problem(self, value: Any) -> str | None:
        """None when `value` fits, else what it must be."""
        if value is None:
            return None if self.nullable else "must not be null"
        if not _is_kind(value, self.kind):
            return f"must be {_KIND_WORDS.get(self.kind, self.kind.__name__)}"
        if self.kind in (int, float):
            if not math.isfinite(value):
                return None if not self.finite else "must be finite"
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                lo = "" if self.low is None else f"{self.low:g}"
                hi = "" if self.high is None else f"{self.high:g}"
                return f"must be in [{lo or '-inf'}, {hi or 'inf'}]"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        return None


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def record_problem(record: Any, schema: dict[str, Field]) -> str | None:
    """What is wrong with `record` under `schema` (None when nothing): the first key that fails."""
    if not isinstance(record, dict):
        return f"must be a JSON object, not {type(record).__name__}"
    for key, spec in schema.items():
        if key not in record:
            if spec.required:
                return f"lacks '{key}'"
            continue
        problem = spec.problem(record[key])
        if problem:
            return f"'{key}' {problem}, got {_short(record[key])}"
    return None


def check_record(record: Any, schema: dict[str, Field], path: str | Path, what: str,
                 line: int | None = None) -> dict:
    """`record` when it fits `schema`, else a DarktuneError naming the file (and line)."""
    problem = record_problem(record, schema)
    if problem:
        raise DarktuneError(f"{what}: {problem}", path=str(path), line=line)
    return record


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_text(path: str | Path, what: str, max_bytes: int = MAX_RECORD_BYTES) -> str:
    """A regular file's text (FIFOs and devices refused, never opened blocking); DarktuneError naming the file
    when it is not UTF-8."""
    data = read_regular(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DarktuneError(f"{what} is not UTF-8 text (byte {exc.start})", path=str(path), line=line) from None


def read_record(path: str | Path, schema: dict[str, Field], what: str, max_bytes: int = MAX_RECORD_BYTES) -> dict:
    """A JSON object file checked against `schema`; DarktuneError naming the file when it is missing, not a
    regular file, not UTF-8, not JSON, or does not fit."""
    text = read_text(path, what, max_bytes)
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise DarktuneError(f"{what} is not valid JSON ({exc})", path=str(path)) from None
    return check_record(record, schema, path, what)


def read_json_lines(path: str | Path, schema: dict[str, Field], what: str,
                    max_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """The records of a JSON-lines file, each checked against `schema`. A last line without its newline that is
    not JSON is the write a kill interrupted, and is left out; any other bad line is a DarktuneError naming the
    file and the line."""
    text = read_text(path, what, max_bytes)
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: cut by a kill
                break
            raise DarktuneError(f"{what}: not a JSON line", path=str(path), line=number) from None
        out.append(check_record(record, schema, path, what, number))
    return out
