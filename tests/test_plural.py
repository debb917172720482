"""Counted nouns in user messages: singular for 1, regular and overridden plurals otherwise."""

from __future__ import annotations

import pytest

from darktune.plural import plural


@pytest.mark.parametrize("n, noun, want", [(1, "class", "1 class"), (80, "class", "80 classes"),
                                            (0, "box", "0 boxes"), (1, "box", "1 box"), (2, "image", "2 images"),
                                            (3, "entry", "3 entries"), (2, "day", "2 days"),
                                            (2, "batch", "2 batches")])
def test_plural(n, noun, want):
    assert plural(n, noun) == want


def test_plural_override():
    assert plural(2, "child", "children") == "2 children" and plural(1, "child", "children") == "1 child"
