"""The `darktune` command line: one parser, subcommands contributed by the modules listed below.

Each command module exposes `add_commands(subparsers)` and registers parsers with `set_defaults(func=...)`.
Command modules import only argparse at module level; heavy imports happen inside the command functions,
so `darktune --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from darktune.errors import DarktuneError

# Explicit list (no registry, no discovery): a module listed here that is missing is simply skipped.
COMMAND_MODULES = (
    "darktune.cli.core",
    "darktune.cli.detect",
    "darktune.cli.data",
    "darktune.cli.train",
    "darktune.cli.experiment",
    "darktune.cli.export",
    "darktune.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darktune",
        description="Retrain darknet YOLO detectors by transfer learning and ship them to edge runtimes.",
    )
    from darktune import __version__

    parser.add_argument("--version", action="version", version=f"darktune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DarktuneError as exc:
        print(f"darktune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("darktune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
