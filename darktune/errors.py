"""The one exception type darktune raises for bad input (and its `MissingDependency` kind, with
`optional_import`); the CLI turns it into a one-line message."""

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


class MissingDependency(DarktuneError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""

    def __init__(self, module: str, extra: str, needed_for: str = ""):
        self.module = module
        self.extra = extra
        what = f"{needed_for} needs" if needed_for else "needs"
        super().__init__(f"{what} the optional package '{module}', which is not installed: "
                         f"pip install 'darktune[{extra}]'")


def optional_import(module: str, extra: str, needed_for: str = ""):
    """`importlib.import_module(module)`, or a `MissingDependency` naming `extra` when it (or something it
    needs) cannot be imported; the CLI prints it in one line and exits with status 2."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a broken install of the package
        missing = exc.name if exc.name and exc.name.split(".")[0] != module.split(".")[0] else module
        raise MissingDependency(missing, extra, needed_for) from None
