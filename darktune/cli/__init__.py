"""The `darktune` command line: one parser, subcommands contributed by the modules listed below.

Each command module exposes `add_commands(subparsers)` and registers parsers with `set_defaults(func=...)`.
Command modules import only argparse at module level; heavy imports happen inside the command functions,
so `darktune --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from darktune.errors import DarktuneError

# Explicit list (no registry, no discovery): a module listed here that is missing is simply skipped.
COMMAND_MODULES = (
    "darktune.cli.core",
    "darktune.cli.detect",
    "darktune.cli.data",
    "darktune.cli.train",
    "darktune.cli.experiment",
    "darktune.cli.recipe",
    "darktune.cli.export",
    "darktune.cli.bench",
)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are DarktuneErrors, so `main` prints them in one line as every other bad input
    (instead of the usage block, then the error), naming the flag: a numeric flag's value is checked by its
    `type=`, a darktune.numbers domain ('--seed must be between 0 and 4294967295, got -1')."""

    def error(self, message: str):
        flag = re.match(r"argument ([^:]+): (must be .*)", message)
        if flag:  # a domain's message: the flag (its longest spelling) and what it must be say it all
            raise DarktuneError(f"{flag.group(1).split('/')[-1]} {flag.group(2)}")
        raise DarktuneError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _out_of_memory(exc: BaseException, args: argparse.Namespace | None) -> str | None:
    """One line of advice for an allocator's out of memory (CPU or CUDA) that no command caught, naming the
    command's flags that shrink what it holds; None for any other error."""
    from darktune.darknet.memory import is_out_of_memory

    if not is_out_of_memory(exc):
        return None
    smaller = [f"--{name}" for name in ("batch", "size") if hasattr(args, name)]
    fewer = " (or fewer --workers)" if hasattr(args, "workers") else ""
    where = getattr(args, "device", None) or "this machine"
    return (f"out of memory on {where}: use a smaller {' or '.join(smaller) or 'input'}{fewer} "
            f"({str(exc).splitlines()[0][:120]})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except DarktuneError as exc:
        print(f"darktune: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as exc:  # the CPU allocator's out of memory gets CUDA's one line of advice
        message = _out_of_memory(exc, args)
        if message is None:
            raise
        print(f"darktune: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("darktune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
