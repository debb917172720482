"""Small helpers the reliability tests share: what an outcome was, and whether user files changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple]:
    """path -> (kind, size, mtime_ns, sha256) for everything under root (links not followed)."""
    out = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            elif p.is_dir():
                out[str(p)] = ("dir",)
            else:
                out[str(p)] = ("special", st.st_mode)
    return out


def changed(before: dict, after: dict) -> list[str]:
    """Paths that were modified or removed (new files are not counted here)."""
    return sorted(p for p, sig in before.items() if after.get(p) != sig and sig[0] != "dir")


def added(before: dict, after: dict) -> list[str]:
    return sorted(set(after) - set(before))


def exception_outcome(exc: BaseException, path: str | None = None) -> tuple[str, str]:
    """("handled", reason) for a DarktuneError that names `path` (when given), else ("crash", type)."""
    from darktune.errors import DarktuneError

    if isinstance(exc, DarktuneError):
        if path is None or path in str(exc):
            return "handled", ""
        return "crash", "DarktuneError without the file name"
    kind = type(exc)
    return "crash", kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
