"""The one exception type darktune raises for bad input; the CLI turns it into a one-line message."""

from __future__ import annotations


class DarktuneError(Exception):
    """A user-facing error: bad file, bad value, missing resource. The message says what and where."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
