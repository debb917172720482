"""pytest plugin: collects the reliability records of a session and keeps docs/reliability.md honest.

Register it in tests/conftest.py with `pytest_plugins = ["reliability_plugin"]`. In the main process (the
xdist controller, or the only process) it gives the session a fresh records folder through the
DARKTUNE_RELIABILITY_DIR variable (xdist workers inherit it) and at the end writes the table:
build/reliability-table.md after a full run of the reliability tests (no -k, -m, --lf or --deselect; every
kind recorded), build/reliability-table.partial.md otherwise. After a full run it also compares the Reliability
section of docs/reliability.md with the table and fails the session when they differ, so that page cannot drift
from what the suite measures. When the records folder is given from outside (`python -m tests.reliability_table`
does that) the plugin leaves records, table and page alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import reliability_table as rt

_SESSION_DIR = rt.ROOT / "build" / "reliability" / "session"


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config) -> None:
    if _is_worker(config) or os.environ.get(rt.ENV):
        config._reliability_own_dir = False
        return
    folder = Path(f"{_SESSION_DIR}-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[rt.ENV] = str(folder)
    config._reliability_own_dir = True


def _selection_is_full(config) -> bool:
    opt = config.option
    return not (getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "lf", False)
                or getattr(opt, "deselect", None))


def pytest_sessionfinish(session, exitstatus) -> None:
    config = session.config
    if _is_worker(config):
        return
    folder = Path(os.environ.get(rt.ENV, ""))
    records = rt.load_records(folder) if folder.is_dir() else []
    if getattr(config, "_reliability_own_dir", False):
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(rt.ENV, None)
    if not records or not getattr(config, "_reliability_own_dir", False):
        return
    if not (rt.complete(records) and _selection_is_full(config)):
        rt.write_table(records, rt.PARTIAL_TABLE_FILE)
        return
    table = rt.write_table(records)
    readme = rt.DOC
    section = rt.readme_section(readme.read_text(encoding="utf-8")) if readme.is_file() else None
    if section != table:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        message = (f"{rt.DOC.relative_to(rt.ROOT)}'s Reliability section differs from the figures of this run "
                   f"({rt.TABLE_FILE}); run `python -m tests.reliability_table --update-readme`")
        if reporter is not None:
            reporter.write_line(f"ERROR reliability table: {message}", red=True)
        session.exitstatus = 1
