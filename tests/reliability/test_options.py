"""Numbers given on the command line and in experiment specs: every numeric flag of every command, and every
numeric key of a spec, tried with the values a careless or hostile user types (-1, 0, nan, inf, 1e30, text, a
fraction where a count goes, a number past int64). Each is refused before any work, in one line naming the flag
(or the spec file, line and key), by the option's one domain (darktune.numbers); in-domain values still parse.

The commands never run here: every command's function is replaced by a stub that records that the value got
through, so an accepted value counts as silently accepted and each case takes microseconds.
"""

from __future__ import annotations

import argparse
import math

import pytest

from corpus.harness import exception_outcome
from darktune.numbers import Domain
from reliability_table import tally  # noqa: F401 (fixture)

# (command words, flag): the numeric flags of every command (positional N of `partial` included), each with its
# rule. zero: 0 is a meaningful value; bounded: a float flag with an upper end (1e30 refused); the rest of the
# hostile values are refused for every flag.
FLAGS = {
    ("summary",): {"--size": "", "--classes": ""},
    ("partial",): {"N": ""},
    ("detect",): {"--size": "", "--thresh": "zero bounded", "--nms": "zero bounded", "--workers": "",
                  "--max-frames": ""},
    ("data", "import"): {"--val-fraction": "zero bounded", "--seed": "zero", "--val-count": ""},
    ("data", "anchors"): {"--size": "", "--seed": "zero"},
    ("data", "check"): {"--classes": ""},
    ("data", "filter"): {"--container-min": "", "--max-rel-size": "", "--area": "zero", "--aspect": "zero",
                         "--max-boxes": "", "--like-iou": "bounded", "--like-k": "", "--val-fraction": "zero bounded",
                         "--seed": "zero"},
    ("data", "stats"): {"--anchors": "zero", "--size": "", "--seed": "zero"},
    ("data", "synth"): {"--n": "", "--seed": "zero", "--group-fraction": "zero bounded",
                        "--val-fraction": "zero bounded", "--distractors": "zero", "--near-miss": "zero bounded",
                        "--workers": ""},
    ("train",): {"--upto": "", "--freeze": "zero", "--unfreeze-at": "", "--iterations": "", "--batch": "",
                 "--subdivisions": "", "--size": "", "--eval-every": "zero", "--eval-at": "", "--target-map":
                 "zero bounded", "--seed": "zero", "--workers": "zero", "--threads": "", "--max-images": "",
                 "--max-valid-images": "", "--lr": "zero bounded", "--obj-prior": "bounded", "--burn-in": "zero",
                 "--steps": "zero", "--scales": "zero bounded", "--log-every": "", "--checkpoint-every": "",
                 "--max-bad-steps": ""},
    ("map",): {"--size": "", "--thresh": "zero bounded", "--batch": "", "--max-images": ""},
    ("experiment",): {"--jobs": "", "--gpus-per-run": "zero bounded", "--cpus-per-run": "bounded"},
    ("reproduce",): {"--jobs": "", "--gpus-per-run": "zero bounded", "--cpus-per-run": "bounded"},
    ("recipe",): {"--target-map": "zero bounded", "--freeze": "zero", "--size": "", "--lr": "zero bounded",
                  "--burn-in": "zero", "--backbone-layers": "", "--first-rung": "", "--eval-every": "", "--eta": "",
                  "--max-iterations": "", "--seeds": "", "--finalists": "", "--batch": "", "--subdivisions": "",
                  "--max-valid-images": "", "--max-images": "", "--jobs": "", "--gpus-per-run": "zero bounded",
                  "--cpus-per-run": "bounded"},
    ("export", "onnx"): {"--classes": "", "--size": "", "--batch": "", "--conf": "zero bounded",
                         "--iou": "zero bounded", "--max-det": "", "--opset": ""},
    ("export", "darknet"): {"--classes": "", "--size": ""},
    ("bench", "infer"): {"--batch": "", "--size": "", "--iters": "", "--warmup": "zero", "--threads": "",
                         "--block": ""},
    ("bench", "train"): {"--sizes": "", "--batch": "", "--iterations": "", "--repeats": "", "--freeze": "zero",
                         "--threads": ""},
}
ALWAYS_BAD = ("-1", "nan", "inf", "-inf", "NaN", "1e999", "abc", "", "0x10", "1,2")
INT_BAD = ("1.5", "1e30", "99999999999999999999999")  # not an integer, or past int64


class _Ran(Exception):
    """A command's function was reached: the value got through parsing."""


def _stub(args):
    raise _Ran()


def _subparser(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser:
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings or (not a.option_strings and
                                                                          a.metavar == flag))


def _is_integer(action: argparse.Action) -> bool:
    kind = getattr(action.type, "integer", None)
    return kind if kind is not None else action.type is int or "int" in getattr(action.type, "__name__", "")


def _argv(parser: argparse.ArgumentParser, words: tuple[str, ...], flag: str, value: str) -> list[str]:
    """The command with dummy values for what it requires and `value` for `flag` (as --flag=VALUE, so that
    '-inf' or '' reach the flag's type rather than argparse's option matching)."""
    sub = _subparser(parser, words)
    argv, tail = list(words), []
    for action in sub._actions:
        target = flag in action.option_strings or (not action.option_strings and action.metavar == flag)
        needed = action.required or (not action.option_strings and action.nargs not in ("?", "*"))
        if not (target or needed) or isinstance(action, argparse._HelpAction):
            continue
        n = action.nargs if isinstance(action.nargs, int) else 1
        given = [value] * n if target else (["1"] * n if action.type not in (None, str) else ["x"] * n)
        if not action.option_strings:
            tail += given
        elif target and n == 1:
            argv.append(f"{flag}={value}")
        else:
            argv += [action.option_strings[-1], *given]
    return argv + (["--"] if tail and any(v.startswith("-") for v in tail) else []) + tail


@pytest.fixture
def stubbed(monkeypatch):
    """`darktune.cli.main` over a parser whose every command is the stub."""
    import darktune.cli as cli

    parser = cli.build_parser()

    def stub_all(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    stub_all(sp)
        if p.get_default("func") is not None:
            p.set_defaults(func=_stub)

    stub_all(parser)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    return cli.main, parser


def _outcome(main, argv: list[str], flag: str, capsys) -> tuple[str, str]:
    try:
        rc = main(argv)
    except _Ran:
        return "silent", "accepted"
    except BaseException as exc:  # noqa: BLE001 (SystemExit included: argparse's own exit is not ours)
        return exception_outcome(exc) if not isinstance(exc, SystemExit) else ("crash", f"SystemExit {exc.code}")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    one_line = rc == 2 and len(err) == 1 and err[0].startswith("darktune: error: ")
    if one_line and flag in err[0]:  # refused, naming the flag (today's domains say '--flag must be ...')
        return "handled", ""
    return "crash", f"exit {rc}: {err[-3:]}"


def _bad_values(rule: str, integer: bool, is_list: bool) -> list[str]:
    values = [v for v in ALWAYS_BAD if not (is_list and v in ("", "1,2"))] + (list(INT_BAD) if integer else [])
    if "zero" not in rule:
        values.append("0")
    if not integer and "bounded" in rule:
        values.append("1e30")
    return values


def test_every_numeric_flag_refuses_hostile_values_at_parse_time(stubbed, tally, capsys):
    """Every numeric flag x every hostile value: exit 2 and one line '--flag must be ...' before the command
    runs (today: tracebacks such as `map --batch 0`, silent accepts such as `train --lr inf`)."""
    main, parser = stubbed
    t = tally("options")
    for words, flags in FLAGS.items():
        for flag, rule in flags.items():
            action = _action(_subparser(parser, words), flag)
            is_list = action.type not in (int, float) and not isinstance(action.type, Domain)  # '1,2': a list
            for value in _bad_values(rule, _is_integer(action), is_list):
                if isinstance(action.nargs, int) and value.startswith("-") and value != "-1":
                    continue  # two values after the flag: argparse reads '-inf' as an option (not a value)
                argv = _argv(parser, words, flag, value)
                t.case(f"{' '.join(words)} {flag}:{value!r}", *_outcome(main, argv, flag, capsys))
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())


def test_in_domain_values_still_parse(stubbed, capsys):
    """The domains refuse nonsense, not the values people use: 0 where it means something, 1, and the
    defaults' kind of values all reach the command."""
    main, parser = stubbed
    for words, flags in FLAGS.items():
        for flag, rule in flags.items():
            action = _action(_subparser(parser, words), flag)
            good = ["0"] if "zero" in rule else []
            if not _is_integer(action):
                good.append("3.5" if flag == "--max-rel-size" else "0.5")
            else:
                good.append({"--size": "64", "--sizes": "64", "--opset": "17", "--eta": "3"}.get(flag, "1")
                            if words[:2] != ("data", "stats") else "1")
            for value in good:
                with pytest.raises(_Ran):
                    main(_argv(parser, words, flag, value))
                    pytest.fail(f"{words} {flag} {value}: {capsys.readouterr().err}")


def test_every_numeric_flag_takes_its_domain_from_one_helper():
    """No command reads a number with a bare int or float: every numeric flag's type is a darktune.numbers
    domain (or a list of one), so a new flag cannot skip the rule."""
    from darktune.cli import build_parser

    def walk(parser, words):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, words + (name,))
            elif a.type in (int, float) or getattr(a.type, "__name__", "") in ("_int_list", "_float_list"):
                yield " ".join(words), a.option_strings or a.dest

    bare = list(walk(build_parser(), ()))
    assert not bare, f"numeric flags without a domain (use darktune.numbers.integer/real): {bare}"


# ------------------------------------------------------------------------------------------------- spec keys

SPEC_HEAD = "cfg: tiny.cfg\nweights: {{backbone_layers: {backbone}}}\ntrain: {{{train}}}\n"
# (where in the spec, key, zero is meaningful, integer)
SPEC_KEYS = [("train", k, z, i) for k, z, i in (
    ("batch", False, True), ("subdivisions", False, True), ("size", False, True), ("lr", True, False),
    ("burn_in", True, True), ("steps", True, True), ("scales", True, False), ("eval_every", True, True),
    ("workers", True, True), ("unfreeze_at", False, True), ("freeze_layers", True, True),
    ("target_map", True, False), ("obj_prior", False, False), ("max_valid_images", False, True),
    ("checkpoint_every", False, True), ("eval_batch", False, True))] + [
    ("grid", "freeze", True, True), ("grid", "images", False, True), ("grid", "seeds", True, True),
    ("grid", "iterations", False, True), ("grid", "eval_at", False, True),
    ("stage", "iterations", False, True), ("stage", "seed", True, True), ("stage", "freeze", True, True),
    ("per_start", "iterations", False, True), ("weights", "backbone_layers", False, True)]
SPEC_BAD = (".nan", ".inf", "-.inf", "-1", "abc", "true", "1.0e+30", "99999999999999999999999")


def _spec_text(where: str, key: str, value: str) -> tuple[str, int]:
    """A valid spec with `key` set to `value` where it goes, and the line of that key."""
    lines = ["cfg: tiny.cfg", "train:", "  batch: 2", "stages:", "  warm:", "    data: obj.data",
             "    weights: scratch", "grid:", "  data: obj.data", "  starts: [scratch, warm]", "  per_start:",
             "    warm:", "      iterations: 50", "weights:", "  backbone_layers: 13"]
    at = {"train": 2, "stage": 6, "grid": 9, "per_start": 12, "weights": 14}[where]
    indent = {"train": "  ", "stage": "    ", "grid": "  ", "per_start": "      ", "weights": "  "}[where]
    lines.insert(at + 1, f"{indent}{key}: {value}")
    if where in ("per_start", "weights") or (where == "train" and key == "batch"):
        lines = [line for i, line in enumerate(lines) if not (line.strip().startswith(f"{key}:") and i != at + 1)]
        at = next(i for i, line in enumerate(lines) if line == f"{indent}{key}: {value}") - 1
    return "\n".join(lines) + "\n", at + 2


def test_every_numeric_spec_key_refuses_hostile_values(tmp_path, tally):
    """Every numeric key of an experiment spec (train options, grid, stage, per_start, weights) x hostile YAML
    values: one DarktuneError naming the spec file and the key's line, by the same domain as the flag (today:
    `target_map: .nan` and `lr: .inf` pass validation)."""
    from darktune.errors import DarktuneError
    from darktune.experiment.spec import load_spec

    t = tally("spec_numbers")
    for where, key, zero_ok, integer in SPEC_KEYS:
        values = list(SPEC_BAD) + ([] if zero_ok else ["0"]) + (["1.5"] if integer else [])
        if key in ("lr", "target_map", "obj_prior", "scales"):
            values.append("1000001")
        for value in values:
            text, line = _spec_text(where, key, value)
            path = tmp_path / f"{where}-{key}.yaml"
            path.write_text(text)
            name = f"{where}.{key}:{value}"
            try:
                load_spec(path)
                t.case(name, "silent", "accepted")
            except DarktuneError as exc:
                ok = f"{path}:{line}:" in str(exc) and key in str(exc) and "\n" not in str(exc)
                t.case(name, "handled" if ok else "crash", "" if ok else f"message: {exc}")
            except Exception as exc:  # noqa: BLE001
                t.case(name, *exception_outcome(exc, str(path)))
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, bad


def test_spec_keys_and_flags_share_one_domain():
    """A spec's train options are checked by the Option's domain the flag uses: the same values pass and fail."""
    from darktune.experiment.spec import TRAIN_OPTIONS, _Checker
    from darktune.train.config import OPTIONS

    check = _Checker("s.yaml", {})
    for key in TRAIN_OPTIONS:
        domain = OPTIONS[key].domain
        if domain is None:
            continue
        for value in (-1, 0, 1, 16, 0.5, math.nan, math.inf, 10**30):
            flag_ok = domain.problem(value) is None
            try:
                check._option(key, value if OPTIONS[key].kind in ("int", "float") else [value], ("train", key))
                spec_ok = True
            except Exception:  # noqa: BLE001
                spec_ok = False
            assert flag_ok == spec_ok, (key, value)
