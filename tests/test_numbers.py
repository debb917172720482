"""darktune.numbers: a domain says what it accepts, refuses NaN, infinities, text and out-of-range values with
'must be ...', and serves as argparse's type, a file's check and a library call's check alike."""

from __future__ import annotations

import argparse
import math

import pytest

from darktune.errors import DarktuneError
from darktune.numbers import FRACTION, INT_MAX, NET_SIZE, SEED, SHARE, integer, list_type, real


@pytest.mark.parametrize("domain,good,bad", [
    (integer(1), [1, 7, INT_MAX], [0, -1, 1.5, True, "3", INT_MAX + 1, None]),
    (integer(0, 10), [0, 10], [-1, 11]),
    (NET_SIZE, [32, 416, 8192], [0, 16, 100, 33]),
    (SEED, [0, 2**32 - 1], [-1, 2**32]),
    (FRACTION, [0, 0.5, 1, 1.0], [-0.1, 1.0001, math.nan, math.inf, -math.inf, "0.5", False]),
    (SHARE, [0, 0.999], [1, 1.0]),
    (real(0, 1, low_open=True, high_open=True), [0.5], [0, 1]),
    (real(), [-1e300, 0, 1e300], [math.nan, math.inf]),
])
def test_problem_accepts_the_domain_and_nothing_else(domain, good, bad):
    assert all(domain.problem(v) is None for v in good)
    for v in bad:
        assert domain.problem(v).startswith("must be"), v


def test_messages_say_what_is_wrong():
    assert integer(1).problem(0) == "must be >= 1"
    assert integer(1).problem(1.5) == "must be an integer >= 1"
    assert FRACTION.problem(math.nan) == "must be between 0 and 1"
    assert NET_SIZE.problem(100) == "must be a positive multiple of 32"
    assert integer(1).problem(10**20) == f"must be at most {INT_MAX}"
    assert real(1, low_open=True).describe() == "a finite number > 1"
    with pytest.raises(DarktuneError, match=r"^--conf must be between 0 and 1, got nan$"):
        FRACTION.check(math.nan, "--conf")
    assert FRACTION.check(None, "--conf") is None and FRACTION.check(1, "--conf") == 1.0


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "abc", "", "0x10", "1_000e", " "])
def test_argparse_type_refuses_text_that_is_not_in_the_domain(text):
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
        real(0, 10)(text)
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
        integer(1)(text)


def test_argparse_type_parses_words_and_lists():
    batch = integer(1, words=(("dynamic", None),))
    assert batch("dynamic") is None and batch("4") == 4 and integer(1)(" 12 ") == 12
    with pytest.raises(argparse.ArgumentTypeError, match="'dynamic'"):
        batch("dynamo")
    sizes = list_type(NET_SIZE)
    assert sizes("416,160") == [416, 160] and sizes.integer
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        sizes("416,100")
