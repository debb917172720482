"""Domains of numeric options: what values a number may take (integer or finite real, range, multiple), declared
once beside the option and checked the same way wherever the value comes from.

A `Domain` is argparse's `type=` for a flag (``p.add_argument("--batch", type=integer(1))``: a bad value is one
line naming the flag), checks a value given in a file or a library call (`Domain.problem`, `Domain.check`) and
says what it accepts (`Domain.describe`). NaN and the infinities are never in a domain, and no integer is past
`INT_MAX` unless its domain says so: no count, size or index of darktune means more, and past it torch and
numpy overflow instead of saying what is wrong.

    from darktune.numbers import integer, real
    integer(1).problem(0)                      # 'must be >= 1'
    integer(1).problem(1.5)                    # 'must be an integer >= 1'
    real(0, 1).check(float("nan"), "--conf")   # DarktuneError: --conf must be between 0 and 1, got nan
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from darktune.errors import DarktuneError

INT_MAX = 2**31 - 1  # the largest integer an option takes unless its domain says otherwise (int32)


@dataclass(frozen=True)
class Domain:
    """The values a numeric option may take. `words`: literal words it also accepts, with their value (export's
    ``--batch dynamic``)."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    multiple: int | None = None
    words: tuple[tuple[str, Any], ...] = ()

    def _range(self) -> str:
        """The range in words: 'between 0 and 1', '>= 1', 'in (0, 1]', 'a positive multiple of 32'."""
        high = None if self.integer and self.high == INT_MAX else self.high
        if self.multiple and self.low == self.multiple and high is None:
            return f"a positive multiple of {self.multiple}"
        if self.low is not None and high is not None:
            if not (self.low_open or self.high_open):
                text = f"between {_num(self.low)} and {_num(high)}"
            else:
                left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
                text = f"in {left}{_num(self.low)}, {_num(high)}{right}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(high)}"
        else:
            text = ""
        return f"{text} and a multiple of {self.multiple}".strip() if self.multiple else text

    def describe(self) -> str:
        """Everything the domain accepts, as it reads after 'must be': 'an integer >= 1', 'a number between 0
        and 1', 'an integer, a positive multiple of 32'."""
        rng = self._range()
        what = "an integer" if self.integer else "a finite number"
        text = f"{what}, {rng}" if rng.startswith("a ") else f"{what} {rng}".strip()
        return " or ".join([text] + [repr(w) for w, _ in self.words])

    def problem(self, value: Any) -> str | None:
        """None when `value` (a number from a file or a call, not text) is in the domain, else what is wrong with
        it, as it reads after the option's name: 'must be >= 1', 'must be an integer >= 1'."""
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (self.integer and not isinstance(value, int))):
            return f"must be {self.describe()}"
        rng = self._range()
        if not math.isfinite(value):
            return f"must be {rng or 'a finite number'}"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or (above and self.high != INT_MAX) or (self.multiple and value % self.multiple):
            return f"must be {rng}"
        if above:
            return f"must be at most {INT_MAX}"
        return None

    def check(self, value: Any, name: str) -> Any:
        """`value` when it is in the domain (None passes: an option left out), else a DarktuneError naming `name`."""
        if value is None:
            return None
        problem = self.problem(value)
        if problem:
            raise DarktuneError(f"{name} {problem}, got {_quoted(repr(value))}")
        return float(value) if not self.integer else value

    def parse(self, text: str) -> Any:
        """The value of a flag's text, or ValueError('must be ...')."""
        text = str(text).strip()
        for word, value in self.words:
            if text == word:
                return value
        try:
            value: Any = int(text, 10) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"must be {self.describe()}") from None
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def __call__(self, text: str) -> Any:
        """argparse's `type=`: the parsed value, or an ArgumentTypeError argparse prints beside the flag."""
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {_quoted(text)}") from None

    def list_of(self, text: str) -> list:
        """Comma-separated values of this domain ('1,2,3'), each checked; ValueError naming the bad one."""
        return [self.parse(t) for t in str(text).split(",") if t.strip()]


def _quoted(text: str) -> str:
    """A flag's text as a message quotes it: as typed, unless quotes are needed to see it."""
    text = str(text)
    return text if text and text.isprintable() and " " not in text and len(text) <= 40 else repr(text[:40])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def integer(low: int | None = None, high: int | None = INT_MAX, *, multiple: int | None = None,
            words: tuple[tuple[str, Any], ...] = ()) -> Domain:
    """Integers in [low, high] (high: INT_MAX unless given; None: unbounded), optionally a multiple of `multiple`."""
    return Domain(True, low, high, multiple=multiple, words=words)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> Domain:
    """Finite numbers in the range (closed ends unless `low_open` / `high_open`)."""
    return Domain(False, low, high, low_open, high_open)


def list_type(domain: Domain):
    """argparse's `type=` for a comma-separated list of `domain`'s values ('1,2,3')."""
    def parse(text: str) -> list:
        try:
            return domain.list_of(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (each value of the comma-separated list), got "
                                             f"{_quoted(text)}") from None
    parse.domain, parse.integer = domain, domain.integer  # what a reader of the parser (tests, --help) needs
    return parse


FRACTION = real(0, 1)  # a threshold or probability in [0, 1]
SHARE = real(0, 1, high_open=True)  # a share of a data set set aside (valid), in [0, 1)
PROBABILITY_OPEN = real(0, 1, low_open=True, high_open=True)
COUNT = integer(1)  # a number of things, at least one
SEED = integer(0, 2**32 - 1)  # numpy's SeedSequence and torch.manual_seed take these
NET_SIZE = integer(32, multiple=32)  # a square network input size (darknet's strides need a multiple of 32)
THREADS = integer(1, 1024)  # CPU threads
TILE = integer(32, 65536)  # a tile's width and height in pixels (sliced detection, data tile)
